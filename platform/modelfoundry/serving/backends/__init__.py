"""App shapes behind the one ingress: each module holds a shape's builder (driver side, from its
typed args in serving/app_args.py) and its Backend (in the ingress replica, base.py's protocol).

  local.py      kind model, monolithic: the model in the ingress (and every kind-model builder)
  split.py      kind model with split: stage services called in order
  services.py   kind vae (or a model whose family has named services): the VAE's encoder/decoder
  ensemble.py   kind ensemble: classifiers fanned out, probabilities averaged
  multiplex.py  kind multiplex: many models on shared replicas (Serve model multiplexing)
  canary.py     kind canary: versions with live traffic weights

Adding a shape: a module with its args class (added to app_args.AppArgs), `build` and a Backend
subclass, and one line in each table below."""

from __future__ import annotations

from modelfoundry.serving.backends import canary, ensemble, local, multiplex, services, split
from modelfoundry.serving.backends.base import Backend, BuildContext, Builder

# IngressSpec.kind -> the Backend the ingress replica runs
BACKENDS: dict[str, type[Backend]] = {
    b.kind: b
    for b in (
        local.LocalBackend,
        split.SplitBackend,
        services.ServicesBackend,
        ensemble.EnsembleBackend,
        multiplex.MultiplexBackend,
        canary.CanaryBackend,
    )
}
# AppArgs.kind -> the builder that makes the app (a kind-model app becomes local, split or services)
BUILDERS: dict[str, Builder] = {
    "model": local.build,
    "vae": services.build,
    "ensemble": ensemble.build,
    "multiplex": multiplex.build,
    "canary": canary.build,
}

__all__ = ["BACKENDS", "BUILDERS", "Backend", "BuildContext"]
