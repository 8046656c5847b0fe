"""The plugin contract: every hook a refbench plugin may implement.

A plugin is any module with functions marked ``@refbench.hookimpl`` and named like the specs
below, exposed through the ``refbench`` entry-point group. The built-in methods and datasets
are plugins of exactly this kind, so nothing here favours them.

Registration hooks return light *specs* (names and import paths), never models: listing what is
installed must stay instant and must not import torch.
"""

from __future__ import annotations

from typing import Any

import pluggy

from refbench.specs import BackboneSpec, DatasetSpec, MethodSpec

hookspec = pluggy.HookspecMarker("refbench")


@hookspec
def refbench_methods() -> list[MethodSpec]:
    """Return the segmentation methods this plugin provides."""


@hookspec
def refbench_datasets() -> list[DatasetSpec]:
    """Return the datasets (readers) this plugin provides."""


@hookspec
def refbench_backbones() -> list[BackboneSpec]:
    """Return the diffusion backbones (presets or loaders) this plugin provides."""


@hookspec(firstresult=True)
def refbench_caption(expression: str, image: Any, sample_id: str) -> str | None:
    """Return a richer text for ``expression`` in ``image`` (an H x W x 3 uint8 array), or None.

    Methods that use captions (e.g. ``diffsegmenter`` with ``captions=true``) put this text in
    their prompt in place of the bare expression, as DiffSegmenter does with BLIP: "horse" may
    become "a black and white horse grazing". The first plugin to answer wins. None is
    installed by default.
    """
