"""Sprite datasets: the guide's layout, captions, synthesis, sheet import, augmentation."""
