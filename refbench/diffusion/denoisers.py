"""What differs between the families when a method runs the denoiser once: the text
conditioning, the denoiser's call, how a latent is noised, where the text tokens sit in the
attended sequence, and which attention capture applies.

Methods call the five functions at the bottom (``conditioning``, ``token_layout``, ``noised``,
``denoise``, ``capture``) with a backbone; each dispatches on ``backbone.family``. Each family
does what its diffusers pipeline does:

- sd1, sd2 (``StableDiffusionPipeline``): the CLIP encoder's last hidden state, no mask (for
  SD 2.x that is OpenCLIP-H's penultimate layer: the converted encoder has 23 layers);
- sdxl (``StableDiffusionXLPipeline.encode_prompt``): both encoders' penultimate hidden states
  (``hidden_states[-2]``) concatenated on the feature axis; the second encoder's projected
  pooled output as ``text_embeds`` and time ids (original size, crop (0, 0), target size: the
  model's input size) as ``added_cond_kwargs``;
- sd3 (``StableDiffusion3Pipeline.encode_prompt``): the two CLIPs' penultimate states
  concatenated and zero-padded to T5's width, then T5's last hidden state appended on the token
  axis (77 CLIP + T5 tokens); the pooled projections of both CLIPs concatenated;
- flux (``FluxPipeline.encode_prompt``): T5's last hidden state as the tokens, the CLIP
  encoder's pooled output as the pooled vector; latents packed 2x2 with position ids, the
  timestep given as t / 1000, guidance 3.5 (the pipeline's default) for guidance-distilled models.

Noise: the UNet families use the scheduler's ``add_noise`` (the same for epsilon and
v-prediction: only the denoiser's target differs). SD3 and Flux are flow-matching models:
x_t = (1 - s) x_0 + s * noise with s = t / 1000 (no resolution shift), the timestep the
pipelines feed at that s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from refbench.diffusion.attention import AttentionRecord, capture_attention
from refbench.diffusion.backbone import Backbone
from refbench.diffusion.prompts import TokenSegment, encode, tokenize

FLUX_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale, fed to guidance-distilled models
SD3_T5_TOKENS = 256  # the pipelines' default max_sequence_length
FLUX_T5_TOKENS = 512


@dataclass
class Conditioning:
    """What the denoiser is conditioned on: ``tokens`` (B, L, D), the sequence its attention
    reads (the rows prompt edits change), and ``pooled`` (B, P), the added vector of SDXL, SD3
    and Flux (None for SD 1.x and 2.x)."""

    tokens: torch.Tensor
    pooled: torch.Tensor | None = None

    def replace_tokens(self, tokens: torch.Tensor) -> Conditioning:
        return dataclasses.replace(self, tokens=tokens)


def _penultimate(text_encoder: Any, tokenizer: Any, prompts: list[str],
                 max_length: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A CLIP encoder's penultimate hidden state and its first output (the projected pooled
    embedding for ``CLIPTextModelWithProjection``), as SDXL's and SD3's pipelines take them."""
    ids = tokenize(tokenizer, prompts, text_encoder.device, max_length)
    out = text_encoder(ids, output_hidden_states=True)
    return out.hidden_states[-2], out[0]


