"""``refbench report`` (a spec as a static site) and ``refbench regress`` (a spec against its
committed figures)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from refbench.cli import common


def add(sub: Any) -> None:
    p = sub.add_parser("report", help="run a leaderboard spec and render it as a static site",
                       epilog="example:\n  refbench report leaderboards/refshapes.yaml --out site/")
    p.add_argument("spec", type=Path, help="a spec, e.g. leaderboards/refshapes.yaml")
    p.add_argument("--out", type=Path, default=Path("site"), help="site folder")
    p.add_argument("--store", type=Path, default=None,
                   help="run folder holding store.sqlite (default: the spec's store, runs/<spec>)")
    p.add_argument("--limit", type=common.positive_int, default=None,
                   help="the first N samples of each split: a smoke test, marked on every page")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=report)

    p = sub.add_parser("regress", help="recompute a spec's leaderboards and compare them with its "
                       "committed baseline (exit 0: within tolerance, 1: a regression, 2: an error)",
                       epilog="examples:\n  refbench regress leaderboards/ci.yaml\n"
                              "  refbench regress my.yaml --update      (write the baseline of your spec)\n"
                              "  refbench regress my.yaml --junit regress.xml --summary regress.md",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", type=Path, help="a spec with a 'regress:' section, e.g. leaderboards/ci.yaml")
    p.add_argument("--update", action="store_true",
                   help="write (or rewrite) the baseline with the current figures")
    p.add_argument("--junit", type=Path, default=None,
                   help="write a JUnit XML report: one test case per checked figure")
    p.add_argument("--summary", type=Path, default=None,
                   help="write a Markdown summary (also appended to $GITHUB_STEP_SUMMARY when set)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=regress)


def report(args: argparse.Namespace) -> int:
    from refbench import distributed
    from refbench.report.build import build
    from refbench.report.gallery import build_gallery
    from refbench.report.render import render_site
    from refbench.report.spec import load_spec
    from refbench.results.tables import to_text
    from refbench.store import Store

    spec = load_spec(args.spec, limit=args.limit, store=args.store)
    common.run_folder(args.out, "site folder")
    host = common.host(args)
    cluster = distributed.detect()
    with Store(spec.store / "store.sqlite") as store:
        built = build(host, spec, store, progress=not args.no_progress, cluster=cluster)
        if not cluster.is_main:
            return 0
        gallery = None
        if spec.gallery is not None:
            (split,) = [s for s in built.splits if (s.dataset.name, s.split) ==
                        (spec.gallery.dataset, spec.gallery.split)]
            gallery = build_gallery(host, spec, split, store, args.out)
    for table in render_site(built, gallery, args.out):
        print(to_text(table) + "\n")
    print(f"site: {args.out / 'index.html'} ({len(built.splits)} leaderboards, "
          f"{len(built.grids)} grids, {len(built.runs)} runs; store {spec.store / 'store.sqlite'})")
    if spec.limit is not None:
        print(f"(limit {spec.limit}: a subset, not a real score)")
    return 0


def regress(args: argparse.Namespace) -> int:
    from refbench.regress import regress as run_regress
    from refbench.report.spec import load_spec

    return run_regress(common.host(args), load_spec(args.spec), update=args.update,
                       progress=not args.no_progress, junit=args.junit, summary=args.summary)
