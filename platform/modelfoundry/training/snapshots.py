"""Step snapshots (train.checkpoint_every_steps): recovery that loses steps, not an epoch.

Every N optimizer steps the ranks sum the epoch's metric totals so far (one small all-reduce) and
rank 0 copies the training state to host memory (model, optimizer, schedule, totals, history);
a background thread serializes it and writes `step-snapshot.pt` in the run's directory (a
temporary name, then a rename: a half-written snapshot is never read). The training goes on
while it writes; the next snapshot waits for the previous write, so a failure loses at most N
steps plus those taken during the last write. A restarted attempt (a worker or node died, or an
elastic resize) resumes from whichever is newer, the snapshot or the epoch checkpoint, at the
step after it (global_order makes that the same examples on any world size).

The file holds tensors, numbers, strings and lists only: it loads with torch's weights_only
loader (no pickled code runs). Each attempt's resume point and the time of its first completed
step are kept in it (`recoveries`), which the run's result reports.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from modelfoundry.storage import filesystem, join

SNAPSHOT = "step-snapshot.pt"
FORMAT = 1


def host_copy(obj: Any) -> Any:
    """A deep copy with every tensor cloned to CPU (the optimizer mutates its state in place)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(host_copy(v) for v in obj)
    return obj


def load_snapshot(run_path: str) -> dict[str, Any] | None:
    """The run's newest step snapshot, or None (none written, or not one this loader knows)."""
    fs, path = filesystem(join(run_path, SNAPSHOT))
    if fs.get_file_info(path).type.name == "NotFound":
        return None
    with fs.open_input_stream(path) as f:
        snap = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    return snap if isinstance(snap, dict) and snap.get("format") == FORMAT else None


class Snapshots:
    """Rank 0's writer of step snapshots; every rank calls `after_step` (it may all-reduce)."""

    def __init__(self, run_path: str, every: int, rank: int, recoveries: list[dict]) -> None:
        self.run_path, self.every, self.rank = run_path, every, rank
        self.recoveries = recoveries  # earlier attempts', then this one's (appended at its first step)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="step-snapshot") if rank == 0 else None
        self._pending: Future | None = None
        self._since = 0
        self._recorded = False

    def first_step(self, attempt: int, epoch: int, step: int) -> None:
        """Record this attempt, at its first step: where it resumed and when that step completed."""
        if self._recorded:
            return
        self._recorded = True
        self.recoveries.append({"attempt": attempt, "resumed_at": [epoch, step - 1], "first_step_at": time.time()})

    def due(self) -> bool:
        self._since += 1
        return self._since >= self.every

    def save(self, state: dict[str, Any]) -> None:
        """Queue `state` (already summed over the ranks) for writing; rank 0 only, after due()."""
        self._since = 0
        if self._pool is None:
            return
        self.wait()  # at most one write in flight: the loss stays bounded
        snap = {"format": FORMAT, **host_copy(state), "recoveries": list(self.recoveries), "written_at": time.time()}
        self._pending = self._pool.submit(self._write, snap)

    def _write(self, snap: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(snap, buf)
        fs, path = filesystem(join(self.run_path, SNAPSHOT))
        tmp = f"{path}.tmp-{snap['attempt']}"
        with fs.open_output_stream(tmp) as f:
            f.write(buf.getvalue())
        fs.move(tmp, path)  # a rename on a local or shared file system; one object on S3

    def wait(self) -> None:
        """The write in flight finished (its error raised here, in the training thread)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown()
