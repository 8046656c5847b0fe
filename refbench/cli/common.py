"""What the commands share: the parser class, value types, option groups, the plugin host."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from refbench.errors import UserError


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (unless the help states it, or there is none to
    show); the example epilog kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = not (default is None or default is False or default is argparse.SUPPRESS or default == [])
        if shown and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        self.exit(2, f"refbench: error: {message} (see '{self.prog} --help')\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else positive_int(text)


def global_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """Options every command takes, before or after its name (``suppress``: on a subcommand,
    where an absent option must not overwrite the one given before the name)."""
    default = argparse.SUPPRESS if suppress else False
    parser.add_argument("--strict-plugins", action="store_true", default=default,
                        help="fail when any plugin cannot be loaded, instead of warning and skipping it")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the traceback of an unexpected error")


def dataset_options(p: argparse.ArgumentParser, default_split: str = "val") -> None:
    p.add_argument("--dataset", default="refshapes", help="dataset name (refbench ls datasets)")
    p.add_argument("--split", default=default_split, help="the split")
    p.add_argument("--data-root", type=Path, default=None,
                   help="dataset folder (default: ./data/<the dataset's folder>)")
    p.add_argument("--split-by", default=None, help="RefCOCO family: unc, google or umd (default: the data set's)")
    p.add_argument("--image-dir", type=Path, default=None, help="image folder, if not the layout's")
    p.add_argument("--data-option", dest="data_options", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="a reader option, e.g. background=false (VOC20, PC59, COCO-Object80) or "
                        "prompt_names=groupvit; checked against the reader's options")


def dataset_source(args: argparse.Namespace) -> Any:
    from refbench.data.source import DataSource

    options: dict[str, Any] = {}
    for item in getattr(args, "data_options", []):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--data-option {item!r} is not KEY=VALUE: write e.g. "
                            f"--data-option background=false")
        options[key.strip()] = value
    if args.split_by:
        options["split_by"] = args.split_by
    if args.image_dir:
        options["image_dir"] = args.image_dir
    return DataSource(args.dataset, args.data_root, options)


def evaluation_options(p: argparse.ArgumentParser, out_help: str) -> None:
    """--limit, --batch-size, --seed, --out, --sweep-step, the protocol, --no-progress."""
    p.add_argument("--limit", type=positive_int, default=None,
                   help="the first N samples only: a smoke test, marked as not a real score")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="samples per batch (never changes a result)")
    p.add_argument("--seed", type=int, default=0, help="per-sample randomness derives from it")
    p.add_argument("--out", type=Path, default=None, help=out_help)
    p.add_argument("--sweep-step", type=float, default=0.05, help="step of the threshold sweep")
    p.add_argument("--protocol", choices=["image", "vpd"], default="image",
                   help="where IoU is taken: image (each image's own resolution) or vpd (VPD's: "
                        "image and truth squashed to --protocol-size, both empty counting 0)")
    p.add_argument("--protocol-size", type=positive_int, default=512,
                   help="with --protocol vpd: the side of the square")
    p.add_argument("--skip-empty-gt", action="store_true",
                   help="leave out samples whose ground truth is empty, counted in results.json "
                        "(default: such a sample is an error, since an empty prediction would "
                        "score IoU 1 on it)")
    p.add_argument("--max-image-pixels", type=positive_int, default=None,
                   help="refuse images with more pixels than this, the decompression-bomb guard "
                        "(default: Pillow's limit, 89478485)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def overrides_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help=what)


def backbone_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default=None,
                   help="the backbone of every selected method that has one (refbench ls "
                        "backbones); 'shapes' is the bundled model")


def overrides(args: argparse.Namespace) -> list[Any]:
    """--set values, and --backbone as '*.backbone'."""
    from refbench.config import Override, parse_overrides

    found = parse_overrides(args.overrides)
    if getattr(args, "backbone", None):
        found.insert(0, Override("*", "backbone", args.backbone))
    return found


def protocol(args: argparse.Namespace) -> Any:
    from refbench.results.scoring import Protocol

    return Protocol(args.protocol, args.protocol_size)


def settings(args: argparse.Namespace) -> Any:
    from refbench.core import Settings
    from refbench.data.images import DEFAULT_MAX_PIXELS

    return Settings(args.seed, args.limit, args.batch_size, args.sweep_step, not args.no_progress,
                    protocol(args), args.skip_empty_gt, args.max_image_pixels or DEFAULT_MAX_PIXELS)


def host(args: argparse.Namespace) -> Any:
    """The plugin host of this command, built once and passed down."""
    from refbench.plugins import PluginHost

    return PluginHost(strict=args.strict_plugins)


def run_folder(out: Path, what: str = "run folder") -> Path:
    """The output folder, usable before anything is computed: a one-line error for a file in
    its place, a parent that is a file, or a folder that cannot be created or written."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: pass a folder for the {what.split()[0]}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the {what} {out} ({error.strerror}): pass a writable "
                        f"--out") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"the {what} {out} is read-only: pass a writable --out")
    return out


def method_list(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]
