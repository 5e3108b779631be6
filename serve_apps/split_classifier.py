"""The same classifier cut into stage services (split: auto, auto:K, or index groups)."""

from ray.serve import Application

from modelfoundry.serving.app_args import ModelArgs
from modelfoundry.serving.apps import build_app


class Args(ModelArgs):
    split: None | int | str | list[list[int]] = "auto"


def app(args: Args) -> Application:
    return build_app(args)
