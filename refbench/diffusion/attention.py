"""Attention capture through diffusers attention processors.

``capture_attention(unet, ...)`` installs a processor on every attention layer for the duration
of a forward and restores the original processors on exit (no forward method is patched). The
processor records, for the resolutions asked for, the cross-attention probabilities averaged
over heads, accumulated as a running sum per resolution (a few MB, instead of every layer's
maps), and keeps the queries and keys of self-attention at one resolution for refinement.
Layers not captured run through PyTorch's scaled_dot_product_attention.

Self-attention refinement (DiffSegmenter): the layer- and head-averaged self-attention S, a
HW x HW matrix (4096 x 4096 for SD 1.5), times a map c. Since S @ c = mean over layers and heads
of softmax(Q K^T / sqrt(d)) @ c, it is attention with c as the value, computed by
scaled_dot_product_attention without ever materialising S.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class AttentionRecord:
    """What one forward left behind."""

    cross_resolutions: frozenset[int] | None
    self_resolution: int | None
    conditional: slice | None = None
    keep_graph: bool = False
    cross_sums: dict[int, torch.Tensor] = field(default_factory=dict)
    cross_counts: dict[int, int] = field(default_factory=dict)
    self_qk: list[tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=list)

    def _keep(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.conditional is not None:
            tensor = tensor[self.conditional]
        return tensor if self.keep_graph else tensor.detach()

    def add_cross(self, resolution: int, probs: torch.Tensor) -> None:
        """``probs`` (B, heads, N, T) of one layer: averaged over heads and summed in."""
        self.add_cross_mean(resolution, probs.mean(dim=1))

    def add_cross_mean(self, resolution: int, mean: torch.Tensor) -> None:
        """One layer's head-averaged probabilities (B, N, T), summed in."""
        mean = self._keep(mean)
        if resolution in self.cross_sums:
            self.cross_sums[resolution] = self.cross_sums[resolution] + mean
            self.cross_counts[resolution] += 1
        else:
            self.cross_sums[resolution] = mean
            self.cross_counts[resolution] = 1

    def add_self(self, query: torch.Tensor, key: torch.Tensor, scale: float) -> None:
        """Queries and keys of one self-attention layer, kept for ``refine``."""
        self.self_qk.append((self._keep(query), self._keep(key), scale))

    def resolutions(self) -> list[int]:
        return sorted(self.cross_sums)

    def cross_maps(self, resolution: int) -> torch.Tensor:
        """Layer-averaged cross-attention at ``resolution``: (B, T, res, res)."""
        mean = self.cross_sums[resolution] / self.cross_counts[resolution]
        b, n, t = mean.shape
        return mean.transpose(1, 2).reshape(b, t, resolution, resolution)

    def refine(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over saved layers and heads of softmax(Q K^T * scale) @ values, for values of
        shape (B, N, k). Runs through SDPA with the values padded to the head width, which
        keeps PyTorch on its fused kernel (no N x N matrix)."""
        if not self.self_qk:
            raise RuntimeError("no self-attention was captured: set self_resolution")
        total = None
        for q, k, scale in self.self_qk:
            b, heads, n, d = q.shape
            out = []
            for start in range(0, values.shape[-1], d):
                chunk = values[..., start:start + d].to(q.dtype)
                width = chunk.shape[-1]
                padded = F.pad(chunk, (0, d - width))[:, None].expand(b, heads, n, d)
                attended = F.scaled_dot_product_attention(q, k, padded, scale=scale)
                out.append(attended[..., :width].mean(dim=1))
            layer = torch.cat(out, dim=-1)
            total = layer if total is None else total + layer
        return total / len(self.self_qk)

    def refine_naive(self, values: torch.Tensor) -> torch.Tensor:
        """The same as ``refine`` through the explicit averaged matrix (tests, benchmarks)."""
        s = None
        for q, k, scale in self.self_qk:
            probs = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1).mean(dim=1)
            s = probs if s is None else s + probs
        s = s / len(self.self_qk)
        return s @ values.to(s.dtype)


class CaptureProcessor:
    """An attention processor that records maps where asked and uses SDPA elsewhere."""

    def __init__(self, record: AttentionRecord, keep: bool = True):
        self.record = record
        self.keep = keep  # False: this layer's block is not recorded

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
        batch, n_query, _ = hidden_states.shape
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
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        resolution = math.isqrt(n_query)
        record = self.record
        wanted_cross = self.keep and is_cross and (record.cross_resolutions is None
                                                   or resolution in record.cross_resolutions)
        if wanted_cross:
            scores = (query @ key.transpose(-1, -2)) * attn.scale
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = scores.float().softmax(dim=-1)
            record.add_cross(resolution, probs)
            out = probs.to(value.dtype) @ value
        else:
            if self.keep and not is_cross and resolution == record.self_resolution:
                record.add_self(query, key, attn.scale)
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                 scale=attn.scale)

        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class _DiscardingRecord(AttentionRecord):
    """Where processors that stay installed write between recordings: the same decisions as a
    record (so a recomputed forward takes the path the recorded one took), nothing kept."""

    def add_cross_mean(self, resolution: int, mean: torch.Tensor) -> None:
        pass

    def add_self(self, query: torch.Tensor, key: torch.Tensor, scale: float) -> None:
        pass


class AttentionCapture:
    """Capture processors installed on a UNet for good, recording only inside ``recording()``.

    For gradient checkpointing: backward recomputes the UNet's forward after the forward's
    context has exited, and the recomputation must compute attention exactly as the forward did
    (explicit probabilities where maps are kept), or the saved tensors do not match.
    """

    def __init__(self, unet: Any, cross_resolutions: Iterable[int] | None = None,
                 self_resolution: int | None = None, conditional: slice | None = None,
                 blocks: Iterable[str] | None = None):
        self._layout = {"cross_resolutions": frozenset(cross_resolutions)
                        if cross_resolutions is not None else None,
                        "self_resolution": self_resolution, "conditional": conditional}
        parts = None if blocks is None else set(blocks)
        idle = _DiscardingRecord(**self._layout)
        self._processors = {name: CaptureProcessor(idle, parts is None or name.split(".")[0] in parts)
                            for name in unet.attn_processors}
        unet.set_attn_processor(dict(self._processors))

    @contextmanager
    def recording(self, keep_graph: bool = False) -> Iterator[AttentionRecord]:
        record = AttentionRecord(**self._layout, keep_graph=keep_graph)
        for processor in self._processors.values():
            processor.record = record
        try:
            yield record
        finally:
            idle = _DiscardingRecord(**self._layout)
            for processor in self._processors.values():
                processor.record = idle


@contextmanager
def capture_attention(unet: Any, cross_resolutions: Iterable[int] | None = None,
                      self_resolution: int | None = None, conditional: slice | None = None,
                      keep_graph: bool = False,
                      blocks: Iterable[str] | None = None) -> Iterator[AttentionRecord]:
    """Record attention during the forwards run inside the block; processors restored after.

    ``conditional`` selects the batch rows to record (for a classifier-free-guidance batch laid
    out as [unconditional; conditional], pass ``slice(B // 2, None)``). ``blocks`` limits the
    recording to layers of those parts of the UNet ("down_blocks", "mid_block", "up_blocks";
    default all).
    """
    original = unet.attn_processors
    try:
        capture = AttentionCapture(unet, cross_resolutions, self_resolution, conditional, blocks)
        with capture.recording(keep_graph) as record:
            yield record
    finally:
        unet.set_attn_processor(original)
