"""F-VPD's inputs on an MM-DiT (SD3, Flux): refbench's definition, since VPD has no DiT.

VPD reads a UNet's decoder at four levels (fine to coarse) and cross-attention at two of them.
An MM-DiT has one grid g (the latent side / 2) and a stack of joint blocks, so refbench builds
the same shape of input the way a plain ViT is given a feature pyramid (ViTDet's "simple feature
pyramid"): three levels, fine to coarse, at g, g/2 and g/4; level k is the image stream after
the joint block at depth ceil(n (k + 1) / 3) of the n joint blocks (early blocks feed the fine
level, the last block the coarsest, as a UNet's decoder runs from deep and coarse to shallow and
fine), average-pooled to its side; the head- and layer-averaged image-query x text-key joint
attention (``joint_attention.py``, every joint and single-stream layer) is concatenated to the
two finer levels, pooled likewise, as VPD concatenates its maps at latent/2 and latent/4. The
frozen transformer and no text adapter make this F-VPD; the decoder is VPD's SimpleDecoding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from refbench.diffusion.attention import AttentionRecord
from refbench.diffusion.backbone import Backbone
from refbench.diffusion.denoisers import capture, finest_attention

LEVELS = 3


class DiTFeatures:
    """Where F-VPD taps an MM-DiT, and how the taps become SimpleDecoding's inputs."""

    def __init__(self, bb: Backbone, latent: int, text_tokens: int):
        self.grid = finest_attention(bb, latent)
        self.resolutions = [self.grid // 2 ** k for k in range(LEVELS)]  # fine to coarse
        self.attn_at = self.resolutions[:2]
        blocks = bb.transformer.transformer_blocks
        self.taps = [blocks[math.ceil(len(blocks) * (k + 1) / LEVELS) - 1] for k in range(LEVELS)]
        width = int(bb.transformer.config.num_attention_heads * bb.transformer.config.attention_head_dim)
        self.dims = [width + (text_tokens if r in self.attn_at else 0) for r in self.resolutions]

    @contextmanager
    def recording(self, bb: Backbone) -> Iterator[tuple[list[torch.Tensor], AttentionRecord]]:
        """During the block: the taps' image streams (B, D, g, g), in tap order, and the maps."""
        taken: list[Any] = [None] * LEVELS
        grid = self.grid

        def keep(level: int) -> Any:
            def hook(module: Any, args: Any, output: Any) -> None:
                image = output[1]  # joint blocks return (text stream, image stream)
                b, n, d = image.shape
                taken[level] = image.transpose(1, 2).reshape(b, d, grid, grid)
            return hook

        handles = [tap.register_forward_hook(keep(level)) for level, tap in enumerate(self.taps)]
        features: list[torch.Tensor] = []
        try:
            with capture(bb, {grid}, None) as record:
                yield features, record
            features.extend(taken)
        finally:
            for handle in handles:
                handle.remove()

    def inputs(self, features: list[torch.Tensor], record: AttentionRecord) -> list[torch.Tensor]:
        """SimpleDecoding's inputs, fine to coarse."""
        maps = record.cross_maps(self.grid)
        out = []
        for feature, side in zip(features, self.resolutions):
            level = F.adaptive_avg_pool2d(feature, side)
            if side in self.attn_at:
                level = torch.cat([level, F.adaptive_avg_pool2d(maps, side).to(level.dtype)], dim=1)
            out.append(level)
        return out
