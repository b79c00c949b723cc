"""Choosing among replicas of one model: circuit breakers, least-outstanding requests, prefix affinity.

Pure bookkeeping in memory, per gateway process: each replica of the gateway learns worker health from its own
traffic, which is what a breaker is for (a shared breaker would let one replica's network trouble close a
worker for all of them)."""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from router.core.types import Worker

__all__ = ["BalancePolicy", "Balancer", "Breaker", "BreakerState"]


class BreakerState(StrEnum):
    CLOSED = "closed"  # serving
    OPEN = "open"  # failed repeatedly: skipped until the cooldown passes
    HALF_OPEN = "half_open"  # cooldown passed: one probe request decides


class BalancePolicy(StrEnum):
    LEAST_OUTSTANDING = "least_outstanding"
    ROUND_ROBIN = "round_robin"


@dataclass
class Breaker:
    failures_to_open: int = 3  # consecutive failures
    cooldown: float = 5.0  # seconds open before a probe is let through
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False

    def usable(self, now: float) -> bool:
        """Whether a request may be sent now; moves an open breaker whose cooldown passed to half-open."""
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.cooldown:
            self.state, self.probing = BreakerState.HALF_OPEN, False
        if self.state is BreakerState.HALF_OPEN:
            return not self.probing
        return self.state is BreakerState.CLOSED

    def started(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self.probing = True  # only this request probes; others wait for its verdict

    def succeeded(self) -> None:
        self.state, self.failures, self.probing = BreakerState.CLOSED, 0, False

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.failures_to_open:
            self.state, self.opened_at, self.probing = BreakerState.OPEN, now, False


@dataclass
class _Slot:
    breaker: Breaker
    outstanding: int = 0


@dataclass
class Balancer:
    """Orders a model's replicas for one request and keeps their in-flight counts and breakers."""

    workers: Sequence[Worker]
    policy: BalancePolicy = BalancePolicy.LEAST_OUTSTANDING
    affinity: bool = True
    load_factor: float = 1.25  # affinity: a replica may carry this many times the mean load (plus one)
    failures_to_open: int = 3
    cooldown: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _slots: dict[str, _Slot] = field(init=False)
    _turn: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._slots = {w.name: _Slot(Breaker(self.failures_to_open, self.cooldown)) for w in self.workers}

    # -- bookkeeping around each attempt ---------------------------------------------------------------

    def begin(self, worker: Worker) -> None:
        slot = self._slots[worker.name]
        slot.outstanding += 1
        slot.breaker.started()

    def end(self, worker: Worker, *, failed: bool | None) -> None:
        """An attempt is over: failed, served, or (None) abandoned by its client, which says nothing."""
        slot = self._slots[worker.name]
        slot.outstanding = max(0, slot.outstanding - 1)
        if failed is None:
            slot.breaker.probing = False  # an abandoned probe: the next request probes instead
        elif failed:
            slot.breaker.failed(self.clock())
        else:
            slot.breaker.succeeded()

    def outstanding(self, worker: Worker) -> int:
        return self._slots[worker.name].outstanding

    def usable(self, worker: Worker) -> bool:
        return self._slots[worker.name].breaker.usable(self.clock())

    def state(self, worker: Worker) -> BreakerState:
        breaker = self._slots[worker.name].breaker
        breaker.usable(self.clock())  # an expired cooldown reads as half-open
        return breaker.state

    # -- choosing ---------------------------------------------------------------------------------------

    def pick(self, candidates: Sequence[Worker], key: bytes | None = None) -> Worker:
        """The replica to try first: a usable one by affinity and load; if every breaker is open, the one
        that opened longest ago (a request is never refused for breakers alone)."""
        if len(candidates) == 1:
            return candidates[0]
        now = self.clock()
        usable = [w for w in candidates if self._slots[w.name].breaker.usable(now)]
        if not usable:
            return min(candidates, key=lambda w: self._slots[w.name].breaker.opened_at)
        if key is not None and self.affinity:
            return self._affine(usable, key)
        return self._least(usable)

    def order(self, candidates: Iterable[Worker], key: bytes | None = None) -> list[Worker]:
        """Every candidate, best first: usable replicas by the policy, then open ones, oldest opening first."""
        rest = list(candidates)
        ranked: list[Worker] = []
        now = self.clock()
        while rest and any(self._slots[w.name].breaker.usable(now) for w in rest):
            best = self.pick(rest, key)
            ranked.append(best)
            rest.remove(best)
        return ranked + sorted(rest, key=lambda w: self._slots[w.name].breaker.opened_at)

    def _least(self, usable: Sequence[Worker]) -> Worker:
        """Fewest requests in flight; ties rotate so an idle fleet is used round robin."""
        self._turn += 1
        n = len(usable)
        rotated = [usable[(self._turn + i) % n] for i in range(n)]
        if self.policy is BalancePolicy.ROUND_ROBIN:
            return rotated[0]
        return min(rotated, key=lambda w: self._slots[w.name].outstanding)

    def _affine(self, usable: Sequence[Worker], key: bytes) -> Worker:
        """Rendezvous hashing with bounded load: the key's preferred replica unless it carries more than
        load_factor times its share of what is in flight, then the next preferred one."""
        total = sum(self._slots[w.name].outstanding for w in usable)
        cap = math.ceil(self.load_factor * (total + 1) / len(usable))
        ranked = sorted(usable, key=lambda w: zlib.crc32(w.name.encode(), zlib.crc32(key)), reverse=True)
        for w in ranked:
            if self._slots[w.name].outstanding + 1 <= cap:
                return w
        return self._least(usable)
