"""Seconds per sample and peak memory: refbench's DiffSegmenter against a plain port of the
original pipeline (tests/reference/diffsegmenter.py: every attention's probabilities explicit,
the HW x HW self-attention materialised) and the floor, a bare VAE encode + UNet forward (SDPA).

Each pipeline runs in a process of its own, so each peak is its own; the ratios come from one
invocation. Targets: refbench <= 1.05x the floor, and >= 2.5x faster than the original's port.

    python benchmarks/diffsegmenter_speed.py [--backbone sd15-random] [--repeats 1]
    python benchmarks/diffsegmenter_speed.py --device cuda --dtype fp16     # on a GPU

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

EXPRESSION = "the red circle left of the blue square"
PIPELINES = ("floor", "refbench", "original")


def worker(pipeline: str, backbone_name: str, repeats: int, device: str, dtype: str) -> dict[str, float]:
    import torch

    from benchmarks._common import best_of, peak_rss_mb, random_image, reset_peak_rss
    from methods.diffsegmenter.model import DiffSegmenter, DiffSegmenterConfig
    from refbench.data.sample import Sample
    from refbench.diffusion.latents import clear_cache, latents_and_noise
    from refbench.diffusion.prompts import encode
    from refbench.method import Batch
    from refbench.plugins import PluginHost
    from tests.reference.diffsegmenter import original_map, word_tokens

    torch.set_grad_enabled(False)
    method = DiffSegmenter(DiffSegmenterConfig(backbone=backbone_name, device=device, dtype=dtype),
                           host=PluginHost())
    backbone, size = method.backbone, method.size
    cuda = backbone.device.type == "cuda"

    def peak() -> float:
        return torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    model_mb = peak()
    image = random_image(size)
    sample = Sample("1", 1, Path("x.jpg"), size, size, EXPRESSION, {"size": [size, size], "counts": ""})
    prompt = "a photograph of " + EXPRESSION
    read = word_tokens(backbone.tokenizer, prompt, 5)  # "circle"

    def floor() -> None:
        clear_cache()
        context = encode(backbone.text_encoder, backbone.tokenizer, [prompt])
        latents, noise = latents_and_noise(backbone, [image], [0], size, posterior="sample",
                                           antialias=False)
        t = torch.tensor([100])
        backbone.unet(backbone.scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=context)

    def refbench() -> None:
        clear_cache()
        method.predict(Batch([sample], [image], [0]))

    def original() -> None:
        original_map(backbone, image, prompt, read, read, seed=0)

    chosen = {"floor": floor, "refbench": refbench, "original": original}[pipeline]

    def run() -> None:
        chosen()
        sync()

    run()  # warm-up
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    seconds = best_of(run, repeats)
    return {"seconds": seconds, "peak_mb": peak(), "model_mb": model_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="sd15-random")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--worker", choices=PIPELINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.backbone, args.repeats, args.device, args.dtype)))
        return
    from benchmarks._common import print_table

    figures = {}
    for pipeline in PIPELINES:
        out = subprocess.run([sys.executable, __file__, "--worker", pipeline, "--backbone",
                              args.backbone, "--repeats", str(args.repeats), "--device",
                              args.device, "--dtype", args.dtype],
                             capture_output=True, text=True, check=True)
        figures[pipeline] = json.loads(out.stdout.strip().splitlines()[-1])
    floor, original = figures["floor"]["seconds"], figures["original"]["seconds"]
    print(f"backbone {args.backbone}, one sample at the backbone's size, {args.device} {args.dtype}, best of "
          f"{args.repeats} after a warm-up; each pipeline in its own process")
    print_table(["pipeline", "s/sample", "x floor", "original / it", "peak MB", "model MB"],
                [[p, f["seconds"], f["seconds"] / floor, original / f["seconds"], f"{f['peak_mb']:.0f}",
                  f"{f['model_mb']:.0f}"] for p, f in figures.items()])


if __name__ == "__main__":
    main()
