"""The access and per-client options of ``personalive-trt serve`` and ``python -m personalive_trt.web --echo``:
each bad value and an exposed ``--host`` without a token are refused in one line, exit code 1, before any server
or animator starts; good values reach the server's settings. ``run_server`` is replaced by a recorder, so
nothing here binds a port."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from personalive_trt.cli import app
from personalive_trt.web import launch
from personalive_trt.web.__main__ import main as echo_main
from personalive_trt.web.auth import TOKEN_ENV

TOKEN = "s3cret-token-0123456789abcdef"


@pytest.fixture
def started(monkeypatch):
    """What ``run_server`` was called with (the CLI and the echo entry point import it from web.launch)."""
    calls = []
    monkeypatch.setattr(launch, "run_server", lambda factory, settings, resolution, **kw: calls.append((settings, kw)))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    return calls


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    return lines[0]


REFUSED = [
    (["--host", "0.0.0.0"], [TOKEN_ENV, "--token-file", "--no-auth", "binding 0.0.0.0"]),
    (["--host", "192.168.1.10", "--ray"], ["binding 192.168.1.10", "--no-auth"]),
    (["--host", "::"], ["binding ::"]),
    (["--max-viewers", "0"], ["--max-viewers 0: expected >= 1"]),
    (["--control-rate", "-1"], ["--control-rate -1.0: expected >= 0"]),
    (["--idle-timeout", "-2"], ["--idle-timeout -2.0: expected >= 0"]),
    (["--token-file", "NOFILE"], ["--token-file", "cannot read it"]),
]


@pytest.mark.parametrize("args, expected", REFUSED)
def test_serve_refuses_in_one_line_before_anything_starts(args, expected, started, tmp_path):
    args = [str(tmp_path / "missing") if a == "NOFILE" else a for a in args]
    result = CliRunner().invoke(app, ["serve", "--weights", "synthetic", *args])
    assert result.exit_code == 1, result.output
    line = one_error_line(result.output)
    assert all(part in line for part in expected), line
    assert started == []


@pytest.mark.parametrize("args, expected", REFUSED)
def test_the_echo_entry_point_refuses_the_same_way(args, expected, started, tmp_path, capsys):
    args = [str(tmp_path / "missing") if a == "NOFILE" else a for a in args]
    assert echo_main(["--echo", *args]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert all(part in line for part in expected), line
    assert started == []


def test_a_token_file_and_the_environment_at_once_are_refused(started, tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text(TOKEN)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    result = CliRunner().invoke(app, ["serve", "--weights", "synthetic", "--token-file", str(path)])
    assert result.exit_code == 1 and "give one" in one_error_line(result.output) and started == []


def test_the_options_reach_the_server_s_settings(started, tmp_path, capsys):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert echo_main(["--echo", "--host", "0.0.0.0", "--token-file", str(path), "--max-viewers", "2",
                      "--control-rate", "0", "--idle-timeout", "5", "--echo-fuse-ms", "50"]) == 0
    (settings, kw), = started
    assert (settings.token, settings.max_viewers, settings.control_rate, settings.idle_timeout) == (TOKEN, 2, 0.0, 5.0)
    assert kw["host"] == "0.0.0.0"
    assert "unencrypted" in capsys.readouterr().err  # exposed with a token: TLS is still the user's to add


def test_no_auth_serves_an_exposed_host_without_a_token_and_says_so(started):
    result = CliRunner().invoke(app, ["serve", "--weights", "synthetic", "--host", "0.0.0.0", "--no-auth",
                                      "--max-viewers", "3", "--control-rate", "2.5"])
    assert result.exit_code == 0, result.output
    (settings, kw), = started
    assert settings.token is None and (settings.max_viewers, settings.control_rate) == (3, 2.5)
    assert "warning: binding 0.0.0.0 with --no-auth" in result.output


def test_a_local_ray_without_token_authentication_is_refused_unless_no_auth(started, monkeypatch):
    """Its Serve replicas listen on every interface (stock Ray): without Ray's token they run what they are sent."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    result = CliRunner().invoke(app, ["serve", "--weights", "synthetic", "--ray"])
    assert result.exit_code == 1 and started == []
    line = one_error_line(result.output)
    assert "RAY_AUTH_MODE=disabled" in line and "--no-auth" in line, line
    result = CliRunner().invoke(app, ["serve", "--weights", "synthetic", "--ray", "--no-auth"])
    assert result.exit_code == 0, result.output
    assert "warning: RAY_AUTH_MODE=disabled with --no-auth" in result.output and len(started) == 1
    # a cluster of the user's (--address) keeps its own settings: nothing to refuse here
    result = CliRunner().invoke(app, ["serve", "--weights", "synthetic", "--ray", "--address", "auto"])
    assert result.exit_code == 0 and "RAY_AUTH_MODE" not in result.output and len(started) == 2


def test_a_local_ray_is_put_on_loopback_with_token_authentication_unless_the_environment_says_otherwise():
    environ = {}
    launch.keep_local_ray_on_loopback(environ)
    assert environ == {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    environ = {"RAY_AUTH_MODE": "disabled"}  # check_server let it through (--no-auth): kept, and named at start-up
    launch.keep_local_ray_on_loopback(environ)
    assert environ["RAY_AUTH_MODE"] == "disabled"


def test_the_start_up_note_names_what_listens_beyond_loopback_but_the_asked_for_http_port():
    from personalive_trt.web.listening import Listener

    http = Listener("tcp", "0.0.0.0", 7860, 1, "ray::ProxyActor")
    replica = Listener("tcp6", "::", 41234, 2, "ray::ServeRepli")
    gcs = Listener("tcp", "127.0.0.1", 6379, 3, "gcs_server")
    assert launch.exposure_notes([gcs], "127.0.0.1", 7860, {}) == []
    assert launch.exposure_notes([http, gcs], "0.0.0.0", 7860, {}) == []
    note, = launch.exposure_notes([http, replica, gcs], "0.0.0.0", 7860, {"RAY_AUTH_MODE": "token"})
    assert ":41234 (ray::ServeRepli)" in note and "7860" not in note and "RAY_AUTH_MODE=token" in note
    note, = launch.exposure_notes([http, replica], "127.0.0.1", 7860, {"RAY_AUTH_MODE": "disabled"})
    assert ":7860 " in note and "anyone who reaches them can run code" in note
