"""Peak memory and time of the self-attention refinement: SDPA (no HW x HW matrix) vs naive.

Captures the finest self-attention's queries and keys from one forward of the backbone at its
native size, then runs each refinement in a fresh process so the peaks do not mask each other.

    python benchmarks/refine_memory.py [--backbone sd15-random]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import peak_rss_mb, print_table, random_image, reset_peak_rss  # noqa: E402


def capture(backbone_name: str, path: Path) -> tuple[int, int]:
    from refbench.diffusion.attention import capture_attention
    from refbench.diffusion.backbone import load_backbone
    from refbench.plugins import PluginHost
    from refbench.diffusion.latents import latents_and_noise
    from refbench.diffusion.prompts import encode

    backbone = load_backbone(backbone_name, "cpu", host=PluginHost())
    size = backbone.image_size
    latents, noise = latents_and_noise(backbone, [random_image(size)], [0], size)
    context = encode(backbone.text_encoder, backbone.tokenizer, ["a photograph of a red circle"])
    finest = latents.shape[-1]
    with torch.no_grad(), capture_attention(backbone.unet, set(), finest) as record:
        backbone.unet(latents, torch.tensor([100]), encoder_hidden_states=context)
    torch.save({"qk": record.self_qk, "finest": finest}, path)
    return size, len(record.self_qk)


def measure(path: Path, mode: str) -> None:
    from refbench.diffusion.attention import AttentionRecord

    saved = torch.load(path, weights_only=True)
    record = AttentionRecord(None, saved["finest"], self_qk=saved["qk"])
    values = torch.rand(1, saved["finest"] ** 2, 1, generator=torch.Generator().manual_seed(0))
    torch.set_grad_enabled(False)
    reset_peak_rss()
    base = peak_rss_mb()
    start = time.perf_counter()
    out = record.refine(values) if mode == "sdpa" else record.refine_naive(values)
    seconds = time.perf_counter() - start
    print(f"{seconds} {peak_rss_mb() - base} {float(out.sum())}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="sd15-random")
    parser.add_argument("--measure", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(Path(args.measure[0]), args.measure[1])
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qk.pt"
        size, layers = capture(args.backbone, path)
        results = {}
        for mode in ("naive", "sdpa"):
            out = subprocess.run([sys.executable, __file__, "--measure", str(path), mode],
                                 capture_output=True, text=True, check=True).stdout.split()
            results[mode] = (float(out[0]), float(out[1]), float(out[2]))
    naive, sdpa = results["naive"], results["sdpa"]
    print(f"backbone {args.backbone}, input {size}x{size}: refinement of one map by the "
          f"self-attention of {layers} layers")
    print_table(["refinement", "seconds", "peak extra MiB", "memory ratio"],
                [["naive (explicit HW x HW)", naive[0], naive[1], 1.0],
                 ["SDPA (attention with c as value)", sdpa[0], sdpa[1], sdpa[1] / naive[1]]])
    print(f"max |difference| of the summed outputs: {abs(naive[2] - sdpa[2]):.2e}")


if __name__ == "__main__":
    main()
