"""Which attention layers GoCA reads, named as the original names them.

The original addresses a UNet layer by its place in ``generic-diffusion-feature``'s feature
gatherer (``install/components/feature_extractor.py``): ``down-level{i}-repeat{j}-vit-block{k}``
for ``down_blocks[i].attentions[j].transformer_blocks[k]``, ``mid-vit-block{k}`` for the mid
block, ``up-level{i}-repeat{j}-vit-block{k}`` for ``up_blocks[i]...``; its attn1 is the block's
``self`` attention and attn2 its ``cross`` attention. refbench keeps those names in the config.

Defaults are the original's lists (``configs/config-model/config_model_15.py`` for SD 1.x,
``config_model_xl.py`` for SDXL), kept where the backbone has the layer: the original stores only
the layers that exist, so on a smaller UNet its lists select the same. Where none of the
self-attention list exists (the ``shapes`` model: three levels, one attention per down level),
refbench takes the same roles on the finest attention level: the first two attentions of the
finest up level and the last attention of the finest down level (SD 1.5's list is exactly that).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from refbench.errors import UserError

_NAME = re.compile(r"(down|up)-level(\d+)-repeat(\d+)-vit-block(\d+)|mid-vit-block(\d+)")
_STAGES = {"down": 0, "mid": 1, "up": 2}


def _sd15_cross() -> tuple[str, ...]:
    names = [f"down-level{i}-repeat{j}-vit-block0" for i in range(3) for j in range(2)]
    names.append("mid-vit-block0")
    names += [f"up-level{i}-repeat{j}-vit-block0" for i in range(1, 4) for j in range(3)]
    return tuple(names)


def _sdxl_cross() -> tuple[str, ...]:
    names = [f"down-level1-repeat{j}-vit-block{k}" for j in range(2) for k in range(2)]
    names += [f"down-level2-repeat{j}-vit-block{k}" for j in range(2) for k in range(10)]
    names += [f"mid-vit-block{k}" for k in range(10)]
    names += [f"up-level0-repeat{j}-vit-block{k}" for j in range(3) for k in range(10)]
    # the original's list stops at up-level1-repeat2-vit-block0 (block1 of it is not listed)
    names += [f"up-level1-repeat{j}-vit-block{k}" for j in range(3) for k in range(2)][:-1]
    return tuple(names)


# The original's choices per family: cross-attention layers aggregated, the layer whose
# cross-attention query gives the reference affinity (``ref_layer``), the self-attention layers
# averaged for the refinement (``space_attn_setting``).
ORIGINAL = {
    "sd1": {"cross": _sd15_cross(), "ref": "up-level2-repeat1-vit-block0",
            "self": ("up-level3-repeat0-vit-block0", "up-level3-repeat1-vit-block0",
                     "down-level0-repeat1-vit-block0")},
    "sdxl": {"cross": _sdxl_cross(), "ref": "up-level1-repeat0-vit-block0",
             "self": ("up-level1-repeat0-vit-block0", "up-level1-repeat0-vit-block1",
                      "up-level1-repeat1-vit-block0", "up-level1-repeat1-vit-block1",
                      "up-level1-repeat2-vit-block0", "down-level1-repeat0-vit-block0",
                      "down-level1-repeat0-vit-block1")},
}


@dataclass(frozen=True)
class Block:
    """One transformer block of the UNet: its name and place, and its attention modules'
    processor keys (``unet.attn_processors``)."""

    name: str
    stage: str  # down, mid, up
    level: int
    repeat: int
    block: int
    self_key: str
    cross_key: str

    @property
    def order(self) -> tuple[int, int, int, int]:
        """Forward order: down levels, the mid block, up levels."""
        return (_STAGES[self.stage], self.level, self.repeat, self.block)


def block_name(processor_key: str) -> tuple[str, str, int, int, int] | None:
    """(name, stage, level, repeat, block) of ``down_blocks.i.attentions.j.transformer_blocks.k``
    (and mid / up); None for a key outside a transformer block."""
    parts = processor_key.split(".")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) >= 6 and parts[2] == "attentions":
        stage = parts[0].split("_")[0]
        level, repeat, block = int(parts[1]), int(parts[3]), int(parts[5])
        return f"{stage}-level{level}-repeat{repeat}-vit-block{block}", stage, level, repeat, block
    if parts[0] == "mid_block" and len(parts) >= 5 and parts[1] == "attentions":
        block = int(parts[4])
        return f"mid-vit-block{block}", "mid", 0, int(parts[2]), block
    return None


def inventory(unet: Any) -> dict[str, Block]:
    """Every transformer block with both a self- and a cross-attention, by name, in forward order."""
    found: dict[str, dict[str, Any]] = {}
    for key in unet.attn_processors:
        named = block_name(key)
        if named is None:
            continue
        name, stage, level, repeat, block = named
        entry = found.setdefault(name, {"stage": stage, "level": level, "repeat": repeat, "block": block})
        entry["self_key" if ".attn1." in key else "cross_key"] = key
    blocks = [Block(name, e["stage"], e["level"], e["repeat"], e["block"], e["self_key"], e["cross_key"])
              for name, e in found.items() if "self_key" in e and "cross_key" in e]
    return {b.name: b for b in sorted(blocks, key=lambda b: b.order)}


def _finest_roles(blocks: dict[str, Block]) -> tuple[str, ...]:
    """SD 1.5's self-attention roles on the finest attention level: the first two attentions of
    the finest up level (block 0), then the last attention of the finest down level."""
    ups = sorted({b.level for b in blocks.values() if b.stage == "up"})
    downs = sorted({b.level for b in blocks.values() if b.stage == "down"})
    chosen = []
    if ups:
        level = ups[-1]
        chosen += [b.name for b in blocks.values() if b.stage == "up" and b.level == level
                   and b.repeat < 2 and b.block == 0]
    if downs:
        level = downs[0]
        last = max(b.repeat for b in blocks.values() if b.stage == "down" and b.level == level)
        chosen += [b.name for b in blocks.values() if b.stage == "down" and b.level == level
                   and b.repeat == last and b.block == 0]
    return tuple(chosen)


@dataclass(frozen=True)
class LayerPlan:
    cross: tuple[Block, ...]  # forward order
    ref: Block
    refine: tuple[Block, ...]  # forward order
    fallback_self: bool  # the self layers are the finest-level roles (none of the list exists)


def _check(names: tuple[str, ...], blocks: dict[str, Block], option: str) -> None:
    for name in names:
        if not _NAME.fullmatch(name):
            raise UserError(f"goca.{option}: {name!r} is not a layer name like "
                            f"'up-level2-repeat1-vit-block0' or 'mid-vit-block0'")
        if name not in blocks:
            raise UserError(f"goca.{option}: this backbone has no layer {name!r}; its layers are "
                            f"{', '.join(blocks)}")


def plan_layers(unet: Any, family: str, cross: tuple[str, ...], ref: str,
                refine: tuple[str, ...]) -> LayerPlan:
    """The layers a config selects on ``unet`` (empty values: the original's lists, see the
    module docstring)."""
    blocks = inventory(unet)
    original = ORIGINAL[family]
    _check(cross, blocks, "cross_layers")
    _check((ref,) if ref else (), blocks, "ref_layer")
    _check(refine, blocks, "self_layers")
    cross_names = cross or tuple(n for n in original["cross"] if n in blocks)
    ref_name = ref or original["ref"]
    if ref_name not in blocks:
        raise UserError(f"goca: this backbone has no layer {ref_name!r} (the original's reference "
                        f"layer): set goca.ref_layer to one of {', '.join(blocks)}")
    fallback = False
    refine_names = refine or tuple(n for n in original["self"] if n in blocks)
    if not refine_names:
        refine_names, fallback = _finest_roles(blocks), True
    if not cross_names or not refine_names:
        raise UserError("goca: no cross- or self-attention layer selected on this backbone: set "
                        f"goca.cross_layers / goca.self_layers from {', '.join(blocks)}")
    ordered = lambda names: tuple(sorted((blocks[n] for n in set(names)), key=lambda b: b.order))
    return LayerPlan(ordered(cross_names), blocks[ref_name], ordered(refine_names), fallback)
