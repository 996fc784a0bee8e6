"""Image plumbing (compositing, nearest resizing, sample grids) and image-quality metrics.

`images` is light (torch, numpy, PIL); `features` and `scores` import torchmetrics (several seconds),
so nothing is imported here: import the submodule you need.
"""
