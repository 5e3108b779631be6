"""The key/value caches of generation. A Block asks its cache three things: the positions of
the new tokens, attention of the new queries over the cached and the new keys (which join the
cache), and to advance. `Cache` holds one sequence; `BatchCache` many, one row each, so one
forward pass appends a token to every sequence (continuous batching, serving/continuous.py).

BatchCache is dense (rows x capacity positions per block), not paged: torch's attention kernels
take dense keys and values, so a paged cache would be gathered into a dense one every step and
every block, a copy as large as the attention's own reads; the dense cache writes each new key in
place and attends over a view. Its cost is padding: every row spans the longest reservation of
the batch (a reservation is a sequence's prompt plus its new tokens, at most the context), which
is what the scheduler's KV budget counts (rows x capacity), so the memory it allows is the
memory used. Rows join (copied in once, after their prompts ran together, right-padded: causal
attention never lets a real position see the padding after it) and leave (the rest copied once)
between steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F


@dataclass
class Cache:
    """Keys and values of one sequence's positions so far, one (k, v) pair per block this process
    runs, each (1, heads, time, head_dim); `start` is the position of the next token."""

    start: int = 0
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def reset(self) -> None:
        self.start = 0
        self.kv.clear()

    def positions(self, t: int, device: torch.device) -> torch.Tensor:
        return torch.arange(self.start, self.start + t, device=device)

    def attend(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t, past = q.shape[2], 0
        if index in self.kv:
            pk, pv = self.kv[index]
            past = pk.shape[2]
            k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
        self.kv[index] = (k, v)
        if past and t > 1:  # new queries over old + new keys: causal within the new part
            mask = torch.ones(t, past + t, dtype=torch.bool, device=q.device).tril(past)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        # one new query sees every key; a fresh sequence is plainly causal
        return F.scaled_dot_product_attention(q, k, v, is_causal=not past)

    def advance(self, t: int) -> None:
        self.start += t


class BatchCache:
    """Many sequences' keys and values, one row each: per block (rows, heads, capacity, head_dim).
    Row r holds `lengths[r]` positions; a step feeds one token per row at the row's own position,
    and attention masks each row's positions past its length."""

    def __init__(self) -> None:
        self.keys: list[str] = []  # the sequence of each row
        self.reserve: list[int] = []  # the most positions each row will hold
        self.lengths = torch.zeros(0, dtype=torch.long)  # on the CPU; a step copies it over once
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._step: tuple[torch.Tensor, torch.Tensor, int] | None = None  # this step's positions, mask

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def capacity(self) -> int:
        return max(self.reserve, default=0)

    def positions(self, t: int, device: torch.device) -> torch.Tensor:
        assert t == 1, "a batched step feeds one token per row"
        return self._positions(device)[0][:, None]

    def _positions(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self._step is None:
            pos = self.lengths.to(device)
            length = int(self.lengths.max()) + 1
            mask = (torch.arange(length, device=device) <= pos[:, None])[:, None, None, :]
            self._step = (pos, mask, length)
        return self._step

    def attend(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        pos, mask, length = self._positions(q.device)
        keys, values = self.kv[index]
        rows = torch.arange(len(self.keys), device=q.device)
        keys[rows, :, pos] = k[:, :, 0]  # each row's new key at its own position, in place
        values[rows, :, pos] = v[:, :, 0]
        return F.scaled_dot_product_attention(q, keys[:, :, :length], values[:, :, :length], attn_mask=mask)

    def advance(self, t: int) -> None:
        self.lengths += t
        self._step = None

    def insert(self, keys: list[str], fed: Cache, lengths: list[int], reserves: list[int]) -> None:
        """Sequences whose positions ran together in `fed` (a batch of prompts, right-padded: row i
        holds lengths[i] real positions) join as the last rows, in order (leaving their old rows
        first, if they had any); row i will hold at most reserves[i] positions."""
        self.drop(set(keys))
        reserves = [max(r, n) for r, n in zip(reserves, lengths)]
        capacity = max(self.capacity, *reserves)
        for index, (k, v) in fed.kv.items():
            old = self.kv.get(index)
            self.kv[index] = (
                _append_rows(old and old[0], k, lengths, capacity),
                _append_rows(old and old[1], v, lengths, capacity),
            )
        self.keys += keys
        self.reserve += reserves
        self.lengths = torch.cat([self.lengths, torch.tensor(lengths, dtype=torch.long)])
        self._step = None

    def drop(self, keys: set[str]) -> None:
        """These sequences leave; the remaining rows are copied once, to the capacity they need."""
        keep = [i for i, k in enumerate(self.keys) if k not in keys]
        if len(keep) == len(self.keys):
            return
        self.keys = [self.keys[i] for i in keep]
        self.reserve = [self.reserve[i] for i in keep]
        self.lengths = self.lengths[keep]
        self._step = None
        if not keep:
            self.kv.clear()
            return
        capacity = self.capacity
        for index, (k, v) in self.kv.items():
            rows = torch.tensor(keep, device=k.device)
            self.kv[index] = (k[rows, :, :capacity].contiguous(), v[rows, :, :capacity].contiguous())


def _append_rows(batch: torch.Tensor | None, fed: torch.Tensor, lengths: list[int], capacity: int) -> torch.Tensor:
    """batch (rows, heads, cap, dim) grown to `capacity` positions, with the first lengths[i]
    positions of fed's row i (fed: (n, heads, t, dim)) as new last rows."""
    rows = fed.new_zeros(len(lengths), fed.shape[1], capacity, fed.shape[3])
    for i, n in enumerate(lengths):
        rows[i, :, :n] = fed[i, :, :n]
    if batch is None or not len(batch):
        return rows
    if batch.shape[2] < capacity:
        batch = torch.cat([batch, batch.new_zeros(*batch.shape[:2], capacity - batch.shape[2], batch.shape[3])], 2)
    return torch.cat([batch, rows])
