"""Parameter counts of a method on a chosen backbone (``refbench ls methods --params``).

A method factory may answer ``parameter_counts(config) -> (total, trainable)`` itself; a
trainable one is counted from its ``network(config)``. Reference methods have no parameters.
"""

from __future__ import annotations

import gc
from typing import Any

from refbench.config import build_config, parse_overrides
from refbench.specs import MethodSpec, resolve


def parameter_counts(spec: MethodSpec, backbone: str | None = None) -> tuple[int, int] | None:
    factory = resolve(spec.factory)
    config_cls = getattr(factory, "Config", None)
    if config_cls is None:
        return None
    fields = getattr(config_cls, "__dataclass_fields__", {})
    overrides = parse_overrides([f"{spec.name}.backbone={backbone}"]) if backbone and "backbone" in fields else []
    config = build_config(config_cls, spec.name, overrides)
    if hasattr(factory, "parameter_counts"):
        return factory.parameter_counts(config)
    if hasattr(factory, "network"):
        net: Any = factory.network(config)
        total = sum(p.numel() for p in net.parameters())
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        del net
        gc.collect()
        return total, trainable
    return None
