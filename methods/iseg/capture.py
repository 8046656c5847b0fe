"""The attention maps iSeg reads, captured as its original's hooks capture them.

The original (``base/stable_difusion.py``) puts its own processor (``util/attn.py``,
``AttnCLusterProcessor``) on a hard-coded list of layers (``ovs/arguments.py``,
``attention_layers_to_use``): on those, attention is computed explicitly, batch and heads merged,
scores = baddbmm(q, k^T) * scale, probabilities = their softmax in the model's dtype, output =
probabilities @ v, and a forward hook keeps the scores, which ``get_attention_map`` softmaxes
again (the same probabilities). Every other layer keeps diffusers' processor. ``capture``
installs one processor per layer that does exactly that on the layers a plan names and hands
every other call to the layer's own processor unchanged, then restores the processors.

Which layers and heads (``Plan``): the original's list with its hard-coded head indices
(``listed``: ``wsss/iSeg.py``, ``self.index``, for VOC), the same layers with every head
(``layers``: its ``att_mean=True``, for Context and COCO), or, on a UNet that lacks SD 2.1's
layers or head counts, every cross-attention layer at the weighted resolutions and every
self-attention layer at the finest grid, all heads (``all``, refbench's generalisation). The
head indices select from the heads of a resolution's layers concatenated in the order the
forward calls them, as the original's dict of hook outputs concatenates them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

# ovs/arguments.py, attention_layers_to_use, as diffusers names its attention modules
LISTED = (
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
    "down_blocks.1.attentions.1.transformer_blocks.0.attn2",
    "down_blocks.2.attentions.0.transformer_blocks.0.attn2",
    "down_blocks.2.attentions.1.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.2.transformer_blocks.0.attn2",
    "up_blocks.2.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.2.attentions.1.transformer_blocks.0.attn2",
    "up_blocks.3.attentions.1.transformer_blocks.0.attn1",
    "up_blocks.3.attentions.2.transformer_blocks.0.attn2",
    "mid_block.attentions.0.transformer_blocks.0.attn1",
    "mid_block.attentions.0.transformer_blocks.0.attn2",
)
LISTED_SELF = "up_blocks.3.attentions.1.transformer_blocks.0.attn1"
SELF_HEADS = (1, 2)  # wsss/iSeg.py: self_attention_maps[64][:, [1, 2]]
# wsss/iSeg.py, self.index: heads of the concatenated 32x32 and 16x16 cross-attention of SD 2.1
# at 512 (latent 64), by level: latent / 2 and latent / 4
LISTED_HEADS = {
    2: (22, 5, 21, 13, 8, 27, 28, 6, 25),
    4: (76, 1, 43, 17, 81, 6, 44, 27, 2, 8, 22, 20, 60, 78, 12, 83, 94, 47, 88, 96, 3, 33, 46, 52,
        77, 93, 51, 58, 0, 13, 14, 19, 34, 41, 59, 87, 16, 24, 28, 30, 32),
}


@dataclass(frozen=True)
class Plan:
    """What one forward captures. ``weights``: resolution -> weight of its cross-attention;
    ``grid``: the self-attention's side (the latent's for SD 1.x/2.x)."""

    heads: str  # listed | layers | all
    weights: Mapping[int, float]
    grid: int
    latent: int

    def explicit(self, name: str, is_cross: bool, resolution: int) -> bool:
        """Whether the layer is computed by iSeg's processor (the rest keep their own)."""
        if self.heads != "all":
            return name in LISTED
        return (resolution in self.weights) if is_cross else resolution == self.grid

    def keeps_cross(self, resolution: int) -> bool:
        return resolution in self.weights

    def keeps_self(self, name: str, resolution: int) -> bool:
        return name == LISTED_SELF if self.heads != "all" else resolution == self.grid

    def cross_heads(self, resolution: int) -> tuple[int, ...] | None:
        """Head indices over the concatenated heads of ``resolution`` (None: all)."""
        if self.heads != "listed" or self.latent % resolution:
            return None
        return LISTED_HEADS.get(self.latent // resolution)

    def self_heads(self) -> tuple[int, ...] | None:
        return None if self.heads == "all" else SELF_HEADS


@dataclass
class Record:
    """Per resolution, the cross-attention probabilities (1, heads, N, T) of each kept layer in
    call order; the kept self-attention, as the kept heads (listed, layers) or a float32 running
    sum over heads and layers with its head count (all)."""

    cross: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    self_heads: list[torch.Tensor] = field(default_factory=list)
    self_sum: torch.Tensor | None = None
    self_count: int = 0


class ISegProcessor:
    """The original's processor on the layers a plan names; the layer's own elsewhere."""

    def __init__(self, name: str, own: Any, plan: Plan, record: Record):
        self.name, self.own, self.plan, self.record = name, own, plan, record

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        is_cross = encoder_hidden_states is not None
        resolution = math.isqrt(hidden_states.shape[1]) if hidden_states.ndim == 3 else hidden_states.shape[-1]
        if not self.plan.explicit(self.name, is_cross, resolution):
            return self.own(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                            attention_mask=attention_mask, **kwargs)
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise NotImplementedError(f"iSeg's attention processor does not handle {self.name} "
                                      f"(spatial or group norm, or 4-D input)")
        batch, n_query, _ = hidden_states.shape
        context = encoder_hidden_states if is_cross else hidden_states
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        dtype = query.dtype
        q, k = (query.float(), key.float()) if attn.upcast_attention else (query, key)
        if attention_mask is None:
            base, beta = torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype, device=q.device), 0
        else:
            base, beta = attention_mask, 1
        scores = torch.baddbmm(base, q, k.transpose(-1, -2), beta=beta, alpha=attn.scale)
        if attn.upcast_softmax:
            scores = scores.float()
        probs = scores.softmax(dim=-1)  # what the original's hook recomputes from the scores
        out = torch.bmm(probs.to(dtype), value)
        self._keep(probs.view(batch, attn.heads, n_query, -1), is_cross, resolution)
        out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(out)))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor

    def _keep(self, probs: torch.Tensor, is_cross: bool, resolution: int) -> None:
        record, plan = self.record, self.plan
        if is_cross:
            if plan.keeps_cross(resolution):
                record.cross.setdefault(resolution, []).append(probs)
        elif plan.keeps_self(self.name, resolution):
            heads = plan.self_heads()
            if heads is not None:
                record.self_heads.append(probs[:, list(heads)])
            else:
                summed = probs.float().sum(dim=1)
                record.self_sum = summed if record.self_sum is None else record.self_sum + summed
                record.self_count += probs.shape[1]


