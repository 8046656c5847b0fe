"""``refbench run``: evaluate methods on a data set split, print the table, keep results.json."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from refbench.cli import common


EXAMPLE = """example (the bundled model; the first run generates ./data/refshapes):
  refbench run --methods vpd,diffsegmenter_ab --backbone shapes --set vpd.checkpoint=shipped
  refbench run --methods gt_box,full_image --dataset refcoco --split testA --data-root data/refer"""


def add(sub: Any) -> None:
    p = sub.add_parser("run", help="evaluate methods on a dataset split", epilog=EXAMPLE)
    p.add_argument("--methods", "--method", dest="methods", required=True,
                   help="comma-separated method names (refbench ls methods)")
    common.dataset_options(p)
    common.backbone_option(p)
    common.overrides_option(p, "a config value; '*.KEY=VALUE' sets it for every method having KEY")
    calibration_options(p)
    common.evaluation_options(p, "run folder for results.json and store.sqlite "
                                 "(default: runs/<dataset>-<split>)")
    p.set_defaults(handler=run)


def calibration_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration-split", default=None,
                   help="choose each score-map method's threshold on this split (default: val, "
                        "unless val is the reported split; 'none': use --threshold)")
    p.add_argument("--criterion", default="mIoU", help="what the threshold maximises: mIoU, oIoU or semantic_mIoU")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="the threshold when nothing is calibrated (every threshold of the sweep is stored)")
    p.add_argument("--tune-on-reported-split", action="store_true",
                   help="allow the calibration split to be the reported one (figures marked †)")


def calibration(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The calibration, and a note when the default had to give way."""
    from refbench.results.calibration import Calibration

    split = args.calibration_split
    note = None
    defaulted = split is None
    if split is None:
        split = "val"
        if args.split == "val" and not args.tune_on_reported_split:
            split = None
            note = (f"thresholds fixed at {args.threshold}: the default calibration split, val, is "
                    f"the reported split (pass --calibration-split train to calibrate there)")
    elif split.lower() == "none":
        split = None
    return Calibration(split, args.criterion, args.tune_on_reported_split, args.threshold,
                       defaulted), note


def evaluate_into_folder(host: Any, args: argparse.Namespace, candidates: Any,
                         statistics: Any = None, **options: Any) -> tuple[Any, Path, bool, str | None]:
    """What ``run`` and ``grid`` share: check everything, then evaluate ``candidates`` on
    ``--dataset``/``--split`` into the ``--out`` folder's store. Returns the results, the folder,
    whether this process is the main one (only it reports), and the calibration note."""
    from refbench import distributed
    from refbench.core import check_evaluation, run_evaluation
    from refbench.results.stats import StatsOptions
    from refbench.store import Store

    source = common.dataset_source(args)
    calibration_, note = calibration(args)
    settings = common.settings(args)
    check_evaluation(host, source, [args.split], calibration_, settings)
    out = common.run_folder(args.out or Path("runs") / f"{args.dataset}-{args.split}")
    cluster = distributed.detect()
    with Store(out / "store.sqlite") as store:
        results = run_evaluation(host, candidates, source, [args.split], store=store,
                                 settings=settings, calibration=calibration_,
                                 statistics=statistics or StatsOptions(), cluster=cluster,
                                 generate=True, **options)
    return results, out, cluster.is_main, note


def run(args: argparse.Namespace) -> int:
    from refbench.candidates import resolve_methods
    from refbench.results.files import write_results
    from refbench.results.tables import to_text

    host = common.host(args)
    candidates = resolve_methods(host, common.method_list(args.methods), common.overrides(args))
    results, out, main, note = evaluate_into_folder(host, args, candidates, breakdown="kind")
    if not main:
        return 0
    path = write_results(out, results.as_dict())
    print(to_text(results.table()))
    if (breakdown := results.breakdown_table()) is not None:
        print("\n" + to_text(breakdown))
    print_thresholds(results, note)
    print_work(results)
    if args.limit is not None:
        print(f"(--limit {args.limit}: a subset, not a real score)")
    print(f"results: {path}")
    return 0


def print_thresholds(results: Any, note: str | None) -> None:
    """Which threshold each method is reported at, and why."""
    for s in results:
        t = s.threshold
        if t.value is None:
            why = "a mask: no threshold"
        elif t.calibration_split:
            why = f"maximises {t.criterion} on {t.calibration_split}" + (
                " (the reported split: marked †)" if t.tuned_on_reported else "")
        else:
            why = "fixed before seeing data"
        print(f"threshold of {s.label}: {t.label()} ({why})")
    if note:
        print(f"({note})")


def print_work(results: Any) -> None:
    """Who computed what: this process, other writers on the same store, or earlier runs."""
    for s in results:
        work = s.work.as_dict(s.n)
        print(f"{s.label}: {work['computed']} computed here, {work['computed_elsewhere']} by "
              f"another writer, {work['reused']} reused from the store")


