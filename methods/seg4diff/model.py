"""Seg4Diff (Kim et al., NeurIPS 2025; code: github.com/cvlab-kaist/Seg4Diff), zero-shot, computed
as its evaluation code computes it (``configs/eval_ovss.yaml``, ``eval_ovss.sh``).

Per image, as ``seg4diff/seg4diff_model_ovss.py`` (``Seg4DiffOVSS.forward``) and
``seg4diff/modeling/backbone/sd3_backbone.py`` (``SD3Backbone``) do:

1. the image, already resized by detectron2's test mapper (``ResizeShortestEdge(640, 2560)``,
   PIL bilinear), is scaled to [0, 1], squashed to 1024 x 1024 (``F.interpolate`` bilinear,
   no antialias) and encoded by the VAE: the posterior *mean*, minus the VAE's ``shift_factor``,
   times its ``scaling_factor`` (``img_to_latents``);
2. noised by flow matching to the step ``timesteps[-8]`` of the pipeline scheduler's 28-step
   schedule (``NUM_INFERENCE_STEPS`` 28, ``NOISE_STEPS`` 8; SD3's shift 3 gives sigma 0.515,
   t = 515.07): x_t = sigma * noise + (1 - sigma) * x_0 (``scale_noise``), the noise a fresh
   Gaussian draw (refbench: from the image's seed);
3. the prompt is the image's ground-truth class names (``GT_ONLY_PROMPT``), each the class
   list's name cut at its first "-", in class-index order, joined by spaces; it is encoded by
   ``StableDiffusion3Pipeline.encode_prompt`` with ``text_encoder_3=None`` (the pipeline is
   loaded without T5), i.e. both CLIPs' penultimate states concatenated, zero-padded to the
   joint width, and 77 zero rows in place of T5; the pooled projections of both CLIPs;
4. one transformer forward; the modified ``JointAttnProcessor2_0`` of block 9
   (``ATTENTION_LAYERS: [9]``; ``diffusers/src/diffusers/models/attention_processor.py``)
   computes softmax(q k^T / sqrt(d)) over all image and text keys, averages it over heads and
   keeps the image-query x CLIP-token block (``[:, :4096, 4096:4096+77]``);
5. each class's map is the mean over its tokens' columns (the class name tokenized alone,
   after the start token: ``st = 1``), no normalisation (``NORM_BEFORE_MERGE`` and
   ``NORM_AFTER_MERGE`` False), a 64 x 64 map resized bilinearly (``sem_seg_postprocess``) to
   the image; classes not in the image score 0, so detectron2's argmax picks among the prompted
   classes. Where the class list has "background" (``voc21.json``, last; ``coco_object.json``,
   first), the background is prompted as a word like the others (``BACKGROUND_NAME``) and its
   map competes in the argmax.

refbench returns the class maps as they are (``background="none"``); with the background word
prompted it returns a_c / (a_c + a_bg), which keeps every class's per-pixel order and is >= 0.5
exactly where the class beats the background, so the harness's threshold 0.5 reproduces the
argmax with the background. The forward stops at the chosen layer (later blocks cannot change
its maps). The same recipe runs on Flux (the original's ``flux_backbone.py``: 77 T5 tokens from
column 0, the [0, 1] image to the VAE, 50 steps on ``linspace(1, 1/50)``, guidance 3.5) and, as a
documented analogue, on UNet backbones (one cross-attention layer, chosen on RefShapes train
data); see ``docs/methods/seg4diff.md`` for both and for the departures table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from refbench.data.sample import Sample
from refbench.diffusion.attention import CaptureProcessor
from refbench.diffusion.backbone import Backbone, load_backbone
from refbench.diffusion.denoisers import Conditioning, conditioning, denoise, noised
from refbench.diffusion.families import DIT_FAMILIES, FAMILIES, require_family
from refbench.diffusion.joint_attention import JointCaptureProcessor, JointRecord
from refbench.diffusion.latents import latents_and_noise, to_pixels
from refbench.diffusion.prompts import encode, tokenize
from refbench.errors import UserError
from refbench.method import Batch, Prediction
from refbench.plugins import PluginHost

SD3_MEDIUM = "sd3-medium"  # registered: stabilityai/stable-diffusion-3-medium-diffusers from the hub cache
# The semantic grounding expert layer and the depth it was found at: SD3-medium's block 9 of 24
# (ATTENTION_LAYERS [9]; the paper's appendix C finds 9 on SD3.5 too), FLUX.1-dev's layer 12 of
# 57 (19 joint + 38 single blocks; appendix C: "layer 12 and 17"; the code leaves it to $layer)
EXPERT_LAYER = {"sd3": (9, 24), "flux": (12, 57)}
FLUX_STEPS = 50  # flux_backbone.py: self.inference_steps = 50
ORIGINAL_STEPS = 28  # NUM_INFERENCE_STEPS
TEXT_TOKENS = 77  # encode_prompt(max_sequence_length=77); the zero T5 block is 77 rows too


@dataclass(frozen=True)
class Seg4DiffConfig:
    backbone: str = SD3_MEDIUM  # a registered backbone, a diffusers directory, or a hub id
    device: str = "auto"
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp16 on CUDA (FP16: True)
    autocast: bool = True  # CUDA only: text encoders and denoiser under torch.autocast, as eval runs
    layer: int = -1  # -1: SD3's block 9, Flux's 12 (scaled on shallow models); UNets: finest up level's first
    inference_steps: int = 0  # 0: the original's (28; Flux 50)
    noise_step: int = 8  # the latent is noised to timesteps[-noise_step] of that schedule
    image_size: int = 0  # 0: the backbone's native size (1024 for SD3)
    test_resize: int = 640  # detectron2's ResizeShortestEdge first (0: none)
    test_max_size: int = 2560
    # the background word and its place: "auto" follows the protocol the harness names
    # (batch.background): last where background is a class (voc21.json), none where it is
    # ignored (voc20, pc59, ade150, cityscapes); last when unknown (referring data)
    background: Literal["auto", "last", "first", "none"] = "auto"
    background_word: str = "background"  # BACKGROUND_NAME
    class_names: Literal["category", "expression"] = "category"  # the data set's own name, or the reader's prompt
    class_words: tuple[str, ...] = ()  # "category=word" replacements of class names
    norm_before_merge: bool = False  # min-max per token column before the per-class mean
    norm_after_merge: bool = False  # min-max per class map after it
    overlong: Literal["truncate", "error"] = "truncate"
    # -- where refbench may depart from the original (defaults: as the original computes) --
    text_encoder_3: Literal["zeros", "t5"] = "zeros"  # SD3: the T5 rows (the original loads no T5)
    flux_unit_pixels: bool = True  # Flux: the VAE gets the [0, 1] image (flux_backbone.py), not 2x - 1
    posterior: Literal["mean", "sample"] = "mean"
    antialias: bool = False  # the squash to the model size

    def validate(self) -> None:
        if self.layer < -1:
            raise ValueError(f"layer must be -1 (the default) or a layer index, got {self.layer}")
        if self.inference_steps < 0:
            raise ValueError("inference_steps must be 0 (the original's) or positive")
        if self.noise_step < 1 or (self.inference_steps and self.noise_step > self.inference_steps):
            raise ValueError(f"noise_step must be in 1..inference_steps (timesteps[-noise_step]), "
                             f"got {self.noise_step}")
        if self.image_size < 0 or self.image_size % 8:
            raise ValueError("image_size must be 0 (native) or a positive multiple of 8")
        if self.test_resize < 0 or self.test_max_size <= 0:
            raise ValueError("test_resize must be 0 (none) or positive, test_max_size positive")
        if self.background != "none" and not self.background_word.strip():
            raise ValueError("background_word is empty: give a word, or background=none")
        for entry in self.class_words:
            name, sep, word = entry.partition("=")
            if not sep or not name.strip() or not word.strip():
                raise ValueError(f"class_words entry {entry!r} is not category=word")


@dataclass
class _Group:
    """One image's prompt: the samples it answers, its words, and where each word's tokens sit."""

    samples: list[int]  # batch indices
    words: list[str]  # in prompt order, the background word included
    columns: list[list[int]]  # per word: its text-token columns that survive truncation
    background: int | None  # index into words
    info: dict[str, int] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return " ".join(self.words)


class _Stop(Exception):
    """Raised by the probe once the chosen layer is recorded: nothing after it is needed."""


class _JointProbe(JointCaptureProcessor):
    """Records the layer's image-to-text joint attention (refbench's joint capture), then stops."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args: Any,
                 image_rotary_emb: Any = None, **kwargs: Any) -> Any:
        rotary = args[0] if args else (image_rotary_emb if image_rotary_emb is not None
                                       else kwargs.get("image_rotary_emb"))
        self._record(attn, hidden_states, encoder_hidden_states, rotary)
        raise _Stop


