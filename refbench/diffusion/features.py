"""UNet decoder features, taken with forward hooks for the duration of a forward.

Each up block's output at its own resolution, before its upsampler (for SD 1.5 at 512:
8x8x1280, 16x16x1280, 32x32x640, 64x64x320), coarse to fine. Hooks are removed on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def capture_decoder_features(unet: Any) -> Iterator[list[torch.Tensor]]:
    features: list[torch.Tensor] = []
    handles = []
    for block in unet.up_blocks:
        upsamplers = getattr(block, "upsamplers", None)
        if upsamplers:
            handles.append(upsamplers[0].register_forward_pre_hook(
                lambda module, args: features.append(args[0])))
        else:
            handles.append(block.register_forward_hook(
                lambda module, args, output: features.append(output)))
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()
