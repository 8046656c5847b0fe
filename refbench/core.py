"""The evaluation core: plan -> shard -> predict -> score -> store -> Results.

``refbench.evaluate`` (the Python API) and every command that evaluates (``run``, ``grid``,
``report``, ``regress``, the gallery's rerun) go through this module, so they resume, share
work, split it between processes and score it in exactly one way:

1. everything is checked first (methods, configs, data set options, calibration, settings), and
   only then is the data set opened and a split planned (its samples, cut by ``limit``);
2. each method is built once for all splits and registered as a run in the store (the run key
   fixes which stored rows it may reuse);
3. what the store lacks is computed batch-major: each batch of whole groups is loaded once and
   every run that still needs it predicts on it, so work cached per (image, seed) is shared by
   the cells of a grid. Independent writers on one store claim batches (``store.Lease``), so
   together they compute each sample once; processes started by ``accelerate launch`` take
   contiguous shards into shard files that the main process merges (``distributed``);
4. the figures are computed from the store, reading each run's rows once, at thresholds
   calibrated on another split (``results``), and returned as ``Results``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refbench import distributed, provenance
from refbench.candidates import Candidate, resolve_methods
from refbench.config import overrides_from
from refbench.data.checks import check_headers, check_unique_ids, has_truth, refuse_empty
from refbench.data.images import DEFAULT_MAX_PIXELS, check_images_exist, load_rgb
from refbench.data.sample import Dataset, Sample, group_batches, take_samples
from refbench.data.source import DataSource, check_source, generate_missing, open_dataset
from refbench.errors import UserError
from refbench.method import Batch, Method, Prediction, sample_seed
from refbench.plugins import PluginHost
from refbench.progress import JobProgress
from refbench.results.calibration import DEFAULT_CRITERION, Calibration, calibrated
from refbench.results.scored import RunRows, Scored, Work
from refbench.results.scoring import (DEFAULT_PROTOCOL, Protocol, prediction_map, score_batch,
                                      sweep_thresholds)
from refbench.results.stats import StatsOptions
from refbench.results.summary import Results, SplitInfo
from refbench.store import Lease, RunRecord, Store

MAX_LIMIT = 2**62  # SQLite integers are 64-bit
CLAIM_POLL_SECONDS = 0.25  # how often a writer waiting on others' claims looks again


@dataclass(frozen=True)
class Settings:
    """How an evaluation runs; none of these changes a figure except ``seed``, ``limit`` and
    the sweep."""

    seed: int = 0
    limit: int | None = None  # the first N samples of each split: a smoke test, marked
    batch_size: int = 8
    sweep_step: float = 0.05
    progress: bool = False
    protocol: Protocol = DEFAULT_PROTOCOL  # where IoU is taken (a different protocol: other rows)
    skip_empty_gt: bool = False  # leave out samples whose ground truth is empty (counted)
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # the decompression-bomb guard

    def check(self) -> None:
        for name in ("seed", "batch_size"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if not 0 <= self.seed <= MAX_LIMIT:
            raise UserError(f"the seed must be a whole number from 0 to {MAX_LIMIT}, got {self.seed}")
        if self.batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {self.batch_size}")
        if self.limit is not None and (not isinstance(self.limit, int) or not 1 <= self.limit <= MAX_LIMIT):
            raise UserError(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {self.limit!r}")
        if not isinstance(self.sweep_step, (int, float)) or not 0 < self.sweep_step < 1:
            raise UserError(f"the sweep step must be between 0 and 1, got {self.sweep_step!r}")
        if not isinstance(self.max_image_pixels, int) or self.max_image_pixels < 1:
            raise UserError(f"the image pixel limit must be a positive whole number, got "
                            f"{self.max_image_pixels!r}")

    @property
    def thresholds(self) -> tuple[float, ...]:
        return sweep_thresholds(self.sweep_step)


@dataclass
class SplitPlan:
    """What is evaluated on one split: its samples (cut by limit) and the sweep."""

    dataset: Dataset
    root: Path
    split: str
    samples: list[Sample]
    fingerprint: str
    thresholds: tuple[float, ...]
    label: str = ""  # the data set as the user named it (a spec's dataset), for progress lines
    skipped_empty: int = 0  # samples left out for an empty ground truth (--skip-empty-gt)

    @property
    def semantic(self) -> bool:
        return self.dataset.task == "semantic"

    @property
    def background(self) -> bool | None:
        """Semantic data: whether background is a class of the protocol (VOC21) or ignored
        (VOC20); None for referring data."""
        return bool(getattr(self.dataset, "background", True)) if self.semantic else None

    def info(self) -> SplitInfo:
        return SplitInfo(self.dataset.name, self.split, self.dataset.task, str(self.root),
                         self.fingerprint, len(self.samples), self.skipped_empty,
                         getattr(self.dataset, "benchmark", ""))


def split_samples(dataset: Dataset, split: str, limit: int | None) -> Iterable[Sample]:
    """The split's samples; built one by one where the reader can (``iter_samples``) and only
    the first ``limit`` are wanted."""
    lazy = getattr(dataset, "iter_samples", None)
    return lazy(split) if limit is not None and callable(lazy) else dataset.samples(split)


def plan_split(dataset: Dataset, root: Path, split: str, settings: Settings,
               label: str = "") -> SplitPlan:
    """List the split's samples and check what can be checked before computing: ids unique,
    ground truths not empty (or left out and counted, if asked), images present, their headers
    matching the annotations. With ``limit`` the samples are read only up to the cut (the rest
    of a large split is never built), so the id and empty-truth checks cover the samples read,
    and ``skipped_empty`` counts the empty ones among them."""
    where = f"{label or dataset.name}/{split}"
    built, samples, empty = take_samples(split_samples(dataset, split, settings.limit),
                                         settings.limit, has_truth)
    check_unique_ids(built, where)
    if not settings.skip_empty_gt:
        refuse_empty(empty, where)
    if not samples:
        raise UserError(f"split {split!r} of {dataset.name} has no samples"
                        + (f" with a ground truth ({len(empty)} empty ones left out)" if empty else ""))
    check_images_exist([s.image_path for s in samples])
    check_headers(samples, settings.max_image_pixels)
    return SplitPlan(dataset, root, split, samples, dataset.fingerprint(split), settings.thresholds,
                     label or dataset.name, len(empty))


@dataclass
class MethodRun:
    """One candidate evaluated on one split: a run in the store."""

    candidate: Candidate
    record: RunRecord
    work: Work = field(default_factory=Work)


def run_info(candidate: Candidate) -> dict[str, Any]:
    """What pages say of a run besides its config: where the method comes from, whether it was
    trained (an in-memory method's kind is not known)."""
    spec = candidate.spec
    training = None if spec is None else ("trained" if spec.trainable else "training-free")
    return {"plugin": candidate.plugin, "training": training,
            "source": spec.source if spec is not None else "",
            "summary": spec.summary if spec is not None else ""}


def start_run(candidate: Candidate, method: Method, plan: SplitPlan, store: Any,
              settings: Settings) -> MethodRun:
    """Register the run; its key (method fingerprint, data set fingerprint, seed, sweep) fixes
    which stored rows it may reuse."""
    method_fp = candidate.fingerprint(method)
    record = RunRecord(
        run_key=provenance.run_key(method_fp, plan.fingerprint, settings.seed, plan.thresholds,
                                   settings.protocol.key()),
        method=candidate.name, method_fingerprint=method_fp, config=candidate.config_dict,
        dataset=plan.dataset.name, split=plan.split, dataset_fingerprint=plan.fingerprint,
        seed=settings.seed, thresholds=plan.thresholds, versions=provenance.versions(),
        git_hash=provenance.git_hash(), limit_n=settings.limit, info=run_info(candidate))
    store.register_run(record)
    return MethodRun(candidate, record)


# -- predicting ------------------------------------------------------------------------------
def predict(method: Method, name: str, samples: list[Sample], images: list[np.ndarray],
            seeds: list[int], size: int | None = None,
            background: bool | None = None) -> list[Prediction]:
    """The one place a method is called (``size``: the protocol's square, if it has one;
    ``background``: the semantic protocol, see ``Batch``)."""
    predictions = method.predict(Batch(samples, images, seeds, size, background))
    if not isinstance(predictions, (list, tuple)) or len(predictions) != len(samples):
        got = len(predictions) if isinstance(predictions, (list, tuple)) else type(predictions).__name__
        raise UserError(f"method {name!r} returned {got} predictions for {len(samples)} samples: "
                        f"predict(batch) returns a list with one Prediction per sample")
    return list(predictions)


def predict_maps(host: PluginHost, candidate: Candidate, samples: Sequence[Sample],
                 images: Sequence[np.ndarray], seed: int, batch_size: int,
                 size: int | None = None) -> list[np.ndarray]:
    """A method's validated outputs on chosen samples, seeded exactly as in a scored run (the
    gallery shows score maps, which the store does not keep)."""
    method = candidate.build(host)
    index = {s.sample_id: i for i, s in enumerate(samples)}
    maps: list[np.ndarray] = [np.empty(0)] * len(samples)
    for batch in group_batches(list(samples), batch_size):
        picked = [index[s.sample_id] for s in batch]
        predictions = predict(method, candidate.name, batch, [images[i] for i in picked],
                              [sample_seed(seed, s.sample_id) for s in batch], size)
        for i, sample, prediction in zip(picked, batch, predictions):
            maps[i] = prediction_map(prediction, sample, candidate.name, size)
    return maps


# -- computing what the store lacks ------------------------------------------------------------
# What a method that declares ``reads_pixels = False`` gets for each image: no pixels (a 0 x 0
# image, so a method that reads them after all fails loudly instead of scoring a blank image).
NO_PIXELS = np.zeros((0, 0, 3), dtype=np.uint8)
NO_PIXELS.flags.writeable = False


def reads_pixels(method: Method) -> bool:
    """Whether a method needs the decoded images (the reference methods read only sizes and
    ground truths: decoding for them is most of their time)."""
    return bool(getattr(method, "reads_pixels", True))


@dataclass
class _Job:
    run: MethodRun
    method: Method
    pending: set[str]  # sample ids this run still lacks


def compute(host: PluginHost, candidates: Sequence[Candidate], plans: Sequence[SplitPlan],
            store: Any, settings: Settings, *, together: bool = False,
            cluster: distributed.Cluster | None = None,
            progress: JobProgress | None = None) -> list[list[MethodRun]]:
    """Compute what each candidate lacks on each plan; the result is indexed [candidate][plan].

    Each method is built once for all the plans. ``together=False`` holds one method in memory
    at a time (different models on one GPU); ``together=True`` builds them all and runs them
    batch-major (the cells of a grid, which share a backbone and per-sample work).
    """
    cluster = cluster or distributed.Cluster()
    progress = progress or JobProgress(len(candidates) * len(plans), enabled=False)
    outcomes: list[list[MethodRun]] = [[] for _ in candidates]
    built: list[tuple[int, Candidate, Method]] = []

    def flush() -> None:
        if not built:
            return
        for plan in plans:
            jobs: dict[str, _Job] = {}
            for i, cand, method in built:
                run = start_run(cand, method, plan, store, settings)
                if run.record.run_key in jobs:  # the same config under two labels: computed once
                    run = jobs[run.record.run_key].run
                else:
                    jobs[run.record.run_key] = _Job(run, method, set())
                outcomes[i].append(run)
            _fill(list(jobs.values()), plan, store, settings, cluster, progress)
        built.clear()

    for i, cand in enumerate(candidates):
        built.append((i, cand, cand.build(host)))
        if not together:
            flush()  # and drop the model before the next one is built
    flush()
    return outcomes


def _fill(jobs: list[_Job], plan: SplitPlan, store: Any, settings: Settings,
          cluster: distributed.Cluster, progress: JobProgress) -> None:
    for job in jobs:
        done = store.done_ids(job.run.record.run_key)
        job.pending = {s.sample_id for s in plan.samples if s.sample_id not in done}
        job.run.work.reused = len(plan.samples) - len(job.pending)
    names = jobs[0].run.candidate.label if len(jobs) == 1 else f"{len(jobs)} methods"
    progress.begin(len(jobs), f"{names} on {plan.label}/{plan.split}",
                   sum(job.run.work.reused for job in jobs))
    todo = [s for s in plan.samples if any(s.sample_id in job.pending for job in jobs)]
    if not todo:
        return
    if cluster.distributed:
        todo = distributed.shard_groups(todo, cluster.rank, cluster.world, key=lambda s: s.group)
    if cluster.distributed:  # a shard of its own: nobody else computes these
        for batch in group_batches(todo, settings.batch_size):
            _compute(jobs, [(j, batch) for j in range(len(jobs))], plan, store, settings, None, progress)
    else:
        with Lease(store) as lease:
            _claimed(jobs, todo, plan, store, settings, lease.owner, progress)


def _claimed(jobs: list[_Job], todo: list[Sample], plan: SplitPlan, store: Store,
             settings: Settings, owner: str, progress: JobProgress) -> None:
    """Claim batches of groups, compute them, write them; wait for groups other live writers
    hold, and take over those whose writer died."""
    groups = [list(members) for members in _groups(todo)]
    queue: deque[tuple[list[Sample], set[int]]] = deque(
        (members, {j for j, job in enumerate(jobs) if members[0].sample_id in job.pending})
        for members in groups)
    deferred: list[tuple[list[Sample], set[int]]] = []
    order = {s.sample_id: k for k, s in enumerate(todo)}
    while queue or deferred:
        if not queue:
            time.sleep(CLAIM_POLL_SECONDS)
            queue.extend(deferred)
            deferred.clear()
        taken, size = [], 0
        while queue and size < settings.batch_size:
            members, runs = queue.popleft()
            taken.append((members, runs))
            size += len(members)
        wanted = [(jobs[j].run.record.run_key, members[0].group, members[0].sample_id)
                  for members, runs in taken for j in sorted(runs)]
        granted, held = store.claim(owner, wanted)
        granted_set, held_set = set(granted), set(held)
        picks: dict[int, list[Sample]] = {}
        for members, runs in taken:
            waiting = set()
            for j in runs:
                pair = (jobs[j].run.record.run_key, members[0].group)
                if pair in granted_set:
                    picks.setdefault(j, []).extend(members)
                elif pair in held_set:
                    waiting.add(j)
                else:  # written by another writer meanwhile
                    progress.update(len(members))
            if waiting:
                deferred.append((members, waiting))
        _compute(jobs, [(j, sorted(p, key=lambda s: order[s.sample_id])) for j, p in sorted(picks.items())],
                 plan, store, settings, owner, progress)


def _groups(samples: Sequence[Sample]) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for sample in samples:
        if batch and sample.group != batch[-1].group:
            yield batch
            batch = []
        batch.append(sample)
    if batch:
        yield batch


def _compute(jobs: list[_Job], picks: list[tuple[int, list[Sample]]], plan: SplitPlan, store: Any,
             settings: Settings, owner: str | None, progress: JobProgress) -> None:
    """Decode each image of a batch once (the sentences of one image share it), and only for
    the methods that read pixels; then let each job predict its part, score it, write it."""
    picks = [(j, [s for s in sub if s.sample_id in jobs[j].pending]) for j, sub in picks]
    picks = [(j, sub) for j, sub in picks if sub]
    needed = {s.image_path: s for j, sub in picks if reads_pixels(jobs[j].method) for s in sub}
    images = {path: load_rgb(path, (s.height, s.width), s.sample_id, settings.max_image_pixels)
              for path, s in needed.items()}
    for j, sub in picks:
        run, method = jobs[j].run, jobs[j].method
        start = time.perf_counter()
        pixels = [images.get(s.image_path, NO_PIXELS) for s in sub]
        predictions = predict(method, run.candidate.name, sub, pixels,
                              [sample_seed(settings.seed, s.sample_id) for s in sub],
                              settings.protocol.output_size, plan.background)
        rows, groups = score_batch(sub, predictions, run.candidate.name, plan.thresholds,
                                   plan.dataset, settings.protocol)
        store.write(run.record.run_key, rows, groups, owner=owner)
        run.work.seconds += time.perf_counter() - start
        run.work.computed += len(sub)
        jobs[j].pending.difference_update(s.sample_id for s in sub)
        progress.update(len(sub))


def compute_everywhere(host: PluginHost, candidates: Sequence[Candidate], plans: Sequence[SplitPlan],
                       store: Store, settings: Settings, together: bool,
                       cluster: distributed.Cluster,
                       progress: JobProgress | None = None) -> list[list[MethodRun]]:
    """``compute``, alone or as one of the processes ``accelerate launch`` started: then each
    writes its shard to a file of its own and the main process merges them into ``store``;
    every process returns with the merged store."""
    if cluster.is_main and not store.temporary:  # rows a killed sharded run left come first
        distributed.merge_shards(store)
    if not cluster.distributed:
        return compute(host, candidates, plans, store, settings, together=together, cluster=cluster,
                       progress=progress)
    cluster.barrier()
    sink = distributed.ShardWriter(store, distributed.new_shard_path(store.path, cluster.rank))
    try:
        runs = compute(host, candidates, plans, sink, settings, together=together, cluster=cluster,
                       progress=progress)
    finally:
        sink.close()
    work = cluster.gather([[(r.work.computed, r.work.seconds) for r in per] for per in runs])
    cluster.barrier()
    if cluster.is_main:
        distributed.merge_shards(store)
    cluster.barrier()
    for i, per in enumerate(runs):
        for j, run in enumerate(per):
            run.work.computed = sum(rank[i][j][0] for rank in work)
            run.work.seconds = max(rank[i][j][1] for rank in work)
    return runs


# -- the whole evaluation --------------------------------------------------------------------------
def check_evaluation(host: PluginHost, source: DataSource, splits: Sequence[str],
                     calibration: Calibration, settings: Settings) -> None:
    """Everything about an evaluation that can be checked without opening the data."""
    if not splits:
        raise UserError("no split given: name the split(s) to report")
    settings.check()
    check_source(host, source)
    calibration.check(list(splits), settings.thresholds, f"dataset {source.name}")


def run_evaluation(host: PluginHost, candidates: Sequence[Candidate], source: DataSource,
                   splits: Sequence[str], *, store: Store, settings: Settings,
                   calibration: Calibration, statistics: StatsOptions,
                   breakdown: str | None = None, together: bool = False,
                   cluster: distributed.Cluster | None = None, generate: bool = False,
                   progress: JobProgress | None = None) -> Results:
    """Evaluate ``candidates`` on the reported ``splits`` (and the calibration split) of one
    data set, computing what ``store`` lacks, and score them."""
    check_evaluation(host, source, splits, calibration, settings)
    statistics.check()
    cluster = cluster or distributed.detect()
    if cluster.distributed and store.temporary:
        raise UserError("several processes evaluate into one store: pass store= a path on a "
                        "folder every process sees")
    if generate and cluster.is_main:
        generate_missing(host, source)  # once, before any process opens it
    cluster.barrier()
    dataset = open_dataset(host, source)
    if dataset.task == "semantic" and settings.protocol.name != "image":
        raise UserError(f"the {settings.protocol.name} protocol is defined for referring data; "
                        f"{source.name} is semantic segmentation: use --protocol image")
    root = source.resolved_root(host)
    if calibration.split is not None and calibration.split not in splits:
        available = dataset.splits()
        if calibration.split not in available and calibration.defaulted:
            calibration = dataclasses.replace(calibration, split=None)  # report at the fixed one
            calibration.check(list(splits), settings.thresholds, f"dataset {source.name}")
        elif calibration.split not in available:
            raise UserError(f"the calibration split {calibration.split!r} is not a split of "
                            f"{source.name} ({', '.join(available)}): pass --calibration-split "
                            f"with one of them (calibration: split: in a spec), or 'none' to "
                            f"report every score map at --threshold")
    computed = list(dict.fromkeys([*splits, *([calibration.split] if calibration.split else [])]))
    plans = [plan_split(dataset, root, split, settings, source.name) for split in computed]
    own = progress is None
    if own:
        progress = JobProgress(len(candidates) * len(plans), settings.progress and cluster.is_main)
    progress.plan(len(candidates) * sum(len(p.samples) for p in plans))
    try:
        runs = compute_everywhere(host, candidates, plans, store, settings, together, cluster, progress)
    finally:
        if own:
            progress.close()

    scored: dict[tuple[str, str], Scored] = {}
    calibrating: dict[str, Scored] = {}
    for cand, per_plan in zip(candidates, runs):
        rows = {plan.split: RunRows.load(store, run.record.run_key, plan.samples, plan.thresholds,
                                         plan.semantic, settings.protocol.empty_iou)  # read once
                for run, plan in zip(per_plan, plans)}
        sweeps = None
        if calibration.split is not None:
            cal = rows[calibration.split]
            sweeps = None if cal.is_mask else cal.sweeps()
            if calibration.split not in splits:
                run = per_plan[computed.index(calibration.split)]
                threshold = calibrated(calibration, calibration.split, sweeps, cal.is_mask)
                calibrating[cand.label] = Scored.of(cand.label, run.record, cand.plugin, run.work,
                                                    cal, threshold, statistics, breakdown)
        for split in splits:
            run = per_plan[computed.index(split)]
            threshold = calibrated(calibration, split, sweeps, rows[split].is_mask)
            scored[(cand.label, split)] = Scored.of(cand.label, run.record, cand.plugin, run.work,
                                                    rows[split], threshold, statistics, breakdown)
    if cluster.is_main and not store.temporary:
        for s in [*scored.values(), *calibrating.values()]:
            if counts := s.rows.counts():
                store.update_run_info(s.run_key, {"counts": counts})
    results = Results(splits=[plans[computed.index(s)].info() for s in splits], scored=scored,
                      calibration=calibration, statistics=statistics, seed=settings.seed,
                      limit=settings.limit, batch_size=settings.batch_size,
                      processes=cluster.world, breakdown=breakdown, calibrating=calibrating,
                      protocol=settings.protocol,
                      samples={s: plans[computed.index(s)].samples for s in splits})
    return results


@contextmanager
def open_store(store: Store | str | Path | None) -> Iterator[Store]:
    """The store to evaluate into: the one given, a file path, or (None) a temporary one that is
    deleted afterwards (``Results`` keep everything they show in memory)."""
    if isinstance(store, Store):
        yield store
        return
    if store is not None:
        with Store(Path(store)) as opened:
            yield opened
        return
    with tempfile.TemporaryDirectory(prefix="refbench-") as folder:
        with Store(Path(folder) / "store.sqlite") as opened:
            opened.temporary = True
            yield opened


def evaluate(methods: str | Sequence[str | Any], dataset: str, split: str | Sequence[str], *,
             set: Mapping[str, Any] | Sequence[str] | None = None,  # noqa: A002 (the CLI's --set)
             data_root: str | Path | None = None, dataset_options: Mapping[str, Any] | None = None,
             store: Store | str | Path | None = None, seed: int = 0, limit: int | None = None,
             batch_size: int = 8, calibration: str | Calibration | None = None,
             threshold: float = 0.5, criterion: str = DEFAULT_CRITERION,
             tune_on_reported_split: bool = False, sweep_step: float = 0.05,
             breakdown: str | None = "kind", statistics: StatsOptions | None = None,
             together: bool = False, host: PluginHost | None = None, progress: bool = False,
             generate: bool = False, protocol: str = "image", protocol_size: int = 512,
             skip_empty_gt: bool = False, max_image_pixels: int = DEFAULT_MAX_PIXELS) -> Results:
    """Evaluate methods on a data set split and return the figures.

    ``methods``: registered names (``"gt_box"``, or ``"gt_box,full_image"``) or objects with a
    ``predict(batch)`` method (see ``refbench.method``), registered nowhere. ``set``: config
    values as Python values, ``{"gt_box.grow": 0.1}``, ``{"gt_box": {"grow": 0.1}}`` or
    ``{"*.backbone": "tiny"}``. ``split``: one split or several. ``calibration``: the split the
    score-map thresholds are chosen on (by ``criterion``), or None to report them at
    ``threshold``. ``store``: a ``Store`` or a path to a ``store.sqlite`` to resume from and
    write to; by default a temporary one, deleted afterwards. ``generate`` writes a missing
    synthetic data set (RefShapes) to its root first. ``protocol="vpd"`` scores as VPD's test.py
    does (everything squashed to ``protocol_size``; both empty counts as IoU 0).
    ``skip_empty_gt`` leaves out samples whose ground truth is empty (counted in the results'
    splits) instead of refusing them; ``max_image_pixels`` is the decompression-bomb guard.

    Prints nothing (unless ``progress``) and writes nothing but the store it is given. Every
    name, key and value is checked before the data set is opened or any model is loaded.
    """
    host = host or PluginHost()
    candidates = resolve_methods(host, methods, overrides_from(set))
    source = DataSource(dataset, Path(data_root) if data_root is not None else None,
                        dict(dataset_options or {}))
    if not isinstance(calibration, Calibration):
        calibration = Calibration(calibration, criterion, tune_on_reported_split, threshold)
    splits = [split] if isinstance(split, str) else list(split)
    settings = Settings(seed, limit, batch_size, sweep_step, progress, Protocol(protocol, protocol_size),
                        skip_empty_gt, max_image_pixels)
    check_evaluation(host, source, splits, calibration, settings)
    with open_store(store) as opened:
        return run_evaluation(host, candidates, source, splits, store=opened, settings=settings,
                              calibration=calibration, statistics=statistics or StatsOptions(),
                              breakdown=breakdown, together=together, generate=generate)
