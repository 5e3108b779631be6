"""A language model with continuous batching: :generate and the OpenAI-compatible API."""

from ray.serve import Application

from modelfoundry.serving.app_args import ModelArgs
from modelfoundry.serving.apps import build_app


class Args(ModelArgs):
    pass


def app(args: Args) -> Application:
    return build_app(args)
