"""The ``refbench`` command line.

Every user mistake ends in one line on stderr and exit status 2; results computed before the
mistake surfaced stay in the store. Heavy libraries are imported only by the commands that run
models, so ``refbench ls`` answers instantly.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Any

from refbench.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        self.exit(2, f"refbench: error: {message} (see '{self.prog} --help')\n")


def _one_line_warning(message: Any, category: type, filename: str, lineno: int,
                      line: str | None = None) -> str:
    return f"refbench: warning: {message}\n"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else _positive_int(text)


def _add_dataset_args(p: argparse.ArgumentParser, default_split: str = "val") -> None:
    p.add_argument("--dataset", default="refshapes", help="dataset name (refbench ls datasets)")
    p.add_argument("--split", default=default_split, help=f"split (default {default_split})")
    p.add_argument("--data-root", type=Path, default=None,
                   help="dataset folder (default: ./data/<dataset's folder>)")
    p.add_argument("--split-by", default=None, help="RefCOCO family: unc, google or umd")
    p.add_argument("--image-dir", type=Path, default=None, help="image folder, if not the default")


def _dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.split_by:
        options["split_by"] = args.split_by
    if args.image_dir:
        options["image_dir"] = args.image_dir
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="refbench", description="Benchmark text-to-image diffusion models as "
                     "text-driven image segmenters.")
    parser.add_argument("--strict-plugins", action="store_true",
                        help="fail when any plugin cannot be loaded (default: warn and skip it)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ls = sub.add_parser("ls", help="list installed methods, datasets and backbones")
    ls.add_argument("what", nargs="?", choices=["methods", "datasets", "backbones", "all"], default="all")
    ls.add_argument("--params", action="store_true",
                    help="methods: count total and trainable parameters (builds each model)")
    ls.add_argument("--backbone", default=None, help="with --params: the backbone to count on")

    data = sub.add_parser("data", help="data utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    shapes = data_sub.add_parser("make-shapes", help="generate the synthetic RefShapes data set")
    shapes.add_argument("--out", type=Path, default=Path("data/refshapes"))
    shapes.add_argument("--seed", type=int, default=0)
    for split, default in (("train", 600), ("val", 100), ("testA", 60), ("testB", 60)):
        shapes.add_argument(f"--{split}", type=int, default=default, metavar="IMAGES",
                            help=f"images in {split} (default {default})")

    train = sub.add_parser("train", help="train a trainable method (vpd, f_vpd, lora_vpd)")
    train.add_argument("--method", required=True)
    _add_dataset_args(train, default_split="train")
    train.add_argument("--epochs", type=_positive_int, default=1)
    train.add_argument("--batch-size", type=_positive_int, default=8)
    train.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (VPD: 5e-5)")
    train.add_argument("--weight-decay", type=float, default=1e-2, help="not applied to biases and norms")
    train.add_argument("--poly-power", type=float, default=0.9, help="poly schedule power")
    train.add_argument("--limit-train", type=_positive_int, default=None,
                       help="train on the first N samples only")
    train.add_argument("--val-split", default="holdout",
                       help="validation split; 'holdout' (default) holds out 1 in 10 training images")
    train.add_argument("--limit-val", type=_positive_int, default=200)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, default=None,
                       help="folder for checkpoints and train.json (default runs/train-<method>-<dataset>)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="METHOD.KEY=VALUE")
    train.add_argument("--no-progress", action="store_true")

    # The options left unset are left out, so that PretrainConfig's defaults are the only ones.
    pretrain = sub.add_parser("pretrain-shapes", help="train the miniature text-to-image model "
                              "(the shapes backbone) on RefShapes scenes drawn on the fly",
                              argument_default=argparse.SUPPRESS)
    pretrain.add_argument("--out", type=Path, default=Path("runs/shapes-model"),
                          help="model directory, diffusers layout (rerun to resume)")
    pretrain.add_argument("--seed", type=int)
    pretrain.add_argument("--vae-steps", type=_non_negative_int)
    pretrain.add_argument("--steps", type=_positive_int, help="text encoder + UNet steps")
    pretrain.add_argument("--batch-size", type=_positive_int)
    pretrain.add_argument("--lr", type=float)
    pretrain.add_argument("--pool", type=_positive_int, help="scenes kept in memory")
    pretrain.add_argument("--warmup", type=_non_negative_int, help="learning-rate warmup steps")
    pretrain.add_argument("--snr-gamma", type=float,
                          help="min-SNR loss weighting gamma (0: plain noise-prediction MSE)")
    pretrain.add_argument("--grounding-weight", type=float,
                          help="weight of the grounding loss: named words attend to their objects (0: off)")
    pretrain.add_argument("--grounding-max-t", type=_positive_int,
                          help="apply the grounding loss only to samples noised to a timestep below this")
    pretrain.add_argument("--colour-rate", type=float,
                          help="share of caption mentions naming the colour too (the rest: the shape alone)")
    pretrain.add_argument("--init-from", type=lambda value: str(Path(value)),
                          help="continue the text encoder + UNet stage from this trained model directory")
    pretrain.add_argument("--save-every", type=_positive_int)
    pretrain.add_argument("--threads", type=_non_negative_int, help="torch threads (0: default)")

    run = sub.add_parser("run", help="evaluate methods on a dataset split")
    run.add_argument("--methods", required=True, help="comma-separated method names")
    _add_dataset_args(run)
    run.add_argument("--limit", type=_positive_int, default=None,
                     help="first N samples only (a smoke test, not a real score)")
    run.add_argument("--batch-size", type=_positive_int, default=8)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", type=Path, default=None,
                     help="run folder for results.json and store.sqlite (default runs/<dataset>-<split>)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="METHOD.KEY=VALUE",
                     help="override a config value; '*.KEY=VALUE' applies to every method having KEY")
    run.add_argument("--threshold", type=float, default=0.5,
                     help="score-map threshold to report (all sweep thresholds are stored)")
    run.add_argument("--sweep-step", type=float, default=0.05, help="threshold sweep step")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")

    grid = sub.add_parser("grid", help="ablation grid: one method over the product of parameter values")
    grid.add_argument("spec", nargs="?", type=Path, default=None,
                      help="a spec in leaderboards/ whose grids to run (instead of --method/--param)")
    grid.add_argument("--method", default=None, help="the method whose parameters vary")
    grid.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=V1,V2,...",
                      help="a parameter and its values; several --param give the cartesian product")
    _add_dataset_args(grid)
    grid.add_argument("--limit", type=_positive_int, default=None,
                      help="first N samples only (a smoke test, not a real score)")
    grid.add_argument("--batch-size", type=_positive_int, default=8)
    grid.add_argument("--seed", type=int, default=0)
    grid.add_argument("--out", type=Path, default=None,
                      help="run folder (default runs/<dataset>-<split>, the store `refbench run` uses)")
    grid.add_argument("--set", dest="overrides", action="append", default=[], metavar="METHOD.KEY=VALUE",
                      help="fix a config value for every cell")
    grid.add_argument("--threshold", type=float, default=0.5,
                      help="score-map threshold when no --calibration-split is given")
    grid.add_argument("--calibration-split", default=None,
                      help="choose each cell's threshold on this split (by --criterion)")
    grid.add_argument("--criterion", default="mIoU", help="calibration criterion: mIoU, oIoU, semantic_mIoU")
    grid.add_argument("--tune-on-reported-split", action="store_true",
                      help="allow --calibration-split to equal --split (figures are marked)")
    grid.add_argument("--sweep-step", type=float, default=0.05, help="threshold sweep step")
    grid.add_argument("--resamples", type=_positive_int, default=2000, help="bootstrap resamples")
    grid.add_argument("--no-progress", action="store_true", help="hide progress bars")

    report = sub.add_parser("report", help="run a leaderboard spec and render it as a static site")
    report.add_argument("spec", type=Path, help="a spec, e.g. leaderboards/refshapes.yaml")
    report.add_argument("--out", type=Path, default=Path("site"), help="site folder (default site/)")
    report.add_argument("--store", type=Path, default=None,
                        help="run folder holding store.sqlite (default: the spec's store, runs/<spec>)")
    report.add_argument("--limit", type=_positive_int, default=None,
                        help="first N samples of each split (a smoke test, marked on every page)")
    report.add_argument("--no-progress", action="store_true", help="hide progress bars")

    reported = sub.add_parser("reported", help="list the published figures specs can show beside "
                              "measured ones (leaderboards/reported.yaml)")
    reported.add_argument("--file", type=Path, default=Path("leaderboards") / "reported.yaml",
                          help="the registry (default leaderboards/reported.yaml)")

    regress = sub.add_parser("regress", help="recompute a spec's leaderboards and compare them "
                             "with its committed baseline (exit 1 on a regression)")
    regress.add_argument("spec", type=Path, help="a spec with a 'regress:' section, e.g. leaderboards/ci.yaml")
    regress.add_argument("--update", action="store_true", help="rewrite the baseline with the current figures")
    regress.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _host(args: argparse.Namespace) -> Any:
    """The plugin host of this command, built once here and passed down."""
    from refbench.plugins import PluginHost

    return PluginHost(strict=args.strict_plugins)


def cmd_ls(args: argparse.Namespace) -> int:
    host = _host(args)
    sections = ["methods", "datasets", "backbones"] if args.what == "all" else [args.what]
    for section in sections:
        registry = getattr(host, section)
        header = f"  {'total':>14} {'trainable':>14}" if section == "methods" and args.params else ""
        print(f"{section}:{header}")
        if not registry:
            print("  (none)")
        width = max((len(n) for n in registry), default=0)
        for name, spec in sorted(registry.items()):
            counts = _parameter_column(host, spec, args) if section == "methods" and args.params else ""
            print(f"  {name.ljust(width)}  [{spec.plugin}]  {counts}{spec.summary}")
    for failure in host.failures.values():
        print(f"(not loaded: {failure})")
    return 0


def _parameter_column(host: Any, spec: Any, args: argparse.Namespace) -> str:
    from refbench.params import parameter_counts

    counts = parameter_counts(host, spec, args.backbone)
    if counts is None:
        return f"{'-':>14} {'-':>14}  "
    total, trainable = counts
    return f"{total:>14,} {trainable:>14,}  "


def cmd_pretrain_shapes(args: argparse.Namespace) -> int:
    from refbench.pretrain.train import PretrainConfig, pretrain

    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    config = PretrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    out = pretrain(args.out, config)
    print(f"model written to {out}; use it with --set '*.backbone={out}'")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from refbench.config import parse_overrides
    from refbench.train import TrainOptions, train

    options = TrainOptions(
        method=args.method, dataset=args.dataset, split=args.split, data_root=args.data_root,
        dataset_options=_dataset_options(args), overrides=parse_overrides(args.overrides),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        poly_power=args.poly_power, limit_train=args.limit_train, val_split=args.val_split,
        limit_val=args.limit_val, seed=args.seed, out=args.out, progress=not args.no_progress)
    train(_host(args), options)
    return 0


def cmd_make_shapes(args: argparse.Namespace) -> int:
    from refbench.data.shapes import ShapesConfig, generate

    counts = {"train": args.train, "val": args.val, "testA": args.testA, "testB": args.testB}
    if any(v < 0 for v in counts.values()):
        raise UserError("image counts must be zero or more")
    manifest = generate(args.out, ShapesConfig(seed=args.seed, images=counts))
    print(f"wrote RefShapes to {args.out}: {manifest['images']} images, "
          f"{manifest['annotations']} objects, {manifest['sentences']} sentences")
    return 0


def _run_folder(out: Path) -> Path:
    """The run folder, usable: a one-line error for a file in its place."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: pass a folder for the run")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _print_work(results: Any) -> None:
    """Who computed what: this process, other writers on the same store, or earlier runs."""
    for s in results:
        work = s.work.as_dict(s.n)
        print(f"{s.label}: {work['computed']} computed here, {work['computed_elsewhere']} by "
              f"another writer, {work['reused']} reused from the store")


