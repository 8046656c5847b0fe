"""Runs methods over a dataset split: resumable, batch-size independent, one store.

The flow: plan the split (samples, sweep), build each method from its spec and config,
fingerprint it, skip the samples the store already holds, then for each batch of whole groups
load images, predict, score, and write the batch in one transaction. Single runs and the cells of
a grid go through the same ``evaluate``; a grid just hands it several runs at once, so each
batch is loaded once for all of them. Metrics are computed from the store afterwards, so a
resumed run and an uninterrupted one report the same numbers.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

from refbench import distributed, provenance
from refbench.config import Override, build_config, check_targets, config_dict
from refbench.data.images import check_images_exist, load_rgb
from refbench.data.sample import Dataset, Sample
from refbench.errors import UserError
from refbench.method import Batch, Method, sample_seed, weights_fingerprint
from refbench.metrics import sweep_thresholds, threshold_index
from refbench.plugins import PluginHost
from refbench.results import collect, format_table, timestamp, write_json
from refbench.scoring import score_batch
from refbench.specs import DatasetSpec, MethodSpec, resolve
from refbench.store import RunRecord, Store

DATA_HOME = Path("data")


@dataclass
class RunOptions:
    methods: list[str]
    dataset: str
    split: str
    data_root: Path | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None
    batch_size: int = 8
    seed: int = 0
    out: Path | None = None
    overrides: list[Override] = field(default_factory=list)
    threshold: float = 0.5
    sweep_step: float = 0.05
    progress: bool = True
    breakdown: str | None = "kind"  # a sample meta field to break results down by, when present

    def out_dir(self) -> Path:
        return self.out or Path("runs") / f"{self.dataset}-{self.split}"


# -- datasets --------------------------------------------------------------------------------
def default_root(spec: DatasetSpec) -> Path:
    return DATA_HOME / (spec.default_root or spec.name)


def ensure_generated(spec: DatasetSpec, root: Path, seed: int = 0) -> None:
    """Generate a synthetic data set at ``root`` if it is absent (atomically, so concurrent
    processes never see half a data set)."""
    if root.exists() or not spec.generator:
        return
    print(f"refbench: {root} not found; generating {spec.name} there (seed {seed})", file=sys.stderr)
    staging = root.with_name(f".{root.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    resolve(spec.generator)(staging, seed=seed)
    try:
        staging.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)


def open_dataset(host: PluginHost, name: str, root: Path | None = None,
                 options: dict[str, Any] | None = None) -> Dataset:
    spec = host.dataset(name)
    root = Path(root) if root is not None else default_root(spec)
    ensure_generated(spec, root)
    if not root.exists():
        how = f"; {spec.summary}" if spec.summary else ""
        raise UserError(f"data root {root} does not exist: pass --data-root pointing at your copy "
                        f"of {name}{how} (see the README's 'Data layout')")
    try:
        return resolve(spec.factory)(root, **{**spec.options, **(options or {})})
    except TypeError as error:
        raise UserError(f"dataset {name!r} does not take these options ({error})") from None


def plan_samples(dataset: Dataset, split: str, limit: int | None) -> list[Sample]:
    """The split's samples, cut to ``limit`` without splitting a group (an image of semantic
    data is scored as a whole)."""
    samples = dataset.samples(split)
    if limit is None or limit >= len(samples):
        return samples
    if limit <= 0:
        raise UserError(f"--limit must be positive, got {limit}")
    end = limit
    while end < len(samples) and samples[end].group == samples[end - 1].group:
        end += 1
    return samples[:end]


def batches(samples: Sequence[Sample], batch_size: int) -> Iterator[list[Sample]]:
    """Batches of about ``batch_size`` samples made of whole groups."""
    batch: list[Sample] = []
    for _, members in groupby(samples, key=lambda s: s.group):
        batch.extend(members)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- methods ---------------------------------------------------------------------------------
def config_class(spec: MethodSpec) -> type | None:
    try:
        factory = resolve(spec.factory)
    except ModuleNotFoundError as error:
        raise UserError(f"method {spec.name!r} needs the package {error.name!r}, which is not "
                        f"installed: pip install 'refbench[diffusion]' (or the plugin's extras)") from None
    return getattr(factory, "Config", None)


def resolve_config(spec: MethodSpec, overrides: list[Override]) -> Any | None:
    """The method's config (defaults plus the overrides aimed at it), validated without
    building the method; None for a method without a Config."""
    config_cls = config_class(spec)
    if config_cls is None:
        if any(o.target == spec.name for o in overrides):
            raise UserError(f"method {spec.name!r} takes no config keys")
        return None
    return build_config(config_cls, spec.name, overrides)


def build_method(spec: MethodSpec, overrides: list[Override]) -> tuple[Method, dict[str, Any]]:
    """Instantiate a method with its config (defaults plus the overrides aimed at it)."""
    config = resolve_config(spec, overrides)
    method = resolve(spec.factory)(config)
    if not callable(getattr(method, "predict", None)):
        raise UserError(f"method {spec.name!r} from plugin {spec.plugin!r} has no predict(batch)")
    return method, config_dict(config) if config is not None else {}


@dataclass
class MethodRun:
    """One method configuration evaluated on one split: a run in the store."""

    spec: MethodSpec
    record: RunRecord
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0  # predict + score + write, image loading excluded

    @property
    def config(self) -> dict[str, Any]:
        return self.record.config

    def result(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The run's entry in a results file."""
        return {"plugin": self.spec.plugin, "fingerprint": self.record.method_fingerprint,
                "run_key": self.record.run_key, "config": self.config, **summary,
                "computed": self.computed, "reused": self.reused,
                "seconds_per_sample": self.seconds / self.computed if self.computed else None}


