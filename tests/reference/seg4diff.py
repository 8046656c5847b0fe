"""Seg4Diff as its original code computes it, written plainly, to test refbench against.

Follows cvlab-kaist/Seg4Diff's zero-shot evaluation (``configs/eval_ovss.yaml``): detectron2's
test mapper (``ResizeShortestEdge(640, 2560)``, PIL bilinear), ``Seg4DiffOVSS.forward``
(``seg4diff/seg4diff_model_ovss.py``: /255, bilinear to 1024, the prompt " ".join of the
ground-truth class names cut at "-", per-class token counts ``len(tokenizer(name)) - 2`` from
column 1, the mean over each class's columns, ``sem_seg_postprocess``'s bilinear resize, the
argmax), ``SD3Backbone.forward`` (``sd3_backbone.py``: ``img_to_latents`` = posterior mean minus
shift times scale, ``scale_noise`` at ``timesteps[-8]`` of the 28-step schedule,
``encode_prompt`` with no T5 and ``max_sequence_length=77``) and the bundled diffusers'
``JointAttnProcessor2_0`` (softmax of q k^T / sqrt(d) over every key, mean over heads, the
image-query x first-77-text-key block). None of refbench's code: the schedule is computed by hand
as the bundled ``FlowMatchEulerDiscreteScheduler`` computes it, the attention probabilities by
an explicit matmul and softmax in a processor on the chosen block, the text encoders called
directly.

The UNet analogue (refbench's, no original): one named cross-attention layer's explicit
softmax(q k^T * scale), mean over heads, the DDPM schedule's ``timesteps[-8]`` of 28 steps, noise
added from ``alphas_cumprod``, the CLIP encoder's last hidden state.

The noise comes from a CPU generator seeded with the image's seed (the first draw), which is how
refbench draws it; the original draws it unseeded on the GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

N_CLIP = 77


def shortest_edge_resize(image: np.ndarray, short: int = 640, max_size: int = 2560) -> np.ndarray:
    """detectron2's ResizeShortestEdge.get_output_shape and ResizeTransform.apply_image (uint8)."""
    from PIL import Image

    h, w = image.shape[:2]
    size = short * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    neww, newh = int(neww + 0.5), int(newh + 0.5)
    return np.asarray(Image.fromarray(image).resize((neww, newh), Image.BILINEAR)).copy()


