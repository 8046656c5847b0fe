"""``refbench data``: check a data root before trusting a figure computed on it (``check``), and generate RefShapes (``make-shapes``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from refbench.cli import common
from refbench.errors import UserError

EXAMPLE = """examples:
  refbench data check --dataset refcoco --data-root data/refer
  refbench data check --dataset refshapes --split val --no-decode"""
SHOWN_PROBLEMS = 20


def add(sub: Any) -> None:
    data = sub.add_parser("data", help="data utilities: check a data set, generate RefShapes")
    actions = data.add_subparsers(dest="data_command", required=True, parser_class=common.Parser,
                                  metavar="ACTION")
    p = actions.add_parser("make-shapes", help="generate the synthetic RefShapes data set",
                           epilog="example:\n  refbench data make-shapes --out data/refshapes --seed 0")
    p.add_argument("--out", type=Path, default=Path("data/refshapes"), help="where to write it")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives byte-identical files")
    for split, default in (("train", 600), ("val", 100), ("testA", 60), ("testB", 60)):
        p.add_argument(f"--{split}", type=int, default=default, metavar="IMAGES", help=f"images in {split}")
    p.set_defaults(handler=make_shapes)

    check = actions.add_parser("check", help="validate every split: records, ground truths, "
                               "images (decoded at their declared size)", epilog=EXAMPLE)
    common.global_options(check, suppress=True)
    common.dataset_options(check, default_split=None)
    check.add_argument("--no-decode", action="store_true",
                       help="read image headers only (size and mode), not the pixels")
    check.add_argument("--max-image-pixels", type=common.positive_int, default=None,
                       help="the decompression-bomb guard (default: Pillow's limit, 89478485)")
    check.set_defaults(handler=data_check)


def data_check(args: argparse.Namespace) -> int:
    from refbench.data.checks import check_split, collecting
    from refbench.data.images import DEFAULT_MAX_PIXELS
    from refbench.data.source import open_dataset
    from refbench.results.tables import aligned

    host = common.host(args)
    dataset = open_dataset(host, common.dataset_source(args))
    validator = collecting(dataset)  # before anything is read
    splits = [args.split] if args.split else dataset.splits()
    results = [check_split(dataset, split, validator, args.max_image_pixels or DEFAULT_MAX_PIXELS,
                           decode=not args.no_decode) for split in splits]
    rows = [["split", "samples", "images", "empty truths", "image modes", "problems", "verdict"]]
    for r in results:
        modes = ", ".join(f"{mode}: {n}" for mode, n in sorted(r.modes.items())) or "-"
        rows.append([r.split, str(r.samples), str(r.images), str(r.empty), modes,
                     str(r.problem_count), "ok" if r.ok else "FAIL"])
    print(f"Data check: {args.dataset} at {common.dataset_source(args).resolved_root(host)}")
    print("\n".join(aligned(rows, markdown=False)))
    problems = [p for r in results for p in r.problems]
    total = sum(r.problem_count for r in results)
    for problem in problems[:SHOWN_PROBLEMS]:
        print(f"- {problem}")
    if total > SHOWN_PROBLEMS:
        print(f"... and {total - SHOWN_PROBLEMS} more")
    if total:
        raise UserError(f"{total} problem(s) in {args.dataset} ({', '.join(r.split for r in results if not r.ok)}): "
                        f"listed above; fix them before trusting a figure computed on this data")
    return 0


def make_shapes(args: argparse.Namespace) -> int:
    from refbench.data.shapes import ShapesConfig, generate

    counts = {"train": args.train, "val": args.val, "testA": args.testA, "testB": args.testB}
    if any(v < 0 for v in counts.values()):
        raise UserError("image counts must be zero or more")
    manifest = generate(args.out, ShapesConfig(seed=args.seed, images=counts))
    print(f"wrote RefShapes to {args.out}: {manifest['images']} images, "
          f"{manifest['annotations']} objects, {manifest['sentences']} sentences")
    return 0
