"""Backbone presets built from config with seeded random weights.

``tiny`` keeps Stable Diffusion 1.5's block structure (four UNet levels with cross-attention in
the first three, a mid block, a VAE that downsamples by 8, a CLIP text transformer) at a small
width, so every code path runs in seconds on a CPU. ``sd15-random`` is the full SD 1.5
architecture with random weights: right for speed and memory figures, useless for accuracy.
Both use the small CLIP-format BPE tokenizer shipped in ``assets/``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from refbench.diffusion.backbone import Backbone
from refbench.diffusion.bpe import ASSET_DIR

MAX_TOKENS = 77

TINY = {
    "unet": dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(32, 64, 64, 64), cross_attention_dim=64, attention_head_dim=4,
                 norm_num_groups=32,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                block_out_channels=(32, 32, 64, 64), norm_num_groups=32, sample_size=256,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                scaling_factor=0.18215),
    "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=MAX_TOKENS, hidden_act="quick_gelu"),
}

SD15 = {
    "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                 attention_head_dim=8, norm_num_groups=32,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=512,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                scaling_factor=0.18215),
    "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=MAX_TOKENS, hidden_act="quick_gelu",
                 vocab_size=49408),
}

SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                 beta_schedule="scaled_linear", clip_sample=False)


def small_tokenizer() -> Any:
    """The shipped CLIP-format BPE vocabulary as a ``CLIPTokenizer`` (77 tokens)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=str(ASSET_DIR / "vocab.json"), merges=str(ASSET_DIR / "merges.txt"),
                         model_max_length=MAX_TOKENS)


def clip_text_config(tokenizer: Any, sizes: dict[str, Any]) -> dict[str, Any]:
    """A CLIP text config of the given sizes whose vocabulary and special ids are the tokenizer's."""
    return {"vocab_size": len(tokenizer), **sizes, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def build_from_config(name: str, config: dict[str, dict[str, Any]], seed: int,
                      device: torch.device, dtype: torch.dtype) -> Backbone:
    """Instantiate every component with weights drawn from ``seed``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = small_tokenizer()
    text_config = clip_text_config(tokenizer, config["text"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**config["unet"])
        vae = AutoencoderKL(**config["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    scheduler = DDPMScheduler(**SCHEDULER)
    return Backbone(name, unet, vae, text_encoder, tokenizer, scheduler,
                    preset_fingerprint(name, seed, config)).to(device, dtype).eval()


def preset_fingerprint(name: str, seed: int, config: dict[str, Any]) -> str:
    """A preset's weights are fixed by its name, seed and config."""
    return hashlib.sha256(json.dumps({"preset": name, "seed": seed, "config": config},
                                     sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_tiny(device: torch.device, dtype: torch.dtype, name: str = "tiny", seed: int = 0) -> Backbone:
    return build_from_config(name, TINY, seed, device, dtype)


def build_sd15_random(device: torch.device, dtype: torch.dtype, name: str = "sd15-random",
                      seed: int = 0) -> Backbone:
    return build_from_config(name, SD15, seed, device, dtype)