@contextmanager
def capture(unet: Any, plan: Plan) -> Iterator[Record]:
    """Record what ``plan`` asks for during the forwards inside the block; processors restored."""
    original = unet.attn_processors
    record = Record()
    try:
        unet.set_attn_processor({name: ISegProcessor(name.removesuffix(".processor"), own, plan, record)
                                 for name, own in original.items()})
        yield record
    finally:
        unet.set_attn_processor(original)


def attention_heads(unet: Any) -> dict[str, int]:
    """Heads of every attention module of a UNet, by module name."""
    return {name.removesuffix(".processor"): int(unet.get_submodule(name.removesuffix(".processor")).heads)
            for name in unet.attn_processors}


def listed_fits(unet: Any, all_heads: bool) -> str:
    """'' when the UNet has the layers the original lists (SD 2.1's layout: four levels, two
    transformers per down level, three per up level) with heads enough for its indices (SD
    2.1's 5, 10, 20 per level; ``all_heads``: only the self-attention's heads 1 and 2), else
    why not."""
    heads = attention_heads(unet)
    missing = [name for name in LISTED if name not in heads]
    if missing or len(unet.down_blocks) != 4:
        return f"it has no layer {missing[0]}" if missing else "it has not four levels"
    if heads[LISTED_SELF] <= max(SELF_HEADS):
        return f"{LISTED_SELF} has {heads[LISTED_SELF]} heads, not {max(SELF_HEADS) + 1} or more"
    if all_heads:
        return ""
    for level, blocks in ((2, ("down_blocks.1", "up_blocks.2")), (4, ("down_blocks.2", "up_blocks.1"))):
        total = sum(heads[name] for name in LISTED if name.endswith("attn2") and name.startswith(blocks))
        if total <= max(LISTED_HEADS[level]):
            return (f"its latent/{level} cross-attention layers have {total} heads together, "
                    f"and the original's indices go to {max(LISTED_HEADS[level])}")
    return ""
