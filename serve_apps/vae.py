"""A VAE as two services, encoder and decoder, behind verbs :encode :decode :reconstruct :sample."""

from typing import Literal

from ray.serve import Application

from modelfoundry.serving.apps import AppArgs, build_app


class Args(AppArgs):
    kind: Literal["model", "ensemble", "vae"] = "vae"


def app(args: Args) -> Application:
    return build_app(args)
