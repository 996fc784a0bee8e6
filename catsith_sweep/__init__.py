"""catsith_sweep: config-driven experiment sweeps for CatSith's sprite models."""

__version__ = "0.1.0"
