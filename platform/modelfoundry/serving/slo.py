"""A split app's latency objective (`slo:` in its args, `foundry serve --slo-p99-ms`): the options,
what replicas measure for the planner, and the board that carries the plan to the ingress.

The planner (serving/slo_policy.py) is a Ray Serve application-level autoscaling policy: the
controller calls it with every deployment's AutoscalingContext, including the custom metrics each
replica reports from `record_autoscaling_stats` (a `Window` here: arrivals/s, mean service time,
recent p99). It sets every stage's replicas at once and publishes the plan (replicas, predicted
p99, the cheaper variant's share) on the app's `SloBoard` actor, where each ingress replica reads
the share it routes by and the operator view (`foundry serve --status`) reads the whole plan.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from typing import Any

import numpy as np
import ray
from pydantic import Field, model_validator

from modelfoundry.serving.options import Strict

BOARD_NAMESPACE = "modelfoundry"
WINDOW_S = 1.0  # what a replica's reported rates and times cover
POLL_S = 0.5  # how often an ingress replica reads the plan
NO_PLAN_WARNING_S = 60.0
# every planner-managed deployment: Serve measures over a short window and applies the plan at
# once both ways; the planner holds a decrease itself for DOWNSCALE_DELAY_S (serving/slo_policy.py),
# except where the budget needs the replicas elsewhere at once (the variant under a step)
LOOK_BACK_S = 1.0
# how often replicas and handles push their metrics to the controller (Serve's default, 10 s, would
# leave the planner 10 s behind a step in load); a small actor call per replica per push
METRICS_INTERVAL_S = 0.5
DOWNSCALE_DELAY_S = 15.0


class SloOptions(Strict):
    p99_ms: float = Field(gt=0)  # the objective for the whole graph, ingress to reply
    max_replicas_total: int = Field(gt=0)  # the stages' and the variant's replicas together
    # per stage at the least; 0 scales the whole app to zero when idle (the first request wakes it)
    min_replicas: int = Field(default=1, ge=0)
    # a cheaper version of the same model answering a share of requests when the budget cannot hold
    # the objective: "@ALIAS" (this model's alias, e.g. @fast), NAME, NAME:VERSION or NAME@ALIAS
    variant: str | None = None
    idle_to_zero_s: float = Field(default=60.0, gt=0)  # with min_replicas 0: idle this long first
    # bench only: each variant call also holds its replica this long (ModelArgs.synthetic_ms)
    variant_synthetic_ms: float = Field(default=0.0, ge=0, le=10_000)

    @model_validator(mode="after")
    def _check(self) -> SloOptions:
        if self.variant is not None and not self.variant.strip("@"):
            raise ValueError("slo.variant: give @ALIAS, NAME, NAME:VERSION or NAME@ALIAS")
        return self

    def ingress_options(self, opts: dict[str, Any]) -> dict[str, Any]:
        """The ingress deployment's options: autoscaled by the planner (to zero with the rest when
        min_replicas is 0), up to its configured replica count."""
        n = opts.pop("num_replicas", 1)
        return {**opts, "autoscaling_config": {**self.autoscaling(n), "min_replicas": min(self.min_replicas, n)}}

    def autoscaling(self, max_replicas: int) -> dict[str, Any]:
        """The autoscaling_config of one planner-managed deployment (the app-level policy sets its
        replicas; Serve applies these bounds and delays)."""
        return {
            "min_replicas": self.min_replicas,
            "initial_replicas": max(1, self.min_replicas),
            "max_replicas": max_replicas,
            "look_back_period_s": LOOK_BACK_S,
            "metrics_interval_s": METRICS_INTERVAL_S,
            "upscale_delay_s": 0.0,
            "downscale_delay_s": 0.0,
            "downscale_to_zero_delay_s": self.idle_to_zero_s,
        }


class Window:
    """Arrivals, service times and latencies of the last WINDOW_S seconds on one replica: what its
    `record_autoscaling_stats` reports to the planner. The rate counts arrivals, not completions:
    an overloaded replica completes only what it can, and the planner must see what comes."""

    def __init__(self) -> None:
        self.arrivals: deque[float] = deque()
        self.events: deque[tuple[float, float]] = deque()  # (when it ended, seconds it took)

    def arrive(self) -> None:
        self.arrivals.append(time.monotonic())

    def add(self, seconds: float) -> None:
        now = time.monotonic()
        self.events.append((now, seconds))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self.events and self.events[0][0] < now - WINDOW_S:
            self.events.popleft()
        while self.arrivals and self.arrivals[0] < now - WINDOW_S:
            self.arrivals.popleft()

    def stats(self) -> dict[str, float]:
        """rate (arrivals/s), mean_ms, p99_ms and cv2 of the window; times are absent when it
        completed nothing."""
        self._trim(time.monotonic())
        out = {"rate": len(self.arrivals) / WINDOW_S}
        if self.events:
            took = np.fromiter((s for _, s in self.events), float) * 1000.0
            mean = float(took.mean())
            # cv2: the squared coefficient of variation of the times (the planner's queueing model)
            out.update(
                mean_ms=mean, p99_ms=float(np.percentile(took, 99)), cv2=float(took.var()) / max(mean, 1e-9) ** 2
            )
        return out


@ray.remote(num_cpus=0)
class SloBoard:
    """One app's plan: written by the planner in the Serve controller, read by the app's ingress
    replicas and the operator view. Named f"slo-{app}" in BOARD_NAMESPACE; detached, so a
    redeploy of the app finds it again."""

    def __init__(self) -> None:
        self.plan: dict[str, Any] = {}

    def publish(self, plan: dict[str, Any]) -> None:
        self.plan = plan

    def read(self) -> dict[str, Any]:
        return self.plan


def board(app: str, create: bool = True):
    """The app's board actor (created when `create`); None when there is none."""
    name = f"slo-{app}"
    if create:
        return SloBoard.options(name=name, namespace=BOARD_NAMESPACE, lifetime="detached", get_if_exists=True).remote()
    try:
        return ray.get_actor(name, namespace=BOARD_NAMESPACE)
    except ValueError:
        return None


