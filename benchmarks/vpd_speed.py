"""refbench's VPD against VPD's network written plainly (tests/reference/vpd.py: explicit
attention probabilities in every layer, as VPD's code computes them) at Stable Diffusion 1.5's
widths: inference seconds per sample, training seconds per step and peak memory, ratios in one
run. Both carry the same weights (the plain network's, loaded into refbench through VPD's
checkpoint format), so their outputs agree; the table says by how much. Each pipeline runs in a
process of its own. Target: refbench >= 1.5x faster.

    python benchmarks/vpd_speed.py [--backbone sd15-random] [--image-size 512] [--token-length 40]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

EXPRESSION = "the man in a red shirt on the left"


def _setup(args: argparse.Namespace, checkpoint: Path):
    import numpy as np
    import torch

    from benchmarks._common import random_image
    from methods.vpd.model import VPD, VPDConfig
    from refbench.data.masks import encode
    from refbench.data.sample import Sample
    from refbench.method import Batch
    from refbench.plugins import PluginHost

    method = VPD(VPDConfig(backbone=args.backbone, device="cpu", image_size=args.image_size,
                           token_length=args.token_length, checkpoint=str(checkpoint)), host=PluginHost())
    size = method.net.size
    mask = np.zeros((size, size), dtype=bool)
    mask[: size // 2] = True
    sample = Sample("1", 1, Path("x.jpg"), size, size, EXPRESSION, encode(mask))
    batch = Batch([sample], [random_image(size)], [0], size=size)
    return torch, method, batch, mask


def worker(pipeline: str, args: argparse.Namespace, checkpoint: Path) -> dict[str, float]:
    from benchmarks._common import best_of, peak_rss_mb, reset_peak_rss
    from refbench.diffusion.latents import clear_cache
    from refbench.diffusion.prompts import encode
    from tests.reference.vpd import VPDRefer

    torch, method, batch, mask = _setup(args, checkpoint)
    net = method.net
    if pipeline == "plain":
        bb = net.backbone
        plain = VPDRefer(dict(bb.unet.config), dict(bb.vae.config), args.token_length,
                         bb.text_encoder.config.hidden_size, net.size)
        plain.load_state_dict(torch.load(checkpoint, weights_only=False)["model"])
        plain.eval()
        target = torch.from_numpy(mask).long()[None]

        def embedding():
            with torch.no_grad():
                return encode(bb.text_encoder, bb.tokenizer, [EXPRESSION], max_length=args.token_length)

        def infer():
            with torch.no_grad():
                return plain(batch.images[0], embedding()).numpy()

        def train_step():
            plain.train()
            probs = plain(batch.images[0], embedding())
            # the plain forward returns probabilities; the loss on their log is VPD's cross-entropy
            loss = torch.nn.functional.nll_loss(torch.stack([1 - probs, probs])[None].clamp_min(1e-8).log(),
                                                target, weight=torch.tensor([0.9, 1.1]))
            loss.backward()
            plain.zero_grad(set_to_none=True)
            plain.eval()
    else:
        def infer():
            clear_cache()
            return method.predict(batch)[0].scores

        def train_step():
            clear_cache()
            net.train()
            net.loss(batch).backward()
            net.zero_grad(set_to_none=True)
            net.eval()

    output = infer()  # warm-up
    reset_peak_rss()
    seconds = best_of(infer, args.repeats)
    infer_peak = peak_rss_mb()
    train_step()
    reset_peak_rss()
    step = best_of(train_step, args.repeats)
    return {"infer": seconds, "infer_peak": infer_peak, "step": step, "step_peak": peak_rss_mb(),
            "output": output.ravel()[:: max(1, output.size // 4096)].tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="sd15-random")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--token-length", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", choices=["plain", "refbench"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args, args.checkpoint)))
        return
    import numpy as np
    import torch

    from benchmarks._common import print_table
    from refbench.diffusion.backbone import load_backbone
    from refbench.plugins import PluginHost
    from tests.reference.vpd import VPDRefer

    with tempfile.TemporaryDirectory() as tmp:
        bb = load_backbone(args.backbone, "cpu", host=PluginHost())
        torch.manual_seed(0)
        plain = VPDRefer(dict(bb.unet.config), dict(bb.vae.config), args.token_length,
                         bb.text_encoder.config.hidden_size, args.image_size or bb.image_size)
        checkpoint = Path(tmp) / "vpd.pth"
        torch.save({"model": plain.state_dict(), "args": argparse.Namespace(token_length=args.token_length)},
                   checkpoint)
        del plain, bb
        figures = {}
        for pipeline in ("plain", "refbench"):
            out = subprocess.run([sys.executable, __file__, "--worker", pipeline, "--checkpoint", str(checkpoint),
                                  "--backbone", args.backbone, "--image-size", str(args.image_size),
                                  "--token-length", str(args.token_length), "--repeats", str(args.repeats)],
                                 capture_output=True, text=True, check=True)
            figures[pipeline] = json.loads(out.stdout.strip().splitlines()[-1])
    a, b = (np.array(figures[p]["output"]) for p in ("plain", "refbench"))
    plain, ours = figures["plain"], figures["refbench"]
    print(f"backbone {args.backbone} at {args.image_size}x{args.image_size}, T = {args.token_length}, "
          f"CPU, batch 1, best of {args.repeats} after a warm-up; the same weights in both; "
          f"largest output difference {np.abs(a - b).max():.2e}")
    print_table(["pipeline", "infer s/sample", "infer peak MB", "train s/step", "train peak MB"],
                [[p, f["infer"], f"{f['infer_peak']:.0f}", f["step"], f"{f['step_peak']:.0f}"]
                 for p, f in figures.items()])
    print(f"refbench is {plain['infer'] / ours['infer']:.2f}x faster at inference and "
          f"{plain['step'] / ours['step']:.2f}x per training step; peak memory "
          f"{ours['infer_peak'] / plain['infer_peak']:.2f}x / {ours['step_peak'] / plain['step_peak']:.2f}x the plain one's")


if __name__ == "__main__":
    main()
