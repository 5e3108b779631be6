"""Structured pruning: remove whole neurons, channels and hidden units, so the pruned model is an
ordinary, smaller model of its family (a new config, smaller weight shapes: fewer parameters and
FLOPs, no masks), which then fine-tunes through the same Ray Train loop.

Importance of a unit: the L2 norm of its incoming weights times the L2 norm of its outgoing
weights (a unit with either side near zero contributes little). Every prunable width keeps
round((1 - ratio) * width) units, at least one, those of highest importance, in their order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from modelfoundry.models import build_model, config_dict, family_of

PRUNABLE = ("mlp", "cnn", "rnn")


def keep_count(width: int, ratio: float) -> int:
    return max(1, round((1.0 - ratio) * width))


def _top(importance: torch.Tensor, ratio: float) -> torch.Tensor:
    k = keep_count(len(importance), ratio)
    return torch.sort(torch.topk(importance, k).indices).values


def _norm_rows(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1).norm(dim=1)


def _norm_cols(w: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Per input unit norm of a Linear weight whose columns come in `groups` per unit (the
    flattened channel x pixels of a conv feature map)."""
    w = w.detach()
    return w.reshape(w.shape[0], -1, groups).norm(dim=(0, 2))


def _linear(old: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = old.weight.detach()
    b = old.bias.detach() if old.bias is not None else None
    if rows is not None:
        w = w[rows]
        b = b[rows] if b is not None else None
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new


def prune(model: nn.Module, ratio: float) -> nn.Module:
    """A new, smaller model of the same family with `ratio` of each prunable width removed."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"prune ratio must be in (0, 1), got {ratio}")
    family = family_of(model)
    if family not in PRUNABLE:
        raise ValueError(f"structured pruning applies to families {list(PRUNABLE)}, not {family}")
    model = model.eval()
    return {"mlp": _prune_mlp, "cnn": _prune_cnn, "rnn": _prune_rnn}[family](model, ratio)


def _rebuild(model: nn.Module, state: dict[str, torch.Tensor], **changes) -> nn.Module:
    cfg = {**config_dict(model), **changes}
    new = build_model(family_of(model), "default", **cfg)
    new.load_state_dict(state)
    return new.eval()


def _prune_mlp(model: nn.Module, ratio: float) -> nn.Module:
    linears = [block[0] for block in model.blocks] + [model.head]
    keep: list[torch.Tensor] = []
    for i in range(len(model.blocks)):  # hidden layer i: rows of linears[i], columns of linears[i + 1]
        importance = _norm_rows(linears[i].weight) * _norm_cols(linears[i + 1].weight)
        keep.append(_top(importance, ratio))
    state = model.state_dict()
    for i, lin in enumerate(linears):
        rows = keep[i] if i < len(keep) else None
        cols = keep[i - 1] if i > 0 else None
        new = _linear(lin, rows, cols)
        prefix = f"blocks.{i}.0" if i < len(keep) else "head"
        state[f"{prefix}.weight"], state[f"{prefix}.bias"] = new.weight.data, new.bias.data
    return _rebuild(model, state, hidden_sizes=[len(k) for k in keep])


def _conv_of(block: nn.Sequential) -> tuple[str, nn.Conv2d, str | None]:
    names = dict(block.named_children())
    conv_name = next(n for n, m in names.items() if isinstance(m, nn.Conv2d))
    bn_name = next((n for n, m in names.items() if isinstance(m, nn.BatchNorm2d)), None)
    return conv_name, names[conv_name], bn_name


def _prune_cnn(model: nn.Module, ratio: float) -> nn.Module:
    state = dict(model.state_dict())
    blocks = list(model.blocks)
    fc1, fc2 = model.head[2], model.head[5]
    last_channels = blocks[-1]
    pixels = fc1.weight.shape[1] // _conv_of(last_channels)[1].out_channels
    keep: list[torch.Tensor] = []
    for i, block in enumerate(blocks):
        _, conv, _ = _conv_of(block)
        if i + 1 < len(blocks):
            outgoing = _conv_of(blocks[i + 1])[1].weight.detach().transpose(0, 1).reshape(conv.out_channels, -1)
            out_norm = outgoing.norm(dim=1)
        else:
            out_norm = _norm_cols(fc1.weight, pixels)
        keep.append(_top(_norm_rows(conv.weight) * out_norm, ratio))
    for i, block in enumerate(blocks):
        conv_name, conv, bn_name = _conv_of(block)
        w = conv.weight.detach()[keep[i]]
        if i > 0:
            w = w[:, keep[i - 1]]
        state[f"blocks.{i}.{conv_name}.weight"] = w
        state[f"blocks.{i}.{conv_name}.bias"] = conv.bias.detach()[keep[i]]
        if bn_name is not None:
            for buf in ("weight", "bias", "running_mean", "running_var"):
                state[f"blocks.{i}.{bn_name}.{buf}"] = state[f"blocks.{i}.{bn_name}.{buf}"][keep[i]]
    hidden_keep = _top(_norm_rows(fc1.weight) * _norm_cols(fc2.weight), ratio)
    flat_cols = (keep[-1][:, None] * pixels + torch.arange(pixels)[None, :]).reshape(-1)
    new1 = _linear(fc1, hidden_keep, flat_cols)
    new2 = _linear(fc2, None, hidden_keep)
    state["head.2.weight"], state["head.2.bias"] = new1.weight.data, new1.bias.data
    state["head.5.weight"], state["head.5.bias"] = new2.weight.data, new2.bias.data
    return _rebuild(model, state, channels=[len(k) for k in keep], hidden=len(hidden_keep))


def _gate_rows(units: torch.Tensor, hidden: int, gates: int) -> torch.Tensor:
    return torch.cat([g * hidden + units for g in range(gates)])


def _prune_rnn(model: nn.Module, ratio: float) -> nn.Module:
    rnn: nn.LSTM | nn.GRU = model.encoder.rnn
    hidden, layers = rnn.hidden_size, rnn.num_layers
    dirs = 2 if rnn.bidirectional else 1
    gates = 4 if isinstance(rnn, nn.LSTM) else 3
    suffixes = ["", "_reverse"][:dirs]
    params = dict(rnn.named_parameters())
    head = model.head[1]

    def unit_in_norm(layer: int) -> torch.Tensor:  # incoming: every gate's rows of both weights
        total = torch.zeros(hidden)
        for s in suffixes:
            for kind in ("ih", "hh"):
                w = params[f"weight_{kind}_l{layer}{s}"].detach()
                total += w.reshape(gates, hidden, -1).pow(2).sum(dim=(0, 2))
        return total.sqrt()

    def unit_out_norm(layer: int) -> torch.Tensor:  # outgoing: next layer's input columns, or the head's
        if layer + 1 < layers:
            cols = torch.cat([params[f"weight_ih_l{layer + 1}{s}"].detach() for s in suffixes])
        else:
            cols = head.weight.detach()
        return cols.reshape(cols.shape[0], dirs, hidden).pow(2).sum(dim=(0, 1)).sqrt()

    # one hidden size for every layer (the family's config): units ranked over all layers together
    importance = torch.stack([unit_in_norm(layer) * unit_out_norm(layer) for layer in range(layers)]).sum(0)
    keep = _top(importance, ratio)
    k = len(keep)
    in_cols = torch.cat([d * hidden + keep for d in range(dirs)])  # the concatenated directions' outputs
    state = dict(model.state_dict())
    for layer in range(layers):
        for s in suffixes:
            rows = _gate_rows(keep, hidden, gates)
            base = "encoder.rnn."
            ih = params[f"weight_ih_l{layer}{s}"].detach()[rows]
            if layer > 0:
                ih = ih[:, in_cols]
            state[f"{base}weight_ih_l{layer}{s}"] = ih
            state[f"{base}weight_hh_l{layer}{s}"] = params[f"weight_hh_l{layer}{s}"].detach()[rows][:, keep]
            for kind in ("ih", "hh"):
                name = f"bias_{kind}_l{layer}{s}"
                if name in params:
                    state[f"{base}{name}"] = params[name].detach()[rows]
    new_head = _linear(head, None, in_cols)
    state["head.1.weight"], state["head.1.bias"] = new_head.weight.data, new_head.bias.data
    return _rebuild(model, state, hidden_size=k)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def widths(model: nn.Module) -> dict[str, Sequence[int] | int]:
    """The prunable widths of a model's config (what pruning changes)."""
    cfg = config_dict(model)
    return {k: cfg[k] for k in ("hidden_sizes", "channels", "hidden", "hidden_size") if k in cfg}
