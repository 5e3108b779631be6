"""Latency objectives (issue 28): the planner's arithmetic, the options, the replicas' windows and
the Serve policy on real AutoscalingContext objects (no cluster: these are unit tests)."""

from __future__ import annotations

import math

import pytest
from ray.serve._private.common import DeploymentID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from modelfoundry.serving import planner
from modelfoundry.serving.app_args import parse_args
from modelfoundry.serving.slo import WINDOW_S, SloOptions, Window
from modelfoundry.serving.slo_policy import SloPolicy


def test_erlang_c_known_values():
    assert planner.erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = utilisation
    assert planner.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert planner.erlang_c(3, 0.0) == 0.0
    assert planner.erlang_c(2, 2.5) == 1.0


def test_stage_p99_falls_with_replicas_and_is_infinite_when_overloaded():
    at = [planner.stage_p99_ms(20.0, 80.0, c) for c in range(1, 8)]
    assert math.isinf(at[0])  # 80 req/s at 20 ms is 1.6 erlangs: one replica cannot keep up
    assert all(a >= b for a, b in zip(at[1:], at[2:])) and at[1] > at[3]
    assert at[-1] == pytest.approx(20.0, abs=1.0)  # plenty of replicas: the service time alone
    # a constant service time waits less than an exponential one (Allen-Cunneen)
    assert planner.stage_p99_ms(20.0, 40.0, 1, cv2=0.0) < planner.stage_p99_ms(20.0, 40.0, 1, cv2=1.0)


def test_plan_meets_the_objective_at_the_fewest_replicas():
    p = planner.plan([20.0, 20.0], 60.0, 150.0, 20)
    assert p.meets and p.variant_share == 0.0
    assert p.predicted_p99_ms <= 150.0
    # one replica fewer anywhere misses it: the plan is minimal
    for i in range(2):
        fewer = list(p.replicas)
        fewer[i] -= 1
        assert fewer[i] == 0 or planner.graph_p99_ms([20.0, 20.0], 60.0, fewer, 0.0) > 150.0


def test_the_slower_stage_gets_more_replicas_and_load_adds_replicas():
    p = planner.plan([10.0, 40.0], 60.0, 200.0, 30)
    assert p.replicas[1] > p.replicas[0]
    light, heavy = planner.plan([20.0, 20.0], 10.0, 150.0, 30), planner.plan([20.0, 20.0], 150.0, 150.0, 30)
    assert sum(heavy.replicas) > sum(light.replicas)


def test_over_the_budget_the_variant_takes_the_smallest_share_that_holds():
    p = planner.plan([20.0, 20.0], 200.0, 150.0, 6, overhead_ms=5.0, variant=True)
    assert sum(p.replicas) <= 6
    assert 0 < p.variant_share < 1 and p.meets
    served = 200.0 * (1 - p.variant_share)
    assert planner.graph_p99_ms([20.0, 20.0], served, list(p.replicas), 5.0) <= 150.0
    less = 200.0 * (1 - (p.variant_share - 0.01))
    assert planner.graph_p99_ms([20.0, 20.0], less, list(p.replicas), 5.0) > 150.0
    # without a variant the plan says it cannot meet the objective
    assert not planner.plan([20.0, 20.0], 200.0, 150.0, 6).meets


def test_floor_and_share_needed():
    assert planner.floor_ms([3.0, 4.5], 2.0) == 9.5
    assert planner.share_needed([20.0], 10.0, 200.0, [1]) == 0.0
    assert planner.share_needed([20.0], 500.0, 25.0, [1]) == 1.0


