"""Small file helpers shared by the readers."""

from __future__ import annotations

import gc
import hashlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from refbench.errors import UserError

try:  # a parser several times faster than json's on the 100 MB instances files of COCO
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; json is the fallback
    orjson = None  # type: ignore[assignment]

LARGE_FILE = 20 * 1024 * 1024  # reading a file this big takes seconds: say so on stderr
# orjson reads an integer past 64 bits as a float (json keeps it exact): files that may hold
# one are read by json, so no value differs between the parsers
_LONG_RUN = b"0" * 20
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)


_BEFORE_NUMBER = frozenset(b"[,: \t\r\n-")  # what a JSON number follows (a string's digits
# mostly follow other characters: an RLE's counts; when not, json reads the file, no harm)


def _has_long_integer(data: bytes) -> bool:
    """Whether ``data`` may hold an integer of 20 digits or more: a run of 20 digits where a
    number may start (a regular expression takes seconds on 100 MB; ``bytes.find`` on the
    digits mapped to one byte, a fraction of one)."""
    masked = data.translate(_DIGITS_AS_ZERO)
    at = masked.find(_LONG_RUN)
    while at != -1:
        if at == 0 or data[at - 1] in _BEFORE_NUMBER:
            return True
        end = at + len(_LONG_RUN)
        while masked[end:end + 1] == b"0":
            end += 1
        at = masked.find(_LONG_RUN, end)
    return False


@lru_cache(maxsize=64)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """Content hash of a file, cached per (path, size, mtime) within the process."""
    stat = path.stat()
    return _file_sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while millions of containers are built that all live on
    (a parsed 100 MB file): its passes would sweep them again and again, for nothing. After,
    they are frozen out of later passes too (they hold no cycles; reference counting frees
    them)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def combine_hashes(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def announce_large(path: Path, doing: str = "reading") -> None:
    """One line on stderr before seconds of work on a large file (none for small ones, so the
    one-line errors of small data stay one line)."""
    size = path.stat().st_size
    if size > LARGE_FILE:
        print(f"refbench: {doing} {path.parent.name}/{path.name} ({size / 1e6:.0f} MB)...",
              file=sys.stderr, flush=True)


def parse_json_exact(data: bytes) -> tuple[Any, bool]:
    """JSON text to Python values exactly as ``json.loads`` gives them, and whether orjson read
    them (then orjson writes them back exactly: no NaN, no integer past 64 bits). orjson where
    it agrees with json; json itself for what orjson refuses or reads otherwise (NaN, integers
    past 64 bits, lone surrogates), so errors carry json's messages."""
    if orjson is not None and not _has_long_integer(data):
        try:
            return orjson.loads(data), True
        except orjson.JSONDecodeError:
            pass
    return json.loads(data.decode("utf-8")), False


def parse_json(data: bytes) -> Any:
    return parse_json_exact(data)[0]


def read_json_exact(path: Path, layout_hint: str) -> tuple[Any, bool]:
    """``read_json``, and whether orjson read the file (``parse_json_exact``)."""
    if not path.is_file():
        raise UserError(f"missing {path}: {layout_hint}")
    announce_large(path)
    try:
        return parse_json_exact(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}): re-download or regenerate it") from None


def read_json(path: Path, layout_hint: str) -> Any:
    """Load a JSON file, turning a missing or malformed file into a one-line user error."""
    return read_json_exact(path, layout_hint)[0]
