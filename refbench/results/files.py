"""Results files: written atomically, merged per folder, never silently replaced.

A run folder's ``results.json`` is the merge of every run computed into that folder: a run of
other methods (or of the same method with another config, or with ``--limit``) adds its entries
beside the earlier ones instead of replacing the file. Every entry is also kept on its own under
``results/<method>-<run key>[-limitN].json``. Concurrent writers merge under a file lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from refbench.errors import UserError

RUNS_SUBDIR = "results"


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n"


def write_json(path: Path, payload: Any) -> None:
    """Write atomically: a reader never sees half a results file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(dumps(payload))
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path} ({error.strerror or error}): free space or pick "
                        f"a writable folder; the computed rows are in the store") from None


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / ".results.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_file_name(entry: dict[str, Any]) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(entry["method"]))
    limit = f"-limit{entry['limit']}" if entry.get("limit") is not None else ""
    return f"{stem}-{entry['run_key']}{limit}.json"


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("run_key") == b.get("run_key") and a.get("limit") == b.get("limit")


def merge_entries(earlier: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]
                  ) -> dict[str, dict[str, Any]]:
    """``current`` (this invocation's entries by label) plus every earlier entry that is not the
    same run; an earlier entry whose label is taken keeps a label with its run key (and limit)."""
    merged = dict(current)
    for label, entry in earlier.items():
        if any(_same_run(entry, now) for now in current.values()):
            continue
        key = label
        if key in merged:
            base = label.split(" [", 1)[0]
            limit = f", limit {entry['limit']}" if entry.get("limit") is not None else ""
            key = f"{base} [{entry.get('run_key', '?')}{limit}]"
        merged[key] = entry
    return merged


def write_results(folder: Path, payload: dict[str, Any]) -> Path:
    """Write each entry of ``payload["results"]`` under ``results/`` and merge the payload into
    the folder's ``results.json``; returns the merged file's path."""
    folder = Path(folder)
    (folder / RUNS_SUBDIR).mkdir(parents=True, exist_ok=True)
    header = {k: v for k, v in payload.items() if k != "results"}
    for entry in payload["results"].values():
        write_json(folder / RUNS_SUBDIR / run_file_name(entry), {**header, "result": entry})
    path = folder / "results.json"
    with _locked(folder):
        earlier: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                earlier = json.loads(path.read_text()).get("results", {}) or {}
            except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
                earlier = {}  # the per-run files still hold every earlier entry
        write_json(path, {**header, "results": merge_entries(earlier, payload["results"])})
    return path