class ShareReader:
    """In an ingress replica: the variant's share of requests, from the app's board every POLL_S."""

    def __init__(self, model: str) -> None:
        self.share, self.plan, self.model = 0.0, {}, model
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        """On the replica's event loop, at its first request (its app's name is known by then)."""
        if self.task is None:
            from ray import serve

            app = serve.get_replica_context().app_name
            # in a context of its own: it outlives the request that started it, and Serve cancels
            # what a request started when that request ends (serving/continuous.py met the same)
            self.task = asyncio.get_running_loop().create_task(self._poll(app), context=contextvars.Context())

    async def _poll(self, app: str) -> None:
        import logging

        from modelfoundry.serving.metrics import SloMetrics

        handle, metrics, failed, since = None, None, False, time.monotonic()
        while True:
            if not self.plan and since is not None and time.monotonic() - since > NO_PLAN_WARNING_S:
                since = None  # said once: an app deployed without its planner (Serve's own `serve deploy`)
                logging.getLogger("ray.serve").warning(
                    "app %s has a latency objective but no planner has published a plan in %.0f s: deploy it with "
                    "foundry serve (it sets the app's autoscaling_policy), not serve deploy",
                    app,
                    NO_PLAN_WARNING_S,
                )
            try:
                metrics = metrics or SloMetrics(self.model)
                handle = handle or board(app)
                self.plan = await handle.read.remote()
                self.share = float(self.plan.get("variant_share", 0.0))
                if self.plan:
                    metrics.update(self.plan)
                failed = False
            except Exception:  # noqa: BLE001  (a board restarting: keep the last share, try again)
                if not failed:  # once per run of failures
                    logging.getLogger("ray.serve").warning("reading the plan of app %s failed", app, exc_info=True)
                handle, failed = None, True
            await asyncio.sleep(POLL_S)
