"""The sprite VAE (the guide's architecture made size-generic) and its loss functions."""

from __future__ import annotations

import pytest
import torch

from catsith_sweep.models.sprite_vae import (
    SpriteVAE,
    bottleneck_size,
    direction_consistency_loss,
    kl_warmup_factor,
    vae_loss,
)

torch.set_num_threads(1)


def test_default_vae_matches_catsith_shapes() -> None:
    torch.manual_seed(0)
    vae = SpriteVAE()
    assert vae.latent_dim == 64 and vae.hidden_dims == (32, 64, 128, 256)
    assert vae.encoder.fc_mu.in_features == 256 * 4 * 4  # the guide's 64 -> 32 -> 16 -> 8 -> 4
    x = torch.rand(3, 4, 64, 64)
    recon, mu, log_var = (t.detach() for t in vae(x))
    assert recon.shape == x.shape and mu.shape == log_var.shape == (3, 64)
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0  # Sigmoid output: RGBA in [0, 1]
    vae.eval()
    with torch.no_grad():
        mean = vae.encode(x, sample=False)
        assert torch.equal(mean, vae.encoder(x)[0])  # sample=False is the posterior mean
        assert not torch.equal(vae.encode(x), mean)  # the guide's encode samples
    assert vae.decode(torch.zeros(2, 64)).shape == (2, 4, 64, 64)
    assert vae.sample(2, generator=torch.Generator().manual_seed(1)).shape == (2, 4, 64, 64)


def test_bottleneck_follows_size_and_depth() -> None:
    vae = SpriteVAE(latent_dim=16, hidden_dims=(8, 16, 32), image_size=32)
    assert vae.encoder.bottleneck == 4 and vae.decoder.first_width == 32
    assert vae(torch.rand(2, 4, 32, 32))[0].shape == (2, 4, 32, 32)
    rebuilt = SpriteVAE(**vae.config())
    assert rebuilt.config() == vae.config()
    assert bottleneck_size(64, 3) == 8
    with pytest.raises(ValueError, match="multiple"):
        bottleneck_size(48, 5)


def test_vae_loss_is_per_image_sum_averaged_over_batch() -> None:
    target = torch.zeros(2, 4, 8, 8)
    recon = torch.full_like(target, 0.5)
    mu, log_var = torch.zeros(2, 3), torch.zeros(2, 3)
    out = vae_loss(recon, target, mu, log_var, beta=2.0)
    assert float(out["recon"]) == pytest.approx(0.25 * 4 * 8 * 8)  # summed per image, not per batch
    assert float(out["kl"]) == pytest.approx(0.0)  # posterior equal to the prior
    doubled = vae_loss(recon.repeat(2, 1, 1, 1), target.repeat(2, 1, 1, 1), mu.repeat(2, 1), log_var.repeat(2, 1))
    assert float(doubled["recon"]) == pytest.approx(float(out["recon"]))  # batch size does not scale it
    mu = torch.ones(2, 3)
    out = vae_loss(recon, target, mu, log_var, beta=2.0)
    assert float(out["kl"]) == pytest.approx(0.5 * 3)
    assert float(out["total"]) == pytest.approx(float(out["recon"]) + 2.0 * float(out["kl"]))


def test_direction_consistency_groups_by_entity_in_any_order() -> None:
    mu = torch.tensor([[0.0, 0.0], [2.0, 2.0], [5.0, 5.0], [1.0, 1.0], [9.0, 9.0]], requires_grad=True)
    ids = ["a", "a", "b", "b", "lonely"]  # a: 0 and 2 -> variance 1; b: 5 and 1 -> variance 4
    loss = direction_consistency_loss(mu, ids)
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)  # singletons are not an entity's directions
    perm = torch.tensor([4, 2, 0, 3, 1])
    shuffled = direction_consistency_loss(mu[perm], [ids[i] for i in perm])
    assert shuffled.item() == pytest.approx(loss.item())
    as_tensor = direction_consistency_loss(mu, torch.tensor([7, 7, 3, 3, 1]))
    assert as_tensor.item() == pytest.approx(loss.item())
    loss.backward()
    assert mu.grad is not None and float(mu.grad[4].abs().sum()) == 0.0
    alone = direction_consistency_loss(mu, ["x", "y", "z", "u", "v"])
    assert alone.item() == 0.0 and alone.requires_grad
    with pytest.raises(ValueError, match="entity ids"):
        direction_consistency_loss(mu, ["a"])


def test_kl_warmup_is_linear_then_one() -> None:
    assert [kl_warmup_factor(s, 4) for s in (0, 1, 2, 4, 10)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert kl_warmup_factor(0, 0) == 1.0


def test_a_few_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    vae = SpriteVAE(latent_dim=8, hidden_dims=(8, 16), image_size=16)
    images = torch.zeros(8, 4, 16, 16)
    images[:, :, 4:12, 4:12] = torch.rand(8, 4, 1, 1)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        recon, mu, log_var = vae(images)
        loss = vae_loss(recon, images, mu, log_var, beta=kl_warmup_factor(step, 20))["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
