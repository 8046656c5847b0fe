"""GoCA ("Making Training-Free Diffusion Segmentors Scale with the Generative Power", Meng et
al., CVPR 2026; code: github.com/Darkbblue/goca, on github.com/Darkbblue/generic-diffusion-feature),
computed as its code computes it for Stable Diffusion 1.5 (``src-main/configs/config-model/
config_model_15.py``) and SDXL (``config_model_xl.py``).

Per image (``src-main/main.py``), one UNet forward, then:

1. the prompt is a comma-separated list of entities (``captioner.py``): the original's are a
   GPT-4o description of the image (``gpt_output/*.json``) aligned to the true classes, with
   ", background" appended (VOC, COCO-Object; ``add_background_token``); here the entities are
   the class words of the image's samples (one group), then "background". An entity's tokens
   are the tokens inside it except "a", "an", "the", "and", ",", ".", "-"; the "rescaling" tokens
   are every entity's tokens (not BOS, EOS, padding or commas);
2. the image is squashed to the model size with PIL's default (bicubic) resize, encoded by the
   VAE, a posterior *sample* times the scaling factor is noised, and the UNet runs once on the
   prompt's embedding, unguided (generic-diffusion-feature's ``FeatureExtractor.extract`` on
   ``StableDiffusionImg2ImgPipeline``): strength t/1000 with t = 100 on the pipeline's own
   scheduler, which for SD 1.5 (PNDM, 1000 steps, a repeated 999) puts the forward at timestep
   101, for SDXL (Euler) at 100 -- the same x_t as DDPM's ``add_noise`` at that timestep;
3. heads (``components/cross_attn_dispatch.py``, ``goca_cross_run``): each cross-attention
   layer's heads are mixed per pixel with weights w_n = <A_n V_n W_n, o> / |o|^2, o the layer's
   output before the bias ("dot-product w/o clamp"; see ``capture.py``);
4. layers: layer l's weight is sum(R * S_l), R = softmax(q q^T / sqrt(C)) of the reference
   layer's cross-attention query q (SD 1.5: up-level2-repeat1, 32 x 32) -- as the code indexes
   it, q is the query's first channel alone (C = 1; ``ref_channels``) --, S_l the same block's
   head-averaged self-attention resized to R's grid (keys bilinear, queries nearest); clamped at
   0 and normalised over layers ("dot-product similarity"). The head-mixed maps, bilinearly
   resized to the finest grid (64 for SD 1.5 and SDXL), are summed with these weights, clamped
   at 0 and renormalised over all T tokens per pixel;
5. rescaling ("sum-1 rescaling + per-token renorm+"): each entity's map is the mean over its
   tokens, divided per pixel by the sum over all rescaling tokens, blurred (Gaussian, 5 x 5,
   sigma 1.1, reflect: torchvision's ``gaussian_blur``) and min-max normalised; several
   background entities merge by their maximum;
6. refinement (``postprocess_dispatch.py``, ``affinity_propagate``, order 2): the maps
   (background included) are multiplied twice by S, the mean over the ``space_attn_setting``
   layers of the head-averaged self-attention (``space_attn_dispatch.py``), then min-max
   normalised (S is materialised on grids up to 32 x 32; on larger ones each layer's attention
   is applied to the maps through SDPA);
7. background (``downstream_dispatch.py``, method "offset"): resized bilinearly to the label
   map, a pixel is background where t + background map >= every class map, t the offset (the
   original sweeps -0.4..0.4). Handed over as ((class - background) + 1) / 2 through
   ``at_reporting_threshold`` at (t + 1) / 2, so the harness's 0.5 is offset t and its argmax
   the original's.

Where refbench computes otherwise, docs/methods/goca.md's departures table says so, with a
config option wherever one can be had (the GPT-4o captions and the unseeded draws cannot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from methods.goca.capture import (GoCARecord, attention_modules, capture, nearest_rows,
                                  self_attention_rows, softmax)
from methods.goca.layers import LayerPlan, plan_layers
from refbench.data.sample import Sample
from refbench.diffusion.backbone import Backbone, load_backbone
from refbench.diffusion.denoisers import conditioning, denoise, finest_attention, noised, token_layout
from refbench.diffusion.families import require_family
from refbench.diffusion.latents import latents_and_noise
from refbench.diffusion.prompts import TokenAlignment, align_layout, tokenize
from refbench.errors import UserError
from refbench.method import Batch, Prediction, at_reporting_threshold
from refbench.plugins import PluginHost

FAMILIES = ("sd1", "sdxl")
# the timestep the original's forward runs at: strength 0.1 on the pipeline's scheduler
ORIGINAL_TIMESTEP = {"sd1": 101, "sdxl": 100}
SKIPPED_TOKENS = frozenset({"a", "an", "the", "and", ",", ".", "-"})  # captioner.py
BACKGROUND_WORD = "background"
SMALL_GRID = 32 * 32  # up to this many cells the refinement matrix is materialised


@dataclass(frozen=True)
class GoCAConfig:
    backbone: str = "sd15"  # a registered backbone, a diffusers directory, or a hub id
    device: str = "auto"
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp16 on CUDA, as the original
    image_size: int = 0  # 0: the backbone's native input size (512 for SD 1.5, 1024 for SDXL)
    timestep: int | None = None  # None: the original's (101 on SD 1.x, 100 on SDXL)
    # -- GoCA's choices (the original's alternatives, for ablations) --
    head_weights: Literal["dot", "dot_clamped", "mean"] = "dot"  # mean: the vanilla average
    layer_weights: Literal["dot", "mean"] = "dot"
    # the reference affinity's query channels: "first" is what the code computes (it indexes the
    # stored (C, h, w) query once more, ``features[ref_layer][0]``, leaving channel 0 as a
    # one-dimensional feature); "all": every channel, scaled by C^-1/2, as its comment intends
    ref_channels: Literal["first", "all"] = "first"
    rescale: Literal["content", "none"] = "content"  # none: "per-token renorm+" alone
    blur: int = 5  # Gaussian kernel of the per-token renormalisation; 0: none
    refine_order: int = 2  # how many times the maps are multiplied by the self-attention
    cross_layers: tuple[str, ...] = ()  # (): the original's list, where the backbone has them
    ref_layer: str = ""  # "": the original's (up-level2-repeat1-vit-block0 on SD 1.x)
    self_layers: tuple[str, ...] = ()  # (): the original's refinement layers
    background_token: bool = True  # ", background" ends the prompt (VOC, COCO-Object; not Context)
    background_offset: float = 0.0  # the "offset" rule's t: background where t + bg >= classes
    # category -> word (default: the category name, the original's word); not hashed (a dict)
    class_words: dict[str, str] = field(default_factory=dict, hash=False)
    # -- where refbench may depart from the original (defaults: as the original computes) --
    posterior: Literal["sample", "mean"] = "sample"  # latent_dist.sample(), or the mean
    math_dtype: Literal["model", "fp32"] = "model"  # model: GoCA's arithmetic in the UNet's dtype

    def validate(self) -> None:
        if self.timestep is not None and not 0 <= self.timestep < 1000:
            raise ValueError(f"timestep must be in [0, 1000) or none (the original's), got {self.timestep}")
        if self.blur < 0 or (self.blur and self.blur % 2 == 0):
            raise ValueError(f"blur must be 0 (none) or an odd kernel size, got {self.blur}")
        if self.refine_order < 0:
            raise ValueError(f"refine_order must be >= 0, got {self.refine_order}")
        if not -1.0 < self.background_offset < 1.0:
            raise ValueError(f"background_offset must be in (-1, 1), got {self.background_offset}")
        if self.image_size < 0 or self.image_size % 8:
            raise ValueError("image_size must be 0 (native) or a positive multiple of 8")
        if not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                   for k, v in self.class_words.items()):
            raise ValueError("class_words maps category names to non-empty words, "
                             'e.g. {"aeroplane": "plane"}')


@dataclass
class PromptPlan:
    prompt: str
    classes: list[list[int]]  # token positions of each sample's entity, in the group's order
    background: list[list[int]]  # token positions of each background entity
    rescaling: list[int]  # every entity's tokens


def _token_texts(tokenizer, prompt: str) -> list[str]:
    """The prompt's padded token strings, as the captioner compares them with its word list."""
    ids = tokenize(tokenizer, [prompt], torch.device("cpu"))[0].tolist()
    return [t.replace("</w>", "").lower() for t in tokenizer.convert_ids_to_tokens(ids)]


