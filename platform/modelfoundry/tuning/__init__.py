"""Ray Tune: sweep configs (search spaces over dotted field paths), the sweep runner, reports."""

from modelfoundry.tuning.sweep import run_sweep
from modelfoundry.tuning.sweep_config import SweepConfig, load_sweep, parse_sweep

__all__ = ["SweepConfig", "load_sweep", "parse_sweep", "run_sweep"]
