"""Several classifiers (e.g. mlp + cnn + rnn) fanned out in parallel; probabilities averaged."""

from typing import Literal

from ray.serve import Application

from modelfoundry.serving.app_args import EnsembleArgs
from modelfoundry.serving.apps import build_app


class Args(EnsembleArgs):
    kind: Literal["ensemble"] = "ensemble"


def app(args: Args) -> Application:
    return build_app(args)
