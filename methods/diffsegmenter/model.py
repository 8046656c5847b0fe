"""DiffSegmenter: a training-free segmenter from one denoising step of a text-to-image model.

Per sample: the prompt "a photograph of {expression}" is encoded; the image is VAE-encoded and
noised to timestep t with the sample's own noise; one UNet forward records the cross-attention
of the referent's token at each resolution and the self-attention at the finest one. The
per-resolution maps are upsampled to the finest, min-max normalised and mixed with fixed
weights; the mix is refined by the averaged self-attention (S @ c) and resized to the image as
a score map in [0, 1]. The variants change only the prompt embedding (see ``binding.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from refbench.diffusion.attention import capture_attention
from refbench.diffusion.backbone import Backbone, load_backbone
from refbench.diffusion.latents import latents_and_noise
from refbench.diffusion.parsing import Referent, find_referent
from refbench.diffusion.prompts import TokenAlignment, align, encode
from refbench.errors import UserError
from refbench.method import Batch, Prediction
from refbench.plugins import PluginHost
from methods.diffsegmenter.binding import average_with_unconditioned, replace_chunk

PLACEHOLDER = "{expression}"


@dataclass(frozen=True)
class DiffSegmenterConfig:
    backbone: str = "sd15"  # a registered backbone, a diffusers directory, or a hub id
    device: str = "auto"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    prompt_template: str = "a photograph of {expression}"
    image_size: int = 0  # 0: the backbone's native input size (512 for SD 1.5)
    timesteps: tuple[int, ...] = (100,)  # several are averaged
    # one weight per attention resolution, coarse to fine (8/16/32/64 for SD 1.5 at 512)
    weights: tuple[float, ...] = (0.3, 0.5, 0.1, 0.1)
    refine: bool = True  # multiply by the averaged finest self-attention
    target: Literal["root", "chunk"] = "root"  # the referent's root noun, or its whole chunk
    overlong: Literal["error", "truncate"] = "error"
    captions: bool = False  # put a caption plugin's text (refbench_caption hook) in the prompt

    def validate(self) -> None:
        if self.prompt_template.count(PLACEHOLDER) != 1:
            raise ValueError(f"prompt_template must contain {PLACEHOLDER} exactly once")
        if not self.timesteps or any(not 0 <= t < 1000 for t in self.timesteps):
            raise ValueError("timesteps must be one or more integers in [0, 1000)")
        if not self.weights or any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        if self.image_size < 0 or self.image_size % 8:
            raise ValueError("image_size must be 0 (native) or a positive multiple of 8")


@dataclass(frozen=True)
class BindingConfig(DiffSegmenterConfig):
    alpha: float = 0.9  # eq. 4: weight of the conditioned embedding at the target token

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


@dataclass
class _PromptPlan:
    prompt: str
    alignment: TokenAlignment
    referent: Referent
    chunk_text: str
    target_positions: list[int]
    chunk_positions: list[int]
    info: dict[str, int]


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation of (B, ...) to [0, 1] (a constant map becomes 0)."""
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps)


