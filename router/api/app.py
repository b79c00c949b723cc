"""The composition root: the one place adapters, scorers and the service are wired together."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI

from router.adapters.backend import AiohttpBackend
from router.adapters.discovery import discover_model
from router.adapters.scorers import LengthScorer
from router.api.errors import install_error_handlers
from router.api.routes import build_router
from router.api.state import GatewayState
from router.core.ports import Scorer
from router.core.types import Worker
from router.service import RoutingService
from router.settings import Settings

__all__ = ["build_scorer", "create_app", "resolve_workers"]


def resolve_workers(settings: Settings) -> list[Worker]:
    """Workers with their served model names, asking a worker when the config leaves `model` out."""
    wait = settings.server.discover_timeout
    resolved = []
    for ws in settings.workers:
        model = ws.model
        if model is None:
            key = ws.to_worker("?").api_key
            model = discover_model(ws.base_url, wait=wait, api_key=key)
        resolved.append(ws.to_worker(model))
    return resolved


def build_scorer(settings: Settings) -> Scorer:
    routing = settings.routing
    if routing.scorer == "length":
        return LengthScorer(routing.length_midpoint)
    raise NotImplementedError(f"scorer {routing.scorer!r}")


def _models_body(service: RoutingService, workers: Sequence[Worker]) -> bytes:
    created = int(time.time())
    owners = {w.model: w.name for w in workers}
    data = [
        {"id": mid, "object": "model", "created": created, "owned_by": owners.get(mid, "llm-triage")}
        for mid in service.model_ids()
    ]
    return orjson.dumps({"object": "list", "data": data})


def create_app(
    settings: Settings,
    *,
    workers: Sequence[Worker] | None = None,
    scorer: Scorer | None = None,
) -> FastAPI:
    workers = list(workers) if workers is not None else resolve_workers(settings)
    backend = AiohttpBackend()
    service = RoutingService(
        workers,
        alias=settings.routing.alias,
        threshold=settings.routing.threshold,
        scorer=scorer or build_scorer(settings),
        backend=backend,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await backend.start()
        try:
            yield
        finally:
            await backend.close()

    app = FastAPI(title="llm-triage", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.triage = GatewayState(
        service=service,
        backend=backend,
        max_body_bytes=settings.server.max_body_bytes,
        models_body=_models_body(service, workers),
    )
    install_error_handlers(app)
    app.include_router(build_router())
    return app
