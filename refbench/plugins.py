"""Plugin host: loads built-in and third-party plugins and answers "which X is called NAME?".

There is no process-wide host: whoever starts work (the command line, ``refbench.evaluate``, a
test) builds one and passes it down, so a host a caller builds is the one that method
construction, backbone loading and captions see.

Plugins come from the ``refbench`` entry-point group (the built-ins included) and from the
``REFBENCH_PLUGINS`` environment variable (comma-separated module names, for trying a plugin
without packaging it). A plugin that fails to import is reported and skipped so one broken
package cannot take the others down, unless strict loading is asked for.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from dataclasses import replace
from functools import cached_property
from importlib.metadata import entry_points
from types import ModuleType
from typing import TypeVar

import pluggy

from refbench import hookspecs
from refbench.errors import UserError, did_you_mean
from refbench.specs import BackboneSpec, DatasetSpec, MethodSpec

ENTRY_POINT_GROUP = "refbench"
ENV_PLUGINS = "REFBENCH_PLUGINS"

Spec = TypeVar("Spec", MethodSpec, DatasetSpec, BackboneSpec)


class PluginLoadWarning(UserWarning):
    """A plugin could not be imported; its methods and datasets are unavailable."""


class PluginHost:
    """The loaded plugins and the registries of what they provide."""

    def __init__(self, strict: bool = False, extra_modules: list[ModuleType] | None = None):
        self.strict = strict
        self.pm = pluggy.PluginManager("refbench")
        self.pm.add_hookspecs(hookspecs)
        self.failures: dict[str, str] = {}
        self._load_entry_points()
        self._load_env_modules()
        for module in extra_modules or []:
            self._register(module.__name__, module)

    # -- loading ---------------------------------------------------------------------------
    def _register(self, name: str, module: ModuleType) -> None:
        if self.pm.is_registered(module) or self.pm.get_plugin(name) is not None:
            return
        self.pm.register(module, name=name)

    def _fail(self, name: str, error: BaseException) -> None:
        message = f"plugin {name!r} failed to load: {type(error).__name__}: {error}"
        if self.strict:
            raise UserError(f"{message} (remove or fix the plugin, or drop --strict-plugins)")
        self.failures[name] = message
        warnings.warn(f"{message}; it is skipped (--strict-plugins makes this an error)",
                      PluginLoadWarning, stacklevel=3)

    def _load_entry_points(self) -> None:
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            try:
                module = ep.load()
            except Exception as error:  # any import-time failure of a plugin is isolated
                self._fail(f"{ep.name} ({ep.value})", error)
                continue
            self._register(ep.name, module)

    def _load_env_modules(self) -> None:
        names = [s.strip() for s in os.environ.get(ENV_PLUGINS, "").split(",") if s.strip()]
        if names and os.getcwd() not in sys.path and "" not in sys.path:
            # a module beside the user (REFBENCH_PLUGINS=my_method in its folder) is found, as
            # `python -m` would find it; installed modules still come first
            sys.path.append(os.getcwd())
        for name in names:
            try:
                module = importlib.import_module(name)
            except Exception as error:
                self._fail(f"{name} (from ${ENV_PLUGINS})", error)
                continue
            self._register(name, module)

    # -- registries ------------------------------------------------------------------------
    def _collect(self, hook_name: str) -> dict[str, Spec]:
        found: dict[str, Spec] = {}
        hook = getattr(self.pm.hook, hook_name)
        for impl in reversed(hook.get_hookimpls()):  # registration order
            plugin_name = self.pm.get_name(impl.plugin) or "?"
            try:
                specs = impl.function() or []
            except Exception as error:
                self._fail(plugin_name, error)
                continue
            for spec in specs:
                spec = replace(spec, plugin=plugin_name)
                if spec.name in found:
                    warnings.warn(
                        f"{hook_name}: {spec.name!r} from plugin {plugin_name!r} is ignored; "
                        f"plugin {found[spec.name].plugin!r} already provides it",
                        PluginLoadWarning, stacklevel=2)
                    continue
                found[spec.name] = spec
        return found

    @cached_property
    def methods(self) -> dict[str, MethodSpec]:
        return self._collect("refbench_methods")

    @cached_property
    def datasets(self) -> dict[str, DatasetSpec]:
        return self._collect("refbench_datasets")

    @cached_property
    def backbones(self) -> dict[str, BackboneSpec]:
        return self._collect("refbench_backbones")

    def method(self, name: str) -> MethodSpec:
        return _lookup(self.methods, name, "method")

    def dataset(self, name: str) -> DatasetSpec:
        return _lookup(self.datasets, name, "dataset")

    def backbone(self, name: str) -> BackboneSpec:
        return _lookup(self.backbones, name, "backbone")

    # -- captions --------------------------------------------------------------------------
    def caption_providers(self) -> list[str]:
        """Names of the plugins implementing ``refbench_caption`` (part of a captioning
        method's fingerprint: a different captioner is a different experiment)."""
        return sorted(self.pm.get_name(impl.plugin) or "?"
                      for impl in self.pm.hook.refbench_caption.get_hookimpls())

    def caption(self, expression: str, image: object, sample_id: str) -> str:
        """The first installed caption provider's text for ``expression``."""
        if not self.caption_providers():
            raise UserError("captions are switched on but no installed plugin implements "
                            "refbench_caption: install a caption plugin or set captions=false")
        text = self.pm.hook.refbench_caption(expression=expression, image=image, sample_id=sample_id)
        if not text:
            raise UserError(f"the caption provider returned nothing for sample {sample_id}")
        return str(text)


def _lookup(registry: dict[str, Spec], name: str, what: str) -> Spec:
    try:
        return registry[name]
    except KeyError:
        raise did_you_mean(name, registry, what) from None
