"""refbench: one harness, one set of metrics, for segmenting images from text with diffusion models."""

from __future__ import annotations

import pluggy

from refbench.specs import BackboneSpec, DatasetSpec, MethodSpec

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("refbench")

__all__ = ["BackboneSpec", "DatasetSpec", "MethodSpec", "__version__", "hookimpl"]
