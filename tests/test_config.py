"""--set parsing against typed config dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from refbench.config import build_config, check_targets, parse_overrides
from refbench.errors import UserError


@dataclass(frozen=True)
class Cfg:
    alpha: float = 0.9
    steps: int = 1
    backbone: str = "sd15"
    resolutions: tuple[int, ...] = (16, 32)
    grad: bool = True
    dtype: Literal["fp32", "fp16"] = "fp32"
    checkpoint: str | None = None


def test_values_are_parsed_by_type():
    overrides = parse_overrides(["m.alpha=0.5", "m.steps=3", "*.backbone=tiny",
                                 "m.resolutions=16,32,64", "m.grad=false", "m.dtype=fp16",
                                 "m.checkpoint=none", "other.alpha=0.1"])
    cfg = build_config(Cfg, "m", overrides)
    assert cfg == Cfg(alpha=0.5, steps=3, backbone="tiny", resolutions=(16, 32, 64), grad=False,
                      dtype="fp16", checkpoint=None)
    assert build_config(Cfg, "m", parse_overrides(["m.checkpoint=/x.safetensors"])).checkpoint == "/x.safetensors"


@pytest.mark.parametrize("item, message", [
    ("m.steps=1.5", "integer"), ("m.grad=maybe", "true or false"), ("m.dtype=fp8", "fp32"),
    ("m.alpah=1", "did you mean 'alpha'"), ("m.resolutions=16,x", "integer"),
])
def test_bad_values(item, message):
    with pytest.raises(UserError, match=message):
        build_config(Cfg, "m", parse_overrides([item]))


def test_wildcard_must_match_some_method():
    check_targets(parse_overrides(["*.alpha=1"]), ["m"], {"m": {"alpha"}})
    with pytest.raises(UserError, match="config key"):
        check_targets(parse_overrides(["*.alpah=1"]), ["m"], {"m": {"alpha"}})
