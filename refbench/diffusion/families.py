"""Backbone families: which components a Stable Diffusion generation has, how its diffusers
directory is recognised, and the one-line refusal of a method that cannot run on it.

Five families, each a layout of diffusers components:

- ``sd1``: Stable Diffusion 1.x, a ``UNet2DConditionModel`` reading one CLIP text encoder's last
  hidden state;
- ``sd2``: Stable Diffusion 2.x, the same pipeline (``StableDiffusionPipeline``) with OpenCLIP-H
  converted to a 23-layer ``CLIPTextModel`` (the pipeline feeds its last hidden state, which is
  OpenCLIP's penultimate layer), linear projections and per-level head widths in the UNet, and
  a v-prediction scheduler for the 768 models;
- ``sdxl``: two CLIP text encoders whose penultimate hidden states are concatenated, the second
  one's pooled projection and the size/crop time ids as added conditions;
- ``sd3`` and ``flux``: MM-DiT transformers with joint attention over text and image tokens
  (SD3: CLIP-L, CLIP-G and T5; Flux: CLIP-L for the pooled vector, T5 for the tokens).

Knows no method: methods state the families they support and call ``require_family``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from refbench.errors import UserError

FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux")
UNET_FAMILIES = ("sd1", "sd2", "sdxl")
DIT_FAMILIES = ("sd3", "flux")

# component name -> (library, class) as model_index.json records it, per family
_CLIP = ("transformers", "CLIPTextModel")
_CLIP_PROJ = ("transformers", "CLIPTextModelWithProjection")
_T5 = ("transformers", "T5EncoderModel")
_CLIP_TOK = ("transformers", "CLIPTokenizer")
_T5_TOK = ("transformers", "T5TokenizerFast")
_VAE = ("diffusers", "AutoencoderKL")
_DDPM = ("diffusers", "DDPMScheduler")
_FLOW = ("diffusers", "FlowMatchEulerDiscreteScheduler")
_UNET = ("diffusers", "UNet2DConditionModel")

COMPONENTS: dict[str, dict[str, tuple[str, str]]] = {
    "sd1": {"unet": _UNET, "vae": _VAE, "text_encoder": _CLIP, "tokenizer": _CLIP_TOK,
            "scheduler": _DDPM},
    "sd2": {"unet": _UNET, "vae": _VAE, "text_encoder": _CLIP, "tokenizer": _CLIP_TOK,
            "scheduler": _DDPM},
    "sdxl": {"unet": _UNET, "vae": _VAE, "text_encoder": _CLIP, "tokenizer": _CLIP_TOK,
             "text_encoder_2": _CLIP_PROJ, "tokenizer_2": _CLIP_TOK, "scheduler": _DDPM},
    "sd3": {"transformer": ("diffusers", "SD3Transformer2DModel"), "vae": _VAE,
            "text_encoder": _CLIP_PROJ, "tokenizer": _CLIP_TOK, "text_encoder_2": _CLIP_PROJ,
            "tokenizer_2": _CLIP_TOK, "text_encoder_3": _T5, "tokenizer_3": _T5_TOK,
            "scheduler": _FLOW},
    "flux": {"transformer": ("diffusers", "FluxTransformer2DModel"), "vae": _VAE,
             "text_encoder": _CLIP, "tokenizer": _CLIP_TOK, "text_encoder_2": _T5,
             "tokenizer_2": _T5_TOK, "scheduler": _FLOW},
}

PIPELINES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
             "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline",
             "flux": "FluxPipeline"}
_BY_PIPELINE = {"StableDiffusionXLPipeline": "sdxl", "StableDiffusion3Pipeline": "sd3",
                "FluxPipeline": "flux"}


def detect_family(index: Mapping[str, Any], unet_config: Mapping[str, Any] | None = None) -> str:
    """The family of a diffusers directory from its model_index.json (and, to tell SD 2.x from
    1.x, which share a pipeline class, the UNet's config: 2.x uses linear projections)."""
    declared = index.get("_refbench_family")
    if declared in FAMILIES:
        return str(declared)
    pipeline = str(index.get("_class_name", "StableDiffusionPipeline"))
    for prefix, family in _BY_PIPELINE.items():
        if pipeline.startswith(prefix):  # e.g. StableDiffusion3Pipeline, FluxPipeline
            return family
    if unet_config is not None and unet_config.get("use_linear_projection"):
        return "sd2"
    return "sd1"


class FamilyError(UserError):
    """A method asked to run on a family it does not support (``refbench ls methods --params``
    shows such a pair as "-" instead of stopping)."""


def require_family(method: str, family: str, supported: Sequence[str], why: str) -> None:
    """A one-line refusal naming the family, the supported ones and why."""
    if family not in supported:
        raise FamilyError(f"{method} does not run on a {family} backbone ({why}): pick a backbone "
                        f"of family {', '.join(supported)} (refbench ls backbones shows each family)")