@pytest.mark.parametrize(
    "args, error",
    [
        ({"model": "m", "slo": {"p99_ms": 100, "max_replicas_total": 4}}, "slo applies to a split model app"),
        ({"model": "m", "split": "auto", "slo": {"p99_ms": 0, "max_replicas_total": 4}}, "slo.p99_ms"),
        ({"model": "m", "split": "auto", "slo": {"p99_ms": 50}}, "slo.max_replicas_total"),
        ({"model": "m", "split": "auto", "slo": {"p99_ms": 50, "max_replicas_total": 4, "variant": "@"}}, "variant"),
        ({"model": "m", "split": "auto", "slo": {"p99_ms": 50, "max_replicas_total": 4, "p50": 1}}, "p50"),
        ({"model": "m", "synthetic_ms": 5}, "synthetic_ms applies to a split"),
    ],
)
def test_bad_objectives_are_refused_by_name(args, error):
    with pytest.raises(ValueError, match=error):
        parse_args(args)


def test_autoscaling_config_of_a_planned_deployment_is_valid_for_serve():
    slo = SloOptions(p99_ms=100, max_replicas_total=6, min_replicas=0, idle_to_zero_s=30)
    cfg = AutoscalingConfig(**slo.autoscaling(6))
    assert (cfg.min_replicas, cfg.max_replicas, cfg.upscale_delay_s) == (0, 6, 0.0)
    assert cfg.downscale_to_zero_delay_s == 30
    ingress = slo.ingress_options({"num_replicas": 1, "max_ongoing_requests": 64})
    assert "num_replicas" not in ingress and ingress["autoscaling_config"]["min_replicas"] == 0


def test_window_counts_arrivals_not_completions():
    w = Window()
    for _ in range(10):
        w.arrive()
    w.add(0.020)
    w.add(0.020)
    s = w.stats()
    assert s["rate"] == 10 / WINDOW_S  # ten arrived in the window, two finished
    assert s["mean_ms"] == pytest.approx(20.0) and s["cv2"] == pytest.approx(0.0, abs=1e-9)
    assert "mean_ms" not in Window().stats()


def _ctx(name: str, running: int, metrics: dict[str, float], ongoing: float = 0.0) -> tuple:
    dep = DeploymentID(name=name, app_name="app")
    replicas = [f"r{i}" for i in range(running)]
    ctx = AutoscalingContext(
        deployment_id=dep,
        deployment_name=name,
        app_name="app",
        current_num_replicas=running,
        target_num_replicas=running,
        running_replicas=replicas,
        total_num_requests=ongoing,
        total_queued_requests=0.0,
        aggregated_metrics={
            k: {r: v / max(1, running) if k == "rate" else v for r in replicas} for k, v in metrics.items()
        },
        raw_metrics={},
        capacity_adjusted_min_replicas=0,
        capacity_adjusted_max_replicas=10,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=0.0,
        config=None,
    )
    return dep, ctx


def _policy(variant: str | None = "variant", budget: int = 8) -> SloPolicy:
    return SloPolicy("app", "Ingress", ["stage-0", "stage-1"], variant, 150.0, budget, 1)


def test_policy_scales_stages_together_and_degrades_at_the_budget():
    policy = _policy()
    ingress = _ctx("Ingress", 1, {"rate": 60.0, "mean_ms": 50.0})
    stages = [_ctx(f"stage-{i}", 1, {"rate": 60.0, "mean_ms": 20.0, "cv2": 0.0}) for i in range(2)]
    variant = _ctx("variant", 1, {"mean_ms": 5.0})
    decided, _ = policy(dict([ingress, *stages, variant]))
    by = {d.name: n for d, n in decided.items()}
    assert by["stage-0"] >= 2 and by["stage-1"] >= 2  # 1.2 erlangs each: both grow in one decision
    assert by["variant"] == 1 and sum(by[s] for s in ("stage-0", "stage-1", "variant")) <= 8
    assert policy.share > 0  # while the planned replicas start, the one running each cannot hold it
    stages = [_ctx(f"stage-{i}", by[f"stage-{i}"], {"rate": 60.0, "mean_ms": 20.0, "cv2": 0.0}) for i in range(2)]
    policy(dict([ingress, *stages, variant]))
    assert policy.share == 0.0  # they run: the full model takes everything again
    # four times the load on the same budget: the stages stay within it and the variant takes a share
    ingress = _ctx("Ingress", 1, {"rate": 240.0, "mean_ms": 50.0})
    decided, _ = policy(dict([ingress, *stages, variant]))
    by = {d.name: n for d, n in decided.items()}
    assert sum(by[s] for s in ("stage-0", "stage-1", "variant")) <= 8
    assert 0 < policy.share < 1


