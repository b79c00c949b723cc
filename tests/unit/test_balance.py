"""Breakers, least-outstanding balancing and prefix affinity: pure bookkeeping, with a clock the test moves."""

from __future__ import annotations

from collections import Counter

from router.core.balance import BalancePolicy, Balancer, BreakerState
from router.core.types import Prices, Role, Worker


def _workers(n: int) -> list[Worker]:
    return [Worker(f"w{i}", Role.SMALL, f"http://w{i}/v1", "m", Prices(), 1.0, 1.0) for i in range(n)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_then_half_open_probe_closes_it() -> None:
    clock = Clock()
    a, b = _workers(2)
    bal = Balancer([a, b], failures_to_open=3, cooldown=5, clock=clock)
    for _ in range(2):
        bal.begin(a)
        bal.end(a, failed=True)
    assert bal.state(a) is BreakerState.CLOSED
    bal.begin(a)
    bal.end(a, failed=False)  # a success resets the count: failures must be consecutive
    for _ in range(3):
        bal.begin(a)
        bal.end(a, failed=True)
    assert bal.state(a) is BreakerState.OPEN
    assert {bal.pick([a, b]) for _ in range(10)} == {b}  # open: skipped
    clock.now += 5
    assert bal.state(a) is BreakerState.HALF_OPEN
    probe = bal.pick([a, b], key=None)
    picks = [probe]
    if probe is not a:  # least-outstanding may prefer b first; the probe goes out on a's turn
        picks.append(bal.pick([a, b]))
    assert a in picks
    bal.begin(a)  # the probe is in flight: nobody else is sent to a meanwhile
    assert not bal.usable(a)
    bal.end(a, failed=False)
    assert bal.state(a) is BreakerState.CLOSED


def test_failed_probe_reopens_and_an_abandoned_probe_frees_the_next_one() -> None:
    clock = Clock()
    (a,) = _workers(1)
    bal = Balancer([a], failures_to_open=1, cooldown=2, clock=clock)
    bal.begin(a)
    bal.end(a, failed=True)
    assert bal.state(a) is BreakerState.OPEN
    clock.now += 2
    assert bal.usable(a)
    bal.begin(a)
    bal.end(a, failed=True)
    assert bal.state(a) is BreakerState.OPEN  # one failed probe is enough
    clock.now += 1
    assert not bal.usable(a)  # a new cooldown started at the probe's failure
    clock.now += 1
    bal.begin(a)
    bal.end(a, failed=None)  # the client left: no verdict, but the probe slot is free again
    assert bal.state(a) is BreakerState.HALF_OPEN and bal.usable(a)


def test_every_breaker_open_still_picks_the_one_that_opened_first() -> None:
    clock = Clock()
    a, b = _workers(2)
    bal = Balancer([a, b], failures_to_open=1, cooldown=60, clock=clock)
    bal.begin(b)
    bal.end(b, failed=True)
    clock.now += 1
    bal.begin(a)
    bal.end(a, failed=True)
    assert bal.pick([a, b]) is b
    assert bal.order([a, b]) == [b, a]


def test_least_outstanding_prefers_the_idle_replica_and_rotates_ties() -> None:
    a, b, c = _workers(3)
    bal = Balancer([a, b, c], affinity=False)
    assert Counter(bal.pick([a, b, c]).name for _ in range(30)) == {"w0": 10, "w1": 10, "w2": 10}
    bal.begin(a)
    bal.begin(a)
    bal.begin(b)
    assert bal.pick([a, b, c]) is c
    bal.begin(c)
    assert bal.pick([a, b, c]) in (b, c)
    assert bal.pick([a, b, c]) is not a


def test_round_robin_ignores_load() -> None:
    a, b = _workers(2)
    bal = Balancer([a, b], policy=BalancePolicy.ROUND_ROBIN, affinity=False)
    for _ in range(5):
        bal.begin(a)
    assert Counter(bal.pick([a, b]).name for _ in range(10)) == {"w0": 5, "w1": 5}


def test_affinity_is_sticky_spreads_keys_and_bounds_load() -> None:
    workers = _workers(3)
    bal = Balancer(workers, load_factor=1.25)
    keys = [f"conversation {i}".encode() for i in range(300)]
    first = {k: bal.pick(workers, k) for k in keys}
    assert all(bal.pick(workers, k) is first[k] for k in keys)  # idle fleet: always the same replica
    spread = Counter(w.name for w in first.values())
    assert min(spread.values()) > 60  # about a third each
    # One hot conversation: its replica takes requests only up to its bounded share of what is in flight.
    hot = keys[0]
    for _ in range(30):
        w = bal.pick(workers, hot)
        bal.begin(w)
    loads = [bal.outstanding(w) for w in workers]
    assert max(loads) <= -(-1.25 * 30 // 3) + 1
    assert bal.outstanding(first[hot]) == max(loads)
