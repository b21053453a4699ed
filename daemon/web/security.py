"""Who may use the review page, and which requests may change anything.

- **Bind**: loopback by default. Any other address needs ``web_token``; a
  start without one is refused (a user error, exit 2) rather than serving the
  folders to a network.
- **Token**: with ``web_token`` set, every request needs the cookie the
  login page sets once the token was typed in (compared in constant time).
- **State changes** (every POST) need an ``Origin`` (or, failing that,
  ``Referer``) naming this very host, and the CSRF token the pages carry,
  sent back in the ``X-CSRF-Token`` header (the page's script adds it to
  each htmx request). A page on another site can neither read that token nor
  forge the Origin.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from daemon.errors import ConfigError

TOKEN_COOKIE = "clipsort_token"
CSRF_HEADER = "x-csrf-token"
OPEN_PATHS = ("/login", "/static/")  # reachable before the token is given

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
    """Refuse to serve beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"clipsort web --host {host} serves beyond this machine: set web_token in the config "
            "(the page asks for it once), or bind 127.0.0.1"
        )


class Guard:
    """The token check and the CSRF token of one running page server."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.csrf = secrets.token_urlsafe(32)  # per process: a restart invalidates old pages

    def cookie_value(self) -> str:
        """What the token cookie holds: a digest, so the token itself is not stored in the browser."""
        assert self.token is not None
        return hashlib.sha256(f"clipsort-web:{self.token}".encode()).hexdigest()

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def signed_in(self, request: Request) -> bool:
        if self.token is None:
            return True
        return hmac.compare_digest(request.cookies.get(TOKEN_COOKIE, ""), self.cookie_value())

    def same_origin(self, request: Request) -> bool:
        """The request's Origin (or Referer) is this server, as the browser reached it."""
        claimed = request.headers.get("origin") or request.headers.get("referer")
        if not claimed:
            return False
        parts = urlsplit(claimed)
        return parts.scheme in ("http", "https") and parts.netloc == request.headers.get("host", "")

    def csrf_ok(self, request: Request) -> bool:
        # A header, never a form field: reading the body here would consume it for the handler.
        sent = request.headers.get(CSRF_HEADER, "")
        return hmac.compare_digest(sent.encode(), self.csrf.encode())

    async def __call__(self, request: Request, call_next: Handler) -> Response:
        """Starlette middleware: the token first, then the checks on state changes."""
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
