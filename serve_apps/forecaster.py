"""A one-step forecaster (e.g. the sunspots RNN); predictions are values in the series units."""

from ray.serve import Application

from modelfoundry.serving.apps import AppArgs, build_app


class Args(AppArgs):
    pass


def app(args: Args) -> Application:
    return build_app(args)
