"""Specs: what a plugin registers. Plain data, cheap to import, no heavy dependencies.

A spec names its implementation by an import path (``"package.module:attr"``) so the heavy
module (torch, diffusers) is imported only when that method or dataset is actually used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from refbench.errors import UserError


def resolve(path: str) -> Any:
    """Import ``"module:attr"`` and return the attribute."""
    module_name, _, attr = path.partition(":")
    if not attr:
        raise UserError(f"bad import path {path!r}: expected 'module:attribute'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f"import path {path!r}: module {module_name!r} has no {attr!r}") from None


@dataclass(frozen=True)
class MethodSpec:
    """A segmentation method.

    ``factory`` points at a class (or callable) taking one argument, the method's config, and
    exposing ``Config`` (a dataclass of its options with defaults). The object it returns must
    satisfy ``refbench.method.Method``.
    """

    name: str
    factory: str
    summary: str = ""
    trainable: bool = False
    source: str = ""  # the work it comes from: title, authors, venue or address
    plugin: str = field(default="", compare=False)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset reader.

    ``factory(root: Path, **options)`` returns a ``refbench.data.Dataset``. ``default_root`` is
    the folder under ``./data`` used when ``--data-root`` is not given. ``generator``, when set,
    is an import path of ``make(root: Path)`` that creates the data set in place (synthetic
    data), so a first run needs no download.
    """

    name: str
    factory: str
    summary: str = ""
    default_root: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    generator: str | None = None
    plugin: str = field(default="", compare=False)


@dataclass(frozen=True)
class BackboneSpec:
    """A diffusion backbone: ``factory(**options)`` returns the loaded components.

    ``recommended`` maps a method name to config values that suit this backbone (for example
    DiffSegmenter's attention weights for a model with other resolutions): a method configured
    with ``backbone=<this name>`` starts from them, and what the user sets wins."""

    name: str
    factory: str
    summary: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    plugin: str = field(default="", compare=False)
    recommended: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    family: str = "sd1"  # refbench.diffusion.families: sd1, sd2, sdxl, sd3 or flux
