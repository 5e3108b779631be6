"""The latency-objective planner's arithmetic (no Ray): how many replicas each stage of a service
graph needs for the graph's p99 to meet an objective at the fewest replicas in all, and, when the
graph's replica budget cannot hold it, the smallest share of requests to send to a cheaper variant.

Each stage is modelled as an M/M/c queue (Poisson arrivals at the graph's rate, c replicas each
serving one request at a time with the measured mean service time). A stage's p99 time is its
service time plus the p99 of its wait, from the Erlang C formula: P(wait > t) = C(c, a) e^-(c mu - lambda) t.
The graph's p99 is its stages' service times, plus the measured per-request overhead (hops, HTTP),
plus their p99 waits combined as the root of the sum of squares (waits at different stages are
nearly independent, and the p99 of a sum of independent tails is below the sum of their p99s,
which would plan a replica too many per stage). Service times
less variable than exponential (a model's forward pass is nearly constant) wait less: the wait is
scaled by (1 + cv^2) / 2, the Allen-Cunneen approximation for M/G/c, with cv^2 the measured squared
coefficient of variation of the stage's service time (1: exponential, 0: constant). Replicas are added
one at a time to whichever stage lowers that bound most (InferLine's greedy planner), so stages
scale together rather than one bottleneck at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TAIL = 0.01  # the p99
MAX_UTILISATION = 0.95  # no stage is planned past this (its queue would grow without bound)


@dataclass(frozen=True)
class StagePlan:
    replicas: int
    p99_ms: float  # this stage's predicted p99 (service + wait) at the planned rate


@dataclass(frozen=True)
class Plan:
    stages: tuple[StagePlan, ...]
    predicted_p99_ms: float  # the graph's bound at the rate the full model serves
    variant_share: float  # the share of requests the cheaper variant answers (0: none)
    meets: bool  # the objective holds (with the variant share, if any)

    @property
    def replicas(self) -> tuple[int, ...]:
        return tuple(s.replicas for s in self.stages)


def erlang_c(c: int, load: float) -> float:
    """The probability an arrival waits in an M/M/c queue offered `load` = lambda / mu erlangs."""
    if load <= 0:
        return 0.0
    if load >= c:
        return 1.0
    term, total = 1.0, 1.0  # load^k / k!, summed for k < c
    for k in range(1, c):
        term *= load / k
        total += term
    top = term * load / c / (1 - load / c)  # load^c / c! * c / (c - load)
    return top / (total + top)


def wait_p99_ms(service_ms: float, rate: float, replicas: int, cv2: float = 1.0) -> float:
    """The p99 wait for a replica of one stage at `rate` requests/s; inf when it cannot keep up."""
    if rate <= 0 or service_ms <= 0:
        return 0.0
    if replicas <= 0:
        return math.inf
    mu = 1000.0 / service_ms
    if rate >= replicas * mu * MAX_UTILISATION:
        return math.inf
    waits = erlang_c(replicas, rate / mu)
    wait_ms = 0.0 if waits <= TAIL else 1000.0 * math.log(waits / TAIL) / (replicas * mu - rate)
    return wait_ms * (1.0 + min(max(cv2, 0.0), 4.0)) / 2.0


def stage_p99_ms(service_ms: float, rate: float, replicas: int, cv2: float = 1.0) -> float:
    """Service plus the p99 wait of one stage at `rate` requests/s; inf when it cannot keep up."""
    return max(service_ms, 0.0) + wait_p99_ms(service_ms, rate, replicas, cv2)


def graph_p99_ms(
    service_ms: list[float], rate: float, replicas: list[int], overhead_ms: float, cv2: list[float] | None = None
) -> float:
    cv2 = cv2 or [1.0] * len(service_ms)
    waits = [wait_p99_ms(s, rate, c, v) for s, c, v in zip(service_ms, replicas, cv2)]
    return overhead_ms + sum(service_ms) + math.sqrt(sum(w * w for w in waits))


def _greedy(
    service_ms: list[float], rate: float, objective_ms: float, budget: int, overhead_ms: float, cv2: list[float]
) -> list[int]:
    """The fewest replicas per stage (at least one) whose bound meets the objective, or, when the
    budget runs out first, where the greedy stopped (every replica of the budget placed)."""
    mu = [1000.0 / s if s > 0 else math.inf for s in service_ms]
    # each stage's least stable count first
    counts = [max(1, math.floor(rate / (m * MAX_UTILISATION)) + 1) if rate > 0 else 1 for m in mu]
    while sum(counts) < budget and graph_p99_ms(service_ms, rate, counts, overhead_ms, cv2) > objective_ms:
        best, best_gain = 0, -math.inf
        for i in range(len(counts)):
            now = stage_p99_ms(service_ms[i], rate, counts[i], cv2[i])
            after = stage_p99_ms(service_ms[i], rate, counts[i] + 1, cv2[i])
            gain = math.inf if math.isinf(now) and not math.isinf(after) else now - after
            if gain > best_gain:
                best, best_gain = i, gain
        counts[best] += 1
    return counts


def plan(
    service_ms: list[float],
    rate: float,
    objective_ms: float,
    max_replicas_total: int,
    overhead_ms: float = 0.0,
    variant: bool = False,
    cv2: list[float] | None = None,
) -> Plan:
    """Replicas per stage for `rate` requests/s. Over the budget, the replicas are capped there and,
    with a variant, the smallest share (to 1%) of requests it must take for the rest to meet the
    objective on the full model."""
    cv2 = cv2 or [1.0] * len(service_ms)
    counts = _greedy(service_ms, rate, objective_ms, max_replicas_total, overhead_ms, cv2)
    if sum(counts) > max_replicas_total:  # even the least stable counts exceed the budget
        counts = _fit(counts, max_replicas_total)
    p99 = graph_p99_ms(service_ms, rate, counts, overhead_ms, cv2)
    share = share_needed(service_ms, rate, objective_ms, counts, overhead_ms, cv2) if variant else 0.0
    served = rate * (1 - share)
    stages = tuple(StagePlan(c, stage_p99_ms(s, served, c, v)) for s, c, v in zip(service_ms, counts, cv2))
    return Plan(stages, p99, share, graph_p99_ms(service_ms, served, counts, overhead_ms, cv2) <= objective_ms)


def share_needed(
    service_ms: list[float],
    rate: float,
    objective_ms: float,
    counts: list[int],
    overhead_ms: float = 0.0,
    cv2: list[float] | None = None,
) -> float:
    """The smallest share (whole percent) of `rate` to take off the graph for it to meet the
    objective with `counts` replicas (1.0 when nothing short of all of it does)."""
    if graph_p99_ms(service_ms, rate, counts, overhead_ms, cv2) <= objective_ms:
        return 0.0
    for pct in range(1, 100):
        if graph_p99_ms(service_ms, rate * (1 - pct / 100), counts, overhead_ms, cv2) <= objective_ms:
            return pct / 100
    return 1.0


def _fit(counts: list[int], budget: int) -> list[int]:
    """Counts cut to the budget, taking from the largest first, never below one per stage."""
    counts = list(counts)
    while sum(counts) > max(budget, len(counts)):
        i = max(range(len(counts)), key=lambda k: counts[k])
        counts[i] -= 1
    return counts


def floor_ms(service_ms: list[float], overhead_ms: float) -> float:
    """The graph's latency with no queueing: the least any objective can be."""
    return overhead_ms + sum(service_ms)