def gaussian_blur(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """torchvision's ``gaussian_blur`` with its default sigma (0.15 k + 0.35) on (C, H, W):
    a normalised 2-D kernel, reflect padding."""
    half = (kernel - 1) * 0.5
    sigma = 0.15 * kernel + 0.35
    x = torch.linspace(-half, half, steps=kernel)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    k1 = (pdf / pdf.sum()).to(maps.device, maps.dtype)
    k2 = torch.mm(k1[:, None], k1[None, :]).expand(maps.shape[0], 1, kernel, kernel)
    padded = F.pad(maps[None], [kernel // 2] * 4, mode="reflect")
    return F.conv2d(padded, k2, groups=maps.shape[0])[0]


def minmax_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max over the last two axes. A constant map (0 / 0 in the original: NaN,
    which its argmax takes for the maximum) becomes 1."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    out = (maps - low) / (high - low)
    return torch.where(high > low, out, torch.ones_like(out))


class GoCA:
    """GoCA on an SD 1.x or SDXL UNet: one forward per image (a group of samples), all of its
    classes in one prompt."""

    Config: ClassVar[type] = GoCAConfig
    families: ClassVar[tuple[str, ...]] = FAMILIES

    def __init__(self, config: GoCAConfig, *, host: PluginHost):
        self.config = config
        self.host = host
        self.backbone: Backbone = load_backbone(config.backbone, config.device, config.dtype, host=host)
        require_family("goca", self.backbone.family, self.families,
                       "the original's layer lists name SD 1.5's and SDXL's UNet layers; on Flux it "
                       "runs a multi-step img2img pipeline refbench does not reproduce")
        self.size = config.image_size or self.backbone.image_size
        self.layers: LayerPlan = plan_layers(self.backbone.unet, self.backbone.family,
                                             config.cross_layers, config.ref_layer, config.self_layers)
        self.timestep = (config.timestep if config.timestep is not None
                         else ORIGINAL_TIMESTEP[self.backbone.family])
        self._roles = self._layer_roles()
        self._attention: tuple[object, dict] = (None, {})

    @classmethod
    def parameter_counts(cls, config: GoCAConfig, host: PluginHost) -> tuple[int, int]:
        """All backbone parameters; none is trained."""
        backbone = load_backbone(config.backbone, config.device, config.dtype, host=host)
        return sum(p.numel() for part in backbone.modules for p in part.parameters()), 0

    def weights_fingerprint(self) -> str:
        return self.backbone.fingerprint

    def _attention_modules(self) -> dict:
        """The UNet's attention modules by processor key, found once per UNet."""
        unet = self.backbone.unet
        if self._attention[0] is not unet:
            self._attention = (unet, attention_modules(unet))
        return self._attention[1]

    def _layer_roles(self) -> dict[str, tuple[str, frozenset[str]]]:
        roles: dict[str, tuple[str, set[str]]] = {}

        def add(key: str, name: str, role: str) -> None:
            roles.setdefault(key, (name, set()))[1].add(role)

        dot_layers = self.config.layer_weights == "dot"
        for block in self.layers.cross:
            add(block.cross_key, block.name, "cross")
            if dot_layers:
                add(block.self_key, block.name, "self")
        if dot_layers:
            add(self.layers.ref.cross_key, self.layers.ref.name, "ref")
        for block in self.layers.refine:
            add(block.self_key, block.name, "self")
        return {key: (name, frozenset(r)) for key, (name, r) in roles.items()}

    # -- prompts ---------------------------------------------------------------------------
    def _word(self, sample: Sample) -> str:
        category = sample.meta.get("category")
        word = self.config.class_words.get(category, category) if category else None
        word = (word or sample.expression).strip()
        if not word:
            raise UserError(f"sample {sample.sample_id} has an empty expression: fix or drop "
                            f"that sentence in the data")
        return word

    def plan(self, samples: list[Sample]) -> PromptPlan:
        """The group's prompt: its class words, then "background", joined by ", " and lowered
        (the captioner's caption when GPT-4o lists exactly the image's classes)."""
        entities = [self._word(s).lower() for s in samples]
        if self.config.background_token:
            entities.append(BACKGROUND_WORD)
        prompt = ", ".join(entities)
        bb = self.backbone
        alignment = align_layout(token_layout(bb), prompt)
        assert isinstance(alignment, TokenAlignment)  # one CLIP segment on the UNet families
        texts = _token_texts(bb.tokenizer, prompt)
        spans, start = [], 0
        for entity in entities:
            spans.append((start, start + len(entity)))
            start += len(entity) + 2
        positions = []
        for index, (begin, end) in enumerate(spans):
            pieces = alignment.positions(begin, end)
            if alignment.lost(pieces):
                raise UserError(f"goca: the prompt {prompt[:60]!r}... has {alignment.n_tokens} "
                                f"tokens, over the model's {alignment.max_length}, and "
                                f"{prompt[begin:end]!r} is cut off: this image has too many classes "
                                f"for one prompt (shorter class_words may fit)")
            found = [p for p in pieces if texts[p] not in SKIPPED_TOKENS]
            if not found:
                who = (f"sample {samples[index].sample_id}" if index < len(samples)
                       else "the background entity")
                raise UserError(f"goca: {who}: {prompt[begin:end]!r} has no token the captioner "
                                f"would read (only {', '.join(sorted(SKIPPED_TOKENS))}): fix the "
                                f"expression or set goca.class_words")
            positions.append(found)
        classes, background = positions[:len(samples)], positions[len(samples):]
        return PromptPlan(prompt, classes, background, sorted({p for pos in positions for p in pos}))

    # -- maps ------------------------------------------------------------------------------
    def _math_dtype(self) -> torch.dtype:
        return torch.float32 if self.config.math_dtype == "fp32" else self.backbone.dtype

    def _layer_weights(self, record: GoCARecord) -> torch.Tensor:
        """(B, L) weights of the cross layers, forward order."""
        blocks = self.layers.cross
        batch = next(iter(record.cross.values())).shape[0]
        dtype = self._math_dtype()
        if self.config.layer_weights == "mean":
            return torch.full((batch, len(blocks)), 1.0 / len(blocks), dtype=dtype,
                              device=self.backbone.device)
        q = record.ref_query.to(dtype)  # (B, R^2, C)
        if self.config.ref_channels == "first":
            q = q[..., :1]
        side = math.isqrt(q.shape[1])
        ref = softmax((q @ q.transpose(-1, -2)) * q.shape[-1] ** -0.5).to(dtype)
        weights = []
        for block in blocks:
            qs, ks, scale = record.self_qk[block.name]
            r = math.isqrt(qs.shape[2])
            rows = nearest_rows(r, side, qs.device)
            target = self_attention_rows(qs, ks, scale, rows)
            if r != side:  # the key axes, bilinearly
                target = F.interpolate(target.view(-1, 1, r, r), size=(side, side), mode="bilinear",
                                       align_corners=False).view(batch, side * side, side * side)
            weights.append((ref * target.to(dtype)).sum(dim=(1, 2)))
        stacked = torch.stack(weights, dim=1).clamp(min=0)
        return stacked / stacked.sum(dim=1, keepdim=True)

    def _aggregate(self, record: GoCARecord, grid: int) -> torch.Tensor:
        """The layer-weighted maps at the finest grid, renormalised over tokens: (B, T, g, g)."""
        weights = self._layer_weights(record)
        total = None
        for index, block in enumerate(self.layers.cross):
            maps = record.cross[block.name]  # (B, N, T)
            b, n, t = maps.shape
            r = math.isqrt(n)
            maps = maps.transpose(1, 2).reshape(b, t, r, r)
            if r != grid:
                maps = F.interpolate(maps, size=(grid, grid), mode="bilinear", align_corners=False)
            term = maps * weights[:, index].view(b, 1, 1, 1).to(maps.dtype)
            total = term if total is None else total + term
        total = total.clamp(min=0)
        return total / total.sum(dim=1, keepdim=True)

    def _rescaled(self, raw: torch.Tensor, plan: PromptPlan) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One image's class maps (n, g, g) and merged background map (g, g) or None."""
        entities = [raw[p].mean(dim=0) for p in plan.classes + plan.background]
        maps = torch.stack(entities)
        if self.config.rescale == "content":
            maps = maps / raw[plan.rescaling].sum(dim=0)
        if self.config.blur:
            maps = gaussian_blur(maps, self.config.blur)
        maps = minmax_maps(maps)
        n = len(plan.classes)
        background = maps[n:].amax(dim=0) if len(plan.background) else None
        return maps[:n], background

    def _refinement_matrix(self, record: GoCARecord, grid: int) -> torch.Tensor:
        """S (B, g^2, g^2), materialised: the mean over the refinement layers of the
        head-averaged self-attention, each resized to the grid as the original resizes it (keys
        bilinear, queries nearest)."""
        total = None
        for block in self.layers.refine:
            q, k, scale = record.self_qk[block.name]
            r = math.isqrt(q.shape[2])
            probs = self_attention_rows(q, k, scale, torch.arange(r * r, device=q.device))
            if r != grid:
                probs = F.interpolate(probs.view(-1, r * r, r, r), size=(grid, grid), mode="bilinear",
                                      align_corners=False)
                probs = probs.view(-1, r, r, grid * grid).permute(0, 3, 1, 2)
                probs = F.interpolate(probs, size=(grid, grid), mode="nearest")
                probs = probs.reshape(-1, grid * grid, grid * grid).transpose(1, 2)
            total = probs if total is None else total + probs
        return (total / len(self.layers.refine)).to(self._math_dtype())

    def _refine(self, record: GoCARecord, values: torch.Tensor, grid: int) -> torch.Tensor:
        """S @ values without S (values (B, g^2, K)): a refinement layer at the grid is applied
        as attention with the values padded to the head width (SDPA's fused kernel: no g^2 x g^2
        matrix; on a CPU several times faster than materialising S at 64 x 64); a coarser one is
        materialised and resized."""
        total = None
        for block in self.layers.refine:
            q, k, scale = record.self_qk[block.name]
            r = math.isqrt(q.shape[2])
            if r == grid:
                heads, width = q.shape[1], q.shape[-1]
                parts = []
                for start in range(0, values.shape[-1], width):
                    chunk = values[..., start:start + width].to(q.dtype)
                    padded = F.pad(chunk, (0, width - chunk.shape[-1]))[:, None].expand(-1, heads, -1, -1)
                    out = F.scaled_dot_product_attention(q, k, padded, scale=scale)
                    parts.append(out[..., :chunk.shape[-1]].mean(dim=1))
                term = torch.cat(parts, dim=-1)
            else:
                probs = self_attention_rows(q, k, scale, torch.arange(r * r, device=q.device))
                probs = F.interpolate(probs.view(-1, r * r, r, r), size=(grid, grid), mode="bilinear",
                                      align_corners=False)
                probs = probs.view(-1, r, r, grid * grid).permute(0, 3, 1, 2)
                probs = F.interpolate(probs, size=(grid, grid), mode="nearest")
                matrix = probs.reshape(-1, grid * grid, grid * grid).transpose(1, 2)
                term = matrix.to(values.dtype) @ values
            term = term.to(values.dtype)
            total = term if total is None else total + term
        return total / len(self.layers.refine)

    @torch.no_grad()
    def group_maps(self, images: list[np.ndarray], seeds: list[int], plans: list[PromptPlan]
                   ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per image: class maps (n, g, g) in [0, 1] and the background map (g, g) or None, at
        the finest attention grid g."""
        bb = self.backbone
        cond = conditioning(bb, [p.prompt for p in plans])
        latents, noise = latents_and_noise(bb, images, seeds, self.size, posterior=self.config.posterior,
                                           pil=True, pil_filter="bicubic", noise_first=False)
        timestep = torch.full((len(plans),), self.timestep, dtype=torch.long, device=latents.device)
        record = GoCARecord(self.config.head_weights,
                            torch.float32 if self.config.math_dtype == "fp32" else None)
        with capture(self._attention_modules(), record, self._roles):
            denoise(bb, noised(bb, latents, noise, timestep), timestep, cond)
        grid = finest_attention(bb, latents.shape[-1])
        raw = self._aggregate(record, grid)
        per_image = [self._rescaled(raw[i], plan) for i, plan in enumerate(plans)]
        if self.config.refine_order == 0:
            return per_image
        stacks = [maps if background is None else torch.cat([maps, background[None]])
                  for maps, background in per_image]
        width = max(len(s) for s in stacks)
        values = torch.stack([F.pad(s.flatten(1).T, (0, width - len(s))) for s in stacks])
        values = values.to(self._math_dtype())
        if grid * grid <= SMALL_GRID:  # a small S is cheaper made once than applied as attention
            matrix = self._refinement_matrix(record, grid)
            for _ in range(self.config.refine_order):
                values = matrix @ values
        else:
            for _ in range(self.config.refine_order):
                values = self._refine(record, values, grid)
        out = []
        for stack, row, (maps, background) in zip(stacks, values, per_image):
            refined = minmax_maps(row[:, :len(stack)].T.reshape(len(stack), grid, grid))
            out.append((refined[:len(maps)], refined[len(maps)] if background is not None else None))
        return out

    def predict(self, batch: Batch) -> list[Prediction]:
        groups: dict[str, list[int]] = {}
        for index, sample in enumerate(batch.samples):
            groups.setdefault(sample.group, []).append(index)
        members = list(groups.values())
        plans = [self.plan([batch.samples[i] for i in rows]) for rows in members]
        maps = self.group_maps([batch.images[rows[0]] for rows in members],
                               [batch.seeds[rows[0]] for rows in members], plans)
        reported = (self.config.background_offset + 1.0) / 2.0
        out: list[Prediction | None] = [None] * len(batch)
        for rows, plan, (classes, background) in zip(members, plans, maps):
            size = batch.output_size(batch.samples[rows[0]])
            resized = F.interpolate(classes[None].float(), size=size, mode="bilinear",
                                    align_corners=False)[0]
            if background is not None:
                back = F.interpolate(background[None, None].float(), size=size, mode="bilinear",
                                     align_corners=False)[0, 0]
                resized = resized - back
            scores = torch.nan_to_num((resized + 1.0) / 2.0, nan=0.0).cpu().numpy()
            for row, score in zip(rows, scores):
                out[row] = Prediction(scores=at_reporting_threshold(score, reported),
                                      info={"classes_prompted": len(plan.classes)})
        return out  # type: ignore[return-value]
