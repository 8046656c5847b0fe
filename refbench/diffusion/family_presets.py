"""Tiny presets of the later Stable Diffusion generations, built from config with seeded weights.

Each keeps its family's structure at a width and size where a forward takes milliseconds on a
CPU (128x128 input, a 16x16 latent), so every family's code path is tested offline:

- ``tiny-sd2``: linear projections in the transformer blocks, a head count per level, a GELU
  CLIP text encoder and a v-prediction scheduler (SD 2.x at 768);
- ``tiny-sdxl``: no attention at the finest level, two transformer layers per block at the two
  inner levels, two CLIP encoders (the second with a projection: the pooled ``text_embeds``) and
  the ``text_time`` added embedding;
- ``tiny-sd3``: an SD3 MM-DiT (patch 2, joint attention), CLIP-L- and CLIP-G-shaped encoders with
  projections, a T5 encoder, a 16-channel VAE with a shift factor, flow matching;
- ``tiny-flux``: a Flux MM-DiT (one joint block, two single-stream blocks, rotary positions), a
  CLIP encoder for the pooled vector, T5 for the tokens.

CLIP encoders use the shipped CLIP-format BPE tokenizer; T5 uses a T5-format tokenizer built
from the same vocabulary (``t5_tokenizer.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from refbench.diffusion.backbone import Backbone
from refbench.diffusion.presets import SCHEDULER, clip_text_config, preset_fingerprint, small_tokenizer
from refbench.diffusion.t5_tokenizer import small_t5_tokenizer

T5_TOKENS = 32  # the tiny presets' T5 context (SD3's pipeline uses 256, Flux's 512)
SIZE = 128  # input side: a 16x16 latent

_VAE8 = dict(in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 32, 32, 32),
             norm_num_groups=32, sample_size=SIZE, down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4)
_CLIP = dict(intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77)

TINY_SD2 = {
    "unet": dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                 block_out_channels=(32, 64, 64, 64), cross_attention_dim=32,
                 attention_head_dim=(2, 4, 4, 4), use_linear_projection=True, norm_num_groups=32,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    "vae": dict(_VAE8, latent_channels=4, scaling_factor=0.18215),
    "text": dict(_CLIP, hidden_size=32, hidden_act="gelu"),
    "scheduler": dict(SCHEDULER, prediction_type="v_prediction"),
}

TINY_SDXL = {
    "unet": dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                 block_out_channels=(32, 64, 64), cross_attention_dim=32 + 64,
                 transformer_layers_per_block=(1, 2, 2), attention_head_dim=(2, 4, 4),
                 use_linear_projection=True, norm_num_groups=32,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=8 * 6 + 16),
    "vae": dict(_VAE8, latent_channels=4, scaling_factor=0.13025),
    "text": dict(_CLIP, hidden_size=32, hidden_act="quick_gelu"),
    "text_2": dict(_CLIP, hidden_size=64, hidden_act="gelu", projection_dim=16),
    "scheduler": dict(SCHEDULER),
}

_T5 = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
           feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
_FLOW_VAE = dict(_VAE8, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)

TINY_SD3 = {
    "transformer": dict(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                        caption_projection_dim=32, pooled_projection_dim=16 + 16, pos_embed_max_size=16),
    "vae": dict(_FLOW_VAE, scaling_factor=1.5305, shift_factor=0.0609),
    "text": dict(_CLIP, hidden_size=32, hidden_act="quick_gelu", projection_dim=16),
    "text_2": dict(_CLIP, hidden_size=16, hidden_act="gelu", projection_dim=16),
    "t5": _T5,
    "scheduler": dict(num_train_timesteps=1000, shift=3.0),
}

TINY_FLUX = {
    "transformer": dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2,
                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                        pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=(2, 2, 4)),
    "vae": dict(_FLOW_VAE, scaling_factor=0.3611, shift_factor=0.1159),
    "text": dict(_CLIP, hidden_size=32, hidden_act="quick_gelu"),
    "t5": _T5,
    "scheduler": dict(num_train_timesteps=1000, shift=3.0),
}


def _clip(tokenizer: Any, sizes: dict[str, Any]) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if "projection_dim" in sizes else CLIPTextModel
    return cls(CLIPTextConfig(**clip_text_config(tokenizer, sizes)))


def _t5(tokenizer: Any, sizes: dict[str, Any]) -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0,
                                   **sizes))


def _finish(name: str, family: str, config: dict[str, Any], seed: int, device: torch.device,
            dtype: torch.dtype, **parts: Any) -> Backbone:
    parts.setdefault("unet", None)
    return Backbone(name, fingerprint=preset_fingerprint(name, seed, config), family=family,
                    **parts).to(device, dtype).eval()


def build_tiny_sd2(device: torch.device, dtype: torch.dtype, name: str = "tiny-sd2",
                   seed: int = 0) -> Backbone:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    tokenizer = small_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_SD2["unet"])
        vae = AutoencoderKL(**TINY_SD2["vae"])
        text_encoder = _clip(tokenizer, TINY_SD2["text"])
    return _finish(name, "sd2", TINY_SD2, seed, device, dtype, unet=unet, vae=vae,
                   text_encoder=text_encoder, tokenizer=tokenizer,
                   scheduler=DDPMScheduler(**TINY_SD2["scheduler"]))


def build_tiny_sdxl(device: torch.device, dtype: torch.dtype, name: str = "tiny-sdxl",
                    seed: int = 0) -> Backbone:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    tokenizer, tokenizer_2 = small_tokenizer(), small_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_SDXL["unet"])
        vae = AutoencoderKL(**TINY_SDXL["vae"])
        text_encoder = _clip(tokenizer, TINY_SDXL["text"])
        text_encoder_2 = _clip(tokenizer_2, TINY_SDXL["text_2"])
    return _finish(name, "sdxl", TINY_SDXL, seed, device, dtype, unet=unet, vae=vae,
                   text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                   tokenizer_2=tokenizer_2, scheduler=DDPMScheduler(**TINY_SDXL["scheduler"]))


def build_tiny_sd3(device: torch.device, dtype: torch.dtype, name: str = "tiny-sd3",
                   seed: int = 0) -> Backbone:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    tokenizer, tokenizer_2, tokenizer_3 = small_tokenizer(), small_tokenizer(), small_t5_tokenizer(T5_TOKENS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(**TINY_SD3["transformer"])
        vae = AutoencoderKL(**TINY_SD3["vae"])
        text_encoder = _clip(tokenizer, TINY_SD3["text"])
        text_encoder_2 = _clip(tokenizer_2, TINY_SD3["text_2"])
        text_encoder_3 = _t5(tokenizer_3, TINY_SD3["t5"])
    return _finish(name, "sd3", TINY_SD3, seed, device, dtype, transformer=transformer, vae=vae,
                   text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                   tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
                   scheduler=FlowMatchEulerDiscreteScheduler(**TINY_SD3["scheduler"]))


def build_tiny_flux(device: torch.device, dtype: torch.dtype, name: str = "tiny-flux",
                    seed: int = 0) -> Backbone:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    tokenizer, tokenizer_2 = small_tokenizer(), small_t5_tokenizer(T5_TOKENS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**TINY_FLUX["transformer"])
        vae = AutoencoderKL(**TINY_FLUX["vae"])
        text_encoder = _clip(tokenizer, TINY_FLUX["text"])
        text_encoder_2 = _t5(tokenizer_2, TINY_FLUX["t5"])
    return _finish(name, "flux", TINY_FLUX, seed, device, dtype, transformer=transformer, vae=vae,
                   text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                   tokenizer_2=tokenizer_2, native_size=SIZE,
                   scheduler=FlowMatchEulerDiscreteScheduler(**TINY_FLUX["scheduler"]))
