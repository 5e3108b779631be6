"""modelfoundry: train (Ray Train), tune (Ray Tune) and serve (Ray Serve) model families."""

__version__ = "0.1.0"
