"""The protocol between the ingress (serving/ingress.py: routes, auth, limits, protocols) and an
app shape: a `Backend` runs in the ingress replica and answers for the models of its app; a
module per shape holds its typed args' builder (`build`, in the driver) and its Backend (in the
replica). Adding an app shape is one module plus one entry in backends/__init__.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from ray.serve import Application

from modelfoundry.serving.explain import ExplainRequest
from modelfoundry.serving.options import DeploymentOptions
from modelfoundry.serving.requests import RequestError
from modelfoundry.serving.spec import IngressSpec, Limits
from modelfoundry.serving.stage import replica_transport
from modelfoundry.store import CheckpointMeta, StoreVersion, resolve
from modelfoundry.store.checkpoint import read_meta


def finite(out: np.ndarray) -> np.ndarray:
    """A model's output, refused with a 400 when it overflowed: inputs that are finite but far
    outside anything the model was trained on can drive it to inf or NaN, which JSON cannot carry."""
    if not np.isfinite(out).all():
        raise RequestError(
            400,
            "the model's output overflows (inf or NaN) for these inputs: their values are far outside the "
            "range it was trained on; check the input's scale",
        )
    return out


@dataclass(frozen=True)
class BuildContext:
    """What every builder needs besides its own args (made once by serving/apps.build_app)."""

    store: str  # absolute
    ingress: Any  # Ingress.options(...) of the app's ingress deployment options
    limits: Limits
    common: dict[str, Any]  # IngressSpec fields every shape shares (batching, keys, hosts)
    batching: dict[str, Any] | None
    stages: DeploymentOptions  # the stage / member / model deployments' options

    def load_meta(self, name: str, version: int | str) -> tuple[StoreVersion, CheckpointMeta]:
        """A version and its model.json (read alone: replicas fetch and verify the weights)."""
        found = resolve(self.store, name, version)
        return found, read_meta(found.uri)


class Backend:
    """One app shape in the ingress replica. The defaults fit an app that serves one model under
    the app's name; a shape overrides what it does differently."""

    kind: ClassVar[str]

    def __init__(self, spec: IngressSpec, handles: list) -> None:
        self.spec = spec
        self.handles = [replica_transport(h) for h in handles]

    # ---- which model a request names
    def names(self) -> list[str]:
        """The model names this app answers to (/v1/models/<name>)."""
        return [self.spec.name]

    def route(self, name: str, headers, require: bool = True) -> str | None:
        """Check the model a request names; a shape serving many models returns its id."""
        if name != self.spec.name:
            raise RequestError(404, f"unknown model {name!r}; this service serves {self.spec.name!r}")
        return None

    def pick(self, headers) -> str | None:
        """The target of one request within the model (a canary's arm); None: the one model."""
        return None

    def version(self, target: str | None) -> str:
        return self.spec.version

    def reply_fields(self, model_id: str | None, target: str | None) -> dict[str, Any]:
        """What a predict reply adds: which model or version answered."""
        return {}

    # ---- running the model
    async def output(self, x: np.ndarray, model_id: str | None = None, target: str | None = None) -> np.ndarray:
        """The model's raw output for the tensor verbs (predict, OIP v2 infer)."""
        raise RequestError(400, f"model {self.spec.name} has no tensor verb; its verbs are {list(self.spec.verbs)}")

    async def explain(self, req: ExplainRequest, classes: bool) -> dict[str, Any]:
        """Integrated Gradients of the model's output for req (serving/explain.py)."""
        raise RequestError(400, f"model {self.spec.name} cannot explain; its verbs are {list(self.spec.verbs)}")

    async def service(self, index: int, x: np.ndarray) -> np.ndarray:
        """The output of named service `index` (the VAE's encoder 0 and decoder 1)."""
        raise RequestError(400, f"model {self.spec.name} has no services")

    def decoders(self) -> list:
        """A language model's continuous-batching decoders, one per micro-batch
        (serving/continuous.py)."""
        raise RequestError(400, f"model {self.spec.name} does not generate")

    # ---- its life in the replica
    def reconfigure(self, user_config: dict) -> None:
        """The deployment's user_config changed (a canary's weights); most shapes have none."""

    def autoscaling_stats(self) -> dict[str, float]:
        """What this shape adds to the ingress's custom autoscaling metrics."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What GET /v1/models/<name> adds for this shape."""
        return {}


Builder = Callable[[Any, BuildContext], Application]
