"""The grounding loss: each word that names an object should attend to that object.

Stable Diffusion's cross-attention localises words because a frozen CLIP, trained on 400M
captioned images, gives every word an embedding of its own meaning. A two-layer text encoder
trained jointly with a small UNet on a few thousand steps has no such pressure: the UNet can
read the whole caption from any token, and the measured result was a shape word's attention
peaking on its object in 6% of RefShapes val images (chance: about 4%). This loss supplies the
pressure directly, as TokenCompose's token and pixel losses do (Wang et al., CVPR 2024): for every word
of a caption that names an object (its shape and colour words), the share of that word's
cross-attention mass, over the image, that falls outside the object's visible mask (the token
term), plus the binary cross-entropy between the word's attention at each pixel and the mask
(the pixel term):

    L = mean over named words w and attention resolutions r of
        1 - sum_p(A_w * M_w) / sum_p(A_w)  +  mean_p BCE(A_w(p), M_w(p))

A_w is the head- and layer-averaged attention of w's tokens at resolution r (per pixel, a
probability over the caption's tokens); M_w the fraction of each cell the object covers. The
token term alone is scale-free and was measured to have a degenerate optimum: after 700 steps
the named words' attention fell to about 1e-5 everywhere (the UNet stopped reading them) while
the share inside rose to 0.3, and DiffSegmenter's maps got worse. The pixel term asks for
attention on the object in absolute terms. The noise-prediction loss stays the main objective;
this one is added with a weight (``--grounding-weight``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

from refbench.diffusion.attention import AttentionRecord
from refbench.diffusion.prompts import TokenAlignment, align
from refbench.pretrain.captions import Caption


@lru_cache(maxsize=16384)
def _aligned(tokenizer: Any, text: str) -> TokenAlignment:
    """A caption's token alignment, computed once: a pooled scene is drawn into many batches,
    and aligning (one tokenizer call per word) cost about 4% of a training step."""
    return align(tokenizer, text)


def word_tokens(tokenizer: Any, captions: Sequence[Caption | None], masks: Sequence[torch.Tensor],
                context_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per caption and named word: token weights (B, K, T) averaging the word's tokens, its
    object's mask (B, K, r, r), and which of the K slots are real (B, K). A caption that was
    dropped to "" is None and contributes nothing."""
    rows = [[] if c is None else list(c.words) for c in captions]
    k = max(1, max(len(r) for r in rows))
    r = masks[0].shape[-1]
    weights = torch.zeros(len(rows), k, context_length)
    word_masks = torch.zeros(len(rows), k, r, r)
    valid = torch.zeros(len(rows), k)
    for b, (caption, words) in enumerate(zip(captions, rows)):
        if not words:
            continue
        alignment = _aligned(tokenizer, caption.text)
        for slot, (start, end, index) in enumerate(words):
            positions = [p for p in alignment.positions(start, end) if p < context_length - 1]
            if positions:
                weights[b, slot, positions] = 1.0 / len(positions)
                word_masks[b, slot] = masks[b][index]
                valid[b, slot] = 1.0
    return weights, word_masks, valid


def grounding_loss(record: AttentionRecord, weights: torch.Tensor, word_masks: torch.Tensor,
                   valid: torch.Tensor) -> torch.Tensor:
    """Token plus pixel term, averaged over named words and resolutions (0 when nothing is named)."""
    if not valid.any():
        return torch.zeros(())
    terms = []
    for resolution in record.resolutions():
        maps = record.cross_maps(resolution).flatten(2)  # (B, T, N)
        masks = F.adaptive_avg_pool2d(word_masks, resolution).flatten(2)  # (B, K, N)
        attention = torch.einsum("bkt,btn->bkn", weights.to(maps.dtype), maps)
        inside = (attention * masks).sum(-1) / attention.sum(-1).clamp_min(1e-12)
        pixel = F.binary_cross_entropy(attention.clamp(1e-6, 1 - 1e-6), masks, reduction="none").mean(-1)
        terms.append(((1 - inside + pixel) * valid).sum() / valid.sum())
    return torch.stack(terms).mean()
