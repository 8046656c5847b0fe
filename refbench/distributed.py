"""Processes and shards, on top of Hugging Face accelerate (torch.distributed underneath).

``accelerate launch -m refbench <command> ...`` starts N processes; in every command that
evaluates, each process evaluates one contiguous shard of the samples still missing from the
store and writes its rows to a shard file of its own (``<store folder>/shards/``), and the main
process then merges the shards into the one store. Shard files persist until merged, so a
process that dies loses only the batch it was on, and a rerun (with any number of processes)
merges what was left before deciding what remains. Shard files, not the shared store, take the
writes because several machines may share one folder over a network file system, where SQLite's
locking cannot be trusted.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SHARD_DIR = "shards"


def launched_world_size() -> int:
    """The number of processes the launcher started (1 when run directly)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@dataclass
class Cluster:
    """This process's place among the launched ones."""

    rank: int = 0
    world: int = 1
    _state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order, on every process."""
        if self._state is None:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def broadcast(self, value: Any) -> Any:
        """The main process's ``value``, on every process."""
        return self.gather(value)[0]


def detect() -> Cluster:
    """Join the launched process group through accelerate, or run alone."""
    if launched_world_size() <= 1:
        return Cluster()
    import torch
    from accelerate import PartialState

    # Without CUDA the processes talk over gloo on the CPU (accelerate's MULTI_CPU), whichever
    # launcher started them (accelerate launch --multi_gpu, torchrun).
    state = PartialState(cpu=not torch.cuda.is_available())
    return Cluster(rank=state.process_index, world=state.num_processes, _state=state)


def shard_groups(items: Sequence[T], rank: int, world: int, key: Any) -> list[T]:
    """The ``rank``-th of ``world`` contiguous shards of ``items``, cut only between groups.

    Groups are dealt so shard sizes (in groups) differ by at most one; no item is in two
    shards, none is left out, nothing is padded.
    """
    groups = [list(members) for _, members in groupby(items, key=key)]
    base, extra = divmod(len(groups), world)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return [item for group in groups[start:stop] for item in group]


def shard_folder(store_path: Path) -> Path:
    return Path(store_path).parent / SHARD_DIR


def new_shard_path(store_path: Path, rank: int) -> Path:
    folder = shard_folder(store_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"rank{rank}-{uuid.uuid4().hex[:8]}.sqlite"


def pending_shards(store_path: Path) -> list[Path]:
    folder = shard_folder(store_path)
    return sorted(folder.glob("*.sqlite")) if folder.is_dir() else []


class ShardWriter:
    """The store as one of N processes sees it: what is done is read from the shared store
    (unchanged while the processes run), new runs and rows go to this process's shard file."""

    def __init__(self, store: Any, shard_path: Path):
        from refbench.store import Store

        self.store = store
        self.shard = Store(shard_path)

    def done_ids(self, run_key: str) -> set[str]:
        return self.store.done_ids(run_key)

    def register_run(self, record: Any) -> None:
        self.shard.register_run(record)

    def write(self, run_key: str, rows: Any, groups: Any = (), owner: str | None = None) -> None:
        self.shard.write(run_key, rows, groups)

    def close(self) -> None:
        self.shard.close()


def merge_shards(store: Any) -> int:
    """Merge every shard file beside ``store`` into it; the number of rows they held."""
    return sum(store.merge(path) for path in pending_shards(store.path))
