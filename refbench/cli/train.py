"""``refbench train`` (a trainable method), ``refbench pretrain-shapes`` (the miniature model),
``refbench export`` (a checkpoint in its original code's format) and ``refbench data``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from refbench.cli import common
from refbench.errors import UserError


def add(sub: Any) -> None:
    p = sub.add_parser("train", help="train a trainable method (vpd, f_vpd, lora_vpd)",
                       epilog="example:\n  refbench train --method f_vpd --backbone shapes --epochs 2")
    p.add_argument("--method", "--methods", dest="method", required=True, help="the method to train")
    common.dataset_options(p, default_split="train")
    common.backbone_option(p)
    common.overrides_option(p, "a config value of the method")
    p.add_argument("--epochs", type=common.positive_int, default=1, help="passes over the training samples")
    p.add_argument("--batch-size", type=common.positive_int, default=8, help="samples per step (per process)")
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (VPD's)")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="not applied to biases and norms")
    p.add_argument("--poly-power", type=float, default=0.9, help="power of the poly schedule")
    p.add_argument("--limit-train", type=common.positive_int, default=None,
                   help="train on the first N samples only")
    p.add_argument("--val-split", default="holdout",
                   help="validation split; 'holdout' holds out one in ten training images")
    p.add_argument("--limit-val", type=common.positive_int, default=200, help="validate on the first N")
    p.add_argument("--seed", type=int, default=0, help="the shuffling and initialisation seed")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for checkpoints and train.json (default: runs/train-<method>-<dataset>)")
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no",
                   help="autocast in bf16 (CPU or CUDA) or fp16 (CUDA) through accelerate; with "
                        "--set <method>.gradient_checkpointing=true, what fits a 16 GB GPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=train)

    # The options left unset are left out, so that PretrainConfig's defaults are the only ones.
    p = sub.add_parser("pretrain-shapes", help="train the miniature text-to-image model (the shapes "
                       "backbone) on RefShapes scenes drawn on the fly", argument_default=argparse.SUPPRESS,
                       epilog="example:\n  refbench pretrain-shapes --steps 100 --out runs/shapes-model")
    from refbench.pretrain.config import PretrainConfig

    defaults = PretrainConfig()
    p.add_argument("--out", type=Path, default=Path("runs/shapes-model"),
                   help="model directory, diffusers layout (rerun to resume)")
    for flag, kind, text in (
            ("--seed", int, "the seed of everything drawn"),
            ("--vae-steps", common.non_negative_int, "autoencoder steps"),
            ("--steps", common.positive_int, "text encoder + UNet steps"),
            ("--batch-size", common.positive_int, "scenes per step"),
            ("--lr", float, "learning rate"),
            ("--pool", common.positive_int, "scenes kept in memory"),
            ("--warmup", common.non_negative_int, "learning-rate warmup steps"),
            ("--snr-gamma", float, "min-SNR loss weighting gamma (0: plain noise-prediction MSE)"),
            ("--grounding-weight", float, "weight of the grounding loss: named words attend to their objects (0: off)"),
            ("--grounding-max-t", common.positive_int, "apply the grounding loss only to samples noised below this timestep"),
            ("--colour-rate", float, "share of caption mentions naming the colour too"),
            ("--save-every", common.positive_int, "save every N steps"),
            ("--threads", common.non_negative_int, "torch threads (0: torch's default)")):
        field = flag[2:].replace("-", "_")
        p.add_argument(flag, type=kind, help=f"{text} (default: {getattr(defaults, field, None)})")
    p.add_argument("--init-from", type=lambda value: str(Path(value)),
                   help="continue the text encoder + UNet stage from this trained model directory")
    p.set_defaults(handler=pretrain_shapes)

    p = sub.add_parser("export", help="write a method's trained checkpoint in its original code's "
                       "format (vpd, f_vpd: VPD's .pth)",
                       epilog="example:\n  refbench export --method vpd --backbone shapes "
                              "--set vpd.checkpoint=shipped --out vpd_ris_shapes.pth")
    p.add_argument("--method", "--methods", dest="method", required=True, help="the method, e.g. vpd")
    common.backbone_option(p)
    common.overrides_option(p, "its config, the checkpoint included: --set vpd.checkpoint=PATH")
    p.add_argument("--out", type=Path, required=True, help="the file to write, e.g. vpd.pth")
    p.set_defaults(handler=export)



def train(args: argparse.Namespace) -> int:
    from refbench.train import TrainOptions
    from refbench.train import train as run_train

    source = common.dataset_source(args)
    options = TrainOptions(
        method=args.method, dataset=args.dataset, split=args.split, data_root=args.data_root,
        dataset_options=dict(source.options), overrides=common.overrides(args),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        poly_power=args.poly_power, limit_train=args.limit_train, val_split=args.val_split,
        limit_val=args.limit_val, seed=args.seed, out=args.out, progress=not args.no_progress,
        mixed_precision=args.mixed_precision)
    run_train(common.host(args), options)
    return 0


def pretrain_shapes(args: argparse.Namespace) -> int:
    from refbench.pretrain.config import PretrainConfig
    from refbench.pretrain.train import pretrain

    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    config = PretrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    out = pretrain(args.out, config)
    print(f"model written to {out}; use it with --backbone {out}")
    return 0


def export(args: argparse.Namespace) -> int:
    from refbench.candidates import candidate

    host = common.host(args)
    method = candidate(host, args.method, common.overrides(args)).build(host)
    if not callable(getattr(method, "export", None)):
        raise UserError(f"method {args.method!r} has no other checkpoint format to export to")
    print(f"wrote {method.export(args.out)}")
    return 0