class _CrossProbe(CaptureProcessor):
    """Records the layer's cross-attention probabilities (refbench's capture), then stops."""

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        super().__call__(*args, **kwargs)
        raise _Stop


def shortest_edge(image: np.ndarray, short: int, max_size: int) -> np.ndarray:
    """detectron2's ``ResizeShortestEdge`` at test time: the short side to ``short``, the long
    side at most ``max_size``, rounded half up, resized with PIL's bilinear (uint8 images)."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = short * 1.0 / min(h, w)
    new_h, new_w = (short * 1.0, scale * w) if h < w else (scale * h, short * 1.0)
    if max(new_h, new_w) > max_size:
        factor = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * factor, new_w * factor
    size = (int(new_w + 0.5), int(new_h + 0.5))
    if size == (w, h):
        return image
    return np.array(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.Resampling.BILINEAR))


def _content_offset(tokenizer: Any) -> int:
    """How many special tokens precede the content (CLIP's start token: 1; T5: 0)."""
    with_special = tokenizer("a")["input_ids"]
    content = tokenizer("a", add_special_tokens=False)["input_ids"]
    for offset in range(len(with_special) - len(content) + 1):
        if with_special[offset:offset + len(content)] == content:
            return offset
    return 0


def _minmax_columns(maps: torch.Tensor) -> torch.Tensor:
    """The original's merge normalisation of (N, K): per column, minus its min, over max + 1e-6."""
    maps = maps - maps.min(dim=0, keepdim=True)[0]
    return maps / (maps.max(dim=0, keepdim=True)[0] + 1e-6)


class Seg4Diff:
    Config: ClassVar[type] = Seg4DiffConfig
    families: ClassVar[tuple[str, ...]] = FAMILIES

    def __init__(self, config: Seg4DiffConfig, *, host: PluginHost):
        self.config = config
        self.host = host
        self.backbone: Backbone = load_backbone(config.backbone, config.device, config.dtype, host=host)
        bb = self.backbone
        require_family("Seg4Diff", bb.family, self.families, "it reads text attention maps")
        self.size = config.image_size or bb.image_size
        self.layers = self._layers()
        self.layer = self._default_layer() if config.layer == -1 else config.layer
        if not 0 <= self.layer < len(self.layers):
            raise UserError(f"seg4diff.layer={config.layer}: this {bb.family} backbone has "
                            f"{len(self.layers)} {self._layer_kind()} (0..{len(self.layers) - 1}); "
                            f"pick one of those, or -1 for the default")
        self.joint = bb.family in DIT_FAMILIES
        # the tokenizer whose tokens the map reads: CLIP (SD3, UNets), T5 (Flux)
        self.tokenizer = bb.tokenizer_2 if bb.family == "flux" else bb.tokenizer
        self.offset = _content_offset(self.tokenizer)
        self.columns = TEXT_TOKENS if bb.family == "flux" else int(bb.tokenizer.model_max_length)
        self.timestep, self.sigma = self._schedule()
        self.words = {}
        for entry in config.class_words:
            name, _, word = entry.partition("=")
            self.words[name.strip()] = word.strip()

    @classmethod
    def parameter_counts(cls, config: Seg4DiffConfig, host: PluginHost) -> tuple[int, int]:
        """All backbone parameters; none is trained."""
        backbone = load_backbone(config.backbone, config.device, config.dtype, host=host)
        return sum(p.numel() for part in backbone.modules for p in part.parameters()), 0

    def weights_fingerprint(self) -> str:
        return self.backbone.fingerprint

    # -- the backbone's layers and schedule -------------------------------------------------
    def _layer_kind(self) -> str:
        return "joint attention layers" if self.backbone.family in DIT_FAMILIES else "cross-attention layers"

    def _layers(self) -> list[Any]:
        """The attention modules ``layer`` indexes: SD3's joint blocks; Flux's joint blocks then
        its single-stream blocks (the original's numbering, 0..18 then 19..56); a UNet's
        cross-attention layers in forward order (down, mid, up)."""
        bb = self.backbone
        if bb.family in DIT_FAMILIES:
            blocks = [(f"transformer_blocks.{i}.attn", b) for i, b in enumerate(bb.transformer.transformer_blocks)]
            blocks += [(f"single_transformer_blocks.{i}.attn", b) for i, b in
                       enumerate(getattr(bb.transformer, "single_transformer_blocks", None) or [])]
            self.layer_names = [name for name, _ in blocks]
            return [block.attn for _, block in blocks]
        rank = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
        found = sorted(((rank.get(name.split(".")[0], 3), i, name, module)
                        for i, (name, module) in enumerate(bb.unet.named_modules())
                        if name.endswith(".attn2") and hasattr(module, "set_processor")),
                       key=lambda f: (f[0], f[1]))
        self.layer_names = [name for _, _, name, _ in found]
        return [module for _, _, _, module in found]

    def _default_layer(self) -> int:
        """The expert layer (SD3: 9, Flux: 12) where the model has it; on a shallower MM-DiT the
        same relative depth (rounded down); on a UNet the layer chosen on RefShapes train data
        (the finest up level's first cross-attention)."""
        n = len(self.layers)
        if self.backbone.family in DIT_FAMILIES:
            layer, depth = EXPERT_LAYER[self.backbone.family]
            return layer if layer < n else layer * n // depth
        up = [(int(name.split(".")[1]), i) for i, name in enumerate(self.layer_names)
              if name.startswith("up_blocks.")]
        if not up:
            return n - 1
        finest = max(block for block, _ in up)
        return min(i for block, i in up if block == finest)

    def _schedule(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(timestep, sigma) of ``timesteps[-noise_step]`` on a copy of the backbone's scheduler
        set to the original's step count; sigma None for the UNet families (their scheduler's
        ``add_noise`` takes the timestep)."""
        bb, cfg = self.backbone, self.config
        scheduler = type(bb.scheduler).from_config(bb.scheduler.config)
        flux = bb.family == "flux"
        steps = cfg.inference_steps or (FLUX_STEPS if flux else ORIGINAL_STEPS)
        if cfg.noise_step > steps:
            raise UserError(f"seg4diff.noise_step={cfg.noise_step} is beyond the {steps}-step schedule")
        if flux:  # flux_backbone.py: sigmas linspace(1, 1/steps), mu from the latent's channels
            kwargs: dict[str, Any] = {"sigmas": np.linspace(1.0, 1 / steps, steps)}
            if scheduler.config.get("use_dynamic_shifting", False):
                kwargs["mu"] = _flux_shift(scheduler.config, int(bb.vae.config.latent_channels))
            scheduler.set_timesteps(**kwargs)
        else:
            scheduler.set_timesteps(steps)
        index = len(scheduler.timesteps) - cfg.noise_step
        timestep = scheduler.timesteps[index]
        sigma = scheduler.sigmas[index] if bb.family in DIT_FAMILIES else None
        return timestep, sigma

    # -- prompts -----------------------------------------------------------------------------
    def _word(self, sample: Sample) -> str:
        if not sample.is_class_name:
            text = sample.expression  # a referring expression: read whole (no original rule)
        else:
            category = str(sample.meta.get("category") or "")
            name = category if self.config.class_names == "category" and category else sample.expression
            text = self.words.get(category, self.words.get(name, name)).split("-")[0]
        if not text.strip():
            raise UserError(f"sample {sample.sample_id} has an empty class name or expression: fix "
                            f"or drop it in the data")
        return text

    def _groups(self, batch: Batch) -> list[_Group]:
        order: dict[str, list[int]] = {}
        for i, sample in enumerate(batch.samples):
            order.setdefault(sample.group, []).append(i)
        groups = []
        for members in order.values():
            words = [self._word(batch.samples[i]) for i in members]
            background = None
            rule = self.config.background
            if rule == "auto":
                rule = "none" if batch.background is False else "last"
            if rule == "first":
                words, background = [self.config.background_word, *words], 0
            elif rule == "last":
                words, background = [*words, self.config.background_word], len(words)
            groups.append(self._place(members, words, background))
        return groups

    def _place(self, members: list[int], words: list[str], background: int | None) -> _Group:
        """Token columns per word as the original counts them: each word tokenized alone
        (``len(tokenizer(name).input_ids) - 2`` for CLIP), consecutive after the start token;
        columns past the encoder's context are cut, as the original's slices are."""
        columns, start, info = [], self.offset, {"truncated": 0, "lost": 0}
        for word in words:
            n = len(self.tokenizer(word, add_special_tokens=False)["input_ids"])
            if n == 0:
                raise UserError(f"the class name or expression {word!r} has no token the model's "
                                f"tokenizer can read: fix or drop it in the data")
            kept = [p for p in range(start, start + n) if p < self.columns]
            if len(kept) < n:
                info["truncated"] = 1
                if self.config.overlong == "error":
                    raise UserError(
                        f"the prompt {' '.join(words)!r} has more tokens than the text encoder's "
                        f"{self.columns}: --set seg4diff.overlong=truncate reads what is kept (a "
                        f"class with no token left scores 0)")
                if not kept:
                    info["lost"] += 1
            columns.append(kept)
            start += n
        return _Group(members, words, columns, background, info)

    # -- the forward -------------------------------------------------------------------------
    def _conditioning(self, prompts: list[str]) -> Conditioning:
        bb = self.backbone
        if bb.family == "sd3":
            if self.config.text_encoder_3 == "t5":
                return conditioning(bb, prompts)
            # encode_prompt with text_encoder_3=None: both CLIPs' penultimate states, padded to
            # the joint width, then tokenizer_max_length rows of zeros where T5's would be
            states, pooled = [], []
            for encoder, tokenizer in ((bb.text_encoder, bb.tokenizer), (bb.text_encoder_2, bb.tokenizer_2)):
                out = encoder(tokenize(tokenizer, prompts, encoder.device), output_hidden_states=True)
                states.append(out.hidden_states[-2])
                pooled.append(out[0])
            clip = torch.cat(states, dim=-1)
            width = int(bb.transformer.config.joint_attention_dim)
            clip = F.pad(clip, (0, width - clip.shape[-1]))
            zeros = torch.zeros(len(prompts), int(bb.tokenizer.model_max_length), width,
                                device=clip.device, dtype=clip.dtype)
            return Conditioning(torch.cat([clip, zeros], dim=-2), torch.cat(pooled, dim=-1))
        if bb.family == "flux":  # FluxPipeline.encode_prompt(max_sequence_length=77)
            ids = tokenize(bb.tokenizer, prompts, bb.text_encoder.device)
            pooled = bb.text_encoder(ids, output_hidden_states=False).pooler_output
            return Conditioning(encode(bb.text_encoder_2, bb.tokenizer_2, prompts, TEXT_TOKENS), pooled)
        return conditioning(bb, prompts)

    def _autocast(self) -> Any:
        bb = self.backbone
        enabled = self.config.autocast and bb.device.type == "cuda" and bb.dtype != torch.float32
        return torch.autocast("cuda", dtype=bb.dtype, enabled=enabled)

    def _attention(self, latents: torch.Tensor, noise: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The chosen layer's head-averaged image-to-text attention: (B, T, side, side)."""
        bb = self.backbone
        module = self.layers[self.layer]
        b = latents.shape[0]
        if self.joint:
            record = JointRecord(None, None)
            record.text_tokens = cond.tokens.shape[1]  # a Flux single block needs the split
            probe: Any = _JointProbe(module.processor, record, text_first=bb.family == "flux")
        else:
            record = JointRecord(None, None)
            probe = _CrossProbe(record)
        if self.sigma is not None:  # flow matching: scale_noise
            sigma = self.sigma.to(latents.device, latents.dtype)
            noisy = sigma * noise + (1.0 - sigma) * latents
        else:
            noisy = noised(bb, latents, noise,
                           torch.full((b,), int(self.timestep), dtype=torch.long, device=latents.device))
        timestep = self.timestep.to(latents.device).expand(b)
        original = module.processor
        module.set_processor(probe)
        try:
            with self._autocast():
                denoise(bb, noisy, timestep, cond)
            raise RuntimeError(f"layer {self.layer} was never reached in the forward")
        except _Stop:
            pass
        finally:
            module.set_processor(original)
        (side,) = record.resolutions()
        return record.cross_maps(side).float()

    def _unit_latents(self, images: list[np.ndarray], seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``FluxBackbone.image_to_latents``: the VAE encodes the squashed image in [0, 1] (no
        2x - 1), then (mean - shift) * scale; the noise (then a posterior sample's eps) drawn from
        the image's seed as ``latents_and_noise`` draws them."""
        bb = self.backbone
        pixels = (to_pixels(images, self.size, self.config.antialias) + 1) / 2
        dist = bb.vae.encode(pixels.to(bb.device, bb.dtype)).latent_dist
        rows, noises = [], []
        for row, seed in enumerate(seeds):
            generator = torch.Generator("cpu").manual_seed(int(seed))
            noises.append(torch.randn(dist.mean.shape[1:], generator=generator))
            latent = dist.mean[row]
            if self.config.posterior == "sample":
                eps = torch.randn(dist.mean.shape[1:], generator=generator)
                latent = latent + dist.std[row] * eps.to(latent.device, latent.dtype)
            rows.append(latent)
        shift = getattr(bb.vae.config, "shift_factor", None) or 0.0
        latents = (torch.stack(rows) - shift) * bb.vae.config.scaling_factor
        return latents, torch.stack(noises).to(bb.device, bb.dtype)

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        bb, cfg = self.backbone, self.config
        groups = self._groups(batch)
        images = [batch.images[g.samples[0]] for g in groups]
        if cfg.test_resize:
            images = [shortest_edge(image, cfg.test_resize, cfg.test_max_size) for image in images]
        seeds = [batch.seeds[g.samples[0]] for g in groups]  # one noise per image
        if bb.family == "flux" and cfg.flux_unit_pixels:
            latents, noise = self._unit_latents(images, seeds)
        else:
            latents, noise = latents_and_noise(bb, images, seeds, self.size, posterior=cfg.posterior,
                                               antialias=cfg.antialias)
        with self._autocast():
            cond = self._conditioning([g.prompt for g in groups])
        maps = self._attention(latents, noise, cond)  # (G, T, side, side)
        out: list[Prediction | None] = [None] * len(batch)
        for group, text_maps in zip(groups, maps):
            side = text_maps.shape[-1]
            columns = text_maps[:self.columns].flatten(1).T  # (N, 77): the read block
            if cfg.norm_before_merge:
                columns = _minmax_columns(columns)
            merged = torch.stack([columns[:, c].mean(dim=-1) if c else columns.new_zeros(columns.shape[0])
                                  for c in group.columns], dim=-1)
            if cfg.norm_after_merge:
                merged = _minmax_columns(merged)
            word_maps = merged.T.reshape(-1, side, side)
            size = batch.output_size(batch.samples[group.samples[0]])
            resized = F.interpolate(word_maps[None], size=size, mode="bilinear", align_corners=False)[0]
            classes = [k for k in range(len(group.words)) if k != group.background]
            if group.background is not None:
                background = resized[group.background]
                scores = [resized[k] / (resized[k] + background).clamp_min(1e-30) for k in classes]
            else:
                scores = [resized[k] for k in classes]
            for i, score in zip(group.samples, scores):
                out[i] = Prediction(scores=score.clamp(0, 1).cpu().numpy().astype(np.float32),
                                    info=dict(group.info))
        return [p for p in out if p is not None]


def _flux_shift(config: Any, image_seq_len: int) -> float:
    """``calculate_shift`` as ``flux_backbone.py`` calls it: with ``shape[1]`` of the latent's
    (B, C, H, W) shape, i.e. its channel count, as the sequence length."""
    m = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    return float(image_seq_len * m + config.base_shift - m * config.base_image_seq_len)
