"""The miniature model's architecture: Stable Diffusion's classes at a size two CPU cores train.

64x64 RGB in; an AutoencoderKL that downsamples by 4 to a 16x16x4 latent; a UNet2DConditionModel
with cross-attention at 16x16 and 8x8 (and its mid block at 4x4); a two-layer CLIP text
transformer over the shipped CLIP-format BPE. RefShapes objects have radii of 9-19% of the
image, so at 16x16 an object covers 3-6 latent cells: fine enough for a mask. About 4.5M
parameters, under 18 MB as float32 safetensors.
"""

from __future__ import annotations

from typing import Any

import torch

from refbench.diffusion.backbone import Backbone
from refbench.diffusion.presets import build_from_config

IMAGE_SIZE = 64

SHAPES: dict[str, dict[str, Any]] = {
    "unet": dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                 block_out_channels=(48, 96, 96), cross_attention_dim=128, attention_head_dim=4,
                 norm_num_groups=16,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                block_out_channels=(16, 32, 64), norm_num_groups=16, sample_size=IMAGE_SIZE,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                scaling_factor=1.0),  # set from the trained encoder's latent spread
    "text": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, hidden_act="quick_gelu"),
}


def build_untrained(seed: int) -> Backbone:
    """The architecture with seeded random weights, on the CPU in float32."""
    return build_from_config("shapes", SHAPES, seed, torch.device("cpu"), torch.float32)