@dataclass
class SplitPlan:
    """What is evaluated: a split's samples (cut by --limit) and the sweep they are scored at."""

    dataset: Dataset
    split: str
    samples: list[Sample]
    fingerprint: str
    thresholds: tuple[float, ...]


def plan_split(host: PluginHost, options: RunOptions) -> SplitPlan:
    """Open the dataset and list the samples to evaluate, failing early on missing images."""
    if options.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {options.batch_size}")
    thresholds = sweep_thresholds(options.sweep_step)
    try:
        threshold_index(thresholds, options.threshold)
    except ValueError:
        raise UserError(f"--threshold {options.threshold} is not on the sweep "
                        f"(step {options.sweep_step}): pick one of {list(thresholds)}") from None
    dataset = open_dataset(host, options.dataset, options.data_root, options.dataset_options)
    samples = plan_samples(dataset, options.split, options.limit)
    if not samples:
        raise UserError(f"split {options.split!r} of {options.dataset} has no samples")
    check_images_exist([s.image_path for s in samples])
    return SplitPlan(dataset, options.split, samples, dataset.fingerprint(options.split), thresholds)


def start_run(spec: MethodSpec, config: dict[str, Any], weights: str, plan: SplitPlan,
              store: Store, options: RunOptions) -> MethodRun:
    """Register the run (its key fixes which stored rows it may reuse) and count them."""
    method_fp = provenance.method_fingerprint(spec.name, config, weights)
    record = RunRecord(
        run_key=provenance.run_key(method_fp, plan.fingerprint, options.seed, plan.thresholds),
        method=spec.name, method_fingerprint=method_fp, config=config, dataset=plan.dataset.name,
        split=plan.split, dataset_fingerprint=plan.fingerprint, seed=options.seed,
        thresholds=plan.thresholds, versions=provenance.versions(), git_hash=provenance.git_hash(),
        limit_n=options.limit, info={"plugin": spec.plugin})
    store.register_run(record)
    return MethodRun(spec, record)


def evaluate(jobs: Sequence[tuple[MethodRun, Method]], plan: SplitPlan, store: Store,
             options: RunOptions, cluster: distributed.Cluster | None = None) -> None:
    """Compute the samples each run still lacks, batch-major.

    Each batch of whole groups is loaded once and every run that still needs any of its
    samples predicts on them before the next batch is loaded. So work a method caches per
    (image, seed), such as a diffusion model's latents and noise, is shared by all the runs of a
    grid while it is still in cache. Each run's part of a batch is written in one transaction
    under its own run key: a killed process loses at most one batch per run.

    With several processes (``cluster``), each takes one contiguous shard of what is missing;
    every process sees the same store, so the shards tile the work exactly.
    """
    cluster = cluster or distributed.Cluster()
    pending = []
    for run, _ in jobs:
        done = store.done_ids(run.record.run_key)
        pending.append({s.sample_id for s in plan.samples if s.sample_id not in done})
        run.reused = len(plan.samples) - len(pending[-1])
    todo = [s for s in plan.samples if any(s.sample_id in p for p in pending)]
    todo = distributed.shard_groups(todo, cluster.rank, cluster.world, key=lambda s: s.group)
    if not todo:
        return
    from tqdm import tqdm

    desc = jobs[0][0].spec.name if len(jobs) == 1 else f"{len(jobs)} runs"
    mine = {s.sample_id for s in todo}
    with tqdm(total=sum(len(p & mine) for p in pending), desc=desc, unit="sample",
              disable=not (options.progress and cluster.is_main), dynamic_ncols=True,
              file=sys.stderr) as bar:
        for batch_samples in batches(todo, options.batch_size):
            images = [load_rgb(s.image_path, (s.height, s.width), s.sample_id) for s in batch_samples]
            seeds = [sample_seed(options.seed, s.sample_id) for s in batch_samples]
            for (run, method), wanted in zip(jobs, pending):
                picked = [i for i, s in enumerate(batch_samples) if s.sample_id in wanted]
                if not picked:
                    continue
                start = time.perf_counter()
                sub = [batch_samples[i] for i in picked]
                predictions = method.predict(Batch(sub, [images[i] for i in picked],
                                                   [seeds[i] for i in picked]))
                rows, groups = score_batch(sub, predictions, run.spec.name, plan.thresholds,
                                           plan.dataset)
                store.write(run.record.run_key, rows, groups)
                run.seconds += time.perf_counter() - start
                run.computed += len(sub)
                bar.update(len(sub))


