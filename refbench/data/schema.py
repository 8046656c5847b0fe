"""Validating what the readers read, record by record.

A data file can be wrong in ways that do not crash anything: a duplicated ``sent_id`` makes one
stored row count nine times, a polygon outside the image makes an empty ground truth that an
empty prediction matches perfectly. So every reader looks at each record it uses through
``Fields``, which checks types, required keys and ranges, and reports the first bad field as a
``Problem``: the file, the record, the field, what is wrong with it and what to do.

A ``Validator`` decides what a problem does: raise it at once (``run``, the default: one line,
exit status 2) or collect it and go on (``refbench data check``, which lists every problem of a
data root in one pass).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refbench.errors import UserError


@dataclass(frozen=True)
class Problem:
    """One bad record: where it is, which field, what is wrong, and how to fix it."""

    file: Path
    record: str
    field: str
    what: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.record}, {self.field}" if self.field else self.record
        return f"{self.file}: {where} {self.what}; {self.fix}"


class InvalidRecord(UserError):
    """A ``Problem`` raised: the reader stops at the first bad record."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


@dataclass
class Validator:
    """What a problem does: raise (``collect=False``) or join the list (``collect=True``, up to
    ``keep`` problems; the rest are only counted)."""

    collect: bool = False
    keep: int = 200
    problems: list[Problem] = field(default_factory=list)
    count: int = 0

    def report(self, problem: Problem) -> None:
        if not self.collect:
            raise InvalidRecord(problem)
        self.count += 1
        if len(self.problems) < self.keep:
            self.problems.append(problem)

    def unique(self, seen: dict[Hashable, str], key: Hashable, file: Path, record: str,
               field_name: str, fix: str) -> bool:
        """Report ``key`` if an earlier record (named in ``seen``) had it; else remember it."""
        if key in seen:
            self.report(Problem(file, record, field_name, f"{shown(key)} is used again (first by "
                                f"{seen[key]})", fix))
            return False
        seen[key] = record
        return True


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def shown(value: Any, width: int = 40) -> str:
    """``repr(value)``, cut to ``width`` characters: a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


class Fields:
    """Typed access to one record's fields; each bad field is reported once, then ``ok`` is
    False and the getters return None, so a collecting check can skip the record."""

    def __init__(self, validator: Validator, file: Path, record: str, data: Any, fix: str):
        self.validator, self.file, self.record, self.fix = validator, file, record, fix
        self.ok = True
        self.data: Mapping[str, Any] = {}
        if isinstance(data, Mapping):
            self.data = data
        else:
            self.problem("", f"is a {_kind(data)}, not a record with named fields")

    def problem(self, field_name: str, what: str, fix: str | None = None) -> None:
        if self.ok:  # the first problem of a record: the rest usually follow from it
            self.ok = False
            self.validator.report(Problem(self.file, self.record, field_name, what, fix or self.fix))

    def _get(self, key: str, required: bool, default: Any) -> tuple[bool, Any]:
        if not self.ok:
            return False, None
        if key not in self.data or self.data[key] is None:
            if required:
                self.problem(key, "is missing")
                return False, None
            return False, default
        return True, self.data[key]

    def integer(self, key: str, required: bool = True, default: int | None = None,
                minimum: int | None = None) -> int | None:
        present, value = self._get(key, required, default)
        if not present:
            return value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"is {shown(value)} ({_kind(value)}), not a whole number")
            return None
        if minimum is not None and value < minimum:
            self.problem(key, f"is {value}, below {minimum}")
            return None
        return value

    def identifier(self, key: str) -> int | str | None:
        """An id: a whole number (REFER's) or non-empty text (layouts that compose their ids)."""
        present, value = self._get(key, True, None)
        if present and isinstance(value, str):
            if value.strip():
                return value
            self.problem(key, "is empty text, not an id")
            return None
        return self.integer(key) if present else None

    def text(self, key: str, required: bool = True, default: str | None = None,
             nonempty: bool = False) -> str | None:
        present, value = self._get(key, required, default)
        if not present:
            return value
        if not isinstance(value, str):
            self.problem(key, f"is {shown(value)} ({_kind(value)}), not text")
            return None
        if nonempty and not value.strip():
            self.problem(key, "is empty" if not value else f"is only whitespace ({shown(value)})")
            return None
        return value

    def listing(self, key: str, required: bool = True, nonempty: bool = False) -> list[Any] | None:
        present, value = self._get(key, required, [])
        if not present:
            return value
        if not isinstance(value, (list, tuple)):
            self.problem(key, f"is a {_kind(value)}, not a list")
            return None
        if nonempty and not value:
            self.problem(key, "is an empty list")
            return None
        return list(value)


def top_level_list(validator: Validator, file: Path, data: Any, key: str, fix: str) -> list[Any]:
    """``data[key]`` of a top-level JSON object, which must be a list (empty on a problem)."""
    value = data.get(key) if isinstance(data, Mapping) else None
    if isinstance(value, list):
        return value
    what = "is missing" if value is None else f"is a {_kind(value)}, not a list"
    validator.report(Problem(file, "the top level", key, what, fix))
    return []
