"""Ask workers which model they serve (GET /v1/models), waiting for them to come up at start."""

from __future__ import annotations

import time

import httpx

from router.errors import ConfigError

__all__ = ["discover_model"]


def discover_model(base_url: str, *, wait: float, api_key: str | None = None) -> str:
    """The first model id the worker lists; retried until `wait` seconds have passed."""
    deadline = time.monotonic() + wait
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    last = "no answer"
    while True:
        try:
            response = httpx.get(f"{base_url}/models", headers=headers, timeout=3.0)
            if response.status_code == 200:
                data = response.json().get("data") or []
                if data and isinstance(data[0], dict) and data[0].get("id"):
                    return str(data[0]["id"])
                last = "it lists no model"
            else:
                last = f"status {response.status_code}"
        except (httpx.HTTPError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise ConfigError(
                f"cannot learn the served model of {base_url} ({last}); "
                "start the worker first, or set the worker's `model` in the config"
            )
        time.sleep(0.5)
