"""The same classifier cut into stage services (split: auto, auto:K, or index groups)."""

from ray.serve import Application

from modelfoundry.serving.apps import AppArgs, build_app


class Args(AppArgs):
    split: None | int | str | list[list[int]] = "auto"


def app(args: Args) -> Application:
    return build_app(args)
