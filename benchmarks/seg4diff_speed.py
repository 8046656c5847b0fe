"""Seconds per image (and per sample: one class of the image) and peak memory: refbench's Seg4Diff
against a plain port of the original (tests/reference/seg4diff.py: the whole denoiser forward
with the chosen layer's probabilities explicit, one image at a time) and the floor, a bare VAE
encode + text encode + full denoiser forward (SDPA, nothing captured).

Each pipeline runs in a process of its own, so each peak is its own. refbench stops the forward
once the chosen layer is recorded, so it can beat the bare forward (SD3: block 9 of 24).

    python benchmarks/seg4diff_speed.py [--backbone shapes|tiny-sd3|sd15-random|sd3-random]
                                        [--samples 2] [--classes 3] [--repeats 1]
    python benchmarks/seg4diff_speed.py --backbone sd3-random --device cuda --dtype fp16   # a GPU

``sd3-random`` is Stable Diffusion 3 medium's architecture (24 joint blocks, width 1536, CLIP-L
and CLIP-G at full size, the 16-channel VAE) with seeded random weights and refbench's small
tokenizer: right for speed and memory, useless for accuracy (T5 is a stub: the method feeds
zeros there, as the original, which loads no T5). On CUDA, peak memory is the device's
(torch.cuda.max_memory_allocated), on the CPU the process's resident set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from refbench import BackboneSpec, hookimpl  # noqa: E402

PIPELINES = ("floor", "refbench", "original")
CLASSES = ["circle", "square", "triangle", "person", "dog", "cat"]


def build_sd3_random(device: Any, dtype: Any, name: str = "sd3-random", seed: int = 0) -> Any:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from refbench.diffusion.family_presets import TINY_SD3, _finish, _t5
    from refbench.diffusion.presets import clip_text_config, small_tokenizer
    from refbench.diffusion.t5_tokenizer import small_t5_tokenizer

    config = {
        "transformer": dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                            attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                            caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192),
        "vae": dict(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                    block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=1024,
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609),
        "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768),
        "text_2": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                       max_position_embeddings=77, hidden_act="gelu", projection_dim=1280),
    }
    tokenizer, tokenizer_2, tokenizer_3 = small_tokenizer(), small_tokenizer(), small_t5_tokenizer(32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(**config["transformer"])
        vae = AutoencoderKL(**config["vae"])
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**clip_text_config(tokenizer, config["text"])))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**clip_text_config(tokenizer_2, config["text_2"])))
        text_encoder_3 = _t5(tokenizer_3, TINY_SD3["t5"])
    return _finish(name, "sd3", config, seed, device, dtype, transformer=transformer, vae=vae,
                   text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                   tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
                   scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0))


@hookimpl
def refbench_backbones() -> list[BackboneSpec]:
    return [BackboneSpec("sd3-random", "benchmarks.seg4diff_speed:build_sd3_random",
                         "SD3-medium architecture, seeded random weights (speed and memory)", family="sd3")]


def worker(pipeline: str, backbone_name: str, samples: int, classes: int, repeats: int,
           device: str, dtype: str, threads: int, image_size: int) -> dict[str, float]:
    import torch

    if threads:
        torch.set_num_threads(threads)

    from benchmarks._common import best_of, peak_rss_mb, random_image, reset_peak_rss
    from methods.seg4diff.model import Seg4Diff, Seg4DiffConfig
    from refbench.data.sample import Sample
    from refbench.diffusion.latents import clear_cache, latents_and_noise
    from refbench.method import Batch
    from refbench.plugins import PluginHost
    from tests.reference.seg4diff import original_maps

    torch.set_grad_enabled(False)
    host = PluginHost(extra_modules=[sys.modules[__name__]])
    method = Seg4Diff(Seg4DiffConfig(backbone=backbone_name, device=device, dtype=dtype,
                                     image_size=image_size), host=host)
    bb = method.backbone
    cuda = bb.device.type == "cuda"

    def peak() -> float:
        return torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    model_mb = peak()
    side = 480  # a VOC-like image; the original's mapper resizes it to a 640 short side first
    images = [random_image(side, seed=i) for i in range(samples)]
    names = CLASSES[:classes]
    batch_samples = [Sample(f"{i}:{k}", i, Path("x.jpg"), side, side, name, {"size": [side, side], "counts": ""},
                            group_id=str(i), meta={"category": name}, is_class_name=True)
                     for i in range(samples) for k, name in enumerate(names)]
    batch = Batch(batch_samples, [images[int(s.group_id)] for s in batch_samples], [i for i in range(len(batch_samples))])
    layer = method.layer if method.joint else method.layer_names[method.layer]

    def floor() -> None:
        from methods.seg4diff.model import shortest_edge
        from refbench.diffusion.denoisers import denoise

        clear_cache()
        for image in images:
            cond = method._conditioning([" ".join(names + ["background"])])
            latents, noise = latents_and_noise(bb, [shortest_edge(image, 640, 2560)], [0], method.size,
                                               posterior="mean", antialias=False)
            timestep = method.timestep.to(bb.device).expand(1)
            if method.sigma is not None:
                denoise(bb, (1 - method.sigma) * latents + method.sigma * noise, timestep, cond)
            else:
                denoise(bb, bb.scheduler.add_noise(latents, noise, timestep.long()), timestep, cond)

    def refbench() -> None:
        clear_cache()
        method.predict(batch)

    def original() -> None:
        for i, image in enumerate(images):
            original_maps(bb, image, names + ["background"], i, layer, size=method.size)

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
    return {"seconds": seconds / samples, "peak_mb": peak(), "model_mb": model_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="shapes")
    parser.add_argument("--samples", type=int, default=2, help="images (one prompt each)")
    parser.add_argument("--classes", type=int, default=3, help="classes prompted per image")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--image-size", type=int, default=0, help="the squash size (0: the backbone's)")
    parser.add_argument("--worker", choices=PIPELINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.backbone, args.samples, args.classes, args.repeats,
                                args.device, args.dtype, args.threads, args.image_size)))
        return
    from benchmarks._common import print_table

    figures = {}
    for pipeline in PIPELINES:
        out = subprocess.run([sys.executable, __file__, "--worker", pipeline, "--backbone", args.backbone,
                              "--samples", str(args.samples), "--classes", str(args.classes),
                              "--repeats", str(args.repeats), "--device", args.device, "--dtype", args.dtype,
                              "--threads", str(args.threads), "--image-size", str(args.image_size)],
                             capture_output=True, text=True, check=True)
        figures[pipeline] = json.loads(out.stdout.strip().splitlines()[-1])
    floor, original = figures["floor"]["seconds"], figures["original"]["seconds"]
    size = f"size {args.image_size}" if args.image_size else "the backbone's size"
    print(f"backbone {args.backbone}, {args.samples} images of {args.classes} classes (+ background word) "
          f"at {size}, {args.device} {args.dtype}, {args.threads or 'default'} threads, best of "
          f"{args.repeats} after a warm-up; "
          f"each pipeline in its own process")
    print_table(["pipeline", "s/image", "s/sample", "x floor", "original / it", "peak MB", "model MB"],
                [[p, f["seconds"], f["seconds"] / args.classes, f["seconds"] / floor, original / f["seconds"],
                  f"{f['peak_mb']:.0f}", f"{f['model_mb']:.0f}"] for p, f in figures.items()])


if __name__ == "__main__":
    main()
