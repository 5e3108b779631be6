"""Several classifiers (e.g. mlp + cnn + rnn) fanned out in parallel; probabilities averaged."""

from typing import Literal

from ray.serve import Application

from modelfoundry.serving.apps import AppArgs, build_app


class Args(AppArgs):
    kind: Literal["model", "ensemble", "vae"] = "ensemble"


def app(args: Args) -> Application:
    return build_app(args)