def test_policy_idle_cold_and_unmeasured():
    policy = _policy(variant=None)
    idle = dict([_ctx("Ingress", 1, {"rate": 0.0}), *[_ctx(f"stage-{i}", 3, {}) for i in range(2)]])
    assert {d.name: n for d, n in policy(idle)[0].items()} == {"stage-0": 1, "stage-1": 1, "Ingress": 1}
    # traffic before any stage has measured a call: one replica of everything, no guess
    cold = dict([_ctx("Ingress", 1, {"rate": 5.0}), *[_ctx(f"stage-{i}", 0, {}, ongoing=1.0) for i in range(2)]])
    assert set(policy(cold)[0].values()) == {1}
    # a deployment missing (the app still deploying): no decision
    assert policy(dict([_ctx("Ingress", 1, {"rate": 5.0})])) == ({}, {})


def test_policy_holds_decreases_but_never_the_budget():
    policy = _policy(budget=6)
    policy.targets = {"stage-0": 3, "stage-1": 2, "variant": 1, "Ingress": 1}
    # fewer wanted: held (the plan must want it DOWNSCALE_DELAY_S first)
    assert policy._hold({"stage-0": 2, "stage-1": 2, "variant": 1, "Ingress": 1})["stage-0"] == 3
    # the variant needs 3 now: the held replica goes at once, the budget of 6 is kept
    out = policy._hold({"stage-0": 2, "stage-1": 1, "variant": 3, "Ingress": 1})
    assert out["variant"] == 3 and out["stage-0"] + out["stage-1"] + out["variant"] <= 6
    # an increase is at once
    assert policy._hold({"stage-0": 4, "stage-1": 1, "variant": 1, "Ingress": 1})["stage-0"] == 4


def test_policy_raises_the_share_while_the_chain_misses_and_lowers_it_when_it_holds():
    import time

    policy = _policy(budget=5)
    stages = [_ctx(f"stage-{i}", 2, {"rate": 60.0, "mean_ms": 20.0, "cv2": 0.0}) for i in range(2)]
    variant = _ctx("variant", 1, {"mean_ms": 5.0})

    def tick(chain_p99: float) -> float:
        policy.ticked = time.monotonic() - 1.0  # one second since the last decision
        ingress = _ctx("Ingress", 1, {"rate": 60.0, "mean_ms": 50.0, "chain_p99_ms": chain_p99})
        policy(dict([ingress, *stages, variant]))
        return policy.share

    planned = tick(100.0)  # the chain holds: the planned share alone
    missed = [tick(400.0) for _ in range(2)]  # it misses: more each second, on top of the plan
    assert planned < missed[0] < missed[1] <= 1.0
    assert tick(100.0) < missed[1]  # it holds again: the correction falls back


def test_a_slow_variant_never_takes_the_stages_last_replicas():
    policy = _policy(budget=5)
    ingress = _ctx("Ingress", 1, {"rate": 500.0, "mean_ms": 50.0})
    stages = [_ctx(f"stage-{i}", 1, {"rate": 500.0, "mean_ms": 20.0, "cv2": 0.0}) for i in range(2)]
    variant = _ctx("variant", 1, {"mean_ms": 50.0, "cv2": 0.0})
    by = {d.name: n for d, n in policy(dict([ingress, *stages, variant]))[0].items()}
    assert by["stage-0"] >= 1 and by["stage-1"] >= 1 and by["variant"] <= 3
    assert by["stage-0"] + by["stage-1"] + by["variant"] <= 5
    assert policy.cv2["stage-0"] == 0.0  # a measured constant service time is kept as such
