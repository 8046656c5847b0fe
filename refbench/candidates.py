"""What is evaluated: each method resolved to a typed, validated config before anything runs.

A candidate is a registered method by name with its config (defaults plus the overrides aimed at
it), or an object that implements the method contract (``predict(batch)``), registered nowhere.
Resolving imports a method's module to read its ``Config`` but builds nothing: no model is
loaded and no data set is opened until every name, key and value has been checked.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from refbench import provenance
from refbench.config import Override, build_config, check_targets, config_dict
from refbench.errors import UserError
from refbench.method import Method, weights_fingerprint
from refbench.plugins import PluginHost
from refbench.specs import MethodSpec, resolve

IN_MEMORY = "(in memory)"


@dataclass(eq=False)
class Candidate:
    """One method configuration, ready to build."""

    label: str  # unique within an evaluation: the row's name in tables and results
    name: str  # the registered method name (or the object's name)
    plugin: str
    config: Any | None  # the typed config dataclass, or None for a method without one
    spec: MethodSpec | None = None  # None for an in-memory object
    instance: Any | None = None  # the in-memory object itself

    @property
    def config_dict(self) -> dict[str, Any]:
        return config_dict(self.config) if dataclasses.is_dataclass(self.config) else {}

    @property
    def fingerprint_name(self) -> str:
        """What the method fingerprint hashes as the method's name: an in-memory object is
        told apart from a registered method of the same name by its class."""
        if self.instance is None:
            return self.name
        cls = type(self.instance)
        return f"{self.name}@{cls.__module__}.{cls.__qualname__}"

    def build(self, host: PluginHost) -> Method:
        """The method object (an in-memory one is used as it is)."""
        if self.instance is not None:
            return self.instance
        assert self.spec is not None
        method = instantiate(resolve(self.spec.factory), self.config, host)
        if not callable(getattr(method, "predict", None)):
            raise UserError(f"method {self.name!r} from plugin {self.plugin!r} has no predict(batch)")
        return method

    def fingerprint(self, method: Method) -> str:
        return provenance.method_fingerprint(self.fingerprint_name, self.config_dict,
                                             weights_fingerprint(method))


def instantiate(factory: Any, config: Any, host: PluginHost) -> Any:
    """``factory(config)``, handing the plugin host to factories that take one (``host=``), so
    a method loads backbones and captions through the caller's plugins."""
    try:
        takes_host = "host" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_host = False
    return factory(config, host=host) if takes_host else factory(config)


def config_class(spec: MethodSpec) -> type | None:
    """The method's ``Config`` dataclass (importing its module, building nothing)."""
    try:
        factory = resolve(spec.factory)
    except ModuleNotFoundError as error:
        raise UserError(f"method {spec.name!r} needs the package {error.name!r}, which is not "
                        f"installed: pip install it (or the plugin's extras)") from None
    return getattr(factory, "Config", None)


def field_names(spec: MethodSpec) -> set[str]:
    config_cls = config_class(spec)
    return {f.name for f in dataclasses.fields(config_cls)} if config_cls else set()


def resolve_config(spec: MethodSpec, overrides: Sequence[Override],
                   host: PluginHost | None = None) -> Any | None:
    """The method's config (defaults, then what its backbone recommends for it, then the
    overrides aimed at it), validated; None for a method without a Config."""
    config_cls = config_class(spec)
    if config_cls is None:
        if any(o.target == spec.name for o in overrides):
            raise UserError(f"method {spec.name!r} takes no config keys")
        return None
    config = build_config(config_cls, spec.name, list(overrides))
    backbone = getattr(config, "backbone", None)
    if host is None or not isinstance(backbone, str) or backbone not in host.backbones:
        return config
    recommended = host.backbone(backbone).recommended.get(spec.name, {})
    if not recommended:
        return config
    base = [Override(spec.name, key, value) for key, value in recommended.items()]
    return build_config(config_cls, spec.name, [*base, *overrides])


def candidate(host: PluginHost, name: str, overrides: Sequence[Override] = (),
              label: str | None = None) -> Candidate:
    """A registered method with its config, checked for evaluation: a factory may refuse a
    config it cannot evaluate (``check_config``, e.g. a trainable method without a checkpoint)
    before anything is built."""
    spec = host.method(name)
    config = resolve_config(spec, overrides, host)
    check = getattr(resolve(spec.factory), "check_config", None)
    if callable(check) and config is not None:
        check(config)
    return Candidate(label or name, name, spec.plugin, config, spec=spec)


def from_object(method: Any) -> Candidate:
    """An object implementing the method contract; its label is its ``name`` attribute or its
    class name, its config its ``config`` attribute (if a dataclass)."""
    if not callable(getattr(method, "predict", None)):
        raise UserError(f"{type(method).__name__} is not a method: it has no predict(batch) "
                        f"(see refbench.method.Method)")
    name = str(getattr(method, "name", "") or type(method).__name__)
    config = getattr(method, "config", None)
    return Candidate(name, name, IN_MEMORY, config if dataclasses.is_dataclass(config) else None,
                     instance=method)


def resolve_methods(host: PluginHost, methods: Sequence[str | Any],
                    overrides: Sequence[Override] = ()) -> list[Candidate]:
    """Names and objects to candidates, every override checked against them."""
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if not methods:
        raise UserError("no methods given: name one or more (see refbench ls methods)")
    names = [m if isinstance(m, str) else from_object(m).name for m in methods]
    objects = {n for m, n in zip(methods, names) if not isinstance(m, str)}
    for o in overrides:
        if o.target in objects:
            raise UserError(f"set {o.target}.{o.key}: {o.target!r} is an object; give it its "
                            f"config when you build it")
    fields = {n: field_names(host.method(n)) for n in names if n not in objects}
    check_targets(list(overrides), names, fields)
    out = [candidate(host, m, overrides) if isinstance(m, str) else from_object(m) for m in methods]
    check_labels(out)
    return out


def check_labels(candidates: Sequence[Candidate]) -> None:
    labels = [c.label for c in candidates]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UserError(f"method {repeated[0]!r} is given twice: each method once (to compare "
                        f"configs of one method, use a grid or a spec with labels)")
