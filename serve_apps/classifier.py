"""Any classification model from the store, served monolithic behind one FastAPI ingress."""

from ray.serve import Application

from modelfoundry.serving.app_args import ModelArgs
from modelfoundry.serving.apps import build_app


class Args(ModelArgs):
    pass


def app(args: Args) -> Application:
    return build_app(args)
