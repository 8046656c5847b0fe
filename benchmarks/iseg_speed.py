"""Seconds per sample and peak memory: refbench's iSeg against the plain port of the original
pipeline (tests/reference/iseg.py) and the floor, a bare VAE encode + UNet forward (SDPA), on
one image with three classes (iSeg prompts all of an image's classes at once: one forward per
image, so per sample is per image / 3).

Each pipeline runs in a process of its own, so each peak is its own. iSeg is not a one-forward
method alone: after the forward it clusters (20 rounds of a float16 KL divergence of every
pixel to 36 prototypes at latent 64) and iterates a pixels x pixels matrix 8 times, so the
floor is a floor, not a target; the target is refbench at least as fast as the original's port.

    python benchmarks/iseg_speed.py [--backbone shapes] [--repeats 1] [--rounds 1]
    python benchmarks/iseg_speed.py --backbone sd15-random          # SD 1.5-sized, random weights
    python benchmarks/iseg_speed.py --backbone sd21-random          # SD 2.1-base-sized: the listed heads
    python benchmarks/iseg_speed.py --device cuda --dtype fp16       # on a GPU

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

CLASSES = (("aeroplane", 1), ("dog", 12), ("person", 15))
# Stable Diffusion 2.1-base's architecture (its UNet, VAE and 23-layer OpenCLIP-H text encoder)
# with seeded random weights and refbench's small tokenizer: iSeg's own layers and heads
SD21 = {
    "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                 attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, norm_num_groups=32,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    "text": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                 num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu"),
}


def sd21_random(device: str, dtype: str):
    import dataclasses

    import torch

    from refbench.diffusion.backbone import DTYPES, resolve_device, resolve_dtype
    from refbench.diffusion.presets import SD15, build_from_config

    torch_device = resolve_device(device)
    backbone = build_from_config("sd21-random", {**SD21, "vae": SD15["vae"]}, 0, torch_device,
                                 resolve_dtype(dtype, torch_device) if dtype in DTYPES or dtype == "auto"
                                 else torch.float32)
    return dataclasses.replace(backbone, family="sd2")
PIPELINES = ("floor", "refbench", "original")


def worker(pipeline: str, backbone_name: str, repeats: int, device: str, dtype: str) -> dict[str, float]:
    import torch

    from benchmarks._common import best_of, peak_rss_mb, random_image, reset_peak_rss
    from methods.iseg.model import ISeg, ISegConfig, resolution_weights
    from refbench.data.sample import Sample
    from refbench.diffusion.latents import clear_cache, latents_and_noise
    from refbench.diffusion.prompts import encode
    from refbench.method import Batch
    from refbench.plugins import PluginHost
    from tests.reference.iseg import original_maps

    torch.set_grad_enabled(False)
    if backbone_name == "sd21-random":
        method = ISeg(ISegConfig(backbone="tiny-sd2", device=device, dtype=dtype), host=PluginHost())
        method.backbone = sd21_random(device, dtype)
        method.size, method.heads = method.backbone.image_size, method._resolve_heads()
    else:
        method = ISeg(ISegConfig(backbone=backbone_name, device=device, dtype=dtype), host=PluginHost())
    backbone, size = method.backbone, method.size
    cuda = backbone.device.type == "cuda"

    def peak() -> float:
        return torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    model_mb = peak()
    image = random_image(size)
    samples = [Sample(f"1:{c}", 1, Path("x.jpg"), size, size, name, {"size": [size, size], "counts": ""},
                      group_id="1", meta={"category": name, "category_id": c}, is_class_name=True)
               for name, c in CLASSES]
    plan = method._plan(samples)
    entries = [method.words[name] for name, _ in CLASSES]
    latent = size // backbone.vae_scale_factor

    def floor() -> None:
        clear_cache()
        context = encode(backbone.text_encoder, backbone.tokenizer, [plan.prompt])
        latents, noise = latents_and_noise(backbone, [image], [1101], size, posterior="mean",
                                           antialias=False)
        t = torch.tensor([100], device=latents.device)
        backbone.unet(backbone.scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=context)

    def refbench() -> None:
        clear_cache()
        method.predict(Batch(samples, [image] * 3, [0] * 3))

    def original() -> None:
        original_maps(backbone, image, entries, token_mode=method.token_mode, heads=method.heads,
                      weights=resolution_weights(method.config.weights, latent))

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
    return {"seconds": seconds / len(CLASSES), "peak_mb": peak(), "model_mb": model_mb,
            "heads": method.heads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="shapes")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per process")
    parser.add_argument("--rounds", type=int, default=1, help="processes per pipeline, interleaved")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--worker", choices=PIPELINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.backbone, args.repeats, args.device, args.dtype)))
        return
    from benchmarks._common import print_table

    figures: dict[str, dict] = {}
    for _ in range(args.rounds):  # interleaved, so that a busy spell on a shared machine hits all three
        for pipeline in PIPELINES:
            out = subprocess.run([sys.executable, __file__, "--worker", pipeline, "--backbone",
                                  args.backbone, "--repeats", str(args.repeats), "--device",
                                  args.device, "--dtype", args.dtype],
                                 capture_output=True, text=True, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            best = figures.setdefault(pipeline, got)
            best["seconds"] = min(best["seconds"], got["seconds"])
            best["peak_mb"] = max(best["peak_mb"], got["peak_mb"])
    floor, original = figures["floor"]["seconds"], figures["original"]["seconds"]
    print(f"backbone {args.backbone} (heads={figures['refbench']['heads']}), one image with "
          f"{len(CLASSES)} classes at the backbone's size, {args.device} {args.dtype}, best of "
          f"{args.rounds} x {args.repeats} after a warm-up; each pipeline in processes of its own, "
          f"the three interleaved")
    print_table(["pipeline", "s/sample", "x floor", "original / it", "peak MB", "model MB"],
                [[p, f["seconds"], f["seconds"] / floor, original / f["seconds"], f"{f['peak_mb']:.0f}",
                  f"{f['model_mb']:.0f}"] for p, f in figures.items()])


if __name__ == "__main__":
    main()
