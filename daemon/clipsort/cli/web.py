"""``clipsort web``: the review page (see :mod:`clipsort.web`)."""

from __future__ import annotations

import errno
import socket
from typing import Annotated

import typer

from clipsort.cli.app import ConfigOption, RootOption, app, settings_from, user_errors
from clipsort.errors import ConfigError
from clipsort.layout import require_data_root


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` and listening, or ConfigError in one line.

    Bound here rather than by uvicorn, whose busy port is a logged ``[Errno 98]`` and exit 3.
    """
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is in use (another clipsort web?): stop it, or pass --port"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@app.command()
@user_errors
def web(
    host: Annotated[str | None, typer.Option(help="Address to bind (default web_host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default web_port, 8765).")] = None,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Serve the review page: see what clipsort decided and why, and fix it with one key."""
    settings = settings_from(config, root=root)
    require_data_root(settings.root)
    bind = host or settings.web_host
    import uvicorn

    from clipsort.web.app import create_app
    from clipsort.web.security import check_bind

    check_bind(bind, settings.web_token)
    sock = listen(bind, port or settings.web_port)
    app_ = create_app(settings, token=settings.web_token, host=bind, port=sock.getsockname()[1])
    shown = f"[{bind.strip('[]')}]" if ":" in bind else bind
    typer.echo(f"clipsort web: review page at http://{shown}:{sock.getsockname()[1]}/ (Ctrl-C stops it)")
    server = uvicorn.Server(uvicorn.Config(app_, log_level="warning", access_log=False))
    server.run(sockets=[sock])
