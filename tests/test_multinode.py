"""Multi-node fault tolerance on one machine (its own cluster, in a subprocess)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from elastic_scenario import EPOCHS


def test_node_loss_resumes_and_no_capacity_fails_in_bounded_time(tmp_path):
    script = Path(__file__).with_name("multinode_scenario.py")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    history = out["history"]
    # every epoch ran once, in order; a restart happened after the node loss, and the first epoch
    # of the new attempt is the last checkpoint's epoch + 1
    assert [e for e, _ in history] == list(range(1, 13))
    attempts = [a for _, a in history]
    assert attempts[0] == 0 and attempts[-1] >= 1 and attempts == sorted(attempts)
    assert out["accuracy"] > 0.8
    # no capacity left: a clear error, not an endless wait
    assert out["no_capacity_error"] and "failed" in out["no_capacity_error"]
    assert out["failed_after_s"] < 240


def test_split_stages_on_different_nodes_answer_like_the_whole_model(tmp_path):
    script = Path(__file__).with_name("multinode_serve_scenario.py")
    # its cluster picks its own HAProxy ports (not those of the session cluster, if it serves)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")
    }
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "18137"], capture_output=True, text=True, timeout=600, env=env
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    assert out["status"] == 200 and len(out["got"]) == 16
    assert np.allclose(out["got"], out["expected"], atol=1e-5)  # the answers round to 6 places
    assert out["stages"] == {"stage-0": "zone_a", "stage-1": "zone_b"}
    # the same rules as the embedded cluster: token auth, the token owner-only from the start,
    # every node on loopback, nothing but Serve's token-checked replica gRPC beyond it
    assert (
        out["usage_stats"] == "0"
        and out["auth_mode"] == "token"
        and out["token_mode"] == "0o600"
        and out["token_dir_mode"] == "0o700"
    )
    assert out["node_ips"] == ["127.0.0.1"] and out["exposed"] == [], out
    assert out["no_token_client"] != "CONNECTED" and "token" in out["no_token_client"].lower(), out


def run_scenario(script: str, tmp_path: Path) -> dict:
    """The scenario's RESULT line; on a timeout its whole process group (the cluster it started
    among it) is killed, so nothing it left runs on into later tests."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name(script)), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, stdout[-3000:] + stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_an_elastic_run_grows_when_a_node_joins_and_shrinks_when_one_dies(tmp_path):
    """train.workers {min: 1, max: 2} with step snapshots: one run starts on 1 worker, grows to 2
    when a node joins, shrinks to 1 when that node's processes are SIGKILLed and resumes in the
    middle of the epoch it was in, and ends with every epoch once, in order, no jump in the loss
    at a resize, and the accuracy a fixed run reaches."""
    out = run_scenario("elastic_scenario.py", tmp_path)
    assert "error" not in out, out
    history = out["history"]  # (epoch, workers, attempt, train_loss)
    assert [h[0] for h in history] == list(range(1, EPOCHS + 1)), history
    sizes = [h[1] for h in history]
    assert sizes[0] == 1 and 2 in sizes and sizes[-1] == 1, sizes
    timeline = out["workers"]["timeline"]
    assert [w for _, w in timeline] == [1, 2, 1] and [t for t, _ in timeline] == sorted(t for t, _ in timeline)
    assert out["workers"]["min"] == 1 and out["workers"]["max"] == 2
    # each resize restarted the workers; the last (the shrink) resumed mid-epoch from a snapshot
    assert len(out["recoveries"]) >= 2 and out["recoveries"][-1]["resumed_at"][1] > 0, out["recoveries"]
    for before, after in zip(history, history[1:]):
        if after[1] != before[1]:  # a resize: the run resumed where it was, no jump
            assert after[3] <= 1.25 * before[3], (before, after)
    assert out["accuracy"] > 0.9
    print(json.dumps({"timeline": timeline, "events": out["events"], "accuracy": out["accuracy"]}))
