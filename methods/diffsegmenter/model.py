"""DiffSegmenter ("Diffusion Model is Secretly a Training-free Open Vocabulary Semantic Segmenter",
Wang et al., 2023; code: github.com/VCG-team/DiffSegmenter), computed as its code computes it.

Per sample, as ``open_vocabulary/*/ptp_stable_*.py`` does:

1. the image is squashed to the model size (bilinear, no antialias), encoded by the VAE, and a
   *sample* of the posterior (``latent_dist.sample()``) times 0.18215 (the VAE's
   ``scaling_factor``) is noised to timestep t (100) with ``add_noise``; the posterior sample
   and the noise are drawn from the sample's seed;
2. the prompt "a photograph of {expression}" is encoded, and the word the map is read from is
   up-weighted as Compel's "word++" does: z' = U + 1.21 (z - U) at its tokens, U the empty
   prompt's embedding;
3. one UNet forward records, per resolution, the cross-attention averaged over heads and layers
   (down, mid, up) and the finest self-attention averaged likewise;
4. the target token's map at each resolution is upsampled to the finest, min-max normalised and
   mixed with weights (0.3, 0.5, 0.1, 0.1 for 8/16/32/64 at 512), refined by the self-attention
   (S @ c), resized to the image and min-max normalised there.

The token: for a class name (semantic data) the last token of the name, as the COCO and Context
scripts take it; for a referring expression the root noun of its referent, as the
attribute-binding write-up does (the original reads no referring expressions). Every place where
refbench can compute otherwise is a named config option (the README's "departures" table); the
variants change only the prompt embedding (see ``binding.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from refbench.data.sample import Sample
from refbench.diffusion.attention import AttentionRecord
from refbench.diffusion.backbone import Backbone, load_backbone
from refbench.diffusion.denoisers import (Conditioning, capture, conditioning, denoise,
                                          finest_attention, noised, token_layout)
from refbench.diffusion.families import FAMILIES, UNET_FAMILIES, require_family
from refbench.diffusion.latents import latents_and_noise
from refbench.diffusion.parsing import Referent, find_referent
from refbench.diffusion.prompts import JointAlignment, TokenAlignment, align_layout
from refbench.errors import UserError
from refbench.method import Batch, Prediction
from refbench.plugins import PluginHost
from methods.diffsegmenter.binding import average_with_unconditioned, emphasise, replace_chunk

PLACEHOLDER = "{expression}"
# DiffSegmenter's attention resolutions for Stable Diffusion 1.5 at 512 (latent 64), coarse to
# fine: ``weights`` are given for these and mapped to a backbone's own resolutions by level.
REFERENCE_RESOLUTIONS = (8, 16, 32, 64)
REFERENCE_LATENT = 64
COMPEL_PLUS = 1.1 ** 2  # Compel's weight for "word++"


@dataclass(frozen=True)
class DiffSegmenterConfig:
    backbone: str = "sd15"  # a registered backbone, a diffusers directory, or a hub id
    device: str = "auto"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    prompt_template: str = "a photograph of {expression}"
    image_size: int = 0  # 0: the backbone's native input size (512 for SD 1.5)
    timesteps: tuple[int, ...] = (100,)  # several are averaged
    # one weight per attention resolution of a 512 input (8, 16, 32, 64), coarse to fine; a
    # backbone's resolutions take the weight of the same level (its latent side is 64), renormalised
    weights: tuple[float, ...] = (0.3, 0.5, 0.1, 0.1)
    refine: bool = True  # multiply by the averaged finest self-attention
    target: Literal["root", "chunk"] = "root"  # the referent's root noun, or its whole group
    overlong: Literal["error", "truncate"] = "error"
    captions: bool = False  # put a caption plugin's text (refbench_caption hook) in the prompt
    # -- where refbench may depart from the original (defaults: as the original computes) --
    posterior: Literal["sample", "mean"] = "sample"  # latent_dist.sample(), or the mean
    antialias: bool = False  # the resize to the model size
    normalize: Literal["after_resize", "before_resize"] = "after_resize"  # the final min-max
    emphasis: float = COMPEL_PLUS  # Compel's "++" on the word read; 1: no up-weighting
    class_token: Literal["last", "root"] = "last"  # class names: their last token, or the root noun
    # UNet attention layers with more queries than this are not recorded, as the original's
    # AttentionStore keeps only ``attn.shape[1] <= 64 ** 2``; 0: keep every layer
    max_queries: int = 4096
    # with captions: when the word after the read word ends in "-ing" ("a cat sitting"), its
    # token is read too, as the original's caption scripts do; False reads the word alone
    ing_next: bool = True

    def validate(self) -> None:
        if self.prompt_template.count(PLACEHOLDER) != 1:
            raise ValueError(f"prompt_template must contain {PLACEHOLDER} exactly once")
        if not self.timesteps or any(not 0 <= t < 1000 for t in self.timesteps):
            raise ValueError("timesteps must be one or more integers in [0, 1000)")
        if len(self.weights) != len(REFERENCE_RESOLUTIONS):
            raise ValueError(f"weights has {len(self.weights)} entries: give one per attention "
                             f"resolution of a 512 input, {', '.join(map(str, REFERENCE_RESOLUTIONS))} "
                             f"(4 resolutions, coarse to fine; a backbone's own are mapped by level)")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        if self.image_size < 0 or self.image_size % 8:
            raise ValueError("image_size must be 0 (native) or a positive multiple of 8")
        if not self.emphasis > 0:
            raise ValueError(f"emphasis must be positive (1: none; Compel's ++ is 1.21), got {self.emphasis}")
        if self.max_queries < 0:
            raise ValueError(f"max_queries must be 0 (keep every layer) or a positive number of "
                             f"queries (the original's 4096), got {self.max_queries}")


@dataclass(frozen=True)
class GroupingConfig(DiffSegmenterConfig):
    # which words are bound to the noun: the noun chunk's (the write-up's rule), or the noun's
    # dependents, postposed attributes included ("the square that is red")
    grouping: Literal["chunk", "dependency"] = "chunk"


@dataclass(frozen=True)
class BindingConfig(GroupingConfig):
    alpha: float = 0.9  # conditioned embedding's weight at the target token (binding eq. 4)

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


@dataclass
class _PromptPlan:
    prompt: str
    alignment: TokenAlignment | JointAlignment
    referent: Referent
    group_text: str  # the referent's group, as the binding variants encode it alone
    group_positions: list[int]
    target_positions: list[int]  # the tokens the map is read from
    emphasis_positions: list[int]  # the word Compel's "++" would weight
    info: dict[str, int]


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation of (B, ...) to [0, 1] (a constant map becomes 0)."""
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps)