class _Family:
    """What every family answers; the text recipe here is SD 1.x's and 2.x's (one CLIP)."""

    def conditioning(self, bb: Backbone, prompts: list[str], max_length: int | None) -> Conditioning:
        return Conditioning(encode(bb.text_encoder, bb.tokenizer, prompts, max_length))

    def token_layout(self, bb: Backbone, max_length: int | None) -> tuple[TokenSegment, ...]:
        return (TokenSegment(bb.tokenizer, 0, max_length or bb.tokenizer.model_max_length),)

    def noised(self, bb: Backbone, latents: torch.Tensor, noise: torch.Tensor,
               timestep: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def denoise(self, bb: Backbone, latents: torch.Tensor, timestep: torch.Tensor,
                cond: Conditioning) -> torch.Tensor:
        raise NotImplementedError

    def finest_attention(self, bb: Backbone, latent: int) -> int:
        raise NotImplementedError

    def capture(self, bb: Backbone, cross_resolutions: Iterable[int] | None,
                self_resolution: int | None, conditional: slice | None,
                keep_graph: bool) -> AbstractContextManager[AttentionRecord]:
        raise NotImplementedError


class _UNetFamily(_Family):
    """SD 1.x and 2.x (SDXL adds to it)."""

    def noised(self, bb: Backbone, latents: torch.Tensor, noise: torch.Tensor,
               timestep: torch.Tensor) -> torch.Tensor:
        return bb.scheduler.add_noise(latents, noise, timestep)

    def added_conditions(self, bb: Backbone, latents: torch.Tensor, cond: Conditioning) -> dict[str, Any]:
        return {}

    def denoise(self, bb: Backbone, latents: torch.Tensor, timestep: torch.Tensor,
                cond: Conditioning) -> torch.Tensor:
        added = self.added_conditions(bb, latents, cond)
        return bb.unet(latents, timestep, encoder_hidden_states=cond.tokens,
                       **({"added_cond_kwargs": added} if added else {})).sample

    def finest_attention(self, bb: Backbone, latent: int) -> int:
        """The first down level with attention (SDXL has none at the latent's own side)."""
        level = next(i for i, block in enumerate(bb.unet.down_blocks) if getattr(block, "attentions", None))
        return latent // 2 ** level

    def capture(self, bb: Backbone, cross_resolutions: Iterable[int] | None,
                self_resolution: int | None, conditional: slice | None,
                keep_graph: bool) -> AbstractContextManager[AttentionRecord]:
        return capture_attention(bb.unet, cross_resolutions, self_resolution, conditional, keep_graph)


class _SDXLFamily(_UNetFamily):
    def conditioning(self, bb: Backbone, prompts: list[str], max_length: int | None) -> Conditioning:
        first, _ = _penultimate(bb.text_encoder, bb.tokenizer, prompts, max_length)
        second, pooled = _penultimate(bb.text_encoder_2, bb.tokenizer_2, prompts, max_length)
        return Conditioning(torch.cat([first, second], dim=-1), pooled)

    def added_conditions(self, bb: Backbone, latents: torch.Tensor, cond: Conditioning) -> dict[str, Any]:
        size = latents.shape[-1] * bb.vae_scale_factor
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=latents.dtype,
                                device=latents.device).expand(len(latents), -1)
        return {"text_embeds": cond.pooled, "time_ids": time_ids}


class _FlowFamily(_Family):
    """The MM-DiT families: flow matching, joint attention."""

    text_first = False  # SD3 puts the image tokens first in its joint sequence, Flux the text

    def finest_attention(self, bb: Backbone, latent: int) -> int:
        return latent // 2  # Flux packs 2x2 latent cells into one token

    def noised(self, bb: Backbone, latents: torch.Tensor, noise: torch.Tensor,
               timestep: torch.Tensor) -> torch.Tensor:
        sigma = (timestep.to(latents.dtype) / bb.scheduler.config.num_train_timesteps).view(-1, 1, 1, 1)
        return (1 - sigma) * latents + sigma * noise

    def capture(self, bb: Backbone, cross_resolutions: Iterable[int] | None,
                self_resolution: int | None, conditional: slice | None,
                keep_graph: bool) -> AbstractContextManager[AttentionRecord]:
        from refbench.diffusion.joint_attention import capture_joint_attention

        return capture_joint_attention(bb.transformer, self.text_first, cross_resolutions,
                                       self_resolution, conditional, keep_graph)


class _SD3Family(_FlowFamily):
    def finest_attention(self, bb: Backbone, latent: int) -> int:
        return latent // int(bb.transformer.config.patch_size)

    def _t5_tokens(self, bb: Backbone) -> int:
        return min(SD3_T5_TOKENS, int(bb.tokenizer_3.model_max_length))

    def conditioning(self, bb: Backbone, prompts: list[str], max_length: int | None) -> Conditioning:
        first, pooled_1 = _penultimate(bb.text_encoder, bb.tokenizer, prompts, max_length)
        second, pooled_2 = _penultimate(bb.text_encoder_2, bb.tokenizer_2, prompts, max_length)
        clip = torch.cat([first, second], dim=-1)
        t5 = encode(bb.text_encoder_3, bb.tokenizer_3, prompts, self._t5_tokens(bb))
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return Conditioning(torch.cat([clip, t5], dim=-2), torch.cat([pooled_1, pooled_2], dim=-1))

    def token_layout(self, bb: Backbone, max_length: int | None) -> tuple[TokenSegment, ...]:
        clip = max_length or bb.tokenizer.model_max_length
        return (TokenSegment(bb.tokenizer, 0, clip), TokenSegment(bb.tokenizer_3, clip, self._t5_tokens(bb)))

    def denoise(self, bb: Backbone, latents: torch.Tensor, timestep: torch.Tensor,
                cond: Conditioning) -> torch.Tensor:
        return bb.transformer(hidden_states=latents, encoder_hidden_states=cond.tokens,
                              pooled_projections=cond.pooled, timestep=timestep).sample


