"""The sprite VAE of the training guide ("Custom VAE Training"), made size-generic, and its losses.

CatSith runs the exported encoder and decoder (catsith-formats.md §4): encoder `image` (N x 4 x 64 x 64,
RGBA in [0, 1]) -> `mu`, `log_var` (N x latent_dim); decoder `latent` -> `image` in [0, 1].

Differences from the guide, each a fix:
- the bottleneck's spatial size is derived from `image_size` and the number of down-sampling blocks
  instead of the hard-coded `256 * 4 * 4`, so other channel widths and sprite sizes work;
- the decoder reshapes to its own first width, not a hard-coded 256 (the guide breaks for any other);
- `direction_consistency_loss` groups latents by entity id instead of assuming the batch is laid out
  in strides of eight directions, which silently pairs the wrong sprites after shuffling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

DEFAULT_HIDDEN_DIMS: tuple[int, ...] = (32, 64, 128, 256)

# An entity id per latent: the dataset's entity names, or any integer labels.
EntityIds = Sequence[str] | Sequence[int] | torch.Tensor


def bottleneck_size(image_size: int, depth: int) -> int:
    """Side of the feature map after `depth` stride-2 blocks; ValueError when it does not divide."""
    if depth < 1:
        raise ValueError("need at least one down-sampling block")
    factor = 2**depth
    if image_size < factor or image_size % factor:
        raise ValueError(f"image_size {image_size} must be a positive multiple of 2**{depth} = {factor}")
    return image_size // factor


class SpriteEncoder(nn.Module):
    """Encode (N, channels, S, S) sprites to the posterior's (mu, log_var), each (N, latent_dim)."""

    def __init__(
        self,
        latent_dim: int = 64,
        hidden_dims: Sequence[int] = DEFAULT_HIDDEN_DIMS,
        image_size: int = 64,
        channels: int = 4,
    ) -> None:
        super().__init__()
        self.bottleneck = bottleneck_size(image_size, len(hidden_dims))
        layers: list[nn.Module] = []
        in_ch = channels
        for h_dim in hidden_dims:
            layers += [nn.Conv2d(in_ch, h_dim, 4, 2, 1), nn.BatchNorm2d(h_dim), nn.LeakyReLU(0.2)]
            in_ch = h_dim
        self.encoder = nn.Sequential(*layers)
        flat = hidden_dims[-1] * self.bottleneck * self.bottleneck
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_var = nn.Linear(flat, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x).flatten(start_dim=1)
        return self.fc_mu(h), self.fc_var(h)


