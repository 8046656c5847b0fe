"""Pretraining refbench's own miniature text-to-image model (the ``shapes`` backbone).

No Stable Diffusion weights reach CI or a fresh laptop, so the zero-shot methods need a real,
small latent diffusion model whose cross-attention localises what a caption names. These
modules generate captioned RefShapes scenes on the fly and train one, in SD's component classes.
"""
