"""Ray Tune sweeps on a real local cluster: ASHA stops trials early, the best model is exported,
a sweep whose driver is killed resumes without re-running finished trials, bad sweeps fail early."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cluster_procs import driver_env, foundry_cmd, kill_cluster, kill_driver_when
from modelfoundry.config import ConfigError
from modelfoundry.store.checkpoint import load_checkpoint
from modelfoundry.tuning import load_sweep, parse_sweep, run_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"


def sweep_dict(tmp_path: Path, name: str = "tiny-sweep", samples: int = 4, epochs: int = 4) -> dict:
    return {
        "name": name,
        "job": {
            "name": name,
            "model": {"family": "mlp", "preset": "tiny"},
            "data": {"dataset": "digits"},
            "train": {
                "epochs": epochs,
                "batch_size": 32,
                "storage": str(tmp_path / "runs"),
                "model_store": str(tmp_path / "models"),
            },
        },
        "search": {"train.lr": {"loguniform": [0.0002, 0.05]}, "model.hidden_sizes": {"choice": [[4], [32]]}},
        "tune": {"num_samples": samples, "grace_period": 1, "reduction_factor": 2, "cpus_per_worker": 0.9},
    }


def _reports(result_json: Path) -> list[dict]:
    """A trial's reports, one per line of Tune's result.json."""
    return [json.loads(ln) for ln in result_json.read_text().splitlines() if ln.strip()]


def test_shipped_sweeps_load():
    for path in sorted(CONFIGS.glob("tune_*.yaml")):
        sweep = load_sweep(path)
        assert sweep.tune.num_samples >= 8 and sweep.search


def test_asha_sweep_stops_trials_early_and_exports_a_loadable_best(ray_cluster, tmp_path):
    cfg = sweep_dict(tmp_path)
    # one trial at a time, a good learning rate first: ASHA then has a rung to compare the
    # hopeless ones (lr 1e-5) against and must stop them at their first rung
    cfg["search"] = {"train.lr": {"grid": [0.05, 0.00001, 0.00002, 0.00003]}, "model.hidden_sizes": {"choice": [[32]]}}
    cfg["tune"].update({"num_samples": 1, "max_concurrent_trials": 1})
    # augmented data streams through Ray Data: these trials fit a TorchTrainer and relay its
    # reports to Tune (the other tuning tests run one-worker trials in process)
    cfg["job"]["data"] = {"dataset": "digits", "augment": True, "max_shift": 0, "max_rotation": 3.0}
    outcome = run_sweep(parse_sweep(cfg, "test", tmp_path))
    s = outcome.summary()
    assert s["trials"] == 4 and s["epochs_total"] < 4 * 4 and s["stopped_early"] >= 1
    assert s["metric"] == "test_accuracy" and s["best_metric"] > 0.5 and s["best_config"]["train.lr"] == 0.05
    assert set(s["best_config"]) == {"train.lr", "model.hidden_sizes"}
    loaded = load_checkpoint(s["model_store"]["path"])
    assert loaded.meta.family == "mlp" and loaded.meta.metrics["test_accuracy"] == pytest.approx(s["best_metric"])
    files = [Path(f) for f in s["files"]]
    assert all(f.is_file() for f in files)
    rows = files[0].read_text().splitlines()
    assert len(rows) == 5 and "stopped_early" in rows[0]
    best_yaml = yaml.safe_load(files[1].read_text())
    assert best_yaml["train"]["lr"] == pytest.approx(s["best_config"]["train.lr"])
    # max_concurrent_trials: 1 held: no trial trained while another did
    spans = []
    for result in Path(s["path"]).glob("trial_*/result.json"):
        rows = _reports(result)
        spans.append((rows[0]["started_at"], rows[-1]["started_at"] + rows[-1]["epoch_time_s"]))
    spans.sort()
    assert len(spans) == 4 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans


def test_one_worker_trials_run_one_after_another_in_one_reused_process(ray_cluster, tmp_path):
    cfg = sweep_dict(tmp_path, name="reuse-sweep", samples=3, epochs=2)
    cfg["tune"].update({"scheduler": "fifo", "max_concurrent_trials": 1})
    s = run_sweep(parse_sweep(cfg, "test", tmp_path), export=False).summary()
    pids = set()
    for result in Path(s["path"]).glob("trial_*/result.json"):
        rows = _reports(result)
        assert [r["epoch"] for r in rows] == [1, 2]  # each trial trained from its own start
        pids |= {r["pid"] for r in rows}
    # no worker start and no torch import per trial: the first trial's process ran all three
    assert s["trials"] == 3 and len(pids) == 1, pids


def _finished_trials(exp_root: Path, epochs: int = 3) -> dict[str, int]:
    """trial dir -> number of reported results, for trials that reported their last epoch."""
    out = {}
    for result in exp_root.glob("sweep-*/trial_*/result.json"):
        lines = _reports(result)
        if lines and (lines[-1].get("done") or lines[-1].get("epoch") == epochs):
            out[result.parent.name] = len(lines)
    return out


def _one_at_a_time_sweep(tmp_path: Path, name: str) -> Path:
    """A sweep YAML of 4 FIFO trials of 8 epochs, one trial at a time (about a second each)."""
    cfg = sweep_dict(tmp_path, name, samples=4, epochs=8)
    cfg["tune"].update({"scheduler": "fifo", "max_concurrent_trials": 1})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow  # starts its own cluster through the CLI
def test_killed_sweep_driver_resumes_without_rerunning_finished_trials(tmp_path):
    # trials reuse one process and take about a second each: poll often, so the driver dies
    # after the first trial finished and before the last did
    path = _one_at_a_time_sweep(tmp_path, "resumable-sweep")
    env, _ = driver_env(tmp_path, "mfk")
    cmd = foundry_cmd("tune", "--config", str(path))
    exp_root = tmp_path / "runs" / "resumable-sweep"
    kill_driver_when(cmd, env, tmp_path / "driver.log", lambda: len(_finished_trials(exp_root, epochs=8)) >= 1)
    before = _finished_trials(exp_root, epochs=8)
    driver_log = (tmp_path / "driver.log").read_text()[-3000:]
    assert 1 <= len(before) < 4, f"the driver must die mid-sweep, after a trial finished:\n{driver_log}"
    out = subprocess.run([*cmd, "--resume", "--json"], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    after = _finished_trials(exp_root, epochs=8)
    assert summary["trials"] == 4 and len(after) == 4  # the searcher did not sample new trials
    for trial, results in before.items():
        assert after[trial] == results  # finished trials were not run again


@pytest.mark.slow  # starts its own cluster through the CLI
def test_ctrl_c_ends_a_sweep_with_what_finished_and_how_to_resume(tmp_path):
    path = _one_at_a_time_sweep(tmp_path, "interrupted-sweep")
    env, _ = driver_env(tmp_path, "mfi")
    cmd = foundry_cmd("tune", "--config", str(path), "--json")
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    exp_root = tmp_path / "runs" / "interrupted-sweep"
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and not _finished_trials(exp_root, epochs=8) and proc.poll() is None:
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_cluster(env["RAY_TMPDIR"])  # anything of its cluster still running: this test started it
    assert proc.returncode == 130, err[-3000:]
    # the driver's own output: Ray forwards its worker processes' output prefixed "(name pid=N)",
    # and a trial process torn down by the same Ctrl-C may print Python's "Exception ignored"
    # traceback from Ray's SIGTERM handler (seen once in CI): noise of the teardown, not the CLI's
    own = "\n".join(line for line in err.splitlines() if not re.search(r"\(\S+ pid=\d+(, ip=\S+)?\)", line))
    assert "Traceback" not in own and "TypeError" not in own, own[-3000:]
    assert "trial(s) finished" in err and f"foundry tune --config {path} --resume" in err, err[-3000:]
    assert "finished: {" in err  # the finished trial is listed with its config


@pytest.mark.parametrize(
    "patch, fragment",
    [
        ({"search": {"train.lrr": {"uniform": [0.1, 0.2]}}}, "train.lrr: unknown field"),
        ({"search": {"model.widht": {"choice": [1, 2]}}}, "unknown field 'widht'"),
        ({"search": {"train.lr": {"uniform": [0.2, 0.1]}}}, "low must be < high"),
        ({"search": {"train.lr": {"loguniform": [0.0, 0.1]}}}, "low must be > 0"),
        ({"search": {"model.hidden_sizes": {"choice": []}}}, "needs a non-empty list"),
        ({"search": {"train.lr": {"normal": [0, 1]}}}, "give exactly one of"),
        ({"search": {"train.epochs": {"choice": [0, 2]}}}, "Input should be greater than 0"),
        ({"search": {}}, "needs at least one field path"),
        ({"tune": {"scheduler": "hyperband"}}, "scheduler"),
        (
            {"search": {"model.hidden_sizes": {"choice": [[4], [32]]}}, "tune": {"scheduler": "pbt"}},
            "pbt mutates running trials and needs at least one of",
        ),
        ({"search": {"train.lr": {"grid": [0.1, 0.2]}}, "tune": {"scheduler": "pbt"}}, "PBT cannot mutate a grid"),
        ({"tune": {"scheduler": "pbt", "perturbation_interval": 4}}, "or PBT never acts"),
    ],
)
def test_bad_sweeps_fail_before_any_trial(tmp_path, patch, fragment):
    with pytest.raises(ConfigError) as err:
        parse_sweep({**sweep_dict(tmp_path), **patch}, "test", tmp_path)
    assert fragment in str(err.value)


def test_unreported_metric_and_oversized_trials_fail_before_any_trial(ray_cluster, tmp_path):
    bad_metric = sweep_dict(tmp_path)
    bad_metric["tune"]["metric"] = "test_mae"
    with pytest.raises(ConfigError, match="'test_mae' is not reported by a classification run"):
        run_sweep(parse_sweep(bad_metric, "test", tmp_path))
    too_big = sweep_dict(tmp_path)
    too_big["tune"].update({"workers_per_trial": 3, "cpus_per_worker": 1})
    with pytest.raises(ConfigError, match="one trial needs 3.1 CPUs"):
        run_sweep(parse_sweep(too_big, "test", tmp_path))
    assert not (tmp_path / "runs" / "tiny-sweep").exists()


def test_pbt_cosine_schedule_conflict_is_refused(tmp_path):
    cfg = sweep_dict(tmp_path)
    cfg["job"]["train"]["lr_schedule"] = "cosine"
    cfg["tune"]["scheduler"] = "pbt"
    with pytest.raises(ConfigError, match="Set train.lr_schedule: none"):
        parse_sweep(cfg, "test", tmp_path)


def test_pbt_exploits_checkpoints_with_mutated_hyperparameters(ray_cluster, tmp_path, recwarn):
    cfg = sweep_dict(tmp_path, name="pbt-sweep", samples=4, epochs=4)
    # one lr that learns, three that barely move: the weak trials must continue from the good
    # one's checkpoint (its weights and epoch) with a mutated learning rate
    cfg["search"] = {"train.lr": {"choice": [0.05, 0.00001, 0.00002, 0.00003]}}
    # synchronous PBT, all four trials at once: every interval compares the whole population, so
    # the weak half exploits on any machine (async PBT with two trials at a time exploited only
    # when the trials happened to overlap: never on a fast, quiet machine)
    cfg["tune"].update(
        {
            "scheduler": "pbt",
            "perturbation_interval": 1,
            "quantile_fraction": 0.5,
            "seed": 3,
            "synch": True,
            "cpus_per_worker": 0.45,
        }
    )
    cfg["job"]["model"]["hidden_sizes"] = [32]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    outcome = run_sweep(parse_sweep(cfg, "test", tmp_path), tracking_uri=uri)
    s = outcome.summary()
    assert s["trials"] == 4 and s["best_metric"] > 0.5
    # tracked: a child run per trial; an exploited trial's new learning rate is logged as a metric
    # (MLflow params are write-once: re-logging the mutated config used to end tracking)
    from mlflow import MlflowClient

    assert not [w for w in recwarn if "MLflow tracking" in str(w.message)]
    client = MlflowClient(uri)
    parent = client.get_run(s["tracking_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4 and any("config.train.lr" in c.data.metrics for c in children)
    csv = Path(s["files"][0]).read_text()
    assert "pbt-sweep" in s["path"] and csv.count("\n") == 5
    # Tune's own record of every exploit: [target, donor, target step, donor step, old, new config]
    exploits = [json.loads(ln) for ln in (Path(s["path"]) / "pbt_global.txt").read_text().splitlines()]
    weak = {t["trial_id"].split("_", 3)[3].rsplit("_", 2)[0] for t in outcome.trials if "lr=0.0000" in t["trial_id"]}
    assert weak, "seed 3 samples one learning rate of 1e-5..3e-5: the weak trial"
    # at the first interval the whole population has reported (synch): the weak trial continues
    # from a trained donor (donor step >= 1) with a mutated learning rate...
    from_trained = [e for e in exploits if e[0] in weak and e[3] >= 1 and e[4] != e[5]]
    assert from_trained, exploits
    # ...and ends far above what its own learning rate reaches in 4 epochs from scratch
    weak_final = [t["test_accuracy"] for t in outcome.trials if "lr=0.0000" in t["trial_id"]]
    assert min(weak_final) > 0.5, (weak_final, exploits)
    assert load_checkpoint(s["model_store"]["path"]).meta.family == "mlp"