class DiffSegmenter:
    """The baseline; subclasses switch on the attribute-binding steps."""

    Config: ClassVar[type] = DiffSegmenterConfig
    replaces_chunk: ClassVar[bool] = False
    averages_unconditioned: ClassVar[bool] = False

    def __init__(self, config: DiffSegmenterConfig, *, host: PluginHost):
        self.config = config
        self.host = host  # backbones and caption providers come from the caller's plugins
        self.backbone: Backbone = load_backbone(config.backbone, config.device, config.dtype, host=host)
        self.size = config.image_size or self.backbone.image_size
        self._unconditioned: torch.Tensor | None = None

    @classmethod
    def parameter_counts(cls, config: DiffSegmenterConfig, host: PluginHost) -> tuple[int, int]:
        """All backbone parameters; none is trained."""
        backbone = load_backbone(config.backbone, config.device, config.dtype, host=host)
        parts = (backbone.unet, backbone.vae, backbone.text_encoder)
        return sum(p.numel() for part in parts for p in part.parameters()), 0

    def weights_fingerprint(self) -> str:
        captioners = ",".join(self.host.caption_providers()) if self.config.captions else ""
        return self.backbone.fingerprint + (f"+captions:{captioners}" if captioners else "")

    # -- prompts ---------------------------------------------------------------------------
    def _plan(self, expression: str, sample_id: str) -> _PromptPlan:
        prefix, suffix = self.config.prompt_template.split(PLACEHOLDER)
        prompt = prefix + expression + suffix
        alignment = align(self.backbone.tokenizer, prompt)
        referent = find_referent(expression).shifted(len(prefix))
        info = {"no_chunk": int(not referent.found), "truncated": int(alignment.truncated)}
        span = referent.chunk if self.config.target == "chunk" else referent.root
        target = alignment.positions(*span)
        chunk_positions = alignment.positions(*referent.chunk)
        if alignment.lost(target) or not target:
            if self.config.overlong == "error" or not target:
                raise UserError(
                    f"sample {sample_id}: the prompt has {alignment.n_tokens} tokens, over the "
                    f"model's {alignment.max_length}, and the referent is cut off: shorten "
                    f"prompt_template, or --set <method>.overlong=truncate to keep the kept part")
            target = [p for p in target if not alignment.lost([p])] or [alignment.last_kept_position]
            info["target_lost"] = 1
        chunk_text = prompt[referent.chunk[0]:referent.chunk[1]]
        return _PromptPlan(prompt, alignment, referent, chunk_text, target, chunk_positions, info)

    def _unconditioned_embedding(self) -> torch.Tensor:
        if self._unconditioned is None:
            self._unconditioned = encode(self.backbone.text_encoder, self.backbone.tokenizer, [""])[0]
        return self._unconditioned

    def _embeddings(self, plans: list[_PromptPlan]) -> torch.Tensor:
        tokenizer, text_encoder = self.backbone.tokenizer, self.backbone.text_encoder
        embeddings = encode(text_encoder, tokenizer, [p.prompt for p in plans])
        if not (self.replaces_chunk or self.averages_unconditioned):
            return embeddings
        rows = []
        for plan, embedding in zip(plans, embeddings):
            # No chunk, or a bare noun (a COCO class name): nothing to bind; the baseline stands.
            if not plan.referent.found or not plan.referent.has_modifiers:
                rows.append(embedding)
                continue
            if self.replaces_chunk:
                alone = align(tokenizer, plan.chunk_text)
                alone_positions = [p for pos in alone.word_positions for p in pos]
                if len(alone_positions) != len(plan.chunk_positions) or plan.alignment.lost(plan.chunk_positions):
                    plan.info["chunk_mismatch"] = 1
                else:
                    chunk_embedding = encode(text_encoder, tokenizer, [plan.chunk_text])[0]
                    embedding = replace_chunk(embedding, plan.chunk_positions, chunk_embedding,
                                              alone_positions)
            if self.averages_unconditioned:
                embedding = average_with_unconditioned(embedding, plan.target_positions,
                                                       self._unconditioned_embedding(),
                                                       self.config.alpha)
            plan.info["binding_applied"] = 1
            rows.append(embedding)
        return torch.stack(rows)

    # -- maps ------------------------------------------------------------------------------
    def _mix(self, record, plans: list[_PromptPlan], finest: int) -> torch.Tensor:
        """Weighted sum of the min-max-normalised target maps of every resolution: (B, r, r)."""
        resolutions = record.resolutions()
        if len(resolutions) != len(self.config.weights):
            raise UserError(f"weights has {len(self.config.weights)} entries but the backbone "
                            f"has cross-attention at {len(resolutions)} resolutions {resolutions}: "
                            f"give one weight per resolution, coarse to fine")
        mixed = None
        for resolution, weight in zip(resolutions, self.config.weights):
            maps = record.cross_maps(resolution)  # (B, T, r, r)
            target = torch.stack([maps[b, plan.target_positions].mean(0) for b, plan in enumerate(plans)])
            target = F.interpolate(target[:, None].float(), size=(finest, finest), mode="bilinear",
                                   align_corners=False)[:, 0]
            term = weight * minmax(target)
            mixed = term if mixed is None else mixed + term
        return mixed

    @torch.no_grad()
    def score_maps(self, batch: Batch) -> tuple[torch.Tensor, list[_PromptPlan]]:
        """Score maps at latent resolution (B, r, r) in [0, 1], before resizing to the images."""
        texts = [self.host.caption(s.expression, image, s.sample_id) if self.config.captions else s.expression
                 for s, image in zip(batch.samples, batch.images)]
        plans = [self._plan(text, s.sample_id) for text, s in zip(texts, batch.samples)]
        context = self._embeddings(plans)
        latents, noise = latents_and_noise(self.backbone, batch.images, batch.seeds, self.size)
        finest = latents.shape[-1]
        total = None
        for t in self.config.timesteps:
            timestep = torch.full((len(plans),), t, dtype=torch.long, device=latents.device)
            noisy = self.backbone.scheduler.add_noise(latents, noise, timestep)
            with capture_attention(self.backbone.unet, None,
                                   finest if self.config.refine else None) as record:
                self.backbone.unet(noisy, timestep, encoder_hidden_states=context)
            mixed = self._mix(record, plans, finest)
            if self.config.refine:
                mixed = record.refine(mixed.flatten(1)[..., None].to(self.backbone.dtype))
                mixed = mixed[..., 0].view(-1, finest, finest).float()
            total = mixed if total is None else total + mixed
        return minmax(total / len(self.config.timesteps)), plans

    def predict(self, batch: Batch) -> list[Prediction]:
        maps, plans = self.score_maps(batch)
        out = []
        for sample, score, plan in zip(batch.samples, maps, plans):
            resized = F.interpolate(score[None, None], size=(sample.height, sample.width),
                                    mode="bilinear", align_corners=False)[0, 0]
            out.append(Prediction(scores=resized.clamp(0, 1).cpu().numpy().astype(np.float32),
                                  info=dict(plan.info)))
        return out


class DiffSegmenterNCR(DiffSegmenter):
    replaces_chunk = True


class DiffSegmenterUEA(DiffSegmenter):
    Config = BindingConfig
    averages_unconditioned = True


class DiffSegmenterAB(DiffSegmenter):
    Config = BindingConfig
    replaces_chunk = True
    averages_unconditioned = True
