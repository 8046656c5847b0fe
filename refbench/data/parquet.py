"""Parquet files of hub data sets, read from a local folder or a hub id (``hf://owner/name``).

A hub data set's files are ``[data/]<split>-<shard>-of-<n>[-<hash>].parquet``: the split is the
file name up to its first ``-``. A root of the form ``hf://owner/name`` is the hub data set's
snapshot in the Hugging Face cache (downloaded on first use where the hub is reachable; offline,
a one-line error says how to get it, as for backbones).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from refbench.errors import UserError
from refbench.hub import dataset_snapshot

_HUB_ROOT = re.compile(r"hf:/+([\w.-]+/[\w.-]+)/?")


def hub_repo(root: str | Path) -> str | None:
    """``owner/name`` of a root written ``hf://owner/name`` (``Path`` folds ``//`` to ``/``)."""
    match = _HUB_ROOT.fullmatch(str(root))
    return match.group(1) if match else None


def local_root(root: str | Path, what: str) -> Path:
    """The folder holding the files: ``root`` itself, or a hub data set's cached snapshot."""
    repo = hub_repo(root)
    return dataset_snapshot(repo, what) if repo else Path(root)


def split_files(root: Path) -> dict[str, list[Path]]:
    """Parquet files by split, from ``root`` and ``root/data``."""
    out: dict[str, list[Path]] = {}
    for path in sorted({*root.glob("*.parquet"), *root.glob("data/*.parquet")}):
        out.setdefault(path.name.split("-")[0].removesuffix(".parquet"), []).append(path)
    return out


def read_rows(path: Path, required: Sequence[str], layout: str,
              optional: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """The rows of one parquet file as dicts of the ``required`` columns of ``layout`` (an error
    names the first one missing) and those of the ``optional`` ones it has."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading parquet files needs pyarrow: pip install pyarrow") from None
    try:
        handle = pq.ParquetFile(path)
    except Exception as error:  # pyarrow's ArrowInvalid and OSError on a damaged file
        raise UserError(f"{path} is not a readable parquet file ({error}): re-download it") from None
    names = set(handle.schema_arrow.names)
    missing = [c for c in required if c not in names]
    if missing:
        raise UserError(f"{path} lacks column {missing[0]!r} of the {layout} layout (it has "
                        f"{', '.join(sorted(names))}): is it another layout? (see the README's "
                        f"'Data layout')")
    columns = [*required, *(c for c in optional if c in names)]
    for batch in handle.iter_batches(columns=columns, batch_size=256):
        yield from batch.to_pylist()
