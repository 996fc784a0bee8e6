"""Models the sweeps build and train: the builtin diffusion base, the sprite VAE, the sprite feature net.

Submodules are not imported here, so `import catsith_sweep.models.sprite_vae` does not pull diffusers.
"""