def level_weights(weights: tuple[float, ...], resolutions: list[int], latent: int) -> list[float]:
    """The reference weights (for 8/16/32/64 at latent 64) at a backbone's ``resolutions``:
    resolution r of latent L is the level of r * 64 / L; a level the reference lacks weighs 0.
    Renormalised to the reference's sum (the maps are min-max normalised at the end, so only the
    ratios matter)."""
    by_level = dict(zip(REFERENCE_RESOLUTIONS, weights))
    mapped = [by_level.get(r * REFERENCE_LATENT // latent, 0.0) if (r * REFERENCE_LATENT) % latent == 0
              else 0.0 for r in resolutions]
    if sum(mapped) <= 0:
        raise UserError(f"weights {list(weights)} put no weight on this backbone's attention "
                        f"resolutions {resolutions} (latent {latent}, i.e. the 512-input levels "
                        f"{[r * REFERENCE_LATENT // latent for r in resolutions]}): weight one of those")
    scale = sum(weights) / sum(mapped)
    return [w * scale for w in mapped]


class DiffSegmenter:
    """The baseline; subclasses switch on the attribute-binding steps.

    Runs on every family: it needs only cross-attention maps of a text token and self-attention
    at one grid, which UNets give per level and MM-DiTs (SD3, Flux) give from every joint layer
    at their single grid (the image-query x text-key block; see ``joint_attention.py``). On a
    single grid the per-level ``weights`` do not apply: the map is the mean over every joint
    layer, refined by the mean image-image attention of every joint layer."""

    Config: ClassVar[type] = DiffSegmenterConfig
    families: ClassVar[tuple[str, ...]] = FAMILIES
    replaces_chunk: ClassVar[bool] = False
    averages_unconditioned: ClassVar[bool] = False

    def __init__(self, config: DiffSegmenterConfig, *, host: PluginHost):
        self.config = config
        self.host = host  # backbones and caption providers come from the caller's plugins
        self.backbone: Backbone = load_backbone(config.backbone, config.device, config.dtype, host=host)
        require_family(type(self).__name__, self.backbone.family, self.families,
                       "it reads cross- and self-attention maps")
        self.size = config.image_size or self.backbone.image_size
        self._unconditioned: torch.Tensor | None = None

    @classmethod
    def parameter_counts(cls, config: DiffSegmenterConfig, host: PluginHost) -> tuple[int, int]:
        """All backbone parameters; none is trained."""
        backbone = load_backbone(config.backbone, config.device, config.dtype, host=host)
        return sum(p.numel() for part in backbone.modules for p in part.parameters()), 0

    def weights_fingerprint(self) -> str:
        captioners = ",".join(self.host.caption_providers()) if self.config.captions else ""
        return self.backbone.fingerprint + (f"+captions:{captioners}" if captioners else "")

    # -- prompts ---------------------------------------------------------------------------
    def _plan(self, text: str, sample: Sample) -> _PromptPlan:
        if not text.strip():
            raise UserError(f"sample {sample.sample_id} has an empty expression: fix or drop "
                            f"that sentence in the data")
        prefix, suffix = self.config.prompt_template.split(PLACEHOLDER)
        prompt = prefix + text + suffix
        alignment = align_layout(token_layout(self.backbone), prompt)
        referent = find_referent(text, getattr(self.config, "grouping", "chunk")).shifted(len(prefix))
        info = {"no_chunk": int(not referent.found), "truncated": int(alignment.truncated)}
        if sample.is_class_name and self.config.class_token == "last" and not self.config.captions:
            # the class name's last token is read and its last word weighted (the COCO script)
            words = [span for span in alignment.word_spans
                     if span[0] < len(prefix) + len(text) and span[1] > len(prefix)]
            target = alignment.positions(len(prefix), len(prefix) + len(text))[-1:]
            emphasis = alignment.positions(*words[-1]) if words else []
        else:
            spans = referent.group if self.config.target == "chunk" else (referent.root,)
            target = [p for span in spans for p in alignment.positions(*span)]
            emphasis = alignment.positions(*referent.root)
            if self.config.captions and self.config.ing_next:
                following = [span for span in alignment.word_spans if span[0] >= referent.root[1]][:1]
                if following and prompt[following[0][0]:following[0][1]].lower().endswith("ing"):
                    target += [p for p in alignment.positions(*following[0]) if p not in target]
                    info["ing_next"] = 1
        if not target:
            raise UserError(f"sample {sample.sample_id}: the expression {text!r} has no token "
                            f"the model's tokenizer can read for its referent: fix or drop that "
                            f"sentence in the data")
        if alignment.lost(target):
            if self.config.overlong == "error":
                raise UserError(
                    f"sample {sample.sample_id}: the prompt has {alignment.n_tokens} tokens, over the "
                    f"model's {alignment.max_length}, and the referent is cut off: shorten "
                    f"prompt_template, or --set <method>.overlong=truncate to keep the kept part")
            target = [p for p in target if not alignment.lost([p])] or [alignment.last_kept_position]
            info["target_lost"] = 1
        group_positions = [p for span in referent.group for p in alignment.positions(*span)]
        group_text = " ".join(prompt[start:end] for start, end in referent.group)
        emphasis = [p for p in emphasis if not alignment.lost([p])]
        return _PromptPlan(prompt, alignment, referent, group_text, group_positions, target,
                           emphasis, info)

    def _unconditioned_embedding(self) -> torch.Tensor:
        if self._unconditioned is None:
            self._unconditioned = conditioning(self.backbone, [""]).tokens[0]
        return self._unconditioned

    def _embeddings(self, plans: list[_PromptPlan]) -> torch.Tensor:
        """The edited prompt token embeddings (B, L, D); see ``_conditioning``."""
        return self._conditioning(plans).tokens

    def _conditioning(self, plans: list[_PromptPlan]) -> Conditioning:
        """The prompt embeddings: encoded, the group spliced in (noun-chunk replacement), the
        read word up-weighted (Compel's ++), then averaged with the unconditioned embedding
        (eq. 4). At the target token q that composes to U + emphasis * alpha * (z - U), z the
        prompt's (or, spliced, the group's) embedding there."""
        layout = token_layout(self.backbone)
        encoded = conditioning(self.backbone, [p.prompt for p in plans])
        binds = self.replaces_chunk or self.averages_unconditioned
        if not binds and self.config.emphasis == 1.0:
            return encoded
        rows = []
        for plan, embedding in zip(plans, encoded.tokens):
            # No group, or a bare noun (a COCO class name): nothing to bind; the baseline stands.
            binding = binds and plan.referent.found and plan.referent.has_modifiers
            if binding and self.replaces_chunk:
                alone = align_layout(layout, plan.group_text)
                alone_positions = alone.positions(0, len(plan.group_text))
                if len(alone_positions) != len(plan.group_positions) or plan.alignment.lost(plan.group_positions):
                    plan.info["chunk_mismatch"] = 1
                else:
                    group_embedding = conditioning(self.backbone, [plan.group_text]).tokens[0]
                    embedding = replace_chunk(embedding, plan.group_positions, group_embedding,
                                              alone_positions)
            if self.config.emphasis != 1.0 and plan.emphasis_positions:
                embedding = emphasise(embedding, plan.emphasis_positions,
                                      self._unconditioned_embedding(), self.config.emphasis)
            if binding and self.averages_unconditioned:
                embedding = average_with_unconditioned(embedding, plan.target_positions,
                                                       self._unconditioned_embedding(),
                                                       self.config.alpha)
            if binding:
                plan.info["binding_applied"] = 1
            rows.append(embedding)
        return encoded.replace_tokens(torch.stack(rows))

    # -- maps ------------------------------------------------------------------------------
    def _mix(self, record: AttentionRecord, plans: list[_PromptPlan], finest: int,
             latent: int) -> torch.Tensor:
        """Weighted sum of the min-max-normalised target maps of every resolution, at the finest
        attention grid: (B, r, r). A single grid (an MM-DiT) is its map alone."""
        resolutions = [r for r in record.resolutions() if r <= finest]  # max_queries' drop
        weights = [1.0] if len(resolutions) == 1 else level_weights(self.config.weights, resolutions, latent)
        mixed = None
        for resolution, weight in zip(resolutions, weights):
            if weight == 0:
                continue
            maps = record.cross_maps(resolution)  # (B, T, r, r)
            target = torch.stack([maps[b, plan.target_positions].mean(0) for b, plan in enumerate(plans)])
            target = F.interpolate(target[:, None].float(), size=(finest, finest), mode="bilinear",
                                   align_corners=False)[:, 0]
            term = weight * minmax(target)
            mixed = term if mixed is None else mixed + term
        assert mixed is not None  # level_weights refuses an all-zero mapping
        return mixed

    def _finest_kept(self, finest: int) -> int:
        """The finest UNet attention grid the original records: layers of more than
        ``max_queries`` queries are dropped (SD 1.5 at 512 keeps all, its finest is 64 x 64 =
        4096; an SD 2.1-v at 768, whose finest is 96 x 96, keeps 48 x 48 and coarser). An
        MM-DiT attends at one grid only, which is always kept."""
        cap = self.config.max_queries
        if not cap or self.backbone.family not in UNET_FAMILIES:
            return finest
        while finest * finest > cap and finest > 1:
            finest //= 2
        return finest

    @torch.no_grad()
    def score_maps(self, batch: Batch) -> tuple[torch.Tensor, list[_PromptPlan]]:
        """Maps at the finest attention grid (B, r, r: the latent side for SD 1.x and 2.x, half
        of it for SDXL, the patch grid for SD3 and Flux), averaged over timesteps; min-max normalised
        already only when ``normalize="before_resize"``."""
        texts = [self.host.caption(s.expression, image, s.sample_id) if self.config.captions else s.expression
                 for s, image in zip(batch.samples, batch.images)]
        plans = [self._plan(text, s) for text, s in zip(texts, batch.samples)]
        context = self._conditioning(plans)
        bb = self.backbone
        latents, noise = latents_and_noise(bb, batch.images, batch.seeds, self.size,
                                           posterior=self.config.posterior,
                                           antialias=self.config.antialias)
        latent = latents.shape[-1]
        finest = self._finest_kept(finest_attention(bb, latent))
        total = None
        for t in self.config.timesteps:
            timestep = torch.full((len(plans),), t, dtype=torch.long, device=latents.device)
            noisy = noised(bb, latents, noise, timestep)
            with capture(bb, None, finest if self.config.refine else None) as record:
                denoise(bb, noisy, timestep, context)
            mixed = self._mix(record, plans, finest, latent)
            if self.config.refine:
                mixed = record.refine(mixed.flatten(1)[..., None].to(self.backbone.dtype))
                mixed = mixed[..., 0].view(-1, finest, finest).float()
            total = mixed if total is None else total + mixed
        total = total / len(self.config.timesteps)
        return (minmax(total) if self.config.normalize == "before_resize" else total), plans

    def predict(self, batch: Batch) -> list[Prediction]:
        maps, plans = self.score_maps(batch)
        out = []
        for sample, score, plan in zip(batch.samples, maps, plans):
            resized = F.interpolate(score[None, None], size=batch.output_size(sample),
                                    mode="bilinear", align_corners=False)[0]
            if self.config.normalize == "after_resize":
                resized = minmax(resized)
            out.append(Prediction(scores=resized[0].clamp(0, 1).cpu().numpy().astype(np.float32),
                                  info=dict(plan.info)))
        return out


class DiffSegmenterNCR(DiffSegmenter):
    Config = GroupingConfig
    replaces_chunk = True


class DiffSegmenterUEA(DiffSegmenter):
    Config = BindingConfig
    averages_unconditioned = True


class DiffSegmenterAB(DiffSegmenter):
    Config = BindingConfig
    replaces_chunk = True
    averages_unconditioned = True
