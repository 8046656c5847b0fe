"""Where a data set comes from: a registered reader, a root folder and reader options.

Checked before anything is opened (the reader's options against its signature and types), then
opened; synthetic data sets are generated in place on first use when the caller allows it.
"""

from __future__ import annotations

import inspect
import os
import shutil
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refbench.config import coerce
from refbench.data.parquet import hub_repo
from refbench.data.sample import Dataset
from refbench.errors import UserError, did_you_mean
from refbench.plugins import PluginHost
from refbench.specs import DatasetSpec, resolve

DATA_HOME = Path("data")


@dataclass(frozen=True)
class DataSource:
    """A data set by registered name, with its root folder (default ``./data/<folder>``) and
    reader options (e.g. ``split_by``, ``image_dir``)."""

    name: str
    root: Path | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def default_root(self, spec: DatasetSpec) -> Path:
        return DATA_HOME / (spec.default_root or spec.name)

    def resolved_root(self, host: PluginHost) -> Path:
        return Path(self.root) if self.root is not None else self.default_root(host.dataset(self.name))


def check_source(host: PluginHost, source: DataSource) -> dict[str, Any]:
    """The reader's options, each checked against the reader's signature and type hints, without
    opening anything; returns them with the spec's own options merged in."""
    spec = host.dataset(source.name)
    factory = resolve(spec.factory)
    parameters = inspect.signature(factory).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    accepted = [n for n in parameters if n not in ("self", "root")]
    hints: dict[str, Any] = {}
    for target in ((factory.__init__, factory.__new__) if inspect.isclass(factory) else (factory,)):
        try:
            hints.update(typing.get_type_hints(target))
        except Exception:  # a plugin's unresolvable annotation: check names only
            pass
    options: dict[str, Any] = dict(spec.options)
    for key, value in source.options.items():
        if key not in parameters and not takes_any:
            raise did_you_mean(str(key), accepted, f"option of dataset {source.name!r}")
        options[key] = coerce(hints[key], value, f"dataset option {key}") if key in hints else value
    return options


def ensure_generated(spec: DatasetSpec, root: Path, seed: int = 0) -> None:
    """Generate a synthetic data set at ``root`` if it is absent (atomically, so concurrent
    processes never see half a data set)."""
    if root.exists() or not spec.generator:
        return
    print(f"refbench: {root} not found; generating {spec.name} there (seed {seed})", file=sys.stderr)
    staging = root.with_name(f".{root.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    resolve(spec.generator)(staging, seed=seed)
    try:
        staging.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)


def generate_missing(host: PluginHost, source: DataSource) -> None:
    """Write a synthetic data set to its root if it is missing there (nothing for real data)."""
    ensure_generated(host.dataset(source.name), source.resolved_root(host))


def open_dataset(host: PluginHost, source: DataSource, generate: bool = False) -> Dataset:
    """Open the reader on its root; ``generate`` lets a synthetic data set be written there
    first when it is missing."""
    spec = host.dataset(source.name)
    options = check_source(host, source)
    root = source.resolved_root(host)
    if generate:
        ensure_generated(spec, root)
    factory = resolve(spec.factory)
    if hub_repo(root) and getattr(factory, "reads_hub", False):
        return factory(root, **options)  # the reader finds the hub data set in the cache
    if not root.exists():
        how = f"; {spec.summary}" if spec.summary else ""
        make = ("; it is synthetic: the command line generates it there on first use, "
                "refbench.evaluate(..., generate=True) too" if spec.generator else "")
        raise UserError(f"data root {root} does not exist: pass --data-root (data_root=) pointing "
                        f"at your copy of {source.name}{how}{make} (see the README's 'Data layout')")
    return factory(root, **options)
