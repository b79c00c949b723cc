"""Typed configuration: built once at start (YAML file, flags, embedded defaults) and passed in explicitly.

A bad file stops the start with a message that names the file, the line and the key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from router.core.types import Prices, Role, Worker
from router.errors import ConfigError
from router.protocol import MAX_N

__all__ = [
    "AuthSettings",
    "BalancingSettings",
    "CacheSettings",
    "CascadeSettings",
    "KeySettings",
    "LedgerSettings",
    "LimitsSettings",
    "RoutingSettings",
    "ServerSettings",
    "Settings",
    "ShadowSettings",
    "TierSettings",
    "WorkerSettings",
    "load_settings",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkerSettings(_Strict):
    name: str = Field(min_length=1)
    role: Role
    # openai: an OpenAI-compatible server such as vLLM, called directly. litellm: a hosted API called through
    # litellm (`pip install llm-triage[hosted]`), named by provider_model.
    provider: Literal["openai", "litellm"] = "openai"
    provider_model: str | None = None  # litellm's model string, e.g. "openai/gpt-4o"
    base_url: str | None = None  # required for openai; for litellm, unset means the provider's own address
    model: str | None = None  # served model name; asked from the worker's /v1/models when omitted
    # USD per million tokens. Unset: 0 for an openai worker; litellm's price table for a litellm worker.
    price_input: float | None = Field(default=None, ge=0)
    price_output: float | None = Field(default=None, ge=0)
    timeout: float = Field(default=120.0, gt=0)
    connect_timeout: float = Field(default=3.0, gt=0)
    api_key_env: str | None = None  # name of the environment variable holding the worker's key
    # A non-streamed answer larger than this is dropped while it is read, and the caller gets a 502 saying so
    # (the gateway never holds more than this of one answer). Streams pass through chunk by chunk, unbounded.
    max_response_bytes: int = Field(default=32 * 1024 * 1024, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _provider_fields(self) -> WorkerSettings:
        if self.provider == "openai" and not self.base_url:
            raise ValueError("base_url is required for a worker with provider openai")
        if self.provider == "litellm" and not self.provider_model:
            raise ValueError("provider_model is required for a worker with provider litellm (e.g. openai/gpt-4o)")
        return self

    def to_worker(self, model: str | None = None, prices: Prices | None = None) -> Worker:
        served = model or self.model or (self.provider_model if self.provider == "litellm" else None)
        if not served:
            raise ConfigError(f"worker {self.name!r}: served model name unknown (set `model`)")
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        listed = prices or Prices()
        return Worker(
            name=self.name,
            role=self.role,
            base_url=self.base_url or "",
            model=served,
            prices=Prices(
                listed.input if self.price_input is None else self.price_input,
                listed.output if self.price_output is None else self.price_output,
            ),
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            api_key=key,
            provider=self.provider,
            provider_model=self.provider_model,
            max_response_bytes=self.max_response_bytes,
        )


class ShadowSettings(_Strict):
    """Shadow pairs: for a sampled share of routed requests the other model answers too, after and apart from
    the caller's answer (never counted against the caller's limits), and both answers are stored for labelling
    (`triage label`). Stores prompts and answers: needs ledger.store_prompts."""

    rate: float = Field(default=0.0, ge=0, le=1)  # share of routed, non-streamed requests (0: off)
    tiers: list[str] = []  # tiers shadowed (empty: all)
    max_per_minute: int = Field(default=60, gt=0)  # per gateway process
    max_in_flight: int = Field(default=4, gt=0)  # more are dropped, as they are when the gateway is busy


class RoutingSettings(_Strict):
    alias: str = Field(default="auto", min_length=1)  # the model name that asks for routing
    # score >= threshold -> large model; unset: the classifier's suggested threshold (0.5 for `length`)
    threshold: float | None = Field(default=None, ge=0, le=1)
    # Share target: the share of routed requests sent to the large model, held whatever the traffic's score
    # level by a threshold that moves with the recent scores (a quantile of the last `target_window`; shared by
    # replicas through Redis when limits use Redis). Unset: the threshold decides, and the share follows.
    target_large_share: float | None = Field(default=None, gt=0, lt=1)
    target_window: int = Field(default=1000, ge=10, le=100_000)  # recent routed scores the quantile is over
    target_min_scores: int = Field(default=100, ge=1)  # fewer in the window: the suggested threshold applies
    target_refresh: float = Field(default=0.5, gt=0, le=60)  # seconds between a replica's syncs with Redis
    scorer: Literal["classifier", "length"] = "classifier"
    classifier_path: Path | None = None  # unset: the classifier shipped with llm-triage
    length_midpoint: int = Field(default=400, gt=0)  # length scorer: characters that score 0.5
    shadow: ShadowSettings = ShadowSettings()
    # A later turn of a conversation: escalate_only keeps it on the large model once a turn was answered there;
    # sticky keeps the first turn's model; per_turn routes every turn by its own score.
    conversation: Literal["per_turn", "sticky", "escalate_only"] = "escalate_only"
    conversation_ttl: float = Field(default=3600, gt=0)  # seconds a conversation is remembered after its last write
    conversation_max: int = Field(default=100_000, gt=0)  # conversations remembered (in process, or in Redis)

    @field_validator("target_large_share")
    @classmethod
    def _target_or_threshold(cls, value: float | None, info: ValidationInfo) -> float | None:
        return _one_of_threshold_or_target(value, info, "routing.")

    @model_validator(mode="after")
    def _window_fills(self) -> RoutingSettings:
        if self.target_min_scores > self.target_window:
            raise ValueError(
                f"target_min_scores ({self.target_min_scores}) exceeds target_window ({self.target_window}): "
                "the window would never hold enough scores to move the threshold"
            )
        return self


def _one_of_threshold_or_target(value: float | None, info: ValidationInfo, where: str) -> float | None:
    """A fixed threshold and a share target cannot both hold: refused at start, naming both keys."""
    if value is not None and info.data.get("threshold") is not None:
        raise ValueError(
            f"{where}threshold and {where}target_large_share are both set: a fixed threshold leaves the share to "
            "the traffic's scores, a target moves the threshold to hold the share; keep one"
        )
    return value


class BalancingSettings(_Strict):
    """How a request picks among replicas of one model, and when a failing replica is set aside."""

    policy: Literal["least_outstanding", "round_robin"] = "least_outstanding"
    # Requests of one conversation go to the same replica (its prefix cache then hits), unless that replica
    # carries more than affinity_load_factor times its share of the requests in flight.
    prefix_affinity: bool = True
    affinity_load_factor: float = Field(default=1.25, ge=1)
    breaker_failures: int = Field(default=3, ge=1)  # consecutive failures that open a worker's breaker
    breaker_cooldown: float = Field(default=5.0, gt=0)  # seconds before one probe request is let through


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=9000, ge=1, le=65535)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    # The request line plus headers; past it the connection gets 431 and is closed (nothing is buffered).
    max_header_bytes: int = Field(default=32_768, ge=1024)
    head_timeout: float = Field(default=10.0, gt=0)  # seconds to receive a request's line and headers
    body_timeout: float = Field(default=30.0, gt=0)  # seconds to receive a request's whole body
    keep_alive_timeout: int = Field(default=5, ge=1)  # seconds an idle keep-alive connection stays open
    # Requests waiting for the rate limiter at once; past it, 503 with Retry-After (the gateway sheds load).
    max_pending_admissions: int = Field(default=512, gt=0)
    graceful_shutdown_timeout: int = Field(default=30, ge=0)  # seconds in-flight requests get on SIGTERM
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = False
    discover_timeout: float = Field(default=60.0, ge=0)  # seconds to wait for workers at start
    # Under --workers N: seconds between copies of each process's read metrics (queue depth, limiter errors...)
    # into the files that /metrics sums; request counters are written at once.
    metrics_refresh: float = Field(default=1.0, gt=0, le=60)


class TierSettings(_Strict):
    """A class of callers. Every limit is per caller (API key, or client address for anonymous); 0 = none."""

    requests_per_minute: int = Field(default=0, ge=0)
    tokens_per_minute: int = Field(default=0, ge=0)  # prompt + completion, reserved at admission
    daily_requests: int = Field(default=0, ge=0)
    daily_tokens: int = Field(default=0, ge=0)
    max_concurrent: int = Field(default=0, ge=0)
    max_tokens: int = Field(default=0, ge=0)  # caps a request's max_tokens (and sets it when absent)
    max_n: int = Field(default=16, ge=1, le=MAX_N)  # most choices (`n`) one request may ask for; more is a 400
    max_body_bytes: int = Field(default=0, ge=0)  # 0: server.max_body_bytes
    conversation: Literal["per_turn", "sticky", "escalate_only"] | None = None  # None: routing.conversation
    models: list[Role] = Field(default=[Role.SMALL, Role.LARGE], min_length=1)  # model sizes it may reach
    threshold: float | None = Field(default=None, ge=0, le=1)  # unset: routing.threshold
    # unset: routing.target_large_share, unless this tier sets a threshold; held over this tier's own window
    target_large_share: float | None = Field(default=None, gt=0, lt=1)
    on_limiter_error: Literal["open", "closed"] = "open"  # Redis unreachable: admit, or refuse with 503
    lease_ttl: float = Field(default=600.0, gt=0)  # seconds a request may hold a concurrency slot
    cache: bool = True  # temperature-0 requests may be answered from the response cache (per tier)
    # route: the classifier picks the model. cascade: the small model drafts every routed non-streamed
    # request and the large model answers when the draft looks unreliable (streams are routed as in `route`).
    mode: Literal["route", "cascade"] = "route"

    @field_validator("target_large_share")
    @classmethod
    def _target_or_threshold(cls, value: float | None, info: ValidationInfo) -> float | None:
        return _one_of_threshold_or_target(value, info, "")


class KeySettings(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # `triage keys hash KEY` prints it; keys are never stored
    tier: str
    name: str | None = None


class AuthSettings(_Strict):
    keys: list[KeySettings] = []
    # A YAML file with more keys (a list of {sha256, tier, name}), read at start and added to `keys`: a
    # Kubernetes Secret mounted as a file keeps the key hashes out of the ConfigMap. Relative to the config.
    keys_file: Path | None = None
    anonymous_tier: str = "anonymous"  # callers without a key
    trusted_proxies: list[str] = []  # CIDRs whose X-Forwarded-For is believed
    # Key for the HMAC that stands in for client addresses in Redis key names and the ledger. Unset: env
    # TRIAGE_IDENTITY_SECRET, else one created on first start and kept (in Redis when limits use Redis, so
    # replicas share it; else in identity_secret_path).
    identity_secret: str | None = Field(default=None, min_length=16)
    identity_secret_path: Path = Path(".triage/identity.key")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value


class LimitsSettings(_Strict):
    redis_url: str | None = None  # unset: in-process limits (per replica); env TRIAGE_REDIS_URL overrides
    # Seconds Redis may stay silent before a tier's on_limiter_error applies. Only silence counts: time the
    # gateway's own event loop was too busy to read a reply never does (connection refused or reset count at
    # once). A Redis error reply (not an outage) always refuses the request.
    redis_timeout: float = Field(default=0.1, gt=0)
    key_prefix: str = "triage"


class CascadeSettings(_Strict):
    """When a cascade tier escalates the small model's draft to the large model."""

    # geometric mean of the draft's token probabilities below this escalates (0: confidence is not used)
    min_confidence: float = Field(default=0.5, ge=0, le=1)
    escalate_on_length: bool = True  # a draft cut off by max_tokens escalates
    # An answer scorer reads (prompt, draft): `none`, `default` (shipped, trained on GSM8K math answers),
    # or a path to one trained with `triage classifier train --answers`.
    answer_scorer: str = "none"
    answer_threshold: float | None = Field(default=None, ge=0, le=1)  # unset: the scorer's suggested one


