"""The gateway's exception tree. The service raises these; only the API edge turns them into HTTP.

    TriageError                       status  type                      code
    ├── InvalidRequest                400     invalid_request_error     invalid_request / <given>
    ├── AuthenticationFailed          401     authentication_error      invalid_api_key
    ├── PermissionDenied              403     permission_error          model_not_allowed
    ├── ModelNotFound                 404     invalid_request_error     model_not_found
    ├── PayloadTooLarge               413     invalid_request_error     request_too_large
    ├── RateLimited                   429     rate_limit_error          rate_limit_exceeded
    │   └── BudgetExceeded            429     insufficient_quota        budget_exceeded
    ├── LimiterUnavailable            503     server_error              rate_limiter_unavailable
    ├── LimiterFailed                 503     server_error              rate_limiter_error
    ├── Overloaded                    503     server_error              overloaded / shutting_down
    ├── UpstreamTooLarge              502     server_error              upstream_response_too_large
    └── UpstreamError                 5xx     server_error
        ├── UpstreamFailed            502     server_error              upstream_error
        ├── UpstreamUnavailable       503     server_error              upstream_unavailable
        └── UpstreamTimeout           504     server_error              upstream_timeout

`ConfigError` is separate: it stops a start, it never reaches a client.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "BudgetExceeded",
    "ConfigError",
    "InvalidRequest",
    "LimiterFailed",
    "LimiterUnavailable",
    "ModelNotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "TriageError",
    "UpstreamError",
    "UpstreamFailed",
    "UpstreamTimeout",
    "UpstreamTooLarge",
    "UpstreamUnavailable",
]


class TriageError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(TriageError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(TriageError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(TriageError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class ModelNotFound(TriageError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(TriageError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(TriageError):
    """Carries the rate-limit headers (Retry-After, x-ratelimit-*) the edge must send."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers


class BudgetExceeded(RateLimited):
    """A spend budget is used up. 429 with OpenAI's own type for an exhausted quota (`insufficient_quota`), so
    clients that already handle OpenAI's quota errors handle this one."""

    type = "insufficient_quota"
    code = "budget_exceeded"


class LimiterUnavailable(TriageError):
    """The limiter's store (Redis) did not answer in time; a fail-closed tier refuses the request."""

    status = 503
    type = "server_error"
    code = "rate_limiter_unavailable"


class LimiterFailed(TriageError):
    """The limiter's store answered with an error (not an outage): the request is refused whatever the tier's
    on_limiter_error says, since admitting on a fault would bypass the limits."""

    status = 503
    type = "server_error"
    code = "rate_limiter_error"


class Overloaded(TriageError):
    """The gateway sheds load: too many requests are already waiting for admission. Carries Retry-After."""

    status = 503
    type = "server_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.headers = {"retry-after": str(retry_after)}


class UpstreamTooLarge(TriageError):
    """A worker's answer outgrew max_response_bytes. Not an UpstreamError: another replica would generate the
    same oversized answer, so there is no failover."""

    status = 502
    type = "server_error"
    code = "upstream_response_too_large"


class UpstreamError(TriageError):
    """A worker could not give an answer. `worker` names it for logs and headers."""

    status = 502
    type = "server_error"
    code = "upstream_error"

    def __init__(self, message: str, *, worker: str, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.worker = worker


class UpstreamFailed(UpstreamError):
    status = 502
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ConfigError(Exception):
    """A configuration that cannot start; the message names the file, line and key."""
