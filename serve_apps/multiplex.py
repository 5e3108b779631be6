"""Many models of one family (one per customer, per dataset, per version) on the shared replicas
of one deployment, with Ray Serve's model multiplexing; the model named in the URL or in Serve's
serve_multiplexed_model_id header."""

from typing import Literal

from ray.serve import Application

from modelfoundry.serving.app_args import MultiplexArgs
from modelfoundry.serving.apps import build_app


class Args(MultiplexArgs):
    kind: Literal["multiplex"] = "multiplex"


def app(args: Args) -> Application:
    return build_app(args)
