"""A one-step forecaster (e.g. the sunspots RNN); predictions are values in the series units."""

from ray.serve import Application

from modelfoundry.serving.app_args import ModelArgs
from modelfoundry.serving.apps import build_app


class Args(ModelArgs):
    pass


def app(args: Args) -> Application:
    return build_app(args)
