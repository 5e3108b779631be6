"""train.strategy: fsdp, PyTorch's current FSDP (`fully_shard`, FSDP2): every worker holds a
shard of each parameter, gradient and optimizer state instead of a full replica.

- `shard()` wraps each unit a family names (the Transformer's blocks; `shard_units()`) and
  then the root (the embedding, the tied head and the rest), on a 1-D device mesh over the Train
  workers' process group: gloo on CPU, nccl on GPU. On GPU the parameters compute in bf16 and
  gradients reduce in fp32 (`MixedPrecisionPolicy`), in place of the DDP path's autocast.
- `save()` writes sharded checkpoints with torch.distributed.checkpoint (DCP): each worker writes
  its own files into its own report directory and Ray Train gathers every worker's files into
  one checkpoint directory (distinct names, __<rank>_0.distcp); rank 0 adds model.json, which
  records every file's sha256 (gathered from the workers), so a checkpoint is verified as a DDP
  one is. `load()` resumes from it on any number of workers (DCP reshards).
- `full_state()` gathers the full weights on rank 0 for the checkpoint's model.pt: what serving,
  export and compression read (weights_only). DCP's `.metadata` is a pickle, so nothing but a
  resume of the run reads the shards (docs/security.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from modelfoundry.store.checkpoint import SHARDED_MODEL_DIR, SHARDED_OPTIMIZER_DIR, sha256_file


def shard(model: nn.Module, device: torch.device, bf16: bool) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if device.type == "cuda":
        torch.cuda.set_device(device)  # the mesh and nccl use the current device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs: dict[str, Any] = {"mesh": mesh, **({"mp_policy": policy} if policy else {})}
    model.to(device)
    for unit in getattr(model, "shard_units", lambda: [])():
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    return model


def save(directory: str, model: nn.Module, optimizer) -> dict[str, str]:
    """Collective: every rank writes its shards of the model and the optimizer state under
    directory/sharded; returns (on every rank) the sha256 of every rank's files, by their path
    relative to `directory`. The small rest of the training state (epoch, history, scheduler)
    goes in rank 0's state.pt as for DDP."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    root = Path(directory)
    dcp.save(model_state, checkpoint_id=str(root / SHARDED_MODEL_DIR))
    dcp.save({"optimizer": optim_state}, checkpoint_id=str(root / SHARDED_OPTIMIZER_DIR))
    mine = {
        str(p.relative_to(root)): sha256_file(p)
        for part in (SHARDED_MODEL_DIR, SHARDED_OPTIMIZER_DIR)
        for p in sorted((root / part).rglob("*"))
        if p.is_file()
    }
    everyone: list[dict[str, str]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(everyone, mine)
    return {k: v for files in everyone for k, v in files.items()}


def full_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Collective: the model's full (unsharded) weights on CPU, on rank 0; None on the others."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in state.items()} if dist.get_rank() == 0 else None


def load(directory: str, model: nn.Module, optimizer) -> None:
    """Resume: fill the sharded model and optimizer from a verified sharded checkpoint (written
    by any number of workers: DCP reshards to this run's)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)  # initialises the optimizer's state
    dcp.load(model_state, checkpoint_id=str(Path(directory) / SHARDED_MODEL_DIR))
    wrapped = {"optimizer": optim_state}
    dcp.load(wrapped, checkpoint_id=str(Path(directory) / SHARDED_OPTIMIZER_DIR))
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=wrapped["optimizer"])
