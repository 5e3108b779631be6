"""Any classification model from the store, served monolithic behind one FastAPI ingress."""

from ray.serve import Application

from modelfoundry.serving.apps import AppArgs, build_app


class Args(AppArgs):
    pass


def app(args: Args) -> Application:
    return build_app(args)
