"""Training loop for trainable methods (``refbench train``); knows no specific method.

A trainable method's factory exposes ``network(config)``, returning an ``nn.Module`` whose
``forward(batch)`` returns the training loss, with ``predict(batch)``,
``parameter_groups(weight_decay)``, ``checkpoint_state()`` and ``load_checkpoint_state(tensors)``.
The loop: AdamW (no decay on biases and norms), a poly learning-rate schedule, a checkpoint per
epoch (safetensors + JSON, optimizer state read back with ``weights_only=True``), validation oIoU
per epoch on a split that is not the training one, and resumption from the last checkpoint.

Under ``accelerate launch`` the network is wrapped for DDP by accelerate: every process takes
its own batches of the epoch's shuffled order (the same number each), gradients are averaged,
and only the main process validates and writes checkpoints. After each epoch the processes
compare a digest of their weights, which must agree.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refbench import checkpoint as ckpt
from refbench.candidates import resolve_config
from refbench.config import Override, config_dict
from refbench.data.images import load_rgb
from refbench.data.sample import Sample, group_batches
from refbench.data.source import DataSource, open_dataset
from refbench.errors import UserError
from refbench.method import Batch, sample_seed
from refbench.plugins import PluginHost
from refbench.results.files import write_json
from refbench.results.metrics import summarize
from refbench.results.scoring import score_batch
from refbench.specs import resolve

HOLDOUT = "holdout"
HOLDOUT_EVERY = 10  # one image in ten of the training split is held out for validation


@dataclass
class TrainOptions:
    method: str
    dataset: str = "refshapes"
    split: str = "train"
    data_root: Path | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    overrides: list[Override] = field(default_factory=list)
    epochs: int = 1
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 1e-2
    poly_power: float = 0.9
    limit_train: int | None = None
    val_split: str = HOLDOUT
    limit_val: int | None = 200
    seed: int = 0
    out: Path | None = None
    progress: bool = True
    mixed_precision: str = "no"  # "bf16" (CPU or CUDA) or "fp16" (CUDA), through accelerate

    def out_dir(self) -> Path:
        return self.out or Path("runs") / f"train-{self.method}-{self.dataset}"


def _held_out(image_id: int) -> bool:
    digest = hashlib.sha256(str(image_id).encode()).digest()
    return digest[0] % HOLDOUT_EVERY == 0


def split_samples(dataset: Any, options: TrainOptions) -> tuple[list[Sample], list[Sample]]:
    """Training and validation samples; validation never overlaps training."""
    train = dataset.samples(options.split)
    if options.val_split == HOLDOUT:
        images = sorted({s.image_id for s in train})
        held = {i for i in images if _held_out(i)}
        if not held and len(images) > 1:  # small data: still validate on something unseen
            held = {images[-1]}
        val = [s for s in train if s.image_id in held]
        train = [s for s in train if s.image_id not in held]
    elif options.val_split == options.split:
        raise UserError(f"--val-split {options.val_split} is the training split: pick another "
                        f"split, or '{HOLDOUT}' (every {HOLDOUT_EVERY}th training image held out)")
    else:
        val = dataset.samples(options.val_split)
    if options.limit_train is not None:
        train = train[: options.limit_train]  # the first samples, as the F-VPD write-up's subsets
    if options.limit_val is not None:
        val = val[: options.limit_val]
    if not train:
        raise UserError("no training samples: check --split and --limit-train")
    return train, val


def _load_batch(samples: list[Sample], seed: int) -> Batch:
    images = [load_rgb(s.image_path, (s.height, s.width), s.sample_id) for s in samples]
    return Batch(samples, images, [sample_seed(seed, s.sample_id) for s in samples])


def validate(net: Any, samples: list[Sample], batch_size: int, seed: int) -> dict[str, float]:
    """oIoU/mIoU at threshold 0.5 on the validation samples."""
    inter, union = [], []
    for chunk in group_batches(samples, batch_size):
        rows, _ = score_batch(chunk, net.predict(_load_batch(chunk, seed)), "validation", (0.5,))
        inter += [int(r.inter[0]) for r in rows]
        union += [int(r.pred_area[0] + r.gt_area - r.inter[0]) for r in rows]
    metrics = summarize(np.array(inter), np.array(union))
    return {"oIoU": metrics["oIoU"], "mIoU": metrics["mIoU"], "n": metrics["n"]}


def _epoch_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for path in folder.glob("epoch_*.safetensors"):
        match = re.fullmatch(r"epoch_(\d+)\.safetensors", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def train(host: PluginHost, options: TrainOptions) -> dict[str, Any]:
    """``refbench train``; returns the training summary (also written as train.json)."""
    import torch
    from tqdm import tqdm

    spec = host.method(options.method)
    if not spec.trainable:
        raise UserError(f"method {spec.name!r} is not trainable (trainable: "
                        f"{', '.join(n for n, s in host.methods.items() if s.trainable) or 'none'})")
    for name in ("epochs", "batch_size"):
        if getattr(options, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    factory = resolve(spec.factory)
    config = resolve_config(spec, options.overrides, host)
    resolved = config_dict(config)
    resolved.pop("checkpoint", None)
    dataset = open_dataset(host, DataSource(options.dataset, options.data_root,
                                            options.dataset_options), generate=True)
    train_samples, val_samples = split_samples(dataset, options)

    from accelerate import Accelerator

    if options.mixed_precision not in ("no", "bf16", "fp16"):
        raise UserError(f"--mixed-precision {options.mixed_precision!r}: use no, bf16 or fp16")
    if options.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserError("--mixed-precision fp16 needs a CUDA device; on the CPU use bf16")
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision=options.mixed_precision)
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    torch.manual_seed(options.seed)
    net = factory.network(config, host)
    optimizer = torch.optim.AdamW(net.parameter_groups(options.weight_decay), lr=options.lr)
    batches_per_epoch = -(-len(train_samples) // options.batch_size)
    steps_per_epoch = batches_per_epoch // world  # every process takes as many steps
    if steps_per_epoch < 1:
        raise UserError(f"{len(train_samples)} training samples make {batches_per_epoch} batches, "
                        f"fewer than the {world} processes: lower --batch-size or add data")
    total_steps = steps_per_epoch * options.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1 - step / total_steps) ** options.poly_power)

    out = options.out_dir()
    folder = out / "checkpoints"
    hyper = {"lr": options.lr, "weight_decay": options.weight_decay, "poly_power": options.poly_power,
             "batch_size": options.batch_size, "epochs": options.epochs, "seed": options.seed,
             "limit_train": options.limit_train, "dataset": options.dataset, "split": options.split,
             "val_split": options.val_split, "mixed_precision": options.mixed_precision}
    history: list[dict[str, Any]] = []
    start_epoch = 1
    done = _epoch_checkpoints(folder)
    if done:
        epoch, path = done[-1]
        tensors, meta = ckpt.load(path)
        if meta.get("method") != spec.name or meta.get("config") != resolved or meta.get("train") != hyper:
            raise UserError(f"{folder} holds checkpoints of another method, config or training "
                            f"setup: use a new --out, or delete that folder to start over")
        net.load_checkpoint_state(tensors)
        optimizer.load_state_dict(torch.load(path.with_suffix(".optim.pt"), weights_only=True))
        schedule.last_epoch = meta["step"]
        history = meta.get("history", [])
        start_epoch = epoch + 1
        if main:
            print(f"refbench: resuming {spec.name} from {path} (epoch {epoch} of "
                  f"{options.epochs})", file=sys.stderr)
    model, optimizer = accelerator.prepare(net, optimizer)  # DDP when launched with N > 1

    step = (start_epoch - 1) * steps_per_epoch
    for epoch in range(start_epoch, options.epochs + 1):
        model.train()
        order = np.random.default_rng([options.seed, epoch]).permutation(len(train_samples))
        epoch_batches = list(group_batches([train_samples[i] for i in order], options.batch_size))
        mine = epoch_batches[rank::world][:steps_per_epoch]
        started, losses = time.perf_counter(), []
        with tqdm(total=steps_per_epoch, desc=f"{spec.name} epoch {epoch}/{options.epochs}",
                  unit="step", disable=not (options.progress and main), file=sys.stderr,
                  dynamic_ncols=True) as bar:
            for chunk in mine:
                loss = model(_load_batch(chunk, options.seed + epoch))
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                optimizer.step()
                schedule.step()
                step += 1
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{schedule.get_last_lr()[0]:.2e}")
                bar.update(1)
        seconds = time.perf_counter() - started
        digests = accelerator.gather_for_metrics([weights_digest(net)], use_gather_object=True) \
            if world > 1 else [weights_digest(net)]
        accelerator.wait_for_everyone()
        if main:
            val = validate(net, val_samples, options.batch_size, options.seed) if val_samples else {}
            history.append({"epoch": epoch, "loss": float(np.mean(losses)), "seconds": seconds,
                            "seconds_per_step": seconds / max(1, len(losses)), "val": val,
                            "processes": world, "weight_digests": digests,
                            "weights_in_sync": len(set(digests)) == 1})
            print(f"epoch {epoch}: loss {np.mean(losses):.4f}, {seconds / max(1, len(losses)):.2f} s/step"
                  + (f", validation oIoU {100 * val['oIoU']:.2f} on {val['n']} samples" if val else ""))
            path = folder / f"epoch_{epoch}.safetensors"
            meta = {"method": spec.name, "config": resolved, "train": hyper, "epoch": epoch,
                    "step": step, "history": history,
                    "backbone": getattr(getattr(net, "backbone", None), "fingerprint", None)}
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(optimizer.state_dict(), path.with_suffix(".optim.pt"))
            ckpt.save(path, net.checkpoint_state(), meta)
        accelerator.wait_for_everyone()
    summary = {"method": spec.name, "config": resolved, "train": hyper,
               "checkpoint": str(folder / f"epoch_{options.epochs}.safetensors"), "history": history,
               "train_samples": len(train_samples), "val_samples": len(val_samples), "processes": world}
    if main:
        write_json(out / "train.json", summary)
        print(f"checkpoint: {summary['checkpoint']}")
    return summary


def weights_digest(net: Any) -> str:
    """A hash of the trainable weights: equal on every process after a synchronised step."""
    digest = hashlib.sha256()
    for name, param in net.trainable_named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()[:16]
