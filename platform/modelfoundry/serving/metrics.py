"""Per-model serving metrics through `ray.serve.metrics`, exported on Ray's Prometheus endpoint of
every node (Serve adds the deployment, replica and application tags). deploy/grafana/ holds a
dashboard over them. Names as Prometheus shows them (Ray prefixes `ray_`, counters get `_total`):

- ray_modelfoundry_requests_total{model, version, verb, status}: every request an ingress answered
  on a model route (v1 verbs, v2 infer), by HTTP status (errors included)
- ray_modelfoundry_request_latency_ms{model, version, verb}: time from the request reaching the
  ingress to its response (for a stream: to its first byte)
- ray_modelfoundry_stage_latency_ms{model, version, stage}: one stage service's time per call
  (split apps: stage "0-1" runs stages 0 and 1)

- ray_modelfoundry_slo_*{model}: a split app with a latency objective, as its ingress replicas
  last read the plan (serving/slo.py): objective_ms, predicted_p99_ms, observed_p99_ms, rate (req/s),
  variant_share (0-1); replicas{service, state="planned"|"running"} and service_ms{service}, service being the stage or
  variant deployment

Label values are bounded: the app's own model names and versions, its verbs ("unknown" for a verb it
does not serve), and status codes.
"""

from __future__ import annotations

from typing import Any

from ray.serve.metrics import Counter, Gauge, Histogram

LATENCY_BUCKETS_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


class IngressMetrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "modelfoundry_requests",
            description="Requests answered by a modelfoundry ingress, by model, version, verb and HTTP status.",
            tag_keys=("model", "version", "verb", "status"),
        )
        self.latency = Histogram(
            "modelfoundry_request_latency_ms",
            description="Time from a request reaching the ingress to its response (ms).",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("model", "version", "verb"),
        )

    def observe(self, model: str, version: str, verb: str, status: int, seconds: float) -> None:
        tags = {"model": model, "version": version or "-", "verb": verb}
        self.requests.inc(tags={**tags, "status": str(status)})
        self.latency.observe(seconds * 1000.0, tags=tags)


class StageMetrics:
    def __init__(self, model: str, version: str, stage: str) -> None:
        self.tags = {"model": model, "version": version, "stage": stage}
        self.latency = Histogram(
            "modelfoundry_stage_latency_ms",
            description="Time one stage service spends on a call (ms).",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("model", "version", "stage"),
        )

    def observe(self, seconds: float) -> None:
        self.latency.observe(seconds * 1000.0, tags=self.tags)


class SloMetrics:
    """The plan of a split app with a latency objective, as gauges (the operator view in Grafana)."""

    SCALARS = ("objective_ms", "predicted_p99_ms", "observed_p99_ms", "rate", "variant_share")

    def __init__(self, model: str) -> None:
        self.tags = {"model": model}
        self.scalars = {
            k: Gauge(f"modelfoundry_slo_{k}", description=f"Latency objective plan: {k}.", tag_keys=("model",))
            for k in self.SCALARS
        }
        self.replicas = Gauge(
            "modelfoundry_slo_replicas",
            description="Replicas of each planned deployment: planned and running.",
            tag_keys=("model", "service", "state"),
        )
        self.service = Gauge(
            "modelfoundry_slo_service_ms",
            description="Mean service time of each planned deployment (ms).",
            tag_keys=("model", "service"),
        )

    def update(self, plan: dict[str, Any]) -> None:
        values = {**plan, "objective_ms": plan.get("objective_p99_ms")}
        for key, gauge in self.scalars.items():
            if values.get(key) is not None:
                gauge.set(float(values[key]), tags=self.tags)
        for dep in [*plan.get("stages", []), *([plan["variant"]] if plan.get("variant") else [])]:
            where = {**self.tags, "service": dep["name"]}  # ("deployment" is Serve's own tag)
            for state in ("replicas", "running"):
                if dep.get(state) is not None:
                    label = "planned" if state == "replicas" else "running"
                    self.replicas.set(float(dep[state]), tags={**where, "state": label})
            if dep.get("service_ms") is not None:
                self.service.set(float(dep["service_ms"]), tags=where)