def cmd_run(args: argparse.Namespace) -> int:
    from refbench import distributed
    from refbench.candidates import resolve_methods
    from refbench.config import parse_overrides
    from refbench.data.source import DataSource
    from refbench.core import Settings, check_evaluation, run_evaluation
    from refbench.results.calibration import Calibration
    from refbench.results.files import write_results
    from refbench.results.stats import StatsOptions
    from refbench.results.tables import to_text
    from refbench.store import Store

    host = _host(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    candidates = resolve_methods(host, methods, parse_overrides(args.overrides))
    source = DataSource(args.dataset, args.data_root, _dataset_options(args))
    calibration = Calibration(split=None, fixed=args.threshold)
    settings = Settings(args.seed, args.limit, args.batch_size, args.sweep_step, not args.no_progress)
    check_evaluation(host, source, [args.split], calibration, settings)
    out = _run_folder(args.out or Path("runs") / f"{args.dataset}-{args.split}")
    cluster = distributed.detect()
    with Store(out / "store.sqlite") as store:
        results = run_evaluation(host, candidates, source, [args.split], store=store,
                                 settings=settings, calibration=calibration,
                                 statistics=StatsOptions(), breakdown="kind", cluster=cluster,
                                 generate=True)
    if not cluster.is_main:
        return 0
    path = write_results(out, results.as_dict())
    print(to_text(results.table()))
    if (breakdown := results.breakdown_table()) is not None:
        print("\n" + to_text(breakdown))
    _print_work(results)
    if args.limit is not None:
        print(f"(--limit {args.limit}: a subset, not a real score)")
    print(f"results: {path}")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from refbench.results.tables import to_text

    host = _host(args)
    if args.spec is not None:
        if args.method or args.params:
            raise UserError("give either a spec or --method/--param, not both")
        from refbench.report.build import run_spec_grids
        from refbench.report.spec import load_spec

        tables = run_spec_grids(host, load_spec(args.spec, limit=args.limit), not args.no_progress)
        if _is_main():
            for table in tables:
                print(to_text(table) + "\n")
        return 0

    from refbench import distributed
    from refbench.config import parse_overrides
    from refbench.data.source import DataSource
    from refbench.core import Settings, check_evaluation, run_evaluation
    from refbench.grid import GridRun, GridSpec, check_grid, expand, grid_payload, params_from
    from refbench.results.calibration import Calibration
    from refbench.results.files import write_json
    from refbench.results.stats import StatsOptions
    from refbench.results.tables import ablation_table
    from refbench.store import Store

    if not args.method:
        raise UserError("pass --method NAME with one or more --param NAME=V1,V2 (or a spec file)")
    grid = GridSpec(args.method, params_from(args.params), parse_overrides(args.overrides))
    cells = check_grid(host, grid)
    source = DataSource(args.dataset, args.data_root, _dataset_options(args))
    calibration = Calibration(args.calibration_split, args.criterion, args.tune_on_reported_split,
                              fixed=args.threshold)
    settings = Settings(args.seed, args.limit, args.batch_size, args.sweep_step, not args.no_progress)
    check_evaluation(host, source, [args.split], calibration, settings)
    out = _run_folder(args.out or Path("runs") / f"{args.dataset}-{args.split}")
    cluster = distributed.detect()
    with Store(out / "store.sqlite") as store:
        results = run_evaluation(host, cells, source, [args.split], store=store, settings=settings,
                                 calibration=calibration, statistics=StatsOptions(args.resamples),
                                 together=True, cluster=cluster, generate=True)
    if not cluster.is_main:
        return 0
    result = GridRun(grid, results, expand(grid))
    table = ablation_table(f"grid-{args.method}", f"{grid.name} on {args.dataset} {args.split}",
                           list(grid.params), result.cells, args.calibration_split, 0.95)
    header = {k: v for k, v in results.as_dict().items() if k != "results"}
    path = out / f"grid-{args.method}.json"
    write_json(path, {**header, "grid": grid_payload(result)})
    print(to_text(table))
    if args.limit is not None:
        print(f"(--limit {args.limit}: a subset, not a real score)")
    print(f"results: {path}")
    return 0


def _is_main() -> bool:
    from refbench import distributed

    return distributed.detect().is_main


def cmd_report(args: argparse.Namespace) -> int:
    from refbench import distributed
    from refbench.report.build import build
    from refbench.report.gallery import build_gallery
    from refbench.report.render import render_site
    from refbench.report.spec import load_spec
    from refbench.results.tables import to_text
    from refbench.store import Store

    spec = load_spec(args.spec, limit=args.limit, store=args.store)
    host = _host(args)
    cluster = distributed.detect()
    with Store(spec.store / "store.sqlite") as store:
        report = build(host, spec, store, progress=not args.no_progress, cluster=cluster)
        if not cluster.is_main:
            return 0
        gallery = None
        if spec.gallery is not None:
            (split,) = [s for s in report.splits if (s.dataset.name, s.split) ==
                        (spec.gallery.dataset, spec.gallery.split)]
            gallery = build_gallery(host, spec, split, store, args.out)
    for table in render_site(report, gallery, args.out):
        print(to_text(table) + "\n")
    print(f"site: {args.out / 'index.html'} ({len(report.splits)} leaderboards, "
          f"{len(report.grids)} grids, {len(report.runs)} runs; store {spec.store / 'store.sqlite'})")
    if spec.limit is not None:
        print(f"(limit {spec.limit}: a subset, not a real score)")
    return 0


def cmd_regress(args: argparse.Namespace) -> int:
    from refbench.regress import regress
    from refbench.report.spec import load_spec

    return regress(_host(args), load_spec(args.spec), update=args.update,
                   progress=not args.no_progress)


def cmd_reported(args: argparse.Namespace) -> int:
    from refbench.reported import curve_text, load_registry

    entries = load_registry(args.file)
    width = max((len(k) for k in entries), default=0)
    for key, e in entries.items():
        figures = ", ".join(f"{k} {v:.2f}" for k, v in e.metrics.items()) or curve_text(e)
        print(f"{key.ljust(width)}  {e.method} on {e.dataset} {e.split}: {figures}")
        print(f"{'':{width}}  {e.work.citation()}; {e.source}")
    return 0


COMMANDS = {"ls": cmd_ls, "reported": cmd_reported, "run": cmd_run, "data": cmd_make_shapes, "train": cmd_train,
            "pretrain-shapes": cmd_pretrain_shapes, "grid": cmd_grid, "report": cmd_report, "regress": cmd_regress}


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning  # type: ignore[assignment]
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"refbench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("refbench: interrupted; finished batches are stored, rerun to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`refbench reported | head`): nothing to say
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
