"""What GoCA reads from one UNet forward, recorded by attention processors.

For each selected cross-attention layer the processor computes the per-head probabilities
explicitly and aggregates the heads at once (GoCA's head weights need the layer's per-head
outputs and its output projection, which only the layer has), so a layer leaves one (B, N, T)
map instead of its heads' maps; the reference layer's cross-attention query is kept; the
self-attention layers keep their queries and keys (maps are computed from them after the
forward, only where they are needed). Every other layer runs through PyTorch's
scaled_dot_product_attention, and the processors are restored on exit.

Head weights (``cross_attn_dispatch.py``, ``goca_cross_run``): head n's share of the layer's
output o = sum_n A_n V_n W_n at each pixel, w_n = <A_n V_n W_n, o> / sum_m <A_m V_m W_m, o>
("dot-product w/o clamp"), W_n the rows of ``to_out[0].weight`` that head n's channels meet
(no bias). Since sum_n A_n V_n W_n = o, the denominator is |o|^2; refbench computes
<A_n V_n W_n, o> as <A_n V_n, (o W^T)_n>, the same number without a per-head (N x D) product.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

HeadWeights = Literal["dot", "dot_clamped", "mean"]


@dataclass
class GoCARecord:
    head_weights: HeadWeights
    math_dtype: torch.dtype | None  # None: the layer's own dtype
    cross: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, N, T), forward order
    ref_query: torch.Tensor | None = None  # (B, N, C)
    self_qk: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)


def softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis in at least fp32 (fp16 scores are upcast, float64 kept)."""
    return scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(dim=-1)


def aggregate_heads(probs: torch.Tensor, post_value: torch.Tensor, weight: torch.Tensor,
                    method: HeadWeights, out: torch.Tensor | None = None) -> torch.Tensor:
    """Heads of (B, H, N, T) probabilities mixed per pixel: (B, N, T). ``post_value`` is the
    layer's attention output before ``to_out`` (B, N, H*d), ``weight`` ``to_out[0].weight``,
    ``out`` (if given) post_value @ weight^T, the projection without its bias."""
    if method == "mean":
        return probs.mean(dim=1)
    b, heads, n, _ = probs.shape
    if out is None:
        out = post_value @ weight.T  # o (B, N, D)
    back = out @ weight  # (B, N, H*d): o W, split by head below
    dot = (post_value * back).view(b, n, heads, -1).sum(-1)  # <A_n V_n W_n, o> (B, N, H)
    if method == "dot_clamped":  # the original's "dot-product"
        dot = dot.clamp(min=0)
        weights = torch.nan_to_num(dot / dot.sum(dim=-1, keepdim=True), nan=1.0)
    else:
        weights = dot / dot.sum(dim=-1, keepdim=True)
    return torch.einsum("bnh,bhnt->bnt", weights, probs)


class GoCAProcessor:
    """One attention layer: ``roles`` ("cross", "ref", "self") say what it records."""

    def __init__(self, record: GoCARecord, name: str, roles: frozenset[str]):
        self.record = record
        self.name = name
        self.roles = roles

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, _, _ = hidden_states.shape
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
            if not is_cross:
                context = hidden_states
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        record = self.record
        if "ref" in self.roles:
            record.ref_query = query.detach()
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if "cross" in self.roles:
            scores = (query @ key.transpose(-1, -2)) * attn.scale
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = softmax(scores).to(value.dtype)
            merged = (probs @ value).transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
            projected = attn.to_out[0](merged)
            dtype = record.math_dtype or value.dtype
            linear = attn.to_out[0]
            # the layer's own product, less its bias, is o (one D x D product saved)
            out = projected if linear.bias is None else projected - linear.bias
            record.cross[self.name] = aggregate_heads(
                probs.to(dtype), merged.to(dtype), linear.weight.to(dtype), record.head_weights,
                out.to(dtype)).detach()
        else:
            if "self" in self.roles:
                record.self_qk[self.name] = (query.detach(), key.detach(), float(attn.scale))
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                 scale=attn.scale)
            merged = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
            projected = attn.to_out[0](merged.to(query.dtype))

        out = attn.to_out[1](projected)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def attention_modules(unet: Any) -> dict[str, Any]:
    """The UNet's attention modules by processor key (``unet.attn_processors``' keys), found
    once: walking the module tree on every forward costs milliseconds."""
    return {f"{name}.processor": module for name, module in unet.named_modules()
            if hasattr(module, "set_processor") and hasattr(module, "processor")}


@contextmanager
def capture(modules: dict[str, Any], record: GoCARecord,
            roles: dict[str, tuple[str, frozenset[str]]]) -> Iterator[GoCARecord]:
    """Install GoCA's processors on ``modules`` (``attention_modules``) for the forwards inside
    the block, each original restored on exit. ``roles`` maps a processor key to (layer name,
    roles); other layers get no role (SDPA)."""
    original = {key: module.processor for key, module in modules.items()}
    try:
        for key, module in modules.items():
            module.set_processor(GoCAProcessor(record, *roles.get(key, (key, frozenset()))))
        yield record
    finally:
        for key, module in modules.items():
            module.set_processor(original[key])


def self_attention_rows(q: torch.Tensor, k: torch.Tensor, scale: float,
                        rows: torch.Tensor) -> torch.Tensor:
    """Head-averaged softmax(q k^T * scale) at the query ``rows`` only: (B, len(rows), N).
    All heads at once where that is small (64M scores), else one head at a time."""
    b, heads, n, _ = q.shape
    if b * heads * len(rows) * n <= 1 << 26:
        return softmax((q[:, :, rows] @ k.transpose(-1, -2)) * scale).mean(dim=1)
    total = None
    for h in range(heads):
        probs = softmax((q[:, h, rows] @ k[:, h].transpose(-1, -2)) * scale)
        total = probs if total is None else total + probs
    return total / heads


def nearest_rows(side: int, target: int, device: torch.device) -> torch.Tensor:
    """The flat query indices of a side x side grid that PyTorch's nearest resize to target x
    target picks (the original resizes the query axes of a self-attention map so)."""
    grid = torch.arange(side * side, dtype=torch.float64, device=device).view(1, 1, side, side)
    return F.interpolate(grid, size=(target, target), mode="nearest").view(-1).long()


def grid_side(tokens: int) -> int:
    return math.isqrt(tokens)
