"""Decoder-only Transformer language model (GPT-style): token + learned position embeddings,
pre-norm blocks of causal self-attention (torch's scaled_dot_product_attention: flash or
memory-efficient kernels where the device has them) and an MLP, a final LayerNorm and a head
whose weight is the token embedding's (tied).

The input is token ids, shape (batch, time) int64, time <= context; the output is next-token
logits, shape (batch, time, vocab). `stages()` = [embedding, block 0, ..., block N-1, norm+head]:
a split cuts the blocks into stage services. Generation keeps a key/value cache per block
(`Cache`), so each new token costs one position's work, not the whole prefix's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import ClassVar

import torch
from pydantic import model_validator
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from modelfoundry.models.kv_cache import Cache
from modelfoundry.models.spec import Dropout, FamilyConfig, FamilySpec, PosInt


class TransformerConfig(FamilyConfig):
    input_dtype: ClassVar[str] = "int64"
    vocab_size: PosInt = 96  # set from the dataset's tokenizer
    context: PosInt = 128  # the most positions the model attends over
    d_model: PosInt = 128
    n_layers: PosInt = 4
    n_heads: PosInt = 4
    mlp_ratio: PosInt = 4
    dropout: Dropout = 0.0

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be a multiple of n_heads {self.n_heads}")
        return self

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.context,)


PRESETS = {
    "tiny": {"context": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "dropout": 0.0},
    "default": {"context": 128, "d_model": 128, "n_layers": 4, "n_heads": 4, "dropout": 0.0},
    # GPU presets: GPT-2 small's shape (768 wide, 12 blocks, 12 heads, 1024 positions), and a
    # 24-block 1024-wide one (GPT-2 medium's); shard them with train.strategy: fsdp
    "gpt2-small": {"context": 1024, "d_model": 768, "n_layers": 12, "n_heads": 12, "dropout": 0.1},
    "gpt2-medium": {"context": 1024, "d_model": 1024, "n_layers": 24, "n_heads": 16, "dropout": 0.1},
}


class Embedding(nn.Module):
    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = nn.Embedding(c.context, c.d_model)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, idx: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        t = idx.shape[1]
        positions = cache.positions(t, idx.device) if cache is not None else torch.arange(t, device=idx.device)
        return self.drop(self.tok(idx) + self.pos(positions))


class Block(nn.Module):
    """Pre-norm: h + attn(ln(h)), then h + mlp(ln(h))."""

    def __init__(self, c: TransformerConfig, index: int) -> None:
        super().__init__()
        self.index, self.n_heads, self.p = index, c.n_heads, c.dropout
        self.ln1 = nn.LayerNorm(c.d_model)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model)
        self.ln2 = nn.LayerNorm(c.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(c.d_model, c.mlp_ratio * c.d_model),
            nn.GELU(),
            nn.Linear(c.mlp_ratio * c.d_model, c.d_model),
            nn.Dropout(c.dropout),
        )
        self.drop = nn.Dropout(c.dropout)
        self.checkpointing = False

    def attention(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in self.qkv(x).split(d, 2))
        if cache is not None:
            y = cache.attend(self.index, q, k, v)
        else:  # training and export: plainly causal (for t == 1 too: a 1x1 causal mask masks
            # nothing, and no test on t keeps a symbolic t exportable to ONNX)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.p if self.training else 0.0)
        return self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))

    def forward(self, h: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        if self.checkpointing and self.training and cache is None:  # recompute in backward
            return checkpoint(self._forward, h, None, use_reentrant=False)
        return self._forward(h, cache)

    def _forward(self, h: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        h = h + self.attention(self.ln1(h), cache)
        return h + self.mlp(self.ln2(h))


class Head(nn.Module):
    """Final LayerNorm and the output projection (its weight is the token embedding's)."""

    def __init__(self, c: TransformerConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(c.d_model)
        self.out = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.out.weight = embedding.weight

    def forward(self, h: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        return self.out(self.ln(h))


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = Embedding(config)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.head = Head(config, self.embed.tok)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: residual projections scaled by depth
            for proj in (block.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        if idx.shape[1] + (cache.start if cache else 0) > self.config.context:
            raise ValueError(f"{idx.shape[1]} tokens exceed the model's context of {self.config.context}")
        return run_group(self.stages(), idx, cache)

    def stages(self) -> list[nn.Module]:
        return [self.embed, *self.blocks, self.head]

    def shard_units(self) -> list[nn.Module]:
        """What FSDP shards on its own (training/sharding.py): each block."""
        return list(self.blocks)

    def set_activation_checkpointing(self, on: bool) -> None:
        for block in self.blocks:
            block.checkpointing = on


def run_group(modules: list[nn.Module], x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
    """Consecutive stages over x's positions (the whole model, or what one stage service runs
    per generation step); with a cache, the positions are appended to it."""
    t = x.shape[1]
    for m in modules:
        x = m(x, cache)
    if cache is not None:
        cache.advance(t)
    return x


class Sequence:
    """The token ids of one generation and what its cache holds, so every generation path (the
    local one below, the serving ingress over split stages) feeds the same positions: after the
    prompt, one new token a step; when the sequence reaches the context, the cache restarts from
    the last `window_for(context)` tokens. `miss()`: the cache was lost (a stage replica that does
    not hold it), so the next step re-feeds the current segment, rebuilding exactly that cache."""

    def __init__(self, prompt: list[int], context: int) -> None:
        self.ids, self.context = list(prompt), context
        self.segment = max(0, len(self.ids) - context)  # where the cached positions begin
        self.cached = 0  # how many ids from `segment` on the cache holds

    def next_input(self) -> tuple[list[int], int]:
        """(ids to feed, position of the first): start 0 means a fresh cache."""
        if len(self.ids) - self.segment > self.context:
            self.segment, self.cached = len(self.ids) - window_for(self.context), 0
        return self.ids[self.segment + self.cached :], self.cached

    def fed(self, n: int) -> None:
        self.cached += n

    def miss(self) -> None:
        self.cached = 0

    def append(self, token: int) -> None:
        self.ids.append(token)


# below this a temperature samples as greedy: softmax(logits / T) is one-hot to float32 precision
# there, and a tiny T would overflow logits / T to inf (a NaN distribution)
MIN_TEMPERATURE = 1e-3


def next_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
    top_p: float | None = None,
) -> int:
    """One token id from the last position's logits (shape (vocab,)): the argmax at temperature
    0 (or below MIN_TEMPERATURE), else a sample from softmax(logits / temperature) over the top_k
    most likely tokens and, with top_p, the smallest set of them whose probability reaches top_p."""
    logits = logits.float()
    if temperature < MIN_TEMPERATURE:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        outside = (sorted_p.cumsum(0) - sorted_p) >= top_p  # the first token is always kept
        probs = probs.scatter(0, order[outside], 0.0)
    return int(torch.multinomial(probs, 1, generator=generator))


def window_for(context: int) -> int:
    """When a sequence reaches the context, generation restarts its cache from the last
    `window_for(context)` tokens (half the context), so the cost per token stays bounded."""
    return max(1, context // 2)


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    top_p: float | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time (a KV cache; the caller may stop early)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    seq, cache = Sequence(prompt, model.config.context), Cache()
    for _ in range(max_new_tokens):
        ids, start = seq.next_input()
        if start == 0:
            cache.reset()
        logits = model(torch.tensor([ids], device=device), cache)[0, -1].cpu()
        seq.fed(len(ids))
        token = next_token(logits, temperature, top_k, generator, top_p)
        seq.append(token)
        yield token


def language_model_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per token (nats), summed over every position of the batch."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")


SPEC = FamilySpec(
    "transformer",
    Transformer,
    TransformerConfig,
    PRESETS,
    inputs=frozenset({"text"}),
    task="language-model",
    verbs=("generate",),
    data_fields=("vocab_size",),
    from_dataset=lambda spec: {"vocab_size": spec.num_classes},
)
