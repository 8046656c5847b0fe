"""``refbench grid``: one method over the cartesian product of parameter values."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from refbench.cli import common
from refbench.cli.run import calibration_options
from refbench.errors import UserError

EXAMPLE = """examples:
  refbench grid --method diffsegmenter_ab --param alpha=0.5,0.7,0.9 --backbone shapes
  refbench grid leaderboards/binding.yaml          # the grids a spec defines"""


def add(sub: Any) -> None:
    p = sub.add_parser("grid", help="ablation grid: one method over the product of parameter values",
                       epilog=EXAMPLE)
    p.add_argument("spec", nargs="?", type=Path, default=None,
                   help="a spec in leaderboards/ whose grids to run (instead of --method/--param)")
    p.add_argument("--method", "--methods", dest="method", default=None,
                   help="the method whose parameters vary")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="a parameter and its values; several --param give the cartesian product")
    common.dataset_options(p)
    common.backbone_option(p)
    common.overrides_option(p, "fix a config value for every cell")
    calibration_options(p)
    p.add_argument("--resamples", type=common.positive_int, default=2000, help="bootstrap resamples")
    common.evaluation_options(p, "run folder (default: runs/<dataset>-<split>, the store "
                                 "`refbench run` uses)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from refbench.results.tables import to_text

    host = common.host(args)
    if args.spec is not None:
        if args.method or args.params:
            raise UserError("give either a spec or --method/--param, not both")
        from refbench import distributed
        from refbench.report.build import run_spec_grids
        from refbench.report.spec import load_spec

        tables = run_spec_grids(host, load_spec(args.spec, limit=args.limit), not args.no_progress)
        if distributed.detect().is_main:
            for table in tables:
                print(to_text(table) + "\n")
        return 0

    from refbench.cli.run import evaluate_into_folder
    from refbench.grid import GridRun, GridSpec, check_grid, expand, grid_payload, params_from
    from refbench.results.files import write_json
    from refbench.results.stats import StatsOptions
    from refbench.results.tables import ablation_table

    if not args.method:
        raise UserError("pass --method NAME with one or more --param NAME=V1,V2 (or a spec file)")
    grid = GridSpec(args.method, params_from(args.params), common.overrides(args))
    cells = check_grid(host, grid)
    results, out, main, note = evaluate_into_folder(host, args, cells, StatsOptions(args.resamples),
                                                    together=True)
    if not main:
        return 0
    result = GridRun(grid, results, expand(grid))
    table = ablation_table(f"grid-{args.method}", f"{grid.name} on {args.dataset} {args.split}",
                           list(grid.params), result.cells, results.calibration.split,
                           results.statistics.confidence)
    header = {k: v for k, v in results.as_dict().items() if k != "results"}
    path = out / f"grid-{args.method}.json"
    write_json(path, {**header, "grid": grid_payload(result)})
    print(to_text(table))
    if note:
        print(f"({note})")
    if args.limit is not None:
        print(f"(--limit {args.limit}: a subset, not a real score)")
    print(f"results: {path}")
    return 0