def run_configs(host: PluginHost, configs: Sequence[tuple[MethodSpec, list[Override]]],
                plans: Sequence[SplitPlan], store: Store, options: RunOptions,
                together: bool = False, cluster: distributed.Cluster | None = None
                ) -> list[list[MethodRun]]:
    """Evaluate method configurations on one or more splits, resuming from the store; the
    result is indexed [config][plan]. Each method is built once for all the splits.

    ``together=False`` holds one method in memory at a time (different models on one GPU);
    ``together=True`` builds them all and runs them batch-major (the cells of a grid, which
    share a backbone and per-sample work).
    """
    outcomes: list[list[MethodRun]] = [[] for _ in configs]
    built: list[tuple[int, MethodSpec, Method, dict[str, Any]]] = []

    def flush() -> None:
        for plan in plans:
            jobs = []
            for i, spec, method, config in built:
                run = start_run(spec, config, weights_fingerprint(method), plan, store, options)
                outcomes[i].append(run)
                jobs.append((run, method))
            evaluate(jobs, plan, store, options, cluster)
        built.clear()

    for i, (spec, overrides) in enumerate(configs):
        method, config = build_method(spec, overrides)
        built.append((i, spec, method, config))
        del method  # else the previous model stays alive while the next one is built
        if not together:
            flush()
    flush()
    return outcomes


def run(host: PluginHost, options: RunOptions) -> dict[str, Any]:
    """``refbench run``: evaluate each method, print the table, write results.json."""
    if not options.methods:
        raise UserError("no methods given: pass --methods NAME[,NAME...] (see refbench ls methods)")
    specs = [host.method(name) for name in options.methods]
    check_targets(options.overrides, options.methods,
                  {s.name: _field_names(config_class(s)) for s in specs})
    plan = plan_split(host, options)

    out = options.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    cluster = distributed.detect()
    results: dict[str, dict[str, Any]] = {}
    with Store(out / "store.sqlite") as store:
        sink: Any = store
        if cluster.is_main:  # rows that a killed sharded run left in shard files come first
            distributed.merge_shards(store, out)
        if cluster.distributed:
            cluster.barrier()
            sink = distributed.ShardWriter(store, distributed.new_shard_path(out, cluster.rank))
        outcomes = [o for (o,) in run_configs(host, [(s, options.overrides) for s in specs],
                                              [plan], sink, options, cluster=cluster)]
        if cluster.distributed:
            sink.close()
            work = cluster.gather([(o.computed, o.seconds) for o in outcomes])
            cluster.barrier()
            if not cluster.is_main:
                return {}
            distributed.merge_shards(store, out)
            for i, outcome in enumerate(outcomes):
                outcome.computed = sum(per_rank[i][0] for per_rank in work)
                outcome.seconds = max(per_rank[i][1] for per_rank in work)
        for outcome in outcomes:
            summary = collect(store, outcome.record.run_key, plan.samples, plan.thresholds,
                              options.threshold, semantic=plan.dataset.task == "semantic",
                              breakdown_field=options.breakdown)
            if summary["counts"]:
                store.update_run_info(outcome.record.run_key, {"counts": summary["counts"]})
            results[outcome.spec.name] = outcome.result(summary)
    payload = {
        **run_header(host, options, plan),
        "results": results,
    }
    write_json(out / "results.json", payload)
    print(format_table(results))
    if options.limit is not None:
        print(f"(--limit {options.limit}: a subset, not a real score)")
    print(f"results: {out / 'results.json'}")
    return payload


def run_header(host: PluginHost, options: RunOptions, plan: SplitPlan) -> dict[str, Any]:
    """Provenance for a results file: versions, git hash, data set, limit, seed."""
    return {
        "refbench_version": provenance.versions()["refbench"],
        "created": timestamp(),
        "git_hash": provenance.git_hash(),
        "versions": provenance.versions(),
        "dataset": {"name": options.dataset, "split": plan.split, "task": plan.dataset.task,
                    "root": str(options.data_root or default_root(host.dataset(options.dataset))),
                    "fingerprint": plan.fingerprint, "n_samples": len(plan.samples)},
        "limit": options.limit,
        "note": ("--limit was used: these figures cover a subset and are NOT a real score"
                 if options.limit is not None else None),
        "seed": options.seed,
        "batch_size": options.batch_size,
        "processes": distributed.launched_world_size(),
    }


def _field_names(config_cls: type | None) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(config_cls)} if config_cls else set()
