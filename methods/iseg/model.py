"""iSeg ("iSeg: An Iterative Refinement-based Framework for Training-free Segmentation", Sun L.
et al., 2024; code: github.com/linsun449/iseg.code), computed as its open-vocabulary code
computes it (``ovs/diff_for_openvocabulary.py`` on ``wsss/iSeg.py``, ``base/iSeg.py``,
``base/stable_difusion.py``, ``wsss/featurecluster.py``, ``util/attn.py``, ``util/cam.py``, with
``ovs/arguments.py``'s VOC settings; Stable Diffusion 2.1-base).

Per image, with all of its classes at once (the samples of one ``group``):

1. the prompt "a photograph of {c1} and {c2} ... and other object and background" followed
   directly by the background words (the script concatenates them with nothing between:
   "...backgroundground, land, ..."), each class as iSeg's own word for it (``words.py``:
   "plane" for aeroplane, "potted plant" ...), in iSeg's class order; the text encoder's last
   hidden state, multiplied by 1.6 at the tokens read for each class (the "category-enhanced
   cross-attention"). The tokens read are found as the script finds them, from its tables'
   token counts: the first class starts at token 4, each next one after the previous one's
   tokens and "and" (``token_positions=table``, used with CLIP's BPE);
2. the image squashed to 512 (bilinear, no antialias; the data loader's ``cv2.resize``), the
   VAE posterior's MEAN times 0.18215, noised to t = 100 with noise drawn after seeding 1101
   (``torch.manual_seed(1101)`` before every image, ``randn_like`` on the model's device);
3. one UNet forward (batch 1) with the original's processor on its listed layers
   (``capture.py``); the cross-attention of chosen heads at 16x16 and 32x32, each token's map
   divided by its sum, upsampled to 64, weighted 0.7 and 0.3; clustered by KL divergence
   (float16) into prototypes started on a 6 x 6 grid, 20 rounds, every pixel then replaced by
   its cluster's mean; the read tokens' mean per class (``refine.py``);
4. the self-attention of heads 1 and 2 of ``up_blocks[3].attentions[1]``, divided by each key's
   maximum, + 0.015 log10(e a) (the "entropy-reduced self-attention"), rows renormalised; the
   class maps refined by it 8 times, each time shifted to 0 and renormalised;
5. each class map upsampled to 512, min-max normalised, upsampled to the image, and min-max
   normalised again (``cam_to_label``, max + 1e-6); background where (1 - max)^2 >= max over
   the classes, i.e. max <= (3 - sqrt 5) / 2, handed over through ``at_reporting_threshold``
   so that the harness's 0.5 reproduces the rule.

Data-set settings of the original (Context, COCO-Object), backbones other than SD 2.1 and every
place refbench can compute otherwise are config options; ``docs/methods/iseg.md`` lists them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from methods.iseg.capture import Plan, Record, capture, listed_fits
from methods.iseg.refine import (cluster_means, entropy_reduced, head_mean, iterate, kl_clusters,
                                 mixed_cross)
from methods.iseg.words import BACKGROUND_AS_RUN, TABLES, check_entry
from refbench.data.sample import Sample
from refbench.diffusion.backbone import Backbone, load_backbone
from refbench.diffusion.denoisers import (conditioning, denoise, finest_attention, noised,
                                          token_layout)
from refbench.diffusion.families import UNET_FAMILIES, require_family
from refbench.diffusion.latents import latents_and_noise
from refbench.diffusion.prompts import align_layout
from refbench.errors import UserError
from refbench.method import Batch, Prediction, at_reporting_threshold
from refbench.plugins import PluginHost

PREFIX = "a photograph of "
TABLE_START = 4  # the script's first class token: BOS, "a", "photograph", "of"
CLIP_VOCABULARY = 49408  # CLIP's BPE (SD 1.x, 2.x), whose token counts iSeg's tables give
BACKGROUND_RULE = (3 - math.sqrt(5)) / 2  # (1 - m)^2 >= m  <=>  m <= this
# the original's weights are for the 8/16/32/64 maps of a 512 input (latent 64); a backbone's
# resolution r at latent L takes the weight of level r * 64 / L
REFERENCE_LEVELS = (8, 16, 32, 64)
REFERENCE_LATENT = 64


@dataclass(frozen=True)
class ISegConfig:
    backbone: str = "sd21-base"  # iSeg's SD 2.1-base; a registered name, a directory or a hub id
    device: str = "auto"
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp16 on CUDA (the original's)
    image_size: int = 0  # 0: the backbone's native input size (512 for SD 2.1-base)
    timestep: int = 100
    seed: int | None = 1101  # torch.manual_seed before every image; None: the sample seed
    word_table: Literal["voc", "context", "coco", "none"] = "voc"  # iSeg's class-word tables
    class_words: dict = field(default_factory=dict)  # {"category": ["words", tokens, [read]] or "words"}
    suffix: str = " and other object and background"
    background_words: str = BACKGROUND_AS_RUN["voc"]  # appended to the suffix as it is
    enhance: float = 1.6  # the read tokens' embeddings are multiplied by this (1: off)
    heads: Literal["auto", "listed", "layers", "all"] = "auto"
    weights: tuple[float, ...] = (0.0, 0.7, 0.3, 0.0)  # the 8/16/32/64 maps of a 512 input
    cluster: bool = True
    clusters: int = 32
    cluster_steps: int = 20
    entropy: float = 0.015
    iterations: int = 8
    mask_size: int = 512  # the maps are upsampled to this and min-max normalised first; 0: not
    background_threshold: float = BACKGROUND_RULE
    overlong: Literal["error", "truncate"] = "error"
    # -- where refbench may depart from the original (defaults: as the original computes) --
    token_positions: Literal["auto", "table", "aligned"] = "auto"
    kl_dtype: Literal["fp16", "fp32"] = "fp16"
    noise: Literal["device", "cpu"] = "device"

    def validate(self) -> None:
        if not 0 <= self.timestep < 1000:
            raise ValueError(f"timestep must be an integer in [0, 1000), got {self.timestep}")
        if self.image_size < 0 or self.image_size % 8:
            raise ValueError("image_size must be 0 (native) or a positive multiple of 8")
        if len(self.weights) != len(REFERENCE_LEVELS) or any(w < 0 for w in self.weights) \
                or sum(self.weights) <= 0:
            raise ValueError(f"weights must be {len(REFERENCE_LEVELS)} non-negative numbers with a "
                             f"positive sum, one per attention resolution of a 512 input "
                             f"({', '.join(map(str, REFERENCE_LEVELS))}), got {list(self.weights)}")
        if not self.enhance > 0:
            raise ValueError(f"enhance must be positive (1: no enhancement), got {self.enhance}")
        if self.clusters < 1 or self.cluster_steps < 1:
            raise ValueError("clusters and cluster_steps must be 1 or more")
        if self.iterations < 0:
            raise ValueError(f"iterations must be 0 or more, got {self.iterations}")
        if self.entropy < 0:
            raise ValueError(f"entropy must be 0 or more, got {self.entropy}")
        if self.mask_size < 0:
            raise ValueError(f"mask_size must be 0 (none) or a size in pixels, got {self.mask_size}")
        if not 0 < self.background_threshold < 1:
            raise ValueError(f"background_threshold must be in (0, 1), got {self.background_threshold}")
        if not isinstance(self.class_words, dict):
            raise ValueError("class_words must be a JSON object: {\"category\": [\"words\", tokens, [read]]}")
        for category, entry in self.class_words.items():
            check_entry(category, entry)


@dataclass
class _Prompt:
    prompt: str
    order: list[int]  # sample indices (in the group) in prompt order
    positions: list[list[int]]  # per class in prompt order: the token positions read
    info: dict[str, int]


def resolution_weights(weights: tuple[float, ...], latent: int) -> dict[int, float]:
    """The weights of the 8/16/32/64 maps of a 512 input at a backbone's resolutions."""
    out = {}
    for level, weight in zip(REFERENCE_LEVELS, weights):
        if weight > 0 and (level * latent) % REFERENCE_LATENT == 0:
            out[level * latent // REFERENCE_LATENT] = float(weight)
    return out


class ISeg:
    """iSeg on a UNet backbone (SD 1.x, 2.x, XL): the original's layers and heads where the
    UNet is SD 2.1's, the documented generalisation elsewhere (``heads``)."""

    Config: ClassVar[type] = ISegConfig
    families: ClassVar[tuple[str, ...]] = UNET_FAMILIES

    def __init__(self, config: ISegConfig, *, host: PluginHost):
        self.config = config
        self.host = host
        self.backbone: Backbone = load_backbone(config.backbone, config.device, config.dtype, host=host)
        require_family("iseg", self.backbone.family, self.families,
                       "it reads a UNet's cross- and self-attention layer by layer")
        self.size = config.image_size or self.backbone.image_size
        self.heads = self._resolve_heads()
        self.words = {**TABLES[config.word_table],
                      **{k: check_entry(k, v) for k, v in config.class_words.items()}}
        self.rank = {name: i for i, name in enumerate(self.words)}
        mode = config.token_positions
        if mode == "auto":
            mode = "table" if len(self.backbone.tokenizer) == CLIP_VOCABULARY else "aligned"
        self.token_mode = mode
        self.kl_dtype = torch.float16 if config.kl_dtype == "fp16" else torch.float32

    def _resolve_heads(self) -> str:
        mode = self.config.heads
        unet = self.backbone.unet
        if mode == "auto":
            return "listed" if not listed_fits(unet, all_heads=False) else "all"
        if mode in ("listed", "layers"):
            why = listed_fits(unet, all_heads=mode == "layers")
            if why:
                raise UserError(f"iseg.heads={mode} reads Stable Diffusion 2.1's layers, and backbone "
                                f"{self.config.backbone!r} does not have them ({why}): use heads=all "
                                f"(every head of every layer at the weighted resolutions) or auto")
        return mode

    @classmethod
    def parameter_counts(cls, config: ISegConfig, host: PluginHost) -> tuple[int, int]:
        """All backbone parameters; none is trained."""
        backbone = load_backbone(config.backbone, config.device, config.dtype, host=host)
        return sum(p.numel() for part in backbone.modules for p in part.parameters()), 0

    def weights_fingerprint(self) -> str:
        return self.backbone.fingerprint

    # -- the prompt ------------------------------------------------------------------------
    def _entry(self, sample: Sample) -> tuple[list[Any], bool]:
        """[words, tokens, read] of a sample, and whether it came from the tables."""
        category = sample.meta.get("category") if sample.is_class_name else None
        if category in self.words:
            return self.words[category], True
        if not sample.expression.strip():
            raise UserError(f"sample {sample.sample_id} has an empty expression: fix or drop "
                            f"that sentence in the data")
        return [" ".join(sample.expression.split()), 0, []], False

    def _plan(self, samples: list[Sample]) -> _Prompt:
        entries = [self._entry(s) for s in samples]
        order = sorted(range(len(samples)), key=lambda i: (
            self.rank.get(samples[i].meta.get("category"), len(self.rank)) if entries[i][1] else len(self.rank),
            int(samples[i].meta.get("category_id", 0)), samples[i].expression))
        words = [entries[i][0][0] for i in order]
        prompt = PREFIX + " and ".join(words) + self.config.suffix + self.config.background_words
        starts, at = [], len(PREFIX)
        for w in words:
            starts.append(at)
            at += len(w) + len(" and ")
        tokenizer = self.backbone.tokenizer
        positions: list[list[int]] = []
        if self.token_mode == "table":
            start, previous = TABLE_START, None
            for i in order:
                word, tokens, read = entries[i][0]
                if not tokens:  # no table entry: counted by this tokenizer, every token read
                    tokens = len(tokenizer(word, add_special_tokens=False)["input_ids"])
                    read = list(range(tokens))
                if previous is not None:
                    start = start + 1 + previous
                positions.append([start + r for r in read])
                previous = tokens
        else:
            # the classes' words are tokenized as in the whole prompt: CLIP's BPE (and T5's
            # pieces) split at spaces, so the words after them change nothing before
            alignment = align_layout(token_layout(self.backbone), PREFIX + " and ".join(words))
            for i, begin in zip(order, starts):
                word, tokens, read = entries[i][0]
                spans, offset = [], begin
                for piece in word.split(" "):
                    spans.append((offset, offset + len(piece)))
                    offset += len(piece) + 1
                chosen = [spans[r] for r in read] if tokens and tokens == len(spans) else spans
                positions.append([p for span in chosen for p in alignment.positions(*span)])
        context = token_layout(self.backbone)[0].length
        n_tokens = len(tokenizer(prompt, truncation=False)["input_ids"])
        info = {"classes": len(samples), "unknown_class": sum(not e[1] for e in entries),
                "truncated": int(n_tokens > context), "aligned_tokens": int(self.token_mode == "aligned"),
                "generalised_heads": int(self.heads == "all")}
        last = context - 2  # the last content token a truncated prompt keeps (EOS after it)
        if any(p > last for ps in positions for p in ps):
            if self.config.overlong == "error":
                raise UserError(
                    f"image of sample {samples[0].sample_id}: the prompt has {n_tokens} tokens, "
                    f"over the model's {context}, and a class is cut off: shorten "
                    f"background_words, or --set iseg.overlong=truncate to read the last kept token")
            positions = [[p for p in ps if p <= last] or [last] for ps in positions]
            info["target_lost"] = 1
        return _Prompt(prompt, order, positions, info)

    # -- one image -------------------------------------------------------------------------
    @torch.no_grad()
    def _capture(self, image: np.ndarray, plan: _Prompt, seed: int) -> tuple[Record, Plan]:
        """One UNet forward on the image with the plan's prompt; the attention it records."""
        bb, cfg = self.backbone, self.config
        cond = conditioning(bb, [plan.prompt])
        tokens = cond.tokens.clone()
        read = [p for ps in plan.positions for p in ps]
        tokens[:, read] *= cfg.enhance
        cond = cond.replace_tokens(tokens)
        latents, cpu_noise = latents_and_noise(bb, [image], [seed], self.size, posterior="mean",
                                               antialias=False)
        if cfg.noise == "device":
            generator = torch.Generator(device=bb.device).manual_seed(int(seed))
            noise = torch.randn(latents.shape, generator=generator, device=bb.device, dtype=bb.dtype)
        else:
            noise = cpu_noise
        latent = latents.shape[-1]
        attention = Plan(self.heads, resolution_weights(cfg.weights, latent),
                         finest_attention(bb, latent), latent)
        timestep = torch.full((1,), cfg.timestep, dtype=torch.long, device=latents.device)
        with capture(bb.unet, attention) as record:
            denoise(bb, noised(bb, latents, noise, timestep), timestep, cond)
        if not record.cross:
            raise UserError(f"iseg.weights {list(cfg.weights)} put no weight on a resolution where "
                            f"backbone {cfg.backbone!r} has cross-attention (latent {latent}): weight "
                            f"another of the 8/16/32/64 levels")
        if not record.self_heads and record.self_sum is None:
            raise UserError(f"backbone {cfg.backbone!r} has no self-attention at its finest grid "
                            f"({attention.grid} x {attention.grid}), which iSeg refines with")
        return record, attention

    @torch.no_grad()
    def _maps(self, record: Record, attention: Plan, plan: _Prompt) -> tuple[torch.Tensor, int]:
        """The class maps (C, m, m) at ``mask_size`` (min-max normalised there), or at the grid
        when ``mask_size`` is 0, in prompt order; and the number of clusters."""
        cfg, grid = self.config, attention.grid
        maps = {r: head_mean(layers, attention.cross_heads(r)) for r, layers in record.cross.items()
                if r in attention.weights}
        cross = mixed_cross(maps, dict(attention.weights), grid)
        n = 0
        if cfg.cluster:
            assignment, n = kl_clusters(cross, cfg.clusters, cfg.cluster_steps, self.kl_dtype)
            pixels = cluster_means(cross, assignment)
        else:
            pixels = cross.flatten(-2, -1).permute(1, 0)
        classes = torch.stack([pixels[:, ps].mean(1) for ps in plan.positions], dim=1)[None].float()
        if record.self_heads:
            # in the original's memory layout: its head mean comes out key-major (it keeps the
            # maps key x query), so the query x key matrix it normalises is a transposed view,
            # and its sums over keys add in that order
            self_attention = torch.cat(record.self_heads, dim=1).mean(1)
            self_attention = self_attention.transpose(1, 2).contiguous().transpose(1, 2)
        else:
            self_attention = (record.self_sum / record.self_count).to(self.backbone.dtype)
        refined = iterate(entropy_reduced(self_attention, cfg.entropy), classes, cfg.iterations)
        out = refined.unflatten(-2, (grid, grid)).permute(0, 3, 1, 2)
        if cfg.mask_size:
            out = F.interpolate(out, size=cfg.mask_size, mode="bilinear", align_corners=False)[0]
            out = out - out.amin(dim=(-2, -1), keepdim=True)
            out = out / out.amax(dim=(-2, -1), keepdim=True)
        else:
            out = out[0]
        return out, n

    def predict(self, batch: Batch) -> list[Prediction]:
        out: list[Prediction | None] = [None] * len(batch)
        groups: dict[str, list[int]] = {}
        for i, sample in enumerate(batch.samples):
            groups.setdefault(sample.group, []).append(i)
        for members in groups.values():
            samples = [batch.samples[i] for i in members]
            plan = self._plan(samples)
            seed = self.config.seed if self.config.seed is not None else batch.seeds[members[0]]
            maps, n = self._maps(*self._capture(batch.images[members[0]], plan, seed), plan)
            size = batch.output_size(batch.samples[members[0]])
            scores = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
            scores = scores - scores.amin(dim=(-2, -1), keepdim=True)
            scores = scores / (scores.amax(dim=(-2, -1), keepdim=True) + 1e-6)  # util/cam.py, cam_to_label
            scores = scores.clamp(0, 1).cpu().numpy()
            for rank, index in enumerate(plan.order):
                out[members[index]] = Prediction(
                    scores=at_reporting_threshold(scores[rank], self.config.background_threshold),
                    info={**plan.info, "clusters": n})
        return [p for p in out if p is not None]
