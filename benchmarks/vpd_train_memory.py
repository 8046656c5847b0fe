"""Peak memory and seconds per training step of VPD with and without bf16 autocast and gradient
checkpointing of the UNet: what fits the 16 GB GPUs of the F-VPD write-up (T4, P100, L4).

Each configuration trains in a process of its own (so each peak is its own): a warm-up step,
then the best of ``--steps`` steps. On the CPU the peak is the process's resident set; on CUDA,
torch.cuda.max_memory_allocated.

    python benchmarks/vpd_train_memory.py [--backbone sd15-random] [--image-size 256] [--batch-size 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIGS = {"fp32": ("no", False), "bf16": ("bf16", False), "checkpointing": ("no", True),
           "bf16 + checkpointing": ("bf16", True)}


def worker(name: str, args: argparse.Namespace) -> dict[str, float]:
    import time

    import torch

    from benchmarks._common import peak_rss_mb, random_image, reset_peak_rss
    from methods.vpd.model import VPD, VPDConfig
    from refbench.data.sample import Sample
    from refbench.method import Batch
    from refbench.plugins import PluginHost

    precision, checkpointing = CONFIGS[name]
    net = VPD.network(VPDConfig(backbone=args.backbone, device=args.device, image_size=args.image_size,
                                gradient_checkpointing=checkpointing), PluginHost()).train()
    cuda = net.backbone.device.type == "cuda"
    size = net.size
    samples = [Sample(str(i), i, Path("x.jpg"), size, size, "the red circle on the left",
                      {"size": [size, size], "counts": f"0{size * size}"}) for i in range(args.batch_size)]
    from refbench.data.masks import encode
    import numpy as np

    mask = np.zeros((size, size), dtype=bool)
    mask[: size // 2, : size // 2] = True
    samples = [Sample(s.sample_id, s.image_id, s.image_path, size, size, s.expression, encode(mask))
               for s in samples]
    batch = Batch(samples, [random_image(size, i) for i in range(args.batch_size)], list(range(args.batch_size)))
    optimizer = torch.optim.AdamW(net.parameter_groups(0.01), lr=1e-5)
    autocast = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        with autocast:
            loss = net.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()

    step()  # warm-up
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
    return {"seconds": min(times), "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="sd15-random")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    from benchmarks._common import print_table

    figures = {}
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--worker", name, "--backbone", args.backbone,
                              "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
                              "--steps", str(args.steps), "--device", args.device],
                             capture_output=True, text=True, check=True)
        figures[name] = json.loads(out.stdout.strip().splitlines()[-1])
    base = figures["fp32"]
    print(f"vpd training, backbone {args.backbone} at {args.image_size}x{args.image_size}, batch "
          f"{args.batch_size}, {args.device}; best of {args.steps} steps after a warm-up, each "
          f"configuration in its own process")
    print_table(["configuration", "s/step", "x fp32 time", "peak MB", "x fp32 memory"],
                [[n, f["seconds"], f["seconds"] / base["seconds"], f"{f['peak_mb']:.0f}",
                  f["peak_mb"] / base["peak_mb"]] for n, f in figures.items()])


if __name__ == "__main__":
    main()
