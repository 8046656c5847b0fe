"""The results store: one SQLite file, safe to share between runs and processes.

Rows are keyed by (run_key, sample_id), where the run key hashes the method fingerprint, the
dataset fingerprint, the seed and the threshold sweep. So rerunning a command resumes (done rows
are skipped), a grid cell or a --limit run reuses rows another invocation computed, and nothing
depends on a GPU rank. Every batch is one transaction: a killed process loses at most the batch
it was computing. WAL mode lets several writers take turns without failing.

Writers split the work through *claims*: before computing a batch, a writer claims its groups
(per run) with a lease it renews while it works; another writer skips live claims and takes over
expired ones, or at once those of a dead process on this machine. So two ``refbench run`` on one
store compute each sample once between them, and a killed writer's batch is taken over by the
next one.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refbench.errors import UserError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    method_fingerprint TEXT NOT NULL,
    config TEXT NOT NULL,
    dataset TEXT NOT NULL,
    split TEXT NOT NULL,
    dataset_fingerprint TEXT NOT NULL,
    seed INTEGER NOT NULL,
    thresholds TEXT NOT NULL,
    versions TEXT NOT NULL,
    git_hash TEXT,
    limit_n INTEGER,
    info TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    run_key TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    image_id INTEGER NOT NULL,
    group_id TEXT NOT NULL,
    inter BLOB NOT NULL,
    pred_area BLOB NOT NULL,
    gt_area INTEGER NOT NULL,
    is_mask INTEGER NOT NULL,
    mask_rle TEXT NOT NULL,
    meta TEXT NOT NULL,
    info TEXT NOT NULL,
    PRIMARY KEY (run_key, sample_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups (
    run_key TEXT NOT NULL,
    group_id TEXT NOT NULL,
    classes TEXT NOT NULL,
    confusion BLOB NOT NULL,
    PRIMARY KEY (run_key, group_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (
    run_key TEXT NOT NULL,
    group_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (run_key, group_id)
) WITHOUT ROWID;
"""
LEASE_SECONDS = 60.0  # a claim not renewed for this long is taken over


def _layout() -> dict[str, list[str]]:
    """Each table's columns as this version creates them."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(_SCHEMA)
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: [c[1] for c in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    finally:
        conn.close()


LAYOUT = _layout()
RESUME = "every batch stored before is kept: rerun the command to resume"
FULL_BELOW = 4 << 20  # bytes free under which an I/O error on the store is put down to a full disk


def store_error(path: Path, error: sqlite3.Error) -> UserError:
    """What an SQLite error on the store means to the user, in one line: the disk is full, the
    folder is read-only, the file is damaged, or another program holds it."""
    text = str(error)
    folder = path.parent
    try:  # a full disk shows as "disk I/O error" too when the WAL's index cannot grow
        nearly_full = shutil.disk_usage(folder).free < FULL_BELOW
    except OSError:
        nearly_full = False
    if "full" in text or ("disk I/O" in text and nearly_full):
        return UserError(f"the disk holding {path} is full ({text}): free some space or point "
                         f"--out at another disk; {RESUME}")
    if "readonly" in text or "read-only" in text or (
            "unable to open" in text and not os.access(folder, os.W_OK)):
        return UserError(f"{path} cannot be written: {folder} is read-only ({text}); point --out "
                         f"at a writable folder")
    if "unable to open" in text:
        return UserError(f"{path} cannot be opened ({text}): check that {folder} exists and is "
                         f"a folder you can write to, or point --out elsewhere")
    if "locked" in text or "busy" in text:
        return UserError(f"{path} is locked by another program ({text}): wait for it to finish, "
                         f"or point --out at another folder")
    if "disk I/O" in text:
        return UserError(f"reading or writing {path} failed ({text}): check the disk, then rerun; "
                         f"{RESUME}")
    return UserError(f"{path} is damaged ({text}): point --out at a new folder, or recover its "
                     f"rows with 'sqlite3 {path} .recover | sqlite3 NEW.sqlite'")


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """A store method whose SQLite errors reach the user as ``store_error``."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as error:
            raise store_error(self.path, error) from None

    return wrapper


