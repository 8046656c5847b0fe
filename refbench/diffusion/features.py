"""UNet decoder features, taken with forward hooks for the duration of a forward.

In the CompVis (ldm) numbering a UNet's decoder is a flat list of output blocks, n per level
(n = layers_per_block + 1 in diffusers: a resnet, its attention if the level has one, and the
level's upsampler after its last block). ``capture_level_features(unet, block)`` keeps, for every
level but the finest, the hidden state after that level's ``block``-th block at the level's own
resolution (before its upsampler), and the finest level's output, which is the state before the
UNet's ``conv_norm_out``/``conv_out`` head. With ``block=1`` on Stable Diffusion 1.5 at 512 these
are ldm's output blocks 1, 4, 7 and 11: 8x8x1280, 16x16x1280, 32x32x640, 64x64x320. Features
come fine to coarse; hooks are removed on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def _tensor(output: Any) -> torch.Tensor:
    """A module's output as a tensor (attention blocks return a tuple or an output object)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


@contextmanager
def capture_level_features(unet: Any, block: int = 1) -> Iterator[list[torch.Tensor]]:
    coarse_to_fine: list[torch.Tensor | None] = [None] * len(unet.up_blocks)
    handles = []

    def keep(level: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            coarse_to_fine[level] = _tensor(output)
        return hook

    for level, up in enumerate(unet.up_blocks):
        if level == len(unet.up_blocks) - 1:
            module = up
        else:
            index = min(block, len(up.resnets) - 1)
            attentions = getattr(up, "attentions", None)
            module = attentions[index] if attentions else up.resnets[index]
        handles.append(module.register_forward_hook(keep(level)))
    features: list[torch.Tensor] = []
    try:
        yield features
        features.extend(reversed([f for f in coarse_to_fine if f is not None]))
    finally:
        for handle in handles:
            handle.remove()
