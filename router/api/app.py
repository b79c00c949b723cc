"""The app: the edge, its routes and its state, over the parts `router.api.wiring` builds and runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

import router
from router.api.edge import Edge
from router.api.errors import install_error_handlers
from router.api.openapi import install_openapi
from router.api.routes import build_router, generation_routes
from router.api.state import GatewayState
from router.api.wiring import ShutdownClock, running, wire
from router.core.ports import Scorer
from router.core.types import Worker
from router.settings import Settings

__all__ = ["create_app"]


def create_app(
    settings: Settings,
    *,
    workers: Sequence[Worker] | None = None,
    scorer: Scorer | None = None,
) -> FastAPI:
    wiring = wire(settings, workers, scorer)
    shutdown = ShutdownClock()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with running(wiring, shutdown):
            yield

    # No slash redirects: a 307 built from the Host header is an open redirect, and SDKs never add the slash.
    app = Edge(
        direct=generation_routes(),
        title="llm-triage",
        version=router.__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.shutdown = shutdown
    app.state.triage = GatewayState(
        service=wiring.service,
        backend=wiring.backend,
        auth=wiring.auth,
        metrics=wiring.metrics,
        max_body_bytes=settings.server.max_body_bytes,
        models_body=wiring.models_body(),
        policy_files=wiring.policy_files,
    )
    install_error_handlers(app)
    app.include_router(build_router())
    install_openapi(app)
    return app
