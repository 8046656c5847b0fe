"""Seconds per image and peak memory: refbench's GoCA against a plain port of the original
pipeline (tests/reference/goca.py: every attention layer's per-head maps, values and outputs
kept, the self-attention maps materialised and resized in 4-D, the refinement matrix explicit)
and the floor, a bare text encode + VAE encode + UNet forward (SDPA).

One image with two classes (one prompt "cat, dog, background", one forward). Peak memory: each
pipeline in a process of its own, so each peak is its own. Time: the three pipelines alternate in
one process, the best of ``--repeats`` rounds each, so a machine whose load changes (a shared CPU)
slows them alike. Targets: refbench <= 1.1x the floor and at least as fast as the original's port.

    python benchmarks/goca_speed.py [--backbone sd15-random] [--repeats 1]
    python benchmarks/goca_speed.py --backbone shapes --repeats 3
    python benchmarks/goca_speed.py --device cuda --dtype fp16     # on a GPU
    python benchmarks/goca_speed.py --threads 1                    # a shared CPU: one thread each

On CUDA, peak memory is the device's (torch.cuda.max_memory_allocated), on the CPU the process's
resident set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORDS = ["cat", "dog"]
PIPELINES = ("floor", "refbench", "original")


def worker(pipeline: str, backbone_name: str, repeats: int, device: str, dtype: str,
           threads: int = 0) -> dict[str, dict[str, float]]:
    """``pipeline``: one of PIPELINES (its peak memory after a warm-up and ``repeats`` runs), or
    "timing" (every pipeline, alternating, best of ``repeats`` each)."""
    import torch

    from benchmarks._common import best_of, peak_rss_mb, random_image, reset_peak_rss
    from methods.goca.model import GoCA, GoCAConfig
    from refbench.data.sample import Sample
    from refbench.diffusion.denoisers import conditioning, denoise, noised
    from refbench.diffusion.latents import clear_cache, latents_and_noise
    from refbench.method import Batch
    from refbench.plugins import PluginHost
    from tests.reference import goca as reference

    torch.set_grad_enabled(False)
    if threads:
        torch.set_num_threads(threads)
    method = GoCA(GoCAConfig(backbone=backbone_name, device=device, dtype=dtype), host=PluginHost())
    backbone, size = method.backbone, method.size
    cuda = backbone.device.type == "cuda"

    def peak() -> float:
        return torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    model_mb = peak()
    image = random_image(size)
    samples = [Sample(f"1:{i}", 1, Path("x.jpg"), size, size, word, {"size": [size, size], "counts": ""},
                      group_id="1", is_class_name=True) for i, word in enumerate(WORDS)]
    prompt = method.plan(samples).prompt
    layers = {b.name for b in method.layers.cross}
    cross = tuple(n for n in (reference.SDXL_CROSS if backbone.family == "sdxl" else reference.SD15_CROSS)
                  if n in layers)
    refine = tuple(b.name for b in method.layers.refine)

    def floor() -> None:
        clear_cache()
        cond = conditioning(backbone, [prompt])
        latents, noise = latents_and_noise(backbone, [image], [0], size, posterior="sample",
                                           pil=True, pil_filter="bicubic", noise_first=False)
        t = torch.tensor([method.timestep], device=latents.device)
        denoise(backbone, noised(backbone, latents, noise, t), t, cond)

    def refbench() -> None:
        clear_cache()
        method.predict(Batch(samples, [image, image], [0, 0]))

    def original() -> None:
        reference.original_maps(backbone, image, WORDS, 0, cross, method.layers.ref.name, refine,
                                t=method.timestep)

    pipelines = {"floor": floor, "refbench": refbench, "original": original}

    def timed(name: str) -> float:
        def run() -> None:
            pipelines[name]()
            sync()
        return best_of(run, 1)

    if pipeline == "timing":
        for name in PIPELINES:  # warm-up
            timed(name)
        best = {name: float("inf") for name in PIPELINES}
        for _ in range(repeats):
            for name in PIPELINES:
                best[name] = min(best[name], timed(name))
        return {name: {"seconds": seconds} for name, seconds in best.items()}
    timed(pipeline)  # warm-up
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    seconds = min(timed(pipeline) for _ in range(repeats))
    return {pipeline: {"seconds": seconds, "peak_mb": peak(), "model_mb": model_mb}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="sd15-random")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--worker", choices=(*PIPELINES, "timing"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.backbone, args.repeats, args.device, args.dtype,
                                args.threads)))
        return
    from benchmarks._common import print_table

    def run(pipeline: str, repeats: int) -> dict[str, dict[str, float]]:
        out = subprocess.run([sys.executable, __file__, "--worker", pipeline, "--backbone",
                              args.backbone, "--repeats", str(repeats), "--device",
                              args.device, "--dtype", args.dtype, "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    figures = {}
    for pipeline in PIPELINES:  # peaks: one run after the warm-up, each in its own process
        figures.update(run(pipeline, 1))
    for pipeline, timing in run("timing", args.repeats).items():
        figures[pipeline]["seconds"] = timing["seconds"]
    floor, original = figures["floor"]["seconds"], figures["original"]["seconds"]
    print(f"backbone {args.backbone}, one image with {len(WORDS)} classes at the backbone's size, "
          f"{args.device} {args.dtype}{f', {args.threads} thread(s)' if args.threads else ''}; time: best of {args.repeats} alternating rounds after a "
          f"warm-up, in one process; peak memory: each pipeline in its own process")
    print_table(["pipeline", "s/image", "x floor", "original / it", "peak MB", "model MB"],
                [[p, f["seconds"], f["seconds"] / floor, original / f["seconds"], f"{f['peak_mb']:.0f}",
                  f"{f['model_mb']:.0f}"] for p, f in figures.items()])


if __name__ == "__main__":
    main()
