"""``clipsort web``: the review page, a Starlette app over the journal, status.json and the folders.

Pages: overview (``/``), the review queue (``/review``), recent decisions
(``/recent``) and classes (``/classes``); htmx (vendored, no CDN) swaps the
fragments the routes return. Every route names journal entries by id and
reference images by dataset, class and number, never by path; files are
served only from where the journal or the class folders say they are, never
through a symlink. Security (token, Origin, CSRF) is :mod:`clipsort.web.security`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from clipsort.config import Settings
from clipsort.decode.images import DecodeLimits
from clipsort.encode.embedcache import EMBEDDINGS_DB, EmbeddingCache
from clipsort.errors import ActionError, JournalError
from clipsort.layout import NEGATIVES_DIR
from clipsort.store.journal import Journal
from clipsort.store.mover import make_state_dir
from clipsort.times import parse_since
from clipsort.web.actions import Actions, Done, http_status
from clipsort.web.security import SESSION_COOKIE, Guard, allowed_hosts
from clipsort.web.thumbnails import Thumbnails
from clipsort.web.views import RECENT_LIMIT, STATUS_FILTERS, Library

STATIC = Path(__file__).parent / "static"
HTMX = "htmx-2.0.11.min.js"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


class Pages:
    """The routes of one page server."""

    def __init__(self, settings: Settings, guard: Guard) -> None:
        state = settings.state_path
        make_state_dir(state)
        self.library = Library(
            settings.root,
            state,
            Journal(state),
            EmbeddingCache(state / EMBEDDINGS_DB),
            settings.max_corrections_per_class,
        )
        self.actions = Actions(self.library)
        limits = DecodeLimits.from_settings(settings)
        self.thumbnails = Thumbnails(
            state,
            limits,
            max_bytes=int(settings.web_thumbnail_cache_mb * 2**20),
            timeout=settings.web_decode_seconds,
        )
        self.guard = guard
        self.templates = Environment(
            loader=PackageLoader("clipsort.web", "templates"), autoescape=select_autoescape(["html"])
        )
        self.templates.filters.update(percent=percent, when=when)

    def close(self) -> None:
        self.thumbnails.close()
        self.library.cache.close()
        self.library.journal.close()

    def render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        page = self.templates.get_template(name).render(
            csrf=self.guard.csrf, htmx=HTMX, negatives=NEGATIVES_DIR, **context
        )
        return HTMLResponse(page, status_code=status_code)

    # --- pages -----------------------------------------------------------------------
    # Plain (not async) endpoints: Starlette runs them in its thread pool, so the journal queries,
    # folder scans, decodes and moves they do never block the event loop.
    def overview(self, request: Request) -> Response:
        name = "overview_body.html" if request.headers.get("hx-request") else "overview.html"
        return self.render(name, view=self.library.overview())

    def review(self, request: Request) -> Response:
        dataset = request.query_params.get("dataset") or None
        return self.render("review.html", cards=self.library.queue(dataset), dataset=dataset)

    def recent(self, request: Request) -> Response:
        query = request.query_params
        problem = ""
        since = None
        try:
            since = parse_since(query["since"], time.time()) if query.get("since") else None
        except JournalError as exc:  # said above the form, which keeps what was typed
            problem = f"since: {exc}".replace("--since ", "")
        before = query.get("before", "")
        state = query.get("status") or None
        entries = (
            []
            if problem
            else self.library.recent(
                dataset=query.get("dataset") or None,
                label=query.get("class") or None,
                state=state,
                since=since,
                before=int(before) if before.isdigit() else None,
            )
        )
        layouts = self.library.layouts()
        classes = {name: self.library.classes(layout) for name, layout in layouts.items()}
        older = ""
        if len(entries) == RECENT_LIMIT:  # a full page: the next one starts below its oldest entry
            older = "/recent?" + urlencode({**dict(query), "before": entries[-1].id})
        return self.render(
            "recent.html",
            400 if problem else 200,
            entries=entries,
            standing=self.library.corrected(entries),
            classes=classes,
            query=dict(query),
            states=STATUS_FILTERS,
            layouts=layouts,
            problem=problem,
            older=older,
        )

    def classes(self, request: Request) -> Response:
        layouts = self.library.layouts()
        shown = {name: self.library.class_summaries(layout) for name, layout in sorted(layouts.items())}
        return self.render("classes.html", datasets=shown)

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self.render("login.html", wrong=False)
        client = request.client.host if request.client else ""
        if self.guard.locked_out(client):
            return PlainTextResponse("too many wrong tokens; try again in a few minutes", status_code=429)
        form = await request.form()
        given = form.get("token")
        if not isinstance(given, str) or not self.guard.token_matches(given):
            if not await self.guard.failed_login(client):
                return PlainTextResponse("too many wrong tokens; try again in a few minutes", status_code=429)
            return self.render("login.html", 401, wrong=True)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            self.guard.new_session(),
            max_age=int(self.guard.session_seconds),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",  # behind a TLS proxy that says so
        )
        return response

    # --- pictures --------------------------------------------------------------------
    def entry_thumbnail(self, request: Request) -> Response:
        entry = self.library.journal.by_id(int(request.path_params["entry"]))
        if entry is None or entry.destination is None or self.library.layout(entry.intent.dataset) is None:
            return PlainTextResponse("no such picture", status_code=404)
        layout = self.library.layout(entry.intent.dataset)
        assert layout is not None
        if not entry.destination.is_relative_to(layout.root):
            return PlainTextResponse("no such picture", status_code=404)
        return self._picture(entry.destination, layout.root, entry.intent.sha256)

    def reference_thumbnail(self, request: Request) -> Response:
        params = request.path_params
        layout = self.library.layout(params["dataset"])
        path = self.library.reference_path(params["dataset"], params["label"], int(params["number"]))
        if path is None or layout is None:
            return PlainTextResponse("no such picture", status_code=404)
        return self._picture(path, layout.root)

    def _picture(self, path: Path, boundary: Path, sha256: str = "") -> Response:
        """A thumbnail of ``path``, read through no symlink below the dataset's folder ``boundary``."""
        data = self.thumbnails.get(path, sha256, boundary)
        if data is None:
            return PlainTextResponse("no picture", status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    # --- actions ---------------------------------------------------------------------
    async def file(self, request: Request) -> Response:
        """File one entry (the recent page's "move to…"), or, without an id, the form's ``entry`` ids."""
        form = await request.form()
        label = form.get("label")
        if "entry" in request.path_params:
            entries = [int(request.path_params["entry"])]
        else:
            entries = [
                int(value) for value in form.getlist("entry") if isinstance(value, str) and value.isdigit()
            ]
        if not isinstance(label, str) or not label:
            return self.render("message.html", 400, message="which class? (no class chosen)")
        if not entries:
            return self.render("message.html", 400, message="which file? (no card chosen)")
        return await run_in_threadpool(self._acted, lambda: self.actions.file(entries, label))

    def undo(self, request: Request) -> Response:
        return self._acted(self.actions.undo_last)

    def revert(self, request: Request) -> Response:
        entry_id = int(request.path_params["entry"])
        return self._acted(lambda: [self.actions.revert(entry_id)])

    def _acted(self, action: Callable[[], list[Done]]) -> Response:
        """Run ``action``; each entry's card as it now stands (a refusal noted on its card).

        ``X-Clipsort-Entries`` names the cards, so the page replaces each and counts what is left.
        """
        try:
            done = action()
        except ActionError as exc:
            return self.render("message.html", http_status(exc), message=str(exc))
        pages = [
            self.templates.get_template("card.html").render(
                card=self.library.card(item.entry_id),
                note=item.note,
                error=bool(item.error),
                entry_id=item.entry_id,
                negatives=NEGATIVES_DIR,
            )
            for item in done
        ]
        failed = [item.error for item in done if item.error]
        status = failed[0] if failed and len(failed) == len(done) else 200
        response = HTMLResponse("".join(pages), status_code=status)
        response.headers["HX-Trigger"] = "clipsort-acted"
        response.headers["X-Clipsort-Entries"] = ",".join(str(item.entry_id) for item in done)
        return response


def create_app(
    settings: Settings,
    token: str | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    login_wait: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Starlette:
    """The review page's app for ``settings`` served at ``host``:``port`` (default web_host, web_port).

    ``token``: what a non-loopback page asks for. Requests must name that address, a loopback name
    on that port, or one of ``web_allowed_hosts`` (see :mod:`clipsort.web.security`). ``login_wait``:
    how a failed login waits out its growing delay (see :meth:`Guard.failed_login`).
    """
    hosts = allowed_hosts(host or settings.web_host, port or settings.web_port, settings.web_allowed_hosts)
    guard = Guard(token, hosts, settings.web_session_hours * 3600, login_wait)
    pages = Pages(settings, guard)
    routes = [
        Route("/", pages.overview),
        Route("/review", pages.review),
        Route("/recent", pages.recent),
        Route("/classes", pages.classes),
        Route("/login", pages.login, methods=["GET", "POST"]),
        Route("/thumb/entry/{entry:int}", pages.entry_thumbnail),
        Route("/thumb/reference/{dataset}/{label}/{number:int}", pages.reference_thumbnail),
        Route("/entries/file", pages.file, methods=["POST"]),
        Route("/entries/{entry:int}/file", pages.file, methods=["POST"]),
        Route("/entries/{entry:int}/revert", pages.revert, methods=["POST"]),
        Route("/undo", pages.undo, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        pages.close()

    app = Starlette(
        routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)], lifespan=lifespan
    )
    app.state.pages = pages
    return app
