"""What the routes need from the composition root, typed; kept on `app.state.triage`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request

from router.api.auth import Authenticator
from router.core.ports import Backend
from router.service import RoutingService

__all__ = ["GatewayState", "MetricsView", "gateway"]


class MetricsView(Protocol):
    def render(self) -> str: ...


@dataclass(frozen=True, slots=True)
class GatewayState:
    service: RoutingService
    backend: Backend
    auth: Authenticator
    metrics: MetricsView
    max_body_bytes: int
    models_body: bytes  # GET /v1/models never changes while running: encoded once


def gateway(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.triage
    return state
