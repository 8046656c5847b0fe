"""Method configs: typed dataclasses, overridden with ``--set``, a spec's ``set:`` or Python values.

``--set method.key=value`` targets one method; ``--set '*.key=value'`` every selected method
that has the key. Text (the command line) is parsed by the field's declared type; Python and YAML
values are checked against it; so a typo is an error with a one-line explanation instead of a
silently wrong experiment, raised before any data set is opened or model loaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from refbench.errors import UserError, did_you_mean

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True)
class Override:
    """One config value for one method (or "*": every selected method having ``key``).

    ``value`` is text from the command line (parsed by the field's type) or a Python/YAML value
    (checked against it)."""

    target: str  # a method name or "*"
    key: str
    value: Any

    @property
    def text(self) -> str:
        """The value as ``--set`` would spell it (labels, messages)."""
        return as_text(self.value)


def as_text(value: Any) -> str:
    """true -> 'true', 0.5 -> '0.5', [1, 2] -> '1,2' (tuple fields), {a: 1} -> '{"a": 1}'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(as_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    if value is None:
        return "none"
    return str(value)


def parse_overrides(items: Iterable[str]) -> list[Override]:
    """Parse ``method.key=value`` strings."""
    parsed = []
    for item in items:
        lhs, eq, raw = item.partition("=")
        target, dot, key = lhs.strip().partition(".")
        if not eq or not dot or not target or not key:
            raise UserError(f"bad --set {item!r}: expected METHOD.KEY=VALUE "
                            f"(or '*.KEY=VALUE' for every method), e.g. vpd.timestep=1")
        parsed.append(Override(target.strip(), key.strip(), raw.strip()))
    return parsed


def overrides_from(values: Mapping[str, Any] | Iterable[str] | None) -> list[Override]:
    """Overrides from Python: ``{"gt_box.grow": 0.1}``, ``{"gt_box": {"grow": 0.1}}``,
    ``{"*.backbone": "tiny"}``, or ``--set``-style strings."""
    if values is None:
        return []
    if isinstance(values, str):
        return parse_overrides([values])
    if not isinstance(values, Mapping):
        items = list(values)
        if not all(isinstance(i, str) for i in items):
            raise UserError("set= takes a mapping like {'gt_box.grow': 0.1} or strings like "
                            "'gt_box.grow=0.1'")
        return parse_overrides(items)
    out = []
    for name, value in values.items():
        target, dot, key = str(name).partition(".")
        if dot and target and key:
            out.append(Override(target, key, value))
        elif isinstance(value, Mapping):
            out += [Override(str(name), str(k), v) for k, v in value.items()]
        else:
            raise UserError(f"set={{{name!r}: ...}}: name a method and a key, e.g. "
                            f"{{'gt_box.grow': 0.1}} or {{'gt_box': {{'grow': 0.1}}}}")
    return out


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
        values[o.key] = coerce(hints[o.key], o.value, f"{o.target}.{o.key}")
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


def coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` as type ``tp``: text is parsed (``parse_value``), anything else checked."""
    if isinstance(value, str):
        return parse_value(tp, value, where)
    return check_value(tp, value, where)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_value(tp: Any, value: Any, where: str) -> Any:
    """A Python value checked against the field type ``tp`` (lists become tuples where the
    field is a tuple; an int is a float where a float is wanted)."""
    origin, args = get_origin(tp), get_args(tp)
    bad = UserError(f"bad value for {where}: expects {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise bad
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(arg, value, where)
            except UserError:
                continue
        raise bad
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise UserError(f"bad value for {where}: choose one of {', '.join(repr(a) for a in args)}, "
                        f"got {value!r}")
    if origin in (tuple, list):
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        inner = args[0] if args else Any
        checked = [coerce(inner, v, where) for v in items]
        return tuple(checked) if origin is tuple else checked
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise bad
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise bad
    if tp is Path:
        if isinstance(value, Path):
            return value
        raise bad
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad


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
            number = tp(raw)
        except ValueError:
            number = None
        if number is None or (tp is float and not math.isfinite(number)):
            raise UserError(f"bad --set {where}={raw!r}: expects "
                            f"{'an integer' if tp is int else 'a finite number'}")
        return number
    if tp is str or tp is Any:
        return raw
    if tp is Path:
        return Path(raw)
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
