"""The reconstruction loss and colour augmentation of the builtin base's RGBA VAE.

Sprites are mostly transparent, flat-coloured and hard-edged, and a base must represent palettes it
was not built on (a user's sprite sheet, a new style for a LoRA). Plain MSE on all four channels
spends the VAE's few steps on the black RGB under transparent pixels and blurs edges, and a VAE that
only ever saw one palette decodes every other palette as that one. So:

- `sprite_reconstruction_loss`: L1 on RGB weighted by the target's alpha (plus a small floor, so the
  colour under a soft edge stays sane), L1 on alpha, and an optional L1 on horizontal and vertical
  differences (crisp outlines), and an optional L1 on the two opponent chroma axes (red-green,
  yellow-blue), weighted by alpha. L1 is what the round-trip measure (mean absolute error on opaque
  pixels) asks for, and it does not average a two-colour edge into a blur as MSE does.
  Why the chroma term: with 4 latent channels per 4x4 pixels, the v2 VAE spent its capacity on
  alpha, brightness and edges and kept one chroma axis (blue-yellow): green came back blue or yellow,
  red as orange (session 4's round-trip PNG). Plain RGB L1 prices that below a blurred edge.
- `recolour`: per sprite, a random rotation of RGB about the grey axis (hue), a saturation scale
  and a gamma (brightness), on a random share of the batch. Shapes, alpha and the ordering of shades
  within a sprite survive; the palette does not, so the VAE learns colour as colour.
"""

from __future__ import annotations

import math

import torch

TRANSPARENT_RGB_WEIGHT = 0.05
"""Weight of RGB error where the target is transparent, relative to opaque pixels."""


def opponent_chroma(rgb: torch.Tensor) -> torch.Tensor:
    """N x 2 x H x W red-green (R - G) and yellow-blue ((R + G) / 2 - B) of N x 3 x H x W RGB."""
    red, green, blue = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    return torch.stack([red - green, (red + green) / 2 - blue], dim=1)


def sprite_reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, *, edge_weight: float = 0.0,
                               chroma_weight: float = 0.0, alpha_weight: float = 1.0) -> torch.Tensor:
    """Loss of an RGBA reconstruction; both N x 4 x H x W in the VAE's [-1, 1] range."""
    if recon.shape != target.shape or recon.ndim != 4 or recon.shape[1] != 4:
        raise ValueError(f"expected two N x 4 x H x W RGBA tensors of one shape, got {tuple(recon.shape)} "
                         f"and {tuple(target.shape)}")
    recon01, target01 = (recon + 1) / 2, (target + 1) / 2
    weight = target01[:, 3:] + TRANSPARENT_RGB_WEIGHT
    rgb = ((recon01[:, :3] - target01[:, :3]).abs() * weight).sum() / (weight.sum() * 3)
    alpha = (recon01[:, 3] - target01[:, 3]).abs().mean()
    loss = rgb + alpha_weight * alpha
    if chroma_weight:
        chroma = (opponent_chroma(recon01[:, :3]) - opponent_chroma(target01[:, :3])).abs() * weight
        loss = loss + chroma_weight * chroma.sum() / (weight.sum() * 2)
    if edge_weight:
        for dim in (2, 3):
            loss = loss + edge_weight * (torch.diff(recon01, dim=dim) - torch.diff(target01, dim=dim)).abs().mean()
    return loss


def _grey_axis_rotations(angles: torch.Tensor) -> torch.Tensor:
    """N x 3 x 3 rotations of RGB about the (1, 1, 1) axis by `angles` (Rodrigues' formula)."""
    k = torch.full((3,), 1 / math.sqrt(3), dtype=angles.dtype)
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=angles.dtype)
    eye = torch.eye(3, dtype=angles.dtype)
    sin, cos = torch.sin(angles)[:, None, None], torch.cos(angles)[:, None, None]
    return eye + sin * cross + (1 - cos) * (cross @ cross)


def recolour(images: torch.Tensor, generator: torch.Generator, *, probability: float = 0.5,
             max_saturation: float = 2.0, max_gamma: float = 1.8) -> torch.Tensor:
    """A random hue rotation, saturation scale in [1/max_saturation, max_saturation] and gamma in
    [1/max_gamma, max_gamma] for each of a `probability` share of `images` (N x 4 x H x W RGBA in
    [0, 1], on the CPU generator's device); the rest and every alpha are returned unchanged, and RGB
    stays 0 where alpha is 0."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability {probability}: expected a share in [0, 1]")
    count = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=generator)

    grey = torch.full((3, 3), 1 / 3)
    saturation = torch.exp(uniform(-math.log(max_saturation), math.log(max_saturation)))
    hue = _grey_axis_rotations(uniform(0, 2 * math.pi))
    matrices = (grey + saturation[:, None, None] * (torch.eye(3) - grey)) @ hue
    gamma = torch.exp(uniform(-math.log(max_gamma), math.log(max_gamma)))
    chosen = (torch.rand(count, generator=generator) < probability).to(images.device)
    rgb, alpha = images[:, :3], images[:, 3:]
    moved = torch.einsum("nij,njhw->nihw", matrices.to(images), rgb).clamp(1e-6, 1)
    moved = moved ** gamma.to(images)[:, None, None, None] * (alpha > 0)
    return torch.cat([torch.where(chosen[:, None, None, None], moved, rgb), alpha], dim=1)


def random_square_symmetry(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The batch turned by a random multiple of 90 degrees and maybe mirrored (one draw per batch: a
    sprite's look does not depend on which way it faces, and the VAE sees more shapes)."""
    turns = int(torch.randint(0, 4, (1,), generator=generator))
    images = torch.rot90(images, turns, dims=(2, 3))
    return images.flip(3) if bool(torch.rand(1, generator=generator) < 0.5) else images


def reconstruction_loss(kind: str, recon: torch.Tensor, target: torch.Tensor, *,
                        chroma_weight: float = 0.0, alpha_weight: float = 1.0) -> torch.Tensor:
    """`sprite` (sprite_reconstruction_loss with `chroma_weight`; RGBA only) or `mse` (plain MSE, what
    bases before BUILTIN_VERSION 2 were built with); both take tensors in the VAE's [-1, 1] range."""
    if kind == "mse" or target.shape[1] != 4:  # an RGB VAE has no alpha to weight by
        return torch.nn.functional.mse_loss(recon, target)
    if kind == "sprite":
        return sprite_reconstruction_loss(recon, target, chroma_weight=chroma_weight, alpha_weight=alpha_weight)
    raise ValueError(f"VAE loss {kind!r}: expected 'sprite' or 'mse'")


def augment_vae_batch(images: torch.Tensor, generator: torch.Generator, *, recolour_share: float,
                      turns: bool) -> torch.Tensor:
    """The VAE phase's augmentation of RGBA sprites in [0, 1]: `recolour` on `recolour_share` of them
    and, with `turns`, a random quarter turn / mirror of the batch. Nothing is drawn from `generator`
    when both are off, so a run without augmentation keeps its old random stream."""
    if turns:
        images = random_square_symmetry(images, generator)
    if recolour_share > 0:
        images = recolour(images, generator, probability=recolour_share)
    return images
