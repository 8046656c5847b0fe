"""Runs methods over a dataset split: resumable, batch-size independent, one store.

The flow per method: build it from its spec and config, fingerprint it, skip the samples the
store already holds, then for each batch of whole groups load images, predict, score, and write
the batch in one transaction. Metrics are computed from the store afterwards, so a resumed run
and an uninterrupted one report the same numbers.
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

from refbench import provenance
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


def build_method(spec: MethodSpec, overrides: list[Override]) -> tuple[Method, dict[str, Any]]:
    """Instantiate a method with its config (defaults plus the overrides aimed at it)."""
    factory = resolve(spec.factory)
    config_cls = config_class(spec)
    if config_cls is None:
        if any(o.target == spec.name for o in overrides):
            raise UserError(f"method {spec.name!r} takes no config keys")
        return factory(None), {}
    config = build_config(config_cls, spec.name, overrides)
    method = factory(config)
    if not callable(getattr(method, "predict", None)):
        raise UserError(f"method {spec.name!r} from plugin {spec.plugin!r} has no predict(batch)")
    return method, config_dict(config)


@dataclass
class MethodRun:
    spec: MethodSpec
    record: RunRecord
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0


def run_method(spec: MethodSpec, method: Method, config: dict[str, Any], dataset: Dataset,
               split: str, samples: Sequence[Sample], store: Store, options: RunOptions,
               thresholds: tuple[float, ...], dataset_fp: str) -> MethodRun:
    method_fp = provenance.method_fingerprint(spec.name, config, weights_fingerprint(method))
    record = RunRecord(
        run_key=provenance.run_key(method_fp, dataset_fp, options.seed, thresholds),
        method=spec.name, method_fingerprint=method_fp, config=config, dataset=dataset.name,
        split=split, dataset_fingerprint=dataset_fp, seed=options.seed, thresholds=thresholds,
        versions=provenance.versions(), git_hash=provenance.git_hash(), limit_n=options.limit,
        info={"plugin": spec.plugin})
    store.register_run(record)
    done = store.done_ids(record.run_key)
    todo = [s for s in samples if s.sample_id not in done]
    outcome = MethodRun(spec, record, reused=len(samples) - len(todo))
    if not todo:
        return outcome
    from tqdm import tqdm

    start = time.perf_counter()
    with tqdm(total=len(samples), initial=outcome.reused, desc=spec.name, unit="sample",
              disable=not options.progress, dynamic_ncols=True, file=sys.stderr) as bar:
        for batch_samples in batches(todo, options.batch_size):
            images = [load_rgb(s.image_path, (s.height, s.width), s.sample_id) for s in batch_samples]
            seeds = [sample_seed(options.seed, s.sample_id) for s in batch_samples]
            predictions = method.predict(Batch(batch_samples, images, seeds))
            rows, groups = score_batch(batch_samples, predictions, spec.name, thresholds, dataset)
            store.write(record.run_key, rows, groups)
            outcome.computed += len(batch_samples)
            bar.update(len(batch_samples))
    outcome.seconds = time.perf_counter() - start
    return outcome


def run(host: PluginHost, options: RunOptions) -> dict[str, Any]:
    """``refbench run``: evaluate each method, print the table, write results.json."""
    if options.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {options.batch_size}")
    if not options.methods:
        raise UserError("no methods given: pass --methods NAME[,NAME...] (see refbench ls methods)")
    specs = [host.method(name) for name in options.methods]
    thresholds = sweep_thresholds(options.sweep_step)
    try:
        threshold_index(thresholds, options.threshold)
    except ValueError:
        raise UserError(f"--threshold {options.threshold} is not on the sweep "
                        f"(step {options.sweep_step}): pick one of {list(thresholds)}") from None
    check_targets(options.overrides, options.methods,
                  {s.name: _field_names(config_class(s)) for s in specs})

    dataset = open_dataset(host, options.dataset, options.data_root, options.dataset_options)
    samples = plan_samples(dataset, options.split, options.limit)
    if not samples:
        raise UserError(f"split {options.split!r} of {options.dataset} has no samples")
    check_images_exist([s.image_path for s in samples])
    dataset_fp = dataset.fingerprint(options.split)

    out = options.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    with Store(out / "store.sqlite") as store:
        for spec in specs:
            method, config = build_method(spec, options.overrides)
            outcome = run_method(spec, method, config, dataset, options.split, samples, store,
                                 options, thresholds, dataset_fp)
            summary = collect(store, outcome.record.run_key, samples, thresholds,
                              options.threshold, semantic=dataset.task == "semantic")
            if summary["counts"]:
                store.update_run_info(outcome.record.run_key, {"counts": summary["counts"]})
            results[spec.name] = {
                "plugin": spec.plugin, "fingerprint": outcome.record.method_fingerprint,
                "run_key": outcome.record.run_key, "config": config, **summary,
                "computed": outcome.computed, "reused": outcome.reused,
                "seconds_per_sample": outcome.seconds / outcome.computed if outcome.computed else None,
            }
            del method
    payload = {
        "refbench_version": provenance.versions()["refbench"],
        "created": timestamp(),
        "git_hash": provenance.git_hash(),
        "versions": provenance.versions(),
        "dataset": {"name": options.dataset, "split": options.split, "task": dataset.task,
                    "root": str(options.data_root or default_root(host.dataset(options.dataset))),
                    "fingerprint": dataset_fp, "n_samples": len(samples)},
        "limit": options.limit,
        "note": ("--limit was used: these figures cover a subset and are NOT a real score"
                 if options.limit is not None else None),
        "seed": options.seed,
        "batch_size": options.batch_size,
        "results": results,
    }
    write_json(out / "results.json", payload)
    print(format_table(results))
    if options.limit is not None:
        print(f"(--limit {options.limit}: a subset, not a real score)")
    print(f"results: {out / 'results.json'}")
    return payload


def _field_names(config_cls: type | None) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(config_cls)} if config_cls else set()
