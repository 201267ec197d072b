"""The web view's routes: server-rendered HTML pages over a store, read-only (GET only), with no scripts and no
assets from elsewhere.

    /                       the models table (filter, sort and page through query parameters)
    /names/NAME             the lineage graph of a name's versions
    /lineage/MODEL_ID       the lineage graph of the version tree a model belongs to
    /version/MODEL_ID       a version: metadata, environment, lineage, sizes, changes against its base
    /diff?a=REF&b=REF       what differs between two models (`values=1`: recover both and measure the changes)

Pages take any reference where they take a model (`/version/detector:v3`) and redirect to the URL with the full
model id, so the links a page shows and the ones people paste stay valid. A page that meets damage shows it; an
error renders a page with a status that says what went wrong (404 for an unknown reference), never a traceback.
"""

import logging
import os
from typing import Awaitable, Callable, Optional, Sequence

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mmlib import __version__, maintenance
from mmlib.errors import (BlobNotFoundError, IntegrityError, InvalidArgumentError, InvalidIdError, MMLibError,
                          NotFoundError, StoreUnavailableError)
from mmlib.model_diff import diff
from mmlib.persistence.store import Store, checked_store
from mmlib.schema.store_type import APPROACHES
from mmlib.ui import data, graph
from mmlib.util.table import human_size, short_time

logger = logging.getLogger(__name__)

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
# No scripts, nothing from other origins, forms only to this server; no referrer leaves the page.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# The status of the page an error gives (the first class the error is an instance of): a missing blob is damage, not
# an unknown reference.
ERROR_STATUS = ((IntegrityError, 422), (BlobNotFoundError, 422), (NotFoundError, 404), (InvalidIdError, 400),
                (InvalidArgumentError, 400), (StoreUnavailableError, 503), (MMLibError, 422))
TRUE_VALUES = ("1", "true", "on", "yes")

Page = Callable[[Request], Awaitable[Response]]


def _templates() -> Environment:
    """The page templates, every value escaped for HTML unless a template says otherwise (none does)."""
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                              trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(size=lambda value: "-" if value is None else human_size(value), time=short_time,
                               short=lambda model_id: model_id[:maintenance.ABBREVIATED], figure=_figure,
                               approach=lambda store_type: APPROACHES.get(store_type, store_type))
    environment.globals.update(version=__version__, approaches=sorted(set(APPROACHES.values())))
    return environment


def _figure(value: Optional[float]) -> str:
    """A measured change for a table cell: four significant digits, "-" when there is none."""
    return "-" if value is None else f"{value:.4g}"


class _HostCheck:
    """Refuse requests whose Host header names another host than `allowed` (a page served on localhost must not
    answer a page of another site that a DNS name re-pointed at 127.0.0.1)."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]):
        self.app, self.allowed = app, set(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
            if name not in self.allowed:
                await HTMLResponse("unknown host: open this page through the URL `mmlib ui` printed",
                                   status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(store: Store, *, title: str = "mmlib store", allowed_hosts: Optional[Sequence[str]] = None
               ) -> Starlette:
    """The web view of `store` as an ASGI app (serve it with uvicorn, or test it with starlette's TestClient).

    `title` heads every page; with `allowed_hosts`, requests for any other Host are refused (see `mmlib ui`).
    """
    store = checked_store(store)
    templates = _templates()

    def render(template: str, status: int = 200, **values: object) -> HTMLResponse:
        return HTMLResponse(templates.get_template(template).render(title=title, **values), status_code=status,
                            headers=SECURITY_HEADERS)

    def error_page(error: Exception, status: int) -> HTMLResponse:
        return render("error.html", status, code=status, message=str(error), kind=type(error).__name__)

    def page(handler: Callable[[Request], Response]) -> Page:
        """A route that renders `handler`'s page (in a worker thread: the store's reads block), or a page that
        says what went wrong."""
        async def endpoint(request: Request) -> Response:
            try:
                return await run_in_threadpool(handler, request)
            except MMLibError as error:
                status = next(code for kind, code in ERROR_STATUS if isinstance(error, kind))
                return error_page(error, status)
            except Exception as error:  # a page for any failure, never a traceback to the browser
                logger.exception("the web view failed on %s", request.url.path)
                return error_page(error, 500)
        return endpoint

    def models(request: Request) -> Response:
        query = data.TableQuery.from_params(request.query_params)
        return render("models.html", table=data.table_page(store, query))

    def name_lineage(request: Request) -> Response:
        name = request.path_params["name"]
        return render("lineage.html", heading=f"Lineage of {name}", name=name,
                      lineage=_graph(data.name_lineage(store, name)))

    def model_page(path: str, show: Callable[[str], Response]) -> Callable[[Request], Response]:
        """The page `show(model_id)` renders at /PATH/MODEL_ID: any other reference redirects to the URL with the
        full id; a model whose own document cannot be read shows as damaged."""
        def handler(request: Request) -> Response:
            reference = request.path_params["ref"]
            model_id = maintenance.resolve_model_id(store, reference)
            if model_id != reference:
                return RedirectResponse(f"/{path}/{model_id}", status_code=302)
            try:
                return show(model_id)
            except IntegrityError as error:
                return render("damaged.html", entry=data.damaged_version(store, model_id, error))
        return handler

    def model_lineage(model_id: str) -> Response:
        return render("lineage.html", heading=f"Version tree of {model_id[:maintenance.ABBREVIATED]}", name=None,
                      lineage=_graph(data.model_lineage(store, model_id), model_id))

    def version(model_id: str) -> Response:
        shown = data.version_page(store, model_id)
        return render("version.html", page=shown, size_rows=maintenance.size_rows(shown.details.sizes))

    def compare(request: Request) -> Response:
        old, new = (request.query_params.get(key, "").strip() for key in ("a", "b"))
        if not old or not new:
            raise InvalidArgumentError("a diff needs two models: /diff?a=REF&b=REF (ids, unique prefixes, NAME, "
                                       "NAME:vN or NAME:ALIAS)")
        values = request.query_params.get("values", "").lower() in TRUE_VALUES
        result = diff(old, new, store, values=values)
        labels = {model_id: data.entry_label(store, model_id) for model_id in (result.old_id, result.new_id)}
        return render("diff.html", result=result, labels=labels, a=old, b=new)

    async def not_found(request: Request, error: Exception) -> Response:
        status = error.status_code if isinstance(error, HTTPException) else 404
        return error_page(NotFoundError(f"there is no page at {request.url.path}: start from the models table at /"),
                          status)

    app = Starlette(routes=[Route("/", page(models)), Route("/names/{name}", page(name_lineage)),
                            Route("/lineage/{ref}", page(model_page("lineage", model_lineage))),
                            Route("/version/{ref}", page(model_page("version", version))),
                            Route("/diff", page(compare))],
                    exception_handlers={404: not_found})
    if allowed_hosts is not None:
        app.add_middleware(_HostCheck, allowed=allowed_hosts)
    return app


def _graph(lineage: data.Lineage, focus: Optional[str] = None) -> dict:
    """What the lineage template draws: the laid-out graph and the damage met on the way."""
    return {"graph": graph.layout(lineage.entries, focus), "damage": lineage.damage}
