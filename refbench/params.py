"""Parameter counts of a method on a chosen backbone (``refbench ls methods --params``).

A method factory may answer ``parameter_counts(config, host) -> (total, trainable)`` itself; a
trainable one is counted from its ``network(config, host)``. Reference methods have no parameters.
"""

from __future__ import annotations

import gc
from typing import Any

from refbench.candidates import resolve_config
from refbench.config import Override
from refbench.plugins import PluginHost
from refbench.specs import MethodSpec, resolve


def parameter_counts(host: PluginHost, spec: MethodSpec,
                     backbone: str | None = None) -> tuple[int, int] | None:
    factory = resolve(spec.factory)
    config_cls = getattr(factory, "Config", None)
    if config_cls is None:
        return None
    fields = getattr(config_cls, "__dataclass_fields__", {})
    overrides = [Override(spec.name, "backbone", backbone)] if backbone and "backbone" in fields else []
    config = resolve_config(spec, overrides, host)
    if hasattr(factory, "parameter_counts"):
        return factory.parameter_counts(config, host)
    if hasattr(factory, "network"):
        net: Any = factory.network(config, host)
        total = sum(p.numel() for p in net.parameters())
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        del net
        gc.collect()
        return total, trainable
    return None
