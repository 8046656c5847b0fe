"""Attention capture for the MM-DiT families (SD3, Flux): joint attention over text and image
tokens, read as cross-attention maps and self-attention for refinement.

In an MM-DiT block the text and image tokens attend together: one softmax over the keys of
both, for the queries of both. SD3 (``JointAttnProcessor2_0``) concatenates [image; text],
Flux (``FluxAttnProcessor``) [text; image] and applies rotary positions to the whole sequence;
Flux's single-stream blocks receive that concatenation as one ``hidden_states``. What refbench
takes from each layer, as Seg4Diff and ConceptAttention read these models:

- the image-query x text-key block of the layer's probabilities (the joint softmax, so a row
  sums to the image's share of attention on the text, below 1), averaged over heads: a
  (B, N, T) map per layer, summed per grid side as ``AttentionRecord.cross_maps`` reads it;
- the image queries and image keys, for ``AttentionRecord.refine``: the image-image block with
  its rows renormalised over the image keys (softmax(Q_img K_img^T / sqrt(d))), at the grid the
  caller names.

The processor installed here leaves the layer's output to the processor it replaces (which it
calls unchanged: outputs are exactly the model's), recomputes the queries and keys with the
layer's own projections and norms, and computes the probabilities itself, one head at a time so
a 4096-token Flux layer never holds every head's matrix. Processors are swapped layer by layer
(``set_processor`` on each attention module: diffusers 0.30's Flux model has no
``set_attn_processor``), and every original, custom ones included, is restored on exit.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from refbench.diffusion.attention import AttentionRecord


@dataclass
class JointRecord(AttentionRecord):
    """An ``AttentionRecord`` that also remembers how many text tokens the joint blocks saw, which
    a Flux single-stream block (handed [text; image] as one sequence) needs to split them."""

    text_tokens: int | None = None


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, width = x.shape
    return x.view(b, n, heads, width // heads).transpose(1, 2)


def _norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


# (fused projection, query, key, query norm, key norm) of each stream of a joint attention layer
_STREAMS = {False: ("to_qkv", "to_q", "to_k", "norm_q", "norm_k"),
            True: ("to_added_qkv", "add_q_proj", "add_k_proj", "norm_added_q", "norm_added_k")}


def _queries_keys(attn: Any, hidden: torch.Tensor, added: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, heads, S, d) queries and keys of the image stream, or (``added``) the text stream."""
    fused, to_q, to_k, norm_q, norm_k = _STREAMS[added]
    if getattr(attn, "fused_projections", False) and hasattr(attn, fused):
        q, k, _ = getattr(attn, fused)(hidden).chunk(3, dim=-1)
    else:
        q, k = getattr(attn, to_q)(hidden), getattr(attn, to_k)(hidden)
    return (_norm(getattr(attn, norm_q, None), _heads(q, attn.heads)),
            _norm(getattr(attn, norm_k, None), _heads(k, attn.heads)))


def _rotate(q: torch.Tensor, k: torch.Tensor, rotary: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux's rotary positions as the installed diffusers applies them: a (cos, sin) pair since
    0.31, one stacked rotation tensor (``apply_rope``) before."""
    if isinstance(rotary, tuple):
        from diffusers.models.embeddings import apply_rotary_emb

        return apply_rotary_emb(q, rotary), apply_rotary_emb(k, rotary)
    from diffusers.models.attention_processor import apply_rope  # diffusers < 0.31

    return apply_rope(q, k, rotary)


def _image_text_probabilities(q_image: torch.Tensor, keys: torch.Tensor, text: slice,
                              scale: float) -> torch.Tensor:
    """Head-averaged softmax(q K^T * scale) of the image queries over all keys, at the text
    columns: (B, N, T). One head at a time."""
    total = None
    for h in range(q_image.shape[1]):
        scores = (q_image[:, h] @ keys[:, h].transpose(-1, -2)) * scale
        probs = scores.float().softmax(dim=-1)[..., text]
        total = probs if total is None else total + probs
    return total / q_image.shape[1]


def _parameters(processor: Any) -> set[str]:
    return set(inspect.signature(processor.__call__).parameters)


class JointCaptureProcessor:
    """Wraps a layer's own processor: its output is the original's; the maps are recorded."""

    def __init__(self, original: Any, record: JointRecord, text_first: bool):
        self.original = original
        self.record = record
        self.text_first = text_first

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args: Any,
                 image_rotary_emb: Any = None, **kwargs: Any) -> Any:
        # The original gets exactly what its layer would hand it: diffusers >= 0.31 passes Flux's
        # rotary positions positionally (in ``args``); earlier versions by keyword, and only to a
        # processor whose signature names them, so the keyword is passed on only in that case.
        if image_rotary_emb is not None and "image_rotary_emb" in _parameters(self.original):
            kwargs["image_rotary_emb"] = image_rotary_emb
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        rotary = args[0] if args else kwargs.get("image_rotary_emb")
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.record.keep_graph):
            self._record(attn, hidden_states, encoder_hidden_states, rotary)
        return out

    def _record(self, attn: Any, hidden: torch.Tensor, context: torch.Tensor | None,
                rotary: Any) -> None:
        record = self.record
        q, k = _queries_keys(attn, hidden, added=False)
        if context is not None:  # a joint block: text in its own stream
            q_text, k_text = _queries_keys(attn, context, added=True)
            n_text = context.shape[1]
            record.text_tokens = n_text
            parts = ((q_text, q), (k_text, k)) if self.text_first else ((q, q_text), (k, k_text))
            q, k = (torch.cat(pair, dim=2) for pair in parts)
        elif self.text_first:  # a Flux single-stream block: [text; image] in one sequence
            if record.text_tokens is None:
                raise RuntimeError("a single-stream block ran before any joint block: no text length")
            n_text = record.text_tokens
        else:  # SD3's image-only attention (SD3.5's attn2, single blocks): no text keys
            n_text = 0
        if rotary is not None:
            q, k = _rotate(q, k, rotary)
        total = q.shape[2]
        image = slice(n_text, total) if self.text_first else slice(0, total - n_text)
        text = slice(0, n_text) if self.text_first else slice(total - n_text, total)
        q_image = q[:, :, image]
        side = math.isqrt(q_image.shape[2])
        scale = q.shape[-1] ** -0.5  # the processors call SDPA with its default scale
        wanted = record.cross_resolutions is None or side in record.cross_resolutions
        if n_text and wanted:
            record.add_cross_mean(side, _image_text_probabilities(q_image, k, text, scale))
        if side == record.self_resolution:
            record.add_self(q_image, k[:, :, image], scale)


@contextmanager
def capture_joint_attention(transformer: Any, text_first: bool,
                            cross_resolutions: Iterable[int] | None = None,
                            self_resolution: int | None = None, conditional: slice | None = None,
                            keep_graph: bool = False) -> Iterator[AttentionRecord]:
    """Record every joint attention layer of an SD3 or Flux transformer during the block.

    ``cross_resolutions`` / ``self_resolution`` are grid sides (a DiT has one: the latent side
    over the patch size); ``conditional`` selects batch rows as in ``capture_attention``."""
    layers = [m for m in transformer.modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]
    original = [layer.processor for layer in layers]
    record = JointRecord(frozenset(cross_resolutions) if cross_resolutions is not None else None,
                         self_resolution, conditional, keep_graph)
    try:
        for layer, processor in zip(layers, original):
            layer.set_processor(JointCaptureProcessor(processor, record, text_first))
        yield record
    finally:
        for layer, processor in zip(layers, original):
            layer.set_processor(processor)
