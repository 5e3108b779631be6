"""What a person watching `foundry train` / `run` / `tune` sees: one live display per run.

- `EpochProgress`: a training run's epochs with the latest metrics, throughput and ETA, fed by
  the driver from each epoch's report (training/trainer.py relays Ray Train's reports here).
- `TrialProgress`: a sweep's trials (finished, running, stopped early, failed) with the best
  result so far, as a Ray Tune callback (it runs on the driver).

On a terminal: a rich progress bar redrawn in place. Anywhere else (a pipe, a CI log, a Ray job's
log): one plain line per epoch or finished trial, so logs stay readable. Ray's own per-report log
lines are kept out of the console unless `--verbose` (cluster.connect's log_to_driver); they stay
in the cluster's log files.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

SHOWN = ("train_loss",)  # beside the test_* metrics


def _metrics_text(metrics: dict[str, Any]) -> str:
    keys = [k for k in metrics if k.startswith("test_") or k in SHOWN]
    return " ".join(f"{k} {metrics[k]:.4f}" for k in keys if isinstance(metrics[k], (int, float)))


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class EpochProgress:
    """with EpochProgress(name, epochs) as p: p.update(report) for each epoch's report."""

    def __init__(self, name: str, epochs: int, console: Console | None = None) -> None:
        self.name, self.epochs = name, epochs
        self.console = console or Console(file=sys.stdout)
        self.live = self.console.is_terminal
        self.t0 = time.perf_counter()
        self.first: tuple[int, float] | None = None  # (epoch, time) of the first report seen

    def __enter__(self) -> EpochProgress:
        if self.live:
            self.progress = _progress(self.console)
            self.task = self.progress.add_task(self.name, total=self.epochs, info="starting workers")
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live:
            self.progress.stop()

    def update(self, metrics: dict[str, Any]) -> None:
        epoch = int(metrics.get("epoch", 0))
        now = time.perf_counter()
        self.first = self.first or (epoch, now)
        speed = metrics.get("samples_per_s")
        info = _metrics_text(metrics) + (f" {speed:.0f} samples/s" if isinstance(speed, (int, float)) else "")
        if self.live:
            self.progress.update(self.task, completed=epoch, info=info)
            return
        print(
            f"[{self.name}] epoch {epoch}/{self.epochs} {info}{self._eta(epoch, now)}",
            file=self.console.file,
            flush=True,
        )

    def _eta(self, epoch: int, now: float) -> str:
        """From the pace since the first report (a resumed run starts past epoch 0)."""
        done = epoch - self.first[0]
        if done <= 0 or epoch >= self.epochs:
            return ""
        left = (now - self.first[1]) / done * (self.epochs - epoch)
        return f", eta {left:.1f}s" if left < 10 else f", eta {left:.0f}s"


class TrialProgress:
    """A Ray Tune callback: a sweep's trials as they finish, and the best result so far."""

    def __init__(
        self, name: str, total: int, metric: str | None, mode: str, epochs: int, console: Console | None = None
    ) -> None:
        self.callback = _tune_callback(self)
        self.name, self.total, self.metric, self.mode, self.epochs = name, total, metric, mode, epochs
        self.console = console or Console(file=sys.stdout)
        self.live = self.console.is_terminal
        self.best: float | None = None
        self.last: dict[str, dict[str, Any]] = {}
        self.counts = {"done": 0, "failed": 0}

    def __enter__(self) -> TrialProgress:
        if self.live:
            self.progress = _progress(self.console)
            self.task = self.progress.add_task(f"{self.name} trials", total=self.total, info="starting")
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live:
            self.progress.stop()

    def _result(self, trial, result: dict[str, Any]) -> None:
        self.last[trial.trial_id] = result
        value = result.get(self.metric) if self.metric else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
            self.best = value if better else self.best
        if self.live:
            self.progress.update(self.task, info=self._info())

    def _end(self, trial, how: str, trials) -> None:
        self.counts[how] += 1
        running = sum(1 for t in trials if t.status == "RUNNING" and t is not trial)  # it is ending
        if self.live:
            self.progress.update(self.task, completed=sum(self.counts.values()), info=self._info(running))
            return
        last = self.last.get(trial.trial_id, {})
        if how == "done" and last.get("epoch", self.epochs) < self.epochs:  # a scheduler stopped it
            how = "stopped early"
        shown = f"{self.metric} {last[self.metric]:.4f} " if self.metric in last else ""
        print(
            f"[{self.name}] trial {trial.trial_id} {how} after {last.get('epoch', 0)} epoch(s) {shown}"
            f"({sum(self.counts.values())}/{self.total} finished; {self._info(running)})",
            file=self.console.file,
            flush=True,
        )

    def _info(self, running: int | None = None) -> str:
        parts = [] if running is None else [f"{running} running"]
        if self.counts["failed"]:
            parts.append(f"{self.counts['failed']} failed")
        if self.best is not None:
            parts.append(f"best {self.metric} {self.best:.4f}")
        return ", ".join(parts)


def _tune_callback(display: TrialProgress):
    """The Tune callback that feeds `display`. Tune pickles its callbacks into the sweep's saved
    state: the display (a console, a live thread) is left out of that copy."""
    from ray.tune import Callback

    class DisplayCallback(Callback):  # pickled by value: nothing of this function's scope in it
        display: TrialProgress | None = None

        def __getstate__(self) -> dict:
            return {"display": None}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if self.display:
                self.display._result(trial, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            if self.display:
                self.display._end(trial, "done", trials)

        def on_trial_error(self, iteration, trials, trial, **info):
            if self.display:
                self.display._end(trial, "failed", trials)

    callback = DisplayCallback()
    callback.display = display
    return callback
