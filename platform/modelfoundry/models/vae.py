"""Variational autoencoder for images in [0, 1]: encoder -> (mu, logvar) -> reparameterise -> decoder.

The decoder returns Bernoulli logits; loss = reconstruction (BCE summed over pixels) + KL, in
nats per image. `forward(x)` returns the reconstruction logits (the mean latent in eval mode, a
sample in train mode); `forward(x, return_latent=True)` also returns mu and logvar, so the
training loop can call the model through DDP and still get the loss terms.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from modelfoundry.models.common import mlp_layers
from modelfoundry.models.spec import Activation, FamilyConfig, FamilySpec, NonEmpty, PosInt


class VAEConfig(FamilyConfig):
    input_shape: NonEmpty[PosInt] = (1, 28, 28)
    hidden_sizes: NonEmpty[PosInt] = (400,)
    latent_dim: PosInt = 20
    activation: Activation = "relu"


PRESETS = {
    "tiny": {"hidden_sizes": (64,), "latent_dim": 4},
    "default": {"hidden_sizes": (400,), "latent_dim": 20},
}


class Encoder(nn.Module):
    """x -> (mu, logvar) concatenated on the last dim: shape (batch, 2 * latent_dim)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        sizes = [math.prod(config.input_shape), *config.hidden_sizes]
        self.body = nn.Sequential(nn.Flatten(1), *mlp_layers([*sizes, 1], config.activation, 0.0)[:-1])
        self.stats = nn.Linear(sizes[-1], 2 * config.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stats(self.body(x))


class Latent(nn.Module):
    """(mu, logvar) -> z: a reparameterised sample in train mode, the mean in eval mode."""

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        mu, logvar = stats.chunk(2, dim=-1)
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class Decoder(nn.Module):
    """z -> Bernoulli logits with the input's shape."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        sizes = [config.latent_dim, *reversed(config.hidden_sizes), math.prod(config.input_shape)]
        self.body = nn.Sequential(*mlp_layers(sizes, config.activation, 0.0))
        self.shape = config.input_shape

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).reshape(z.shape[0], *self.shape)


class VAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.latent = Latent()
        self.decoder = Decoder(config)

    def forward(self, x: torch.Tensor, return_latent: bool = False):
        stats = self.encoder(x)
        logits = self.decoder(self.latent(stats))
        if not return_latent:
            return logits
        mu, logvar = stats.chunk(2, dim=-1)
        return logits, mu, logvar

    def stages(self) -> list[nn.Module]:
        return [self.encoder, self.latent, self.decoder]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images drawn from the prior, as pixel probabilities in [0, 1]."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        return torch.sigmoid(self.decoder(z))


def vae_loss(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image reconstruction (BCE summed over pixels) and KL(q(z|x) || N(0, I)), in nats."""
    recon = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none").flatten(1).sum(1)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    return recon, kl


SPEC = FamilySpec(
    "vae",
    VAE,
    VAEConfig,
    PRESETS,
    inputs=frozenset({"image"}),
    task="generative",
    verbs=("encode", "decode", "reconstruct", "sample"),
    data_fields=("input_shape",),
    from_dataset=lambda spec: {"input_shape": tuple(spec.input_shape)},
    services=(("encoder", (0,)), ("decoder", (2,))),
)
