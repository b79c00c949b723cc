"""The composition root: the one place adapters, scorers and the service are wired together."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI

import classifiers
from router.adapters.backend import AiohttpBackend
from router.adapters.discovery import discover_model
from router.adapters.scorers import LengthScorer
from router.api.errors import install_error_handlers
from router.api.routes import build_router
from router.api.state import GatewayState
from router.core.ports import Scorer
from router.core.types import Worker
from router.errors import ConfigError
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


def build_scorer(settings: Settings) -> tuple[Scorer, float]:
    """The configured scorer and the threshold to use with it (the config's, else the scorer's own)."""
    routing = settings.routing
    if routing.scorer == "length":
        return LengthScorer(routing.length_midpoint), 0.5 if routing.threshold is None else routing.threshold
    try:
        model = classifiers.load(routing.classifier_path)
    except classifiers.ClassifierFileError as exc:
        raise ConfigError(f"routing.classifier_path: {exc}") from None
    suggested = model.meta.get("suggested_threshold", 0.5)
    return model, float(suggested) if routing.threshold is None else routing.threshold


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
    if scorer is None:
        scorer, threshold = build_scorer(settings)
    else:
        threshold = 0.5 if settings.routing.threshold is None else settings.routing.threshold
    service = RoutingService(workers, alias=settings.routing.alias, threshold=threshold, scorer=scorer, backend=backend)

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
