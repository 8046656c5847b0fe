"""``refbench ls``, ``refbench reported`` and ``refbench show``: what is installed, published,
or stored in a run folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from refbench.cli import common
from refbench.errors import UserError


def add(sub: Any) -> None:
    p = sub.add_parser("ls", help="list installed methods, datasets and backbones",
                       epilog="examples:\n  refbench ls methods\n  refbench ls methods --params --backbone shapes")
    p.add_argument("what", nargs="?", choices=["methods", "datasets", "backbones", "all"], default="all",
                   help="which registry to list")
    p.add_argument("--params", action="store_true",
                   help="methods: count total and trainable parameters (builds each model)")
    p.add_argument("--backbone", default=None, help="with --params: the backbone to count on")
    p.set_defaults(handler=ls)

    p = sub.add_parser("reported", help="list the published figures specs can show beside measured ones",
                       epilog="example:\n  refbench reported")
    p.add_argument("--file", type=Path, default=Path("leaderboards") / "reported.yaml", help="the registry")
    p.set_defaults(handler=reported)

    p = sub.add_parser("show", help="what a run folder holds: its runs, figures and store",
                       epilog="example:\n  refbench show runs/refshapes-val")
    p.add_argument("folder", type=Path, help="a run folder (one with results.json or store.sqlite)")
    p.set_defaults(handler=show)


def ls(args: argparse.Namespace) -> int:
    host = common.host(args)
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
            family = f"family {spec.family:<4}  " if section == "backbones" else ""
            print(f"  {name.ljust(width)}  [{spec.plugin}]  {family}{counts}{spec.summary}")
            if getattr(spec, "source", ""):
                print(f"  {' ' * width}  source: {spec.source}")
        if section == "backbones":
            print("  (methods default to sd15, which needs Stable Diffusion 1.5 in the Hugging Face "
                  "cache; with nothing cached use --backbone shapes, the bundled model; a directory "
                  "or hub id's family is read from its model_index.json)")
    for failure in host.failures.values():
        print(f"(not loaded: {failure})")
    return 0


def _parameter_column(host: Any, spec: Any, args: argparse.Namespace) -> str:
    from refbench.diffusion.families import FamilyError
    from refbench.params import parameter_counts

    try:
        counts = parameter_counts(host, spec, args.backbone)
    except FamilyError:  # the method does not run on this backbone's family
        counts = None
    if counts is None:
        return f"{'-':>14} {'-':>14}  "
    total, trainable = counts
    return f"{total:>14,} {trainable:>14,}  "


def reported(args: argparse.Namespace) -> int:
    from refbench.reported import curve_text, load_registry

    entries = load_registry(args.file)
    width = max((len(k) for k in entries), default=0)
    for key, e in entries.items():
        figures = ", ".join(f"{k} {v:.2f}" for k, v in e.metrics.items()) or curve_text(e)
        print(f"{key.ljust(width)}  {e.method} on {e.dataset} {e.split}: {figures}")
        if e.protocol_line():
            print(f"{'':{width}}  protocol: {e.protocol_line()}")
        print(f"{'':{width}}  {e.work.citation()}; {e.source}")
    return 0


def show(args: argparse.Namespace) -> int:
    """The folder's results.json entries (figures at their thresholds) and its store's runs."""
    from refbench.store import Store

    folder = args.folder
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: give a run folder (e.g. runs/refshapes-val)")
    results = folder / "results.json"
    if results.is_file():
        try:
            entries = json.loads(results.read_text()).get("results", {})
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            raise UserError(f"{results} is not a refbench results file: rerun the command "
                            f"that wrote it") from None
        print(f"{results}: {len(entries)} runs")
        width = max((len(k) for k in entries), default=0)
        for label, e in entries.items():
            m = e.get("metrics", {})
            limit = f", limit {e['limit']}" if e.get("limit") is not None else ""
            print(f"  {label.ljust(width)}  {e.get('dataset', '?')}/{e.get('split', '?')}{limit}  "
                  f"n={e.get('n')}  threshold {e.get('threshold_label', '?')}  "
                  f"oIoU {100 * m.get('oIoU', float('nan')):.2f}  mIoU {100 * m.get('mIoU', float('nan')):.2f}")
    store = folder / "store.sqlite"
    if store.is_file():
        with Store(store) as opened:
            runs = opened.runs()
            print(f"{store}: {len(runs)} runs")
            for run in runs:
                print(f"  {run['run_key']}  {run['method']} on {run['dataset']}/{run['split']}: "
                      f"{opened.count(run['run_key'])} rows")
    if not results.is_file() and not store.is_file():
        raise UserError(f"{folder} holds no results.json or store.sqlite: not a run folder")
    return 0
