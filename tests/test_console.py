"""The console display of runs and sweeps: live in a terminal, one plain line per event elsewhere."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from modelfoundry.console import EpochProgress, TrialProgress


def report(epoch: int, acc: float) -> dict:
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "test_accuracy": acc, "samples_per_s": 5000.0,
            "train_accuracy": 0.5, "checkpoint_path": "/x"}  # fmt: skip


def test_a_run_off_a_terminal_prints_one_line_per_epoch_with_metrics_and_eta():
    out = io.StringIO()
    with EpochProgress("digits", 3, Console(file=out, force_terminal=False)) as p:
        for e in (1, 2, 3):
            p.update(report(e, 0.8 + e / 100))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0] == "[digits] epoch 1/3 train_loss 1.0000 test_accuracy 0.8100 5000 samples/s"
    assert lines[1].startswith("[digits] epoch 2/3 train_loss 0.5000 test_accuracy 0.8200") and ", eta " in lines[1]
    assert "eta" not in lines[2] and "train_accuracy" not in out.getvalue() and "checkpoint" not in out.getvalue()


def test_a_run_on_a_terminal_redraws_one_bar():
    out = io.StringIO()
    with EpochProgress("digits", 2, Console(file=out, force_terminal=True, width=160)) as p:
        p.update(report(1, 0.9))
        p.update(report(2, 0.95))
    text = out.getvalue()
    assert "2/2" in text and "test_accuracy 0.9500" in text and "[digits]" not in text


def trial(i: int, status: str = "RUNNING"):
    return SimpleNamespace(trial_id=f"t{i}", status=status)


def test_a_sweep_reports_each_finished_trial_and_the_best_so_far():
    out = io.StringIO()
    p = TrialProgress("sweep", 3, "test_loss", "min", epochs=4, console=Console(file=out, force_terminal=False))
    a, b, c = trial(0), trial(1), trial(2)
    with p:
        cb = p.callback
        cb.on_trial_result(0, [a, b, c], a, {"epoch": 4, "test_loss": 0.5})
        cb.on_trial_result(0, [a, b, c], b, {"epoch": 1, "test_loss": 0.9})
        cb.on_trial_complete(0, [a, b, c], b)  # stopped by the scheduler after 1 epoch of 4
        b.status = "TERMINATED"
        cb.on_trial_complete(0, [a, b, c], a)
        a.status = "TERMINATED"
        cb.on_trial_error(0, [a, b, c], c)
    lines = out.getvalue().splitlines()
    assert (
        lines[0]
        == "[sweep] trial t1 stopped early after 1 epoch(s) test_loss 0.9000 (1/3 finished; 2 running, best test_loss 0.5000)"
    )
    assert (
        lines[1]
        == "[sweep] trial t0 done after 4 epoch(s) test_loss 0.5000 (2/3 finished; 1 running, best test_loss 0.5000)"
    )
    assert (
        lines[2]
        == "[sweep] trial t2 failed after 0 epoch(s) (3/3 finished; 0 running, 1 failed, best test_loss 0.5000)"
    )
    from ray import cloudpickle  # how Tune saves its callbacks with the sweep state

    assert cloudpickle.loads(cloudpickle.dumps(cb)).display is None
