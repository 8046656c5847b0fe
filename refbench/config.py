"""Method configs: typed dataclasses, overridden from the command line with ``--set``.

``--set method.key=value`` targets one method; ``--set '*.key=value'`` every selected method
that has the key. Values are parsed by the field's declared type, so a typo is an error with a
one-line explanation instead of a silently wrong experiment.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args, get_origin

from refbench.errors import UserError, did_you_mean

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True)
class Override:
    target: str  # a method name or "*"
    key: str
    raw: str


def parse_overrides(items: Iterable[str]) -> list[Override]:
    """Parse ``method.key=value`` strings."""
    parsed = []
    for item in items:
        lhs, eq, raw = item.partition("=")
        target, dot, key = lhs.strip().partition(".")
        if not eq or not dot or not target or not key:
            raise UserError(f"bad --set {item!r}: expected METHOD.KEY=VALUE "
                            f"(or '*.KEY=VALUE' for every method), e.g. vpd.timestep=1")
        parsed.append(Override(target, key.strip(), raw.strip()))
    return parsed


def check_targets(overrides: list[Override], methods: Iterable[str],
                  fields_of: Mapping[str, set[str]]) -> None:
    """Every override must name a selected method, and a wildcard key must exist somewhere."""
    methods = list(methods)
    for o in overrides:
        if o.target != "*" and o.target not in methods:
            raise UserError(f"--set {o.target}.{o.key}: {o.target!r} is not among the selected "
                            f"methods ({', '.join(methods)})")
        if o.target == "*" and not any(o.key in fields_of.get(m, set()) for m in methods):
            known = set().union(*fields_of.values()) if fields_of else set()
            raise did_you_mean(o.key, known, "config key (in --set '*.…')")


def build_config(config_cls: type, method: str, overrides: list[Override]) -> Any:
    """Instantiate ``config_cls`` with the overrides that apply to ``method``."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    values: dict[str, Any] = {}
    for o in overrides:
        if o.target == "*":
            if o.key not in fields:
                continue
        elif o.target != method:
            continue
        if o.key not in fields:
            raise did_you_mean(o.key, fields, f"config key for method {method!r}")
        values[o.key] = parse_value(hints[o.key], o.raw, f"{o.target}.{o.key}")
    try:
        config = config_cls(**values)
    except (TypeError, ValueError) as error:
        raise UserError(f"bad config for method {method!r}: {error}") from None
    validate = getattr(config, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as error:
            raise UserError(f"bad config for method {method!r}: {error}") from None
    return config


def parse_value(tp: Any, raw: str, where: str) -> Any:
    """Convert the text ``raw`` to type ``tp`` (int, float, bool, str, Literal, Optional, tuple)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and raw.lower() in {"none", "null", ""}:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_value(arg, raw, where)
            except UserError as error:
                errors.append(str(error))
        raise UserError(errors[0] if errors else f"bad --set {where}={raw!r}")
    if origin is Literal:
        for choice in args:
            if str(choice) == raw:
                return choice
        raise UserError(f"bad --set {where}={raw!r}: choose one of "
                        f"{', '.join(repr(str(a)) for a in args)}")
    if origin in (tuple, list):
        inner = args[0] if args else str
        text = raw.strip().strip("[]()")
        items = [t.strip() for t in text.split(",") if t.strip()]
        parsed = [parse_value(inner, t, where) for t in items]
        return tuple(parsed) if origin is tuple else parsed
    if tp is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise UserError(f"bad --set {where}={raw!r}: expects true or false")
    if tp in (int, float):
        try:
            return tp(raw)
        except ValueError:
            raise UserError(f"bad --set {where}={raw!r}: expects {'an integer' if tp is int else 'a number'}") from None
    if tp is str:
        return raw
    if tp is dict or origin is dict:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise UserError(f"bad --set {where}={raw!r}: expects a JSON object")
        return value
    raise UserError(f"--set {where}: fields of type {tp!r} cannot be set from the command line")


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
