"""What the routes need from the composition root, typed; kept on `app.state.triage`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request

from router.api.auth import Authenticator
from router.api.policy_files import PolicySource
from router.core.ports import Backend
from router.service.coordinator import RoutingService

__all__ = ["GatewayState", "MetricsView", "PolicyInfo", "gateway"]


class MetricsView(Protocol):
    @property
    def content_type(self) -> str: ...

    def render(self) -> bytes: ...


class PolicyInfo(Protocol):
    @property
    def source(self) -> PolicySource: ...


@dataclass(frozen=True, slots=True)
class GatewayState:
    service: RoutingService
    backend: Backend
    auth: Authenticator
    metrics: MetricsView
    max_body_bytes: int
    models_body: bytes  # GET /v1/models never changes while running: encoded once
    policy_files: PolicyInfo | None = None  # where the routing policy in use came from (/ready)


def gateway(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.triage
    return state
