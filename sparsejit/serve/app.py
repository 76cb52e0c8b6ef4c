"""The FastAPI application: ``create_app(config)``.

Routers per concern (health, models, metrics, inference); shared state (:class:`ServerState`) on
``app.state`` reached through dependencies; compile starts in the background at startup so liveness
answers at once and readiness turns 200 when every model is compiled; shutdown lets queued and running
requests finish. ``/docs`` is served from the ``swagger-ui-bundle`` package's files (no CDN) when it is
installed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

import sparsejit
from sparsejit.serve.config import ServerConfig
from sparsejit.serve.middleware import BodySizeLimit, InferenceMetrics
from sparsejit.serve.routers import health, inference, metrics, models, openai_compat, tei
from sparsejit.serve.state import PipelineFactory, ServerState, build_pipeline

__all__ = ["create_app"]

logger = logging.getLogger("sparsejit.serve")


def _swagger_dir() -> Path | None:
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    path = Path(swagger_ui_bundle.swagger_ui_path)
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def _add_docs(app: FastAPI) -> None:
    """``/docs`` from local Swagger UI files; without swagger-ui-bundle, FastAPI's CDN page."""
    assets = _swagger_dir()
    if assets is None:
        logger.warning("swagger-ui-bundle is not installed: /docs loads Swagger UI from a CDN")
        app.add_api_route("/docs", lambda: get_swagger_ui_html(openapi_url="/openapi.json",
                                                              title="sparsejit API"),
                          include_in_schema=False, response_class=HTMLResponse)
        return
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="sparsejit API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    app.add_api_route("/docs", docs, include_in_schema=False, response_class=HTMLResponse)


def create_app(config: ServerConfig, pipeline_factory: PipelineFactory | None = None) -> FastAPI:
    """Build the server app for ``config`` (endpoints are compiled when the app starts).

    ``pipeline_factory(endpoint_config, server_config)`` builds each pipeline; the default is
    ``Pipeline.create`` with the endpoint's options.
    """
    config = config.with_default_endpoint()
    state = ServerState(config, pipeline_factory or build_pipeline)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="sparsejit", version=sparsejit.__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="Transformer inference on CPU kernels compiled by sparsejit. Endpoints: "
                              + ", ".join(f"`{n}` ({e.pipeline_class.task})"
                                          for n, e in state.endpoints.items()))
    app.state.sparsejit = state
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(metrics.router)
    app.include_router(inference.inference_router(state))
    app.include_router(openai_compat.router)
    app.include_router(tei.router)
    _add_docs(app)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        logger.error("internal error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal server error", "error_id": error_id}, status_code=500)

    routes = {inference.infer_path(name): name for name in state.endpoints}
    if len(state.endpoints) == 1:
        routes["/predict"] = next(iter(state.endpoints))
    app.add_middleware(InferenceMetrics, metrics=state.metrics, routes=routes)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    return app
