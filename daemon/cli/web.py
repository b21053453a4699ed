"""``clipsort web``: the review page (see :mod:`daemon.web`)."""

from __future__ import annotations

from typing import Annotated

import typer

from daemon.cli.app import ConfigOption, RootOption, app, settings_from, user_errors


@app.command()
@user_errors
def web(
    host: Annotated[str | None, typer.Option(help="Address to bind (default web_host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default web_port, 8765).")] = None,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Serve the review page: see what clipsort decided and why, and fix it with one key."""
    import uvicorn

    from daemon.web.app import create_app
    from daemon.web.security import check_bind

    settings = settings_from(config, root=root)
    bind = host or settings.web_host
    check_bind(bind, settings.web_token)
    app_ = create_app(settings, token=settings.web_token)
    uvicorn.run(app_, host=bind, port=port or settings.web_port, log_level="warning", access_log=False)
