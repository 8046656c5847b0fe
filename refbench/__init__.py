"""refbench: one harness, one set of metrics, for segmenting images from text with diffusion models.

The Python API is ``refbench.evaluate(methods, dataset, split, ...) -> Results``; plugins use
``refbench.hookimpl`` and the specs below. ``evaluate`` is imported on first use, so importing
refbench (as ``refbench ls`` does) stays instant.
"""

from __future__ import annotations

from typing import Any

import pluggy

from refbench.specs import BackboneSpec, DatasetSpec, MethodSpec

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("refbench")

__all__ = ["BackboneSpec", "Calibration", "DatasetSpec", "MethodSpec", "PluginHost", "Results",
           "StatsOptions", "Store", "__version__", "evaluate", "hookimpl"]

_LAZY = {
    "evaluate": ("refbench.core", "evaluate"),
    "Results": ("refbench.results.summary", "Results"),
    "Calibration": ("refbench.results.calibration", "Calibration"),
    "StatsOptions": ("refbench.results.stats", "StatsOptions"),
    "Store": ("refbench.store", "Store"),
    "PluginHost": ("refbench.plugins", "PluginHost"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'refbench' has no attribute {name!r}")