def new_owner() -> str:
    """This writer's name in the claims table: host, process and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# Owners whose Lease is open in this process: a claim of this process by any other owner is
# left from an evaluation that ended without releasing it (its release failed on a full disk,
# say), so a retry in the same process takes it over at once instead of after the lease.
_LIVE_OWNERS: set[str] = set()


def _owner_is_dead(owner: str) -> bool:
    """A claim of a process on this machine that no longer runs is stale at once."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    if int(pid_text) == os.getpid():
        return owner not in _LIVE_OWNERS
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class RunRecord:
    run_key: str
    method: str
    method_fingerprint: str
    config: dict[str, Any]
    dataset: str
    split: str
    dataset_fingerprint: str
    seed: int
    thresholds: tuple[float, ...]
    versions: dict[str, str | None]
    git_hash: str | None
    limit_n: int | None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class SampleRow:
    sample_id: str
    image_id: int
    group_id: str
    inter: np.ndarray
    pred_area: np.ndarray
    gt_area: int
    is_mask: bool
    mask_rle: dict[str, Any]
    meta: dict[str, Any]
    info: dict[str, Any]


@dataclass
class GroupRow:
    group_id: str
    classes: list[int]
    confusion: np.ndarray  # (T, K+1, K+1) int64


def _blob(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<i8").tobytes()


def _unblob(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i8")


class Store:
    """A results store in one SQLite file."""

    temporary = False  # a store deleted after the evaluation (refbench.evaluate's default)

    def __init__(self, path: Path | str, timeout: float = 120.0):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the folder {self.path.parent} for the store "
                            f"({error.strerror}): point --out at a writable folder") from None
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
                # Checking the layout and creating it is one write transaction, so a second
                # process opening a new store waits and then finds it whole; a foreign file is
                # left untouched (nothing is written before the check).
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    self._check_layout()
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        self.conn.execute(statement)  # CREATE ... IF NOT EXISTS: idempotent
                    self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                                      (str(SCHEMA_VERSION),))
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                break
            except sqlite3.OperationalError as error:
                # Switching to WAL needs a moment alone with the file; a second process
                # opening it at that instant gets "locked" without the busy handler.
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise store_error(self.path, error) from None
                self.conn.close()
                time.sleep(0.05)
            except sqlite3.DatabaseError as error:
                raise UserError(f"{self.path} is not a usable refbench store ({error}): "
                                f"point --out at another folder or delete the file") from None

    def _check_layout(self) -> None:
        """An empty file becomes a store; a store of another layout, or any other SQLite file,
        is refused without being modified."""
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return
        found = None
        if "meta" in tables:
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            found = row[0] if row else None
        if found != str(SCHEMA_VERSION):
            what = f"store schema {found}" if found else "no refbench store layout"
            raise UserError(f"{self.path} has {what}, this refbench reads and writes schema "
                            f"{SCHEMA_VERSION}; the file was left as it is: use a new --out folder")
        differences = []
        for table, columns in LAYOUT.items():
            have = [c[1] for c in self.conn.execute(f"PRAGMA table_info({table})")]
            if not have:
                differences.append(f"no {table} table")
            elif have != columns:
                missing = [c for c in columns if c not in have]
                extra = [c for c in have if c not in columns]
                parts = ([f"lacks {', '.join(missing)}"] if missing else []) + (
                    [f"has {', '.join(extra)}"] if extra else [])
                differences.append(f"{table} {', '.join(parts) or 'has its columns in another order'}")
        if differences:
            raise UserError(f"{self.path} has another table layout ({'; '.join(differences)}) "
                            f"than this refbench's schema {SCHEMA_VERSION}; the file was left as "
                            f"it is: use a new --out folder, or the refbench version that wrote it")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so two writers queue (busy timeout)
        # instead of deadlocking on a read-to-write upgrade.
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # SQLite rolls back by itself on a full disk
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

    # -- runs ------------------------------------------------------------------------------
    @_guarded
    def register_run(self, run: RunRecord) -> None:
        now = time.time()
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run.run_key, run.method, run.method_fingerprint, json.dumps(run.config, sort_keys=True),
                 run.dataset, run.split, run.dataset_fingerprint, run.seed,
                 json.dumps(list(run.thresholds)), json.dumps(run.versions, sort_keys=True),
                 run.git_hash, run.limit_n, json.dumps(run.info, sort_keys=True), now, now))
            stored = conn.execute("SELECT info FROM runs WHERE run_key=?", (run.run_key,)).fetchone()
            info = {**json.loads(stored[0]), **run.info}  # what the method says of itself now
            conn.execute("UPDATE runs SET limit_n=?, versions=?, git_hash=?, info=?, updated=? "
                         "WHERE run_key=?",
                         (run.limit_n, json.dumps(run.versions, sort_keys=True), run.git_hash,
                          json.dumps(info, sort_keys=True), now, run.run_key))

    @_guarded
    def update_run_info(self, run_key: str, info: dict[str, Any]) -> None:
        with self.transaction() as conn:
            row = conn.execute("SELECT info FROM runs WHERE run_key=?", (run_key,)).fetchone()
            merged = {**json.loads(row[0]), **info} if row else info
            conn.execute("UPDATE runs SET info=?, updated=? WHERE run_key=?",
                         (json.dumps(merged, sort_keys=True), time.time(), run_key))

    @_guarded
    def run(self, run_key: str) -> dict[str, Any] | None:
        cursor = self.conn.execute("SELECT * FROM runs WHERE run_key=?", (run_key,))
        row = cursor.fetchone()
        if row is None:
            return None
        record = dict(zip([c[0] for c in cursor.description], row))
        for key in ("config", "thresholds", "versions", "info"):
            record[key] = json.loads(record[key])
        return record

    @_guarded
    def runs(self) -> list[dict[str, Any]]:
        keys = [r[0] for r in self.conn.execute("SELECT run_key FROM runs ORDER BY created")]
        return [r for r in (self.run(k) for k in keys) if r is not None]

    # -- samples ---------------------------------------------------------------------------
    @_guarded
    def done_ids(self, run_key: str) -> set[str]:
        return {r[0] for r in self.conn.execute(
            "SELECT sample_id FROM samples WHERE run_key=?", (run_key,))}

    @_guarded
    def write(self, run_key: str, rows: Iterable[SampleRow], groups: Iterable[GroupRow] = (),
              owner: str | None = None) -> None:
        """Write one batch atomically; rows already present are left as they are. ``owner``'s
        claims on the batch's groups are released in the same transaction."""
        rows = list(rows)
        with self.transaction() as conn:
            if owner is not None:
                conn.executemany("DELETE FROM claims WHERE run_key=? AND group_id=? AND owner=?",
                                 [(run_key, g, owner) for g in dict.fromkeys(r.group_id for r in rows)])
            conn.executemany(
                "INSERT OR IGNORE INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(run_key, r.sample_id, r.image_id, r.group_id, _blob(r.inter), _blob(r.pred_area),
                  r.gt_area, int(r.is_mask), json.dumps(r.mask_rle), json.dumps(r.meta, sort_keys=True),
                  json.dumps(r.info, sort_keys=True)) for r in rows])
            conn.executemany(
                "INSERT OR IGNORE INTO groups VALUES (?,?,?,?)",
                [(run_key, g.group_id, json.dumps(g.classes), _blob(g.confusion.ravel()))
                 for g in groups])

    @_guarded
    def rows(self, run_key: str, with_masks: bool = False,
             sample_ids: Collection[str] | None = None) -> list[SampleRow]:
        """A run's rows; only those of ``sample_ids`` when given (a gallery needs a few masks,
        not every mask of the split)."""
        columns = "sample_id, image_id, group_id, inter, pred_area, gt_area, is_mask, meta, info" + (
            ", mask_rle" if with_masks else "")
        query = f"SELECT {columns} FROM samples WHERE run_key=?"
        if sample_ids is None:
            found = self.conn.execute(query, (run_key,)).fetchall()
        else:
            ids = list(sample_ids)
            found = []
            for start in range(0, len(ids), 500):  # SQLite caps the number of parameters
                chunk = ids[start:start + 500]
                found += self.conn.execute(
                    f"{query} AND sample_id IN ({','.join('?' * len(chunk))})", (run_key, *chunk)).fetchall()
        out = []
        for r in found:
            out.append(SampleRow(
                sample_id=r[0], image_id=r[1], group_id=r[2], inter=_unblob(r[3]),
                pred_area=_unblob(r[4]), gt_area=r[5], is_mask=bool(r[6]), meta=json.loads(r[7]),
                info=json.loads(r[8]), mask_rle=json.loads(r[9]) if with_masks else {}))
        return out

    @_guarded
    def groups(self, run_key: str) -> list[GroupRow]:
        out = []
        for group_id, classes, blob in self.conn.execute(
                "SELECT group_id, classes, confusion FROM groups WHERE run_key=?", (run_key,)):
            classes = json.loads(classes)
            k = len(classes) + 1
            out.append(GroupRow(group_id, classes, _unblob(blob).reshape(-1, k, k)))
        return out

    @_guarded
    def merge(self, shard: Path) -> int:
        """Copy a shard store's runs and rows in (existing rows win), then delete the shard.
        Returns the number of sample rows the shard held."""
        shard = Path(shard)
        # Opening the shard first replays a WAL a killed writer may have left behind.
        Store(shard).close()
        self.conn.execute("ATTACH DATABASE ? AS shard", (str(shard),))
        try:
            with self.transaction() as conn:
                n = conn.execute("SELECT COUNT(*) FROM shard.samples").fetchone()[0]
                for table in ("runs", "samples", "groups"):
                    conn.execute(f"INSERT OR IGNORE INTO main.{table} SELECT * FROM shard.{table}")
        finally:
            self.conn.execute("DETACH DATABASE shard")
        for suffix in ("", "-wal", "-shm"):
            Path(str(shard) + suffix).unlink(missing_ok=True)
        return n

    # -- claims --------------------------------------------------------------------------
    @_guarded
    def claim(self, owner: str, wanted: Iterable[tuple[str, str, str]],
              lease: float = LEASE_SECONDS) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Claim (run key, group) pairs for ``owner``; each comes with one sample id of the group
        (a group is written whole, so one row tells whether it is done).

        Returns (granted, held): the pairs now ``owner``'s, and those another live writer holds.
        Pairs already done are in neither. One transaction, so two writers never both win.
        """
        granted: list[tuple[str, str]] = []
        held: list[tuple[str, str]] = []
        now = time.time()
        with self.transaction() as conn:
            for run_key, group_id, sample_id in wanted:
                if conn.execute("SELECT 1 FROM samples WHERE run_key=? AND sample_id=?",
                                (run_key, sample_id)).fetchone():
                    continue
                row = conn.execute("SELECT owner, expires FROM claims WHERE run_key=? AND group_id=?",
                                   (run_key, group_id)).fetchone()
                if row is not None and row[0] != owner and row[1] > now and not _owner_is_dead(row[0]):
                    held.append((run_key, group_id))
                    continue
                conn.execute("INSERT OR REPLACE INTO claims VALUES (?,?,?,?)",
                             (run_key, group_id, owner, now + lease))
                granted.append((run_key, group_id))
        return granted, held

    @_guarded
    def release(self, owner: str) -> None:
        """Drop every claim of ``owner`` (its work is done, or it stops): others take over."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM claims WHERE owner=?", (owner,))

    @_guarded
    def renew(self, owner: str, lease: float = LEASE_SECONDS) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE claims SET expires=? WHERE owner=?", (time.time() + lease, owner))

    @_guarded
    def count(self, run_key: str) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM samples WHERE run_key=?", (run_key,)).fetchone()[0]


class Lease:
    """A writer's claims kept alive: a thread renews them every quarter lease on its own
    connection, and leaving the block releases whatever is still claimed."""

    def __init__(self, store: Store, lease: float = LEASE_SECONDS):
        self.store, self.lease = store, lease
        self.owner = new_owner()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True)

    def _renew(self) -> None:
        renewer = Store(self.store.path)
        try:
            while not self._stop.wait(self.lease / 4):
                renewer.renew(self.owner, self.lease)
        finally:
            renewer.close()

    def __enter__(self) -> Lease:
        _LIVE_OWNERS.add(self.owner)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.store.release(self.owner)
        except UserError:
            if exc[0] is None:  # nothing else went wrong: this is the error to report
                raise
        finally:
            _LIVE_OWNERS.discard(self.owner)
