"""Who may use the review page, and which requests may change anything.

- **Host**: the page answers only requests addressed to itself: a ``Host`` that is the bound
  address, ``localhost``, ``127.0.0.1`` or ``[::1]`` on the bound port, or a name in
  ``web_allowed_hosts``. Anything else (a DNS-rebound site reaching the loopback page under its own
  name) is refused with 400 before any routing, static files and thumbnails included.
- **Bind**: loopback by default. Any other address needs ``web_token``; a start without one, or
  with a token shorter than :data:`MIN_TOKEN`, is refused (a user error, exit 2).
- **Token**: with ``web_token`` set, every request needs the session cookie the login page sets
  once the token was typed in. The cookie holds a random session id kept in the server's memory
  (never the token or anything derived from it), which expires after ``web_session_hours`` and is
  gone with a restart (so with a token change); ``Secure`` when the page is reached over HTTPS.
  Failed logins are slowed per client: each waits longer, and past :data:`MAX_FAILURES` in
  :data:`FAILURE_WINDOW` seconds the client is refused (429) until the window passes.
- **State changes** (every POST) need an ``Origin`` (or, failing that, ``Referer``) that is one
  of the allowed hosts, never merely the request's own ``Host``, and the CSRF token the pages
  carry, sent back in the ``X-CSRF-Token`` header (the page's script adds it to each htmx
  request). A page on another site can neither read that token nor forge the Origin.
- **Every response** forbids framing (``X-Frame-Options: DENY``, CSP ``frame-ancestors 'none'``),
  loads scripts and styles only from the page itself (the vendored htmx satisfies that policy), and
  says ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: same-origin``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from clipsort.errors import ConfigError

SESSION_COOKIE = "clipsort_session"
CSRF_HEADER = "x-csrf-token"
OPEN_PATHS = ("/login", "/static/")  # reachable before the token is given
MIN_TOKEN = 16  # characters: a token a person could guess in a day is no protection
MAX_FAILURES = 10
FAILURE_WINDOW = 600.0  # seconds
LOCAL_NAMES = ("localhost", "127.0.0.1", "[::1]")
HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

Handler = Callable[[Request], Awaitable[Response]]


def is_loopback(host: str) -> bool:
    """``localhost`` or an address in 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token, and a token too short to mean anything."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"clipsort web --host {host} serves beyond this machine: set web_token in the config "
            "(the page asks for it once), or bind 127.0.0.1"
        )
    if token is not None and len(token) < MIN_TOKEN:
        raise ConfigError(
            f"web_token is {len(token)} characters; use at least {MIN_TOKEN} "
            "(for example the output of `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
        )


def allowed_hosts(bind: str, port: int, names: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` values the page answers: the bound address and loopback names on ``port``, and ``names``.

    A configured name is taken as given (``photos.lan:8765``) and, when it names no port, both bare
    (behind a proxy on 80 or 443) and on ``port``.
    """
    shown = f"[{bind.strip('[]')}]" if ":" in bind.strip("[]") else bind
    hosts = {f"{name}:{port}".lower() for name in (shown, *LOCAL_NAMES)}
    for name in names:
        lowered = name.lower()
        hosts.add(lowered)
        if not lowered.rsplit("]", 1)[-1].count(":"):
            hosts.add(f"{lowered}:{port}")
    return frozenset(hosts)


class Guard:
    """The host check, the token's sessions and the CSRF token of one running page server."""

    def __init__(
        self,
        token: str | None,
        hosts: Iterable[str],
        session_seconds: float = 12 * 3600,
        wait: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``wait``: how a failed login waits out its delay (a test records the delays, which are the
        policy, instead of sleeping them: ten real ones took 13 s of the suite)."""
        self.token = token
        self.hosts = frozenset(hosts)
        self.session_seconds = session_seconds
        self.csrf = secrets.token_urlsafe(32)  # per process: a restart invalidates old pages
        self._sessions: dict[str, float] = {}  # session id -> when it expires
        self._failures: dict[str, list[float]] = {}  # client -> times of its recent failed logins
        self._lock = threading.Lock()
        self._wait = wait

    def host_ok(self, request: Request) -> bool:
        return request.headers.get("host", "").lower() in self.hosts

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def new_session(self) -> str:
        """A fresh session id, valid for ``session_seconds``."""
        session = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._sessions = {key: until for key, until in self._sessions.items() if until > now}
            self._sessions[session] = now + self.session_seconds
        return session

    def signed_in(self, request: Request) -> bool:
        if self.token is None:
            return True
        given = request.cookies.get(SESSION_COOKIE, "")
        with self._lock:
            until = self._sessions.get(given)
        return until is not None and until > time.monotonic()

    async def failed_login(self, client: str) -> bool:
        """Count a failed login of ``client`` and wait out its growing delay; False once it is locked out."""
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._failures.get(client, []) if t > now - FAILURE_WINDOW] + [now]
            self._failures[client] = recent
        await self._wait(min(2.0, 0.05 * 2 ** min(len(recent), 6)))
        return len(recent) <= MAX_FAILURES

    def locked_out(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return (
                len([t for t in self._failures.get(client, []) if t > now - FAILURE_WINDOW]) >= MAX_FAILURES
            )

    def same_origin(self, request: Request) -> bool:
        """The request's Origin (or Referer) is one of the page's own hosts, not merely its Host header."""
        claimed = request.headers.get("origin") or request.headers.get("referer")
        if not claimed:
            return False
        parts = urlsplit(claimed)
        return parts.scheme in ("http", "https") and parts.netloc.lower() in self.hosts

    def csrf_ok(self, request: Request) -> bool:
        # A header, never a form field: reading the body here would consume it for the handler.
        sent = request.headers.get(CSRF_HEADER, "")
        return hmac.compare_digest(sent.encode(), self.csrf.encode())

    async def __call__(self, request: Request, call_next: Handler) -> Response:
        """Starlette middleware: the host, then the token, then the checks on state changes."""
        response = await self._checked(request, call_next)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    async def _checked(self, request: Request, call_next: Handler) -> Response:
        if not self.host_ok(request):
            return PlainTextResponse("this page answers only its own address", status_code=400)
        if not self.signed_in(request) and not request.url.path.startswith(OPEN_PATHS):
            if request.method == "GET":
                return RedirectResponse("/login", status_code=303)
            return PlainTextResponse("sign in first", status_code=401)
        if request.method not in ("GET", "HEAD"):
            if not self.same_origin(request):
                return PlainTextResponse("cross-origin request refused", status_code=403)
            if request.url.path != "/login" and not self.csrf_ok(request):
                return PlainTextResponse("missing or wrong CSRF token", status_code=403)
        return await call_next(request)
