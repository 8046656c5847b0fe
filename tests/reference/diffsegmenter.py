"""DiffSegmenter as its original code computes it, written plainly, to test refbench against.

Follows VCG-team/DiffSegmenter's open_vocabulary/*/ptp_stable_*.py and ptp_utils.py step by
step, with none of refbench's machinery (no SDPA, no running sums, no cache): the image resized
with bilinear interpolation and no antialias, a sample of the VAE posterior times the scaling
factor, noise added by hand from alphas_cumprod, Compel's weighting z' = e + (z - e) * w of the
empty-prompt embedding e, a UNet forward on the batch [empty prompt, prompt] with every attention
layer's probabilities computed explicitly and kept, the mean over heads and layers per
resolution, the averaged HW x HW self-attention materialised, per-resolution upsampling and
min-max, S @ c, and a resize to the image followed by min-max.

The posterior's epsilon and the noise come from one CPU generator seeded with the sample seed
(the noise first), which is how refbench draws them; the original draws them unseeded.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

WEIGHTS = {8: 0.3, 16: 0.5, 32: 0.1, 64: 0.1}  # the original's, for SD 1.5 at 512 (latent 64)


class ExplicitAttention:
    """An attention processor that computes softmax(q k^T * scale) itself and keeps the
    conditional batch row's probabilities of every layer."""

    def __init__(self, kept: list[tuple[bool, int, torch.Tensor]]):
        self.kept = kept

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: Any = None,
                 temb: Any = None, **kwargs: Any) -> torch.Tensor:
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        batch, n, _ = hidden_states.shape
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        heads = attn.heads
        d = q.shape[-1] // heads
        q = q.view(batch, -1, heads, d).transpose(1, 2)
        k = k.view(batch, -1, heads, d).transpose(1, 2)
        v = v.view(batch, -1, heads, d).transpose(1, 2)
        probs = torch.softmax((q @ k.transpose(-1, -2)) * attn.scale, dim=-1)
        self.kept.append((is_cross, math.isqrt(n), probs[1]))  # row 1: the conditional prompt
        out = (probs @ v).transpose(1, 2).reshape(batch, n, heads * d)
        return attn.to_out[1](attn.to_out[0](out))


def class_tokens(tokenizer: Any, prefix: str, name: str) -> tuple[list[int], list[int]]:
    """(read, weighted) token positions for a class name after ``prefix``: the name's last token
    is read (the COCO script's ``3 + embs_len``) and its last word carries the ``++``."""
    before = len(tokenizer(prefix.strip(), add_special_tokens=False).input_ids)
    pieces = len(tokenizer(name, add_special_tokens=False).input_ids)
    last_word = len(tokenizer(name.split()[-1], add_special_tokens=False).input_ids)
    first = 1 + before  # position 0 is BOS
    return [first + pieces - 1], list(range(first + pieces - last_word, first + pieces))


def word_tokens(tokenizer: Any, prompt: str, word_index: int) -> list[int]:
    """Positions of the ``word_index``-th whitespace word of ``prompt``."""
    words = prompt.split()
    before = len(tokenizer(" ".join(words[:word_index]), add_special_tokens=False).input_ids) if word_index else 0
    pieces = len(tokenizer(" ".join(words[:word_index + 1]), add_special_tokens=False).input_ids) - before
    return list(range(1 + before, 1 + before + pieces))


@torch.no_grad()
def original_map(backbone: Any, image: np.ndarray, prompt: str, read: list[int],
                 weighted: list[int], seed: int, t: int = 100, emphasis: float = 1.21,
                 refine: bool = True) -> np.ndarray:
    """The original's score map of ``prompt`` in ``image`` (H x W x 3 uint8), in [0, 1]."""
    unet, vae, encoder, tokenizer = backbone.unet, backbone.vae, backbone.text_encoder, backbone.tokenizer
    size = backbone.image_size
    device, dtype = backbone.device, backbone.dtype
    # the image, squashed to the model size
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    posterior = vae.encode((2 * x - 1).to(device, dtype)).latent_dist
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(posterior.mean.shape[1:], generator=generator)[None].to(device, dtype)
    eps = torch.randn(posterior.mean.shape[1:], generator=generator)[None].to(device, dtype)
    x0 = (posterior.mean + posterior.std * eps) * vae.config.scaling_factor
    a = backbone.scheduler.alphas_cumprod[t]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise

    def embed(text: str) -> torch.Tensor:
        ids = tokenizer([text], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        return encoder(ids.to(device))[0]

    empty, z = embed(""), embed(prompt)
    w = torch.ones(z.shape[1], device=device, dtype=dtype)
    w[weighted] = emphasis
    z = empty + (z - empty) * w[None, :, None]

    kept: list[tuple[bool, int, torch.Tensor]] = []
    original = unet.attn_processors
    unet.set_attn_processor(ExplicitAttention(kept))
    try:
        unet(torch.cat([xt, xt]), t, encoder_hidden_states=torch.cat([empty, z]))
    finally:
        unet.set_attn_processor(original)

    cross, self_maps = defaultdict(list), defaultdict(list)
    for is_cross, res, probs in kept:
        (cross if is_cross else self_maps)[res].append(probs)
    latent = xt.shape[-1]
    c = torch.zeros(latent, latent, device=device)
    for res in sorted(cross):
        weight = WEIGHTS.get(res * 64 // latent, 0.0)
        if weight == 0:
            continue
        mean = torch.cat(cross[res]).float().mean(0).view(res, res, -1)  # heads x layers
        m = mean[:, :, read].mean(-1)
        if res != latent:
            m = F.interpolate(m[None, None], size=(latent, latent), mode="bilinear", align_corners=False)[0, 0]
        c = c + weight * (m - m.min()) / (m.max() - m.min())
    if refine:
        s = torch.cat(self_maps[latent]).float().mean(0)  # (HW, HW), heads x layers, materialised
        c = (s @ c.view(-1, 1)).view(latent, latent)
    h, w_ = image.shape[:2]
    out = F.interpolate(c[None, None], size=(h, w_), mode="bilinear", align_corners=False)[0, 0]
    return ((out - out.min()) / (out.max() - out.min())).cpu().numpy()
