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
