"""Seconds per sample: DiffSegmenter against a bare VAE encode + UNet forward (SDPA).

The overhead of capturing cross-attention, keeping the finest self-attention's queries and keys
and refining through SDPA should stay small next to the forward itself (target <= 1.25x).

    python benchmarks/diffsegmenter_speed.py [--backbone sd15-random] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import best_of, print_table, random_image  # noqa: E402
from methods.diffsegmenter.model import DiffSegmenter, DiffSegmenterConfig  # noqa: E402
from refbench.data.sample import Sample  # noqa: E402
from refbench.diffusion.latents import clear_cache, latents_and_noise  # noqa: E402
from refbench.diffusion.prompts import encode  # noqa: E402
from refbench.method import Batch  # noqa: E402
from refbench.plugins import PluginHost  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="sd15-random")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    method = DiffSegmenter(DiffSegmenterConfig(backbone=args.backbone, device="cpu"), host=PluginHost())
    backbone, size = method.backbone, method.size
    image = random_image(size)
    sample = Sample("1", 1, Path("x.jpg"), size, size, "the red circle left of the blue square",
                    {"size": [size, size], "counts": ""})
    batch = Batch([sample], [image], [0])
    prompt = "a photograph of the red circle left of the blue square"

    def bare() -> None:
        clear_cache()
        context = encode(backbone.text_encoder, backbone.tokenizer, [prompt])
        latents, noise = latents_and_noise(backbone, [image], [0], size)
        t = torch.tensor([100])
        backbone.unet(backbone.scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=context)

    def full() -> None:
        clear_cache()
        method.predict(batch)

    bare(), full()  # warm-up
    t_bare = best_of(bare, args.repeats)
    t_full = best_of(full, args.repeats)
    print(f"backbone {args.backbone}, input {size}x{size}, CPU threads {torch.get_num_threads()}, "
          f"best of {args.repeats}")
    print_table(["pipeline", "s/sample", "ratio"],
                [["VAE encode + UNet forward (SDPA)", t_bare, 1.0],
                 ["diffsegmenter (capture + refine)", t_full, t_full / t_bare]])


if __name__ == "__main__":
    main()