class CacheSettings(_Strict):
    """Exact response cache for deterministic requests (temperature 0, one choice, not streamed)."""

    enabled: bool = True
    # auto: Redis when limits use Redis (replicas share answers), else this process's memory
    backend: Literal["auto", "memory", "redis"] = "auto"
    ttl: float = Field(default=300.0, gt=0)  # seconds an answer is served from the cache
    max_entries: int = Field(default=10_000, gt=0)  # memory backend only; Redis evicts by its own policy


class LedgerSettings(_Strict):
    enabled: bool = True
    # auto: a Redis stream when limits use Redis (replicas share it), else SQLite at `path`
    backend: Literal["auto", "sqlite", "redis"] = "auto"
    path: Path = Path(".triage/ledger.sqlite")  # `triage analytics` reads this one by default
    stream: str = "triage:decisions"  # Redis stream (read with `triage analytics --ledger redis://...`)
    maxlen: int = Field(default=1_000_000, gt=0)  # the stream is trimmed to about this many records
    store_prompts: bool = False  # prompts are not recorded unless turned on
    # labelled shadow pairs (`triage label --out`): the gateway reads them for the quality gauge in /metrics
    outcomes: Path = Path(".triage/outcomes.jsonl")


class Settings(_Strict):
    server: ServerSettings = ServerSettings()
    routing: RoutingSettings = RoutingSettings()
    balancing: BalancingSettings = BalancingSettings()
    workers: list[WorkerSettings] = Field(min_length=1)
    tiers: dict[str, TierSettings] = Field(default_factory=lambda: {"anonymous": TierSettings()})
    auth: AuthSettings = AuthSettings()
    limits: LimitsSettings = LimitsSettings()
    ledger: LedgerSettings = LedgerSettings()
    cache: CacheSettings = CacheSettings()
    cascade: CascadeSettings = CascadeSettings()

    @model_validator(mode="after")
    def _tiers_exist(self) -> Settings:
        for name, tier in self.tiers.items():
            if tier.mode == "cascade" and set(tier.models) != {Role.SMALL, Role.LARGE}:
                raise ValueError(f"tier {name!r}: mode cascade needs models [small, large]")
            if tier.target_large_share is not None and (tier.mode == "cascade" or len(set(tier.models)) < 2):
                raise ValueError(
                    f"tiers.{name}.target_large_share: the tier routes nothing by score (mode {tier.mode}, models "
                    f"{[str(m) for m in tier.models]}); a share target needs mode route and models [small, large]"
                )
        if self.auth.anonymous_tier not in self.tiers:
            raise ValueError(
                f"auth.anonymous_tier {self.auth.anonymous_tier!r} is not one of tiers: {list(self.tiers)}"
            )
        unknown = set(self.routing.shadow.tiers) - set(self.tiers)
        if unknown:
            raise ValueError(f"routing.shadow.tiers names {sorted(unknown)}, not in {list(self.tiers)}")
        if self.routing.shadow.rate and not (self.ledger.enabled and self.ledger.store_prompts):
            raise ValueError(
                "routing.shadow stores prompts and both answers beside the ledger: it needs ledger.enabled and "
                "ledger.store_prompts: true"
            )
        for key in self.auth.keys:
            if key.tier not in self.tiers:
                raise ValueError(
                    f"key {key.name or key.sha256[:8]!r} names tier {key.tier!r}, not in {list(self.tiers)}"
                )
        return self

    @field_validator("workers")
    @classmethod
    def _roles_and_names(cls, workers: list[WorkerSettings]) -> list[WorkerSettings]:
        names = [w.name for w in workers]
        if len(set(names)) != len(names):
            raise ValueError(f"worker names must be unique, got {names}")
        if {w.role for w in workers} != {Role.SMALL, Role.LARGE}:
            raise ValueError("need at least one worker with role small and one with role large")
        return workers

    @classmethod
    def local(cls, small: str = "http://127.0.0.1:8001/v1", large: str = "http://127.0.0.1:8002/v1") -> Settings:
        """Embedded defaults: two local workers whose served names are discovered at start."""
        return cls(
            workers=[
                WorkerSettings(name="small", role=Role.SMALL, base_url=small),
                WorkerSettings(name="large", role=Role.LARGE, base_url=large),
            ]
        )


def load_settings(path: Path) -> Settings:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the config must be a mapping of sections (server, routing, workers)")
    _add_keys_file(path, data)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc) or "(top level)"
            lines.append(f"{path}:{_line_of(root, loc)}: {key}: {err['msg']}")
        raise ConfigError("invalid config\n  " + "\n  ".join(lines)) from None


def _add_keys_file(config: Path, data: dict[str, Any]) -> None:
    auth = data.get("auth")
    name = auth.get("keys_file") if isinstance(auth, dict) else None
    if not isinstance(auth, dict) or not name:
        return
    keys_path = config.parent / str(name)
    try:
        keys = yaml.safe_load(keys_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{config}: auth.keys_file: cannot read {keys_path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{keys_path}: not valid YAML: {exc}") from None
    if keys is None:
        keys = []
    if not isinstance(keys, list):
        raise ConfigError(f"{keys_path}: a list of keys ({{sha256, tier, name}}) is expected")
    auth["keys"] = [*(auth.get("keys") or []), *keys]


def _line_of(node: Any, loc: tuple[int | str, ...]) -> int:
    """1-based line of the deepest YAML node on `loc` that exists (a missing key points at its parent)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
