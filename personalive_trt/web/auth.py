"""Who may use the server: a shared token when it is exposed, nothing on loopback.

Bound to loopback (the default) the server needs no token: only this machine reaches it. Bound to another
address, every request but ``/api/health`` must carry the token (:func:`check_exposure` refuses to start
without one unless ``--no-auth`` says the user means it):

* the token comes from ``PERSONALIVE_TOKEN`` in the environment (never on the command line, where ``ps``
  shows it to every user of the machine) or from a token file (:func:`load_token`);
* a browser opens ``http://host:port/?token=...`` once: the server answers with an HttpOnly, SameSite=Strict
  cookie and a redirect to ``/``, so the token leaves the address bar and the page's scripts never see it;
* the page, static files, uploads, the WebSocket and the MJPEG stream accept that cookie or the token in the
  query (``?token=``, for clients without the page's cookie: OBS, a media player);
* a wrong or missing token is refused with 401 (at a WebSocket handshake, 403: the close before ``accept``
  that ASGI servers answer with 403) and the same one-word body whatever was wrong;
* ``/api/health`` stays open for probes, but tells a caller without the token counts only.

Comparisons are constant-time (:func:`hmac.compare_digest` over bytes), so the time a refusal takes does not
tell an attacker how much of a guess was right. The cookie holds a value derived from the token (an HMAC),
not the token: it cannot be replayed as ``?token=``. The token is removed from the request's query string
before the app (and the ASGI server's access log, which reads the same ``scope``) sees it.

Rejected: HTTP basic authentication (a browser cannot attach it to a WebSocket handshake or an ``<img>``'s
MJPEG request) and per-user accounts (one server, one shared token is what ``serve`` needs; a reverse
proxy in front adds users and TLS).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

__all__ = ["AccessControl", "ExposureError", "TOKEN_ENV", "TokenGate", "check_exposure", "is_loopback", "load_token"]

#: The environment variable that holds the token.
TOKEN_ENV = "PERSONALIVE_TOKEN"
#: A shorter token is refused: a shared secret on the network must not be guessable.
MIN_TOKEN_LENGTH = 16
COOKIE = "personalive_token"
COOKIE_MAX_AGE = 30 * 24 * 3600  # seconds: a month, then the user opens ?token= again
#: Paths any caller may reach (probes); what they reveal without the token is up to their route
#: (:meth:`AccessControl.let_in`).
OPEN_PATHS = frozenset({"/api/health"})
#: Where the gate leaves its verdict for the routes (``request.state``), as the token has left the query by then.
VERDICT = "personalive_trt_authenticated"
GENERATE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class ExposureError(ValueError):
    """The server would be reachable from the network without a token (one line saying what to do)."""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name (or "" = every interface): it may resolve to anything
        return False


def load_token(token_file: Path | None = None, environ: dict | None = None) -> str | None:
    """The token from ``token_file`` or ``$PERSONALIVE_TOKEN`` (None: neither); raises ValueError in one line
    for an unreadable or empty file, both sources at once, or a token under :data:`MIN_TOKEN_LENGTH`."""
    environ = os.environ if environ is None else environ
    from_env = environ.get(TOKEN_ENV) or None
    if token_file is not None and from_env is not None:
        raise ValueError(f"both ${TOKEN_ENV} and --token-file {token_file} give a token; give one")
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--token-file {token_file}: cannot read it ({exc.strerror or exc})") from exc
        source = f"--token-file {token_file}"
    elif from_env is not None:
        token, source = from_env.strip(), f"${TOKEN_ENV}"
    else:
        return None
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ValueError(f"{source}: the token must be at least {MIN_TOKEN_LENGTH} characters without spaces; "
                         f"make one with {GENERATE}")
    return token


def check_exposure(host: str, token: str | None, no_auth: bool) -> None:
    """Refuse (:class:`ExposureError`) to bind a non-loopback ``host`` without a token unless ``no_auth``."""
    if is_loopback(host) or token is not None or no_auth:
        return
    raise ExposureError(f"binding {host or 'every interface'} lets anyone who reaches it use the camera page and "
                        f"the GPU: set {TOKEN_ENV} (or --token-file) to a secret, e.g. {GENERATE}, or pass "
                        "--no-auth if you mean it")


class AccessControl:
    """The token check of one app (``token=None``: everyone is let in, the loopback default)."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token is not None else None
        self._cookie = (hmac.new(self._token, b"personalive-trt cookie", hashlib.sha256).hexdigest().encode()
                        if self._token is not None else None)

    @property
    def enabled(self) -> bool:
        return self._token is not None

    @property
    def cookie_value(self) -> str:
        return self._cookie.decode()

    def token_matches(self, candidate: str) -> bool:
        return self._token is not None and hmac.compare_digest(candidate.encode(), self._token)

    def cookie_matches(self, candidate: str) -> bool:
        return self._cookie is not None and hmac.compare_digest(candidate.encode(), self._cookie)

    def let_in(self, scope) -> bool:
        """The gate's verdict on a request that reached a route (no token set: True)."""
        return not self.enabled or bool(scope.get("state", {}).get(VERDICT))

    def authenticated(self, scope) -> bool:
        """Whether the request (an ASGI ``scope``) may use the app: no token set, or its cookie or query
        token matches. Every candidate is compared (no early exit on which one is present)."""
        if not self.enabled:
            return True
        _, query_token = split_token(scope)
        return (query_token is not None and self.token_matches(query_token)) | self.cookie_matches(cookie(scope))


def split_token(scope) -> tuple[bytes, str | None]:
    """``(query string without the token, the token or None)``."""
    pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    token = next((value for name, value in pairs if name == "token"), None)
    return urlencode([(n, v) for n, v in pairs if n != "token"]).encode(), token


def cookie(scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            try:
                jar = SimpleCookie(value.decode("latin-1"))
            except CookieError:
                continue
            if COOKIE in jar:
                return jar[COOKIE].value
    return ""


class TokenGate:
    """ASGI middleware: every HTTP request and WebSocket handshake outside :data:`OPEN_PATHS` needs the token
    (module docstring). ``/?token=`` with the right token sets the cookie and redirects to ``/``."""

    def __init__(self, app, access: AccessControl) -> None:
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or not self.access.enabled:
            return await self.app(scope, receive, send)
        allowed = self.access.authenticated(scope)
        scope.setdefault("state", {})[VERDICT] = allowed
        query, token = split_token(scope)
        if token is not None:
            scope["query_string"] = query  # in place: the server's access log reads this dict, and must not log it
        if scope["type"] == "websocket":
            if not allowed:  # a close before accept: the server refuses the handshake with 403
                return await send({"type": "websocket.close", "code": 1008})
            return await self.app(scope, receive, send)
        if scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if not allowed:
            return await respond(send, 401, json.dumps({"error": "unauthorized"}).encode(),
                                 [(b"content-type", b"application/json")])
        if token is not None and scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
            secure = "; Secure" if scope.get("scheme") == "https" else ""  # behind a TLS proxy
            location = "/" + ("?" + query.decode() if query else "")
            return await respond(send, 303, b"", [
                (b"location", location.encode()),
                (b"set-cookie", f"{COOKIE}={self.access.cookie_value}; Path=/; Max-Age={COOKIE_MAX_AGE}; "
                                f"HttpOnly; SameSite=Strict{secure}".encode())])
        return await self.app(scope, receive, send)


async def respond(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