class _FluxFamily(_FlowFamily):
    text_first = True

    def _t5_tokens(self, bb: Backbone) -> int:
        return min(FLUX_T5_TOKENS, int(bb.tokenizer_2.model_max_length))

    def conditioning(self, bb: Backbone, prompts: list[str], max_length: int | None) -> Conditioning:
        ids = tokenize(bb.tokenizer, prompts, bb.text_encoder.device)
        pooled = bb.text_encoder(ids, output_hidden_states=False).pooler_output
        return Conditioning(encode(bb.text_encoder_2, bb.tokenizer_2, prompts, self._t5_tokens(bb)), pooled)

    def token_layout(self, bb: Backbone, max_length: int | None) -> tuple[TokenSegment, ...]:
        return (TokenSegment(bb.tokenizer_2, 0, self._t5_tokens(bb)),)

    def denoise(self, bb: Backbone, latents: torch.Tensor, timestep: torch.Tensor,
                cond: Conditioning) -> torch.Tensor:
        b, c, h, w = latents.shape
        packed = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(
            b, (h // 2) * (w // 2), c * 4)
        image_ids = torch.zeros(h // 2, w // 2, 3, device=latents.device, dtype=latents.dtype)
        image_ids[..., 1] += torch.arange(h // 2, device=latents.device)[:, None]
        image_ids[..., 2] += torch.arange(w // 2, device=latents.device)[None, :]
        text_ids = torch.zeros(cond.tokens.shape[1], 3, device=latents.device, dtype=latents.dtype)
        guidance = (torch.full((b,), FLUX_GUIDANCE, device=latents.device, dtype=torch.float32)
                    if bb.transformer.config.guidance_embeds else None)
        image_ids, text_ids = image_ids.reshape(-1, 3), text_ids
        if _batched_position_ids():
            image_ids, text_ids = image_ids[None].expand(b, -1, -1), text_ids[None].expand(b, -1, -1)
        out = bb.transformer(hidden_states=packed, encoder_hidden_states=cond.tokens,
                             pooled_projections=cond.pooled, timestep=timestep.to(latents.dtype) / 1000,
                             img_ids=image_ids, txt_ids=text_ids, guidance=guidance).sample
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def _batched_position_ids() -> bool:
    """diffusers before 0.31 takes Flux's position ids with a batch axis (B, S, 3); later
    versions take (S, 3) and warn about the batched form."""
    import diffusers
    from packaging.version import Version

    return Version(diffusers.__version__).release < (0, 31)


_FAMILIES: dict[str, _Family] = {"sd1": _UNetFamily(), "sd2": _UNetFamily(), "sdxl": _SDXLFamily(),
             "sd3": _SD3Family(), "flux": _FluxFamily()}


def conditioning(bb: Backbone, prompts: list[str], max_length: int | None = None) -> Conditioning:
    """The prompts encoded as the family's pipeline encodes them (``max_length``: the CLIP
    tokenizers' padded length, by default their context)."""
    return _FAMILIES[bb.family].conditioning(bb, prompts, max_length)


def token_layout(bb: Backbone, max_length: int | None = None) -> tuple[TokenSegment, ...]:
    """Where each tokenizer's tokens sit in ``Conditioning.tokens`` (and so in the attention's
    text keys): one segment for the UNet families and Flux, CLIP then T5 for SD3."""
    return _FAMILIES[bb.family].token_layout(bb, max_length)


def noised(bb: Backbone, latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """``latents`` taken to ``timestep`` (integers in [0, 1000)) by the family's forward process."""
    return _FAMILIES[bb.family].noised(bb, latents, noise, timestep)


def denoise(bb: Backbone, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
    """One denoiser forward on (B, C, h, w) latents; the prediction at the latents' shape."""
    return _FAMILIES[bb.family].denoise(bb, latents, timestep, cond)


def finest_attention(bb: Backbone, latent: int) -> int:
    """The side of the finest grid the denoiser attends at, for a latent of side ``latent``."""
    return _FAMILIES[bb.family].finest_attention(bb, latent)


def capture(bb: Backbone, cross_resolutions: Iterable[int] | None = None,
            self_resolution: int | None = None, conditional: slice | None = None,
            keep_graph: bool = False) -> AbstractContextManager[AttentionRecord]:
    """Record the denoiser's attention during the forwards inside the block (see
    ``attention.capture_attention``; for SD3 and Flux ``joint_attention``), processors restored."""
    return _FAMILIES[bb.family].capture(bb, cross_resolutions, self_resolution, conditional, keep_graph)

