"""The latency-objective planner as Ray Serve's application-level autoscaling policy (Ray 2.60's
`autoscaling_policy` of a declarative app: the controller calls it every control-loop tick with
every deployment's AutoscalingContext and applies the replicas it returns within each deployment's
autoscaling_config bounds and delays). Its inputs are the custom metrics the replicas report
(serving/slo.Window: arrivals/s at the ingress, each stage's mean service time), its arithmetic is
serving/planner.py, and it publishes what it decided on the app's SloBoard (serving/slo.py).

Where it goes beyond Serve's extension points: the variant's share of requests is not a replica
count, so it travels to the ingress replicas through the board actor, not through Serve."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Any

import ray

from modelfoundry.serving import planner
from modelfoundry.serving.slo import DOWNSCALE_DELAY_S, board

PUBLISH_S = 0.5
OVERHEAD_S = 60.0  # the overhead is the least seen over this long (queueing only ever adds to it)
# requests queued at a stage beyond its running replicas are planned as extra arrivals spread over
# this long: a backlog left by a step in load is drained (more replicas, a larger variant share)
# instead of being carried at a rate the graph only just keeps up with
DRAIN_S = 2.0
# the model is checked against what the ingress sees: while the full model's chain (stages, hops,
# queues) misses the objective at the budget, the variant's share rises this much per second on top
# of the planned one, and falls back at BOOST_DOWN when it holds (an integral correction: the
# queueing model does not see CPU contention or a router's imbalance)
BOOST_UP, BOOST_DOWN = 0.15, 0.05


def _total(ctx, metric: str) -> float:
    values = (ctx.aggregated_metrics or {}).get(metric) or {}
    return float(sum(values.values()))


def _mean(ctx, metric: str) -> float | None:
    values = [v for v in ((ctx.aggregated_metrics or {}).get(metric) or {}).values() if v == v]
    return sum(values) / len(values) if values else None


def _max(ctx, metric: str) -> float | None:
    values = list(((ctx.aggregated_metrics or {}).get(metric) or {}).values())
    return max(values) if values else None


class SloPolicy:
    """policy_kwargs: app (its name), ingress, stages (deployment names in call order), variant (the
    variant deployment's name or None), p99_ms, max_replicas_total, min_replicas."""

    def __init__(
        self,
        app: str,
        ingress: str,
        stages: list[str],
        variant: str | None,
        p99_ms: float,
        max_replicas_total: int,
        min_replicas: int,
    ) -> None:
        self.app, self.ingress, self.stages, self.variant = app, ingress, list(stages), variant
        self.p99_ms, self.budget, self.min_replicas = p99_ms, max_replicas_total, min_replicas
        self.service_ms: dict[str, float] = {}  # last measured, kept while a deployment is idle
        self.cv2: dict[str, float] = {}
        self.overhead_ms = 0.0
        self.overheads: deque[tuple[float, float]] = deque()  # (when, ingress mean less the stages')
        self.share = 0.0  # the variant's share last decided
        self.boost, self.ticked = 0.0, time.monotonic()  # the share's correction (BOOST_UP)
        self.targets: dict[str, int] = {}  # what was last asked of Serve, per deployment
        self.lower_since: dict[str, float] = {}  # since when the plan has wanted fewer
        self.board = None
        self.published = 0.0
        self.failed_at = -math.inf

    def __call__(self, contexts: dict) -> tuple[dict, dict]:
        """Serve's controller calls this every control-loop tick. A fault here leaves the replicas
        as they are (no decision) and is logged once a minute: it must not stop the controller."""
        try:
            return self._tick(contexts)
        except Exception:  # noqa: BLE001
            if time.monotonic() - self.failed_at > 60:
                self.failed_at = time.monotonic()
                logging.getLogger("ray.serve").exception("the latency-objective planner of %s failed", self.app)
            return {}, {}

    def _tick(self, contexts: dict) -> tuple[dict, dict]:
        by_name = {dep.name: (dep, ctx) for dep, ctx in contexts.items()}
        if self.ingress not in by_name or any(s not in by_name for s in self.stages):
            return {}, {}  # the app is still being deployed
        ingress = by_name[self.ingress][1]
        rate = _total(ingress, "rate")
        waiting = sum(ctx.total_num_requests for _, ctx in by_name.values())
        backlog = max(
            max(0.0, by_name[s][1].total_num_requests - by_name[s][1].current_num_replicas) for s in self.stages
        )
        rate += backlog / DRAIN_S if rate > 0 else 0.0
        self._learn(by_name)
        active = rate > 0 or waiting > 0
        running = [by_name[s][1].current_num_replicas for s in self.stages]
        decided = self._decide(rate, active, running)
        decided["variant_share"] = self._corrected(decided, _max(ingress, "chain_p99_ms"))
        decided["replicas"] = self._hold(decided["replicas"])
        self.share = decided["variant_share"]
        out = {by_name[name][0]: n for name, n in decided["replicas"].items() if name in by_name}
        self._publish(decided, by_name, _max(ingress, "p99_ms"))
        return out, {}

    def _learn(self, by_name: dict) -> None:
        """Service times from the replicas' windows; the overhead (hops, HTTP, the ingress's own
        work) as the ingress's mean time less the stages', the least seen over OVERHEAD_S."""
        for name in [*self.stages, *([self.variant] if self.variant else [])]:
            if name in by_name and (m := _mean(by_name[name][1], "mean_ms")) is not None:
                self.service_ms[name] = m
                cv2 = _mean(by_name[name][1], "cv2")
                self.cv2[name] = 1.0 if cv2 is None else cv2  # 0 is a real value: constant times
        # the least over OVERHEAD_S while the variant takes no share: an ingress time that holds
        # waits must not count (a larger overhead would feed back into more replicas)
        whole = _mean(by_name[self.ingress][1], "mean_ms")
        parts = [self.service_ms.get(s) for s in self.stages]
        now = time.monotonic()
        if whole is not None and None not in parts and self.share == 0:
            self.overheads.append((now, max(0.0, whole - sum(parts))))
        while self.overheads and self.overheads[0][0] < now - OVERHEAD_S:
            self.overheads.popleft()
        if self.overheads:
            self.overhead_ms = min(v for _, v in self.overheads)

    def _decide(self, rate: float, active: bool, running: list[int]) -> dict[str, Any]:
        floor = self.min_replicas
        if not active:  # idle: Serve waits downscale_to_zero_delay_s before it goes below one
            return {"replicas": self._all(floor, ingress=floor), "rate": 0.0, "variant_share": 0.0, "plan": None}
        service = [self.service_ms.get(s) for s in self.stages]
        if None in service:  # nothing measured yet (cold start): one replica of everything
            return {"replicas": self._all(max(1, floor), ingress=1), "rate": rate, "variant_share": 0.0, "plan": None}
        reserve = 1 if self.variant else 0  # a warm variant replica, ready to take a share
        cv2 = [self.cv2.get(s, 1.0) for s in self.stages]
        p, share = self._plan(service, cv2, rate, self.budget - reserve, running)
        need = self._variant_replicas(rate * share) if self.variant else 0
        if need > reserve:  # the variant needs more: re-plan the stages on what the budget leaves
            p, share = self._plan(service, cv2, rate, self.budget - need, running)
        replicas = {s: max(1, floor, c) for s, c in zip(self.stages, p.replicas)}
        if self.variant:
            replicas[self.variant] = max(1, need)
        replicas[self.ingress] = 1
        return {"replicas": replicas, "rate": rate, "variant_share": share, "plan": p}

    def _plan(
        self, service: list[float], cv2: list[float], rate: float, budget: int, running: list[int]
    ) -> tuple[planner.Plan, float]:
        """The plan within `budget`, and the variant's share: the plan's, or more while the planned
        replicas start (what runs now may hold less)."""
        p = planner.plan(service, rate, self.p99_ms, budget, self.overhead_ms, bool(self.variant), cv2)
        if not self.variant:
            return p, 0.0
        now = [min(r, c) for r, c in zip(running, p.replicas)]
        return p, max(p.variant_share, planner.share_needed(service, rate, self.p99_ms, now, self.overhead_ms, cv2))

    def _corrected(self, decided: dict[str, Any], chain_p99: float | None) -> float:
        """The planned share plus the correction, when the variant is the lever (the plan sends it
        a share, or the stages are at their budget)."""
        now = time.monotonic()
        dt, self.ticked = now - self.ticked, now
        share, p = decided["variant_share"], decided["plan"]
        if not self.variant or p is None:
            self.boost = 0.0
            return share
        at_budget = sum(p.replicas) + max(1, decided["replicas"].get(self.variant, 1)) >= self.budget
        lever = share > 0 or at_budget
        missed = chain_p99 is not None and chain_p99 > self.p99_ms - self.overhead_ms
        self.boost = (
            min(1.0, self.boost + BOOST_UP * dt) if lever and missed else max(0.0, self.boost - BOOST_DOWN * dt)
        )
        return min(1.0, share + self.boost) if lever else share

    def _hold(self, wanted: dict[str, int]) -> dict[str, int]:
        """Increases at once; a decrease once the plan has wanted it for DOWNSCALE_DELAY_S, unless
        the budget needs the replicas now (then the largest held excess goes first)."""
        now = time.monotonic()
        out = {}
        for name, want in wanted.items():
            held = self.targets.get(name, want)
            if want >= held:
                self.lower_since.pop(name, None)
                out[name] = want
            else:
                since = self.lower_since.setdefault(name, now)
                out[name] = want if now - since >= DOWNSCALE_DELAY_S else held
        counted = [n for n in out if n != self.ingress]
        over = sum(out[n] for n in counted) - self.budget
        for name in sorted(counted, key=lambda n: out[n] - wanted[n], reverse=True):
            cut = min(max(0, over), out[name] - wanted[name])
            out[name] -= cut
            over -= cut
        self.targets = out
        return out

    def _variant_replicas(self, rate: float) -> int:
        service = self.service_ms.get(self.variant) if self.variant else None
        if not rate or not service:
            return 1
        most = max(1, self.budget - len(self.stages))  # the stages keep one replica each
        cv2 = self.cv2.get(self.variant, 1.0)
        for c in range(1, most + 1):
            if self.overhead_ms + planner.stage_p99_ms(service, rate, c, cv2) <= self.p99_ms:
                return c
        return most

    def _all(self, n: int, ingress: int) -> dict[str, int]:
        names = [*self.stages, *([self.variant] if self.variant else [])]
        return {**{s: n for s in names}, self.ingress: ingress}

    def _publish(self, decided: dict[str, Any], by_name: dict, observed_p99: float | None) -> None:
        now = time.time()
        if now - self.published < PUBLISH_S:
            return
        self.published = now
        p = decided["plan"]
        running = {name: ctx.current_num_replicas for name, (_, ctx) in by_name.items()}
        stages = [
            {
                "name": s,
                "replicas": decided["replicas"].get(s),
                "running": running.get(s),
                "service_ms": self.service_ms.get(s),
                "predicted_p99_ms": _finite(p.stages[i].p99_ms) if p else None,
                "queued": by_name[s][1].total_num_requests if s in by_name else None,
            }
            for i, s in enumerate(self.stages)
        ]
        plan = {
            "app": self.app,
            "objective_p99_ms": self.p99_ms,
            "max_replicas_total": self.budget,
            "rate": decided["rate"],
            "overhead_ms": self.overhead_ms,
            "stages": stages,
            "variant": {
                "name": self.variant,
                "replicas": decided["replicas"].get(self.variant),
                "running": running.get(self.variant),
                "service_ms": self.service_ms.get(self.variant),
            }
            if self.variant
            else None,
            "variant_share": decided["variant_share"],
            "predicted_p99_ms": _finite(p.predicted_p99_ms) if p else None,
            "observed_p99_ms": observed_p99,
            "share_correction": round(self.boost, 3),
            "meets": p.meets if p else None,
            "time": now,
        }
        if not ray.is_initialized():  # called outside a cluster (tests of the arithmetic)
            return
        try:
            self.board = self.board or board(self.app)
            self.board.publish.remote(plan)
        except Exception:  # noqa: BLE001  (the board is recreated next time; scaling goes on)
            self.board = None


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else round(x, 3)