def flow_schedule(num_train_timesteps: int, shift: float, steps: int = 28,
                  noise_step: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(timestep, sigma) at ``timesteps[-noise_step]`` after ``set_timesteps(steps)`` of the
    bundled FlowMatchEulerDiscreteScheduler (static shift), computed as it computes them."""
    n = num_train_timesteps
    train = torch.from_numpy(np.linspace(1, n, n, dtype=np.float32)[::-1].copy()).to(torch.float32)
    train_sigmas = train / n
    train_sigmas = shift * train_sigmas / (1 + (shift - 1) * train_sigmas)
    sigma_min, sigma_max = train_sigmas[-1].item(), train_sigmas[0].item()
    timesteps = np.linspace(sigma_max * n, sigma_min * n, steps)
    sigmas = timesteps / n
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32)
    timesteps = sigmas * n
    index = steps - noise_step  # index_for_timestep(timesteps[-noise_step])
    return timesteps[index], sigmas[index]


def ddpm_timestep(config: Any, steps: int = 28, noise_step: int = 8) -> int:
    """``DDPMScheduler.set_timesteps(steps).timesteps[-noise_step]`` by hand (leading spacing)."""
    assert config.timestep_spacing == "leading", config.timestep_spacing
    ratio = config.num_train_timesteps // steps
    timesteps = (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) + config.steps_offset
    return int(timesteps[-noise_step])


class JointImageToText:
    """On one SD3 joint block: the explicit joint softmax of the original's processor, its
    head mean and the image-query x CLIP-key block kept; the block's output is left to the
    processor it replaces."""

    def __init__(self, original: Any, kept: list[torch.Tensor]):
        self.original = original
        self.kept = kept

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: Any = None, *args: Any, **kwargs: Any) -> Any:
        b, n, _ = hidden_states.shape
        heads = attn.heads
        d = attn.to_k.out_features // heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, heads, d).transpose(1, 2)

        q, k = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states))
        if attn.norm_q is not None:  # SD3-medium has none; SD3.5 RMS norms
            q, k = attn.norm_q(q), attn.norm_k(k)
        cq, ck = split(attn.add_q_proj(encoder_hidden_states)), split(attn.add_k_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        query, key = torch.cat([q, cq], dim=2), torch.cat([k, ck], dim=2)
        scores = query @ key.transpose(-1, -2) / (d ** 0.5)
        probs = scores.float().softmax(dim=-1)
        self.kept.append(probs.mean(dim=1)[:, :n, n:n + N_CLIP])
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


class CrossImageToText:
    """On one UNet cross-attention layer: explicit softmax(q k^T * scale), head mean, kept."""

    def __init__(self, original: Any, kept: list[torch.Tensor]):
        self.original = original
        self.kept = kept

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: Any = None, *args: Any, **kwargs: Any) -> Any:
        b, n, _ = hidden_states.shape
        heads = attn.heads
        q, k = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states)
        d = k.shape[-1] // heads
        q = q.view(b, -1, heads, d).transpose(1, 2)
        k = k.view(b, -1, heads, d).transpose(1, 2)
        probs = ((q @ k.transpose(-1, -2)) * attn.scale).float().softmax(dim=-1)
        self.kept.append(probs.mean(dim=1))
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


def _token_counts(tokenizer: Any, names: list[str]) -> list[int]:
    return [len(tokenizer(name)["input_ids"]) - 2 for name in names]  # the original's count


def _latents(backbone: Any, image: np.ndarray, size: int) -> torch.Tensor:
    device, dtype = backbone.device, backbone.dtype
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    posterior = backbone.vae.encode((2.0 * x - 1.0).to(device, dtype)).latent_dist
    shift = getattr(backbone.vae.config, "shift_factor", None) or 0.0
    return (posterior.mean - shift) * backbone.vae.config.scaling_factor


@torch.no_grad()
def original_maps(backbone: Any, image: np.ndarray, names: list[str], seed: int,
                  layer: int | str, steps: int = 28, noise_step: int = 8,
                  short: int = 640, size: int | None = None) -> np.ndarray:
    """The original's per-name maps (K, H, W) at the image's size (before the argmax), for the
    prompt " ".join(names): ``layer`` a joint block index (SD3) or a cross-attention module name
    (UNet)."""
    h, w = image.shape[:2]
    size = size or backbone.image_size  # 1024 for SD3
    device, dtype = backbone.device, backbone.dtype
    x0 = _latents(backbone, shortest_edge_resize(image, short) if short else image, size)
    generator = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn(x0.shape[1:], generator=generator)[None].to(device, dtype)
    prompt = " ".join(names)
    kept: list[torch.Tensor] = []
    if backbone.unet is None:  # SD3
        timestep, sigma = flow_schedule(backbone.scheduler.config.num_train_timesteps,
                                        backbone.scheduler.config.shift, steps, noise_step)
        sigma = sigma.to(device, x0.dtype)
        xt = sigma * noise + (1.0 - sigma) * x0
        states, pooled = [], []
        for encoder, tokenizer in ((backbone.text_encoder, backbone.tokenizer),
                                   (backbone.text_encoder_2, backbone.tokenizer_2)):
            ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            out = encoder(ids.to(device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled.append(out[0])
        clip = torch.cat(states, dim=-1)
        width = backbone.transformer.config.joint_attention_dim
        clip = F.pad(clip, (0, width - clip.shape[-1]))
        t5 = torch.zeros(1, backbone.tokenizer.model_max_length, width, device=device, dtype=clip.dtype)
        block = backbone.transformer.transformer_blocks[int(layer)].attn
        original = block.processor
        block.set_processor(JointImageToText(original, kept))
        try:
            backbone.transformer(hidden_states=xt, encoder_hidden_states=torch.cat([clip, t5], dim=-2),
                                 pooled_projections=torch.cat(pooled, dim=-1),
                                 timestep=timestep.expand(1).to(device), return_dict=False)
        finally:
            block.set_processor(original)
    else:  # the UNet analogue
        t = ddpm_timestep(backbone.scheduler.config, steps, noise_step)
        a = backbone.scheduler.alphas_cumprod[t].to(device, dtype)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        ids = backbone.tokenizer([prompt], padding="max_length", max_length=backbone.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
        context = backbone.text_encoder(ids.to(device))[0]
        module = dict(backbone.unet.named_modules())[str(layer)]
        original = module.processor
        module.set_processor(CrossImageToText(original, kept))
        try:
            backbone.unet(xt, torch.tensor([t], device=device), encoder_hidden_states=context)
        finally:
            module.set_processor(original)
    (attention,) = kept
    slices = attention[0].float()  # (N, 77)
    side = int(round(slices.shape[0] ** 0.5))
    merged, st = [], 1
    for n in _token_counts(backbone.tokenizer, names):
        merged.append(slices[:, st:st + n].mean(dim=-1))
        st += n
    maps = torch.stack(merged, dim=-1).T.reshape(-1, side, side)
    return F.interpolate(maps[None], size=(h, w), mode="bilinear", align_corners=False)[0].cpu().numpy()


def original_labels(maps: np.ndarray) -> np.ndarray:
    """detectron2's argmax over the prompted names (first index on ties, as torch's)."""
    return torch.from_numpy(maps).argmax(dim=0).numpy()
