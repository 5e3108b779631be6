"""A VAE as two services, encoder and decoder, behind verbs :encode :decode :reconstruct :sample."""

from typing import Literal

from ray.serve import Application

from modelfoundry.serving.app_args import VaeArgs
from modelfoundry.serving.apps import build_app


class Args(VaeArgs):
    kind: Literal["vae"] = "vae"


def app(args: Args) -> Application:
    return build_app(args)