class SpriteDecoder(nn.Module):
    """Decode (N, latent_dim) latents to (N, channels, S, S) sprites in [0, 1] (final Sigmoid).

    `hidden_dims` lists the widths from the bottleneck outwards (the encoder's, reversed).
    """

    def __init__(
        self,
        latent_dim: int = 64,
        hidden_dims: Sequence[int] = tuple(reversed(DEFAULT_HIDDEN_DIMS)),
        image_size: int = 64,
        channels: int = 4,
    ) -> None:
        super().__init__()
        self.first_width = hidden_dims[0]
        self.bottleneck = bottleneck_size(image_size, len(hidden_dims))
        self.fc = nn.Linear(latent_dim, self.first_width * self.bottleneck * self.bottleneck)
        layers: list[nn.Module] = []
        for i in range(len(hidden_dims) - 1):
            layers += [
                nn.ConvTranspose2d(hidden_dims[i], hidden_dims[i + 1], 4, 2, 1),
                nn.BatchNorm2d(hidden_dims[i + 1]),
                nn.LeakyReLU(0.2),
            ]
        layers += [nn.ConvTranspose2d(hidden_dims[-1], channels, 4, 2, 1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.first_width, self.bottleneck, self.bottleneck)
        return self.decoder(h)


class SpriteVAE(nn.Module):
    """Encoder + decoder with the reparameterisation trick; `config()` rebuilds an identical model."""

    def __init__(
        self,
        latent_dim: int = 64,
        hidden_dims: Sequence[int] = DEFAULT_HIDDEN_DIMS,
        image_size: int = 64,
        channels: int = 4,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.image_size = image_size
        self.channels = channels
        self.encoder = SpriteEncoder(latent_dim, self.hidden_dims, image_size, channels)
        self.decoder = SpriteDecoder(latent_dim, tuple(reversed(self.hidden_dims)), image_size, channels)

    def config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable: `SpriteVAE(**vae.config())` is the same shape."""
        return {
            "latent_dim": self.latent_dim,
            "hidden_dims": list(self.hidden_dims),
            "image_size": self.image_size,
            "channels": self.channels,
        }

    @staticmethod
    def reparameterize(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """Sample z = mu + sigma * eps so gradients flow through mu and log_var."""
        std = torch.exp(0.5 * log_var)
        return mu + torch.randn_like(std) * std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (reconstruction, mu, log_var)."""
        mu, log_var = self.encoder(x)
        return self.decoder(self.reparameterize(mu, log_var)), mu, log_var

    def encode(self, x: torch.Tensor, *, sample: bool = True) -> torch.Tensor:
        """Latents of `x`: a posterior sample (the guide's behaviour) or, with sample=False, the mean."""
        mu, log_var = self.encoder(x)
        return self.reparameterize(mu, log_var) if sample else mu

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Sprites in [0, 1] from latents (N, latent_dim)."""
        return self.decoder(z)

    @torch.no_grad()
    def sample(self, num: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode `num` latents drawn from the prior N(0, I); pass a generator for reproducibility."""
        device = next(self.parameters()).device
        z = torch.randn(num, self.latent_dim, generator=generator, device=device)
        return self.decode(z)


def vae_loss(
    recon: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor, beta: float = 1.0
) -> dict[str, torch.Tensor]:
    """The guide's VAE loss, made independent of batch size; returns {"recon", "kl", "total"}.

    recon: squared error summed over each image's pixels and channels (the guide's reduction='sum'),
    then averaged over the batch, so the recon/KL balance matches the guide per image while the value
    (and a tuned learning rate) no longer scales with batch size. kl: KL(q(z|x) || N(0, I)) summed over
    latent dimensions, averaged over the batch. total = recon + beta * kl.
    """
    recon_loss = (recon - target).pow(2).flatten(start_dim=1).sum(dim=1).mean()
    kl = (-0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum(dim=1)).mean()
    return {"recon": recon_loss, "kl": kl, "total": recon_loss + beta * kl}


def _group_index(entity_ids: EntityIds, device: torch.device) -> torch.Tensor:
    """Dense group index 0..G-1 per sample, in order of first appearance for sequences."""
    if isinstance(entity_ids, torch.Tensor):
        return torch.unique(entity_ids.to(device), return_inverse=True)[1]
    index: dict[str | int, int] = {}
    dense = [index.setdefault(e, len(index)) for e in entity_ids]
    return torch.tensor(dense, device=device, dtype=torch.long)


def direction_consistency_loss(mu: torch.Tensor, entity_ids: EntityIds) -> torch.Tensor:
    """Mean within-entity variance of latents: pulls the directions of one entity together.

    `entity_ids[i]` names the entity of `mu[i]` (strings, ints or a tensor), in any batch order. For
    each entity with at least two sprites in the batch, take the mean squared deviation of its latents
    from their mean (over sprites and latent dims); the loss is the average over those entities. A batch
    with no such entity gives 0 (still connected to `mu`, so backward works).
    """
    if mu.shape[0] != len(entity_ids):
        raise ValueError(f"got {len(entity_ids)} entity ids for {mu.shape[0]} latents")
    groups = _group_index(entity_ids, mu.device)
    n_groups = int(groups.max().item()) + 1 if groups.numel() else 0
    counts = torch.bincount(groups, minlength=n_groups).to(mu.dtype)
    means = torch.zeros(n_groups, mu.shape[1], dtype=mu.dtype, device=mu.device).index_add(0, groups, mu)
    means = means / counts.clamp(min=1).unsqueeze(1)
    sq_dev = (mu - means[groups]).pow(2).mean(dim=1)
    per_group = torch.zeros(n_groups, dtype=mu.dtype, device=mu.device).index_add(0, groups, sq_dev)
    per_group = per_group / counts.clamp(min=1)
    multi = counts >= 2
    if not bool(multi.any()):
        return mu.sum() * 0.0
    return per_group[multi].mean()


def kl_warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear KL annealing weight: 0 at step 0, 1 from `warmup_steps` on (1 when warmup_steps <= 0).

    Starting with a small KL weight lets the decoder learn to reconstruct before the prior pulls every
    posterior to N(0, I), which otherwise collapses small VAEs to a blurry mean sprite.
    """
    if warmup_steps <= 0:
        return 1.0
    return float(min(1.0, max(0.0, step / warmup_steps)))
