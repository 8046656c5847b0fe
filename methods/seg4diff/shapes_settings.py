"""How Seg4Diff's UNet analogue was set for the ``shapes`` model: on RefShapes TRAIN data only.

The original reads SD3's block 9 at ``timesteps[-8]`` of a 28-step schedule; a UNet has no joint
attention, so refbench reads one cross-attention layer instead (``layer``, counted in forward
order: down, mid, up) at the same step of the backbone's own scheduler (``noise_step``). This
scores every layer at a few noise steps by semantic mIoU on the train split of a RefShapes copy
generated here (its own seed; the val and test splits are never read) and prints the table the
docs quote (docs/methods/seg4diff.md, "Settings on shapes").

    python -m methods.seg4diff.shapes_settings [--images 120] [--steps 4,8,14,20]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="train images to generate")
    parser.add_argument("--seed", type=int, default=7, help="RefShapes generator seed")
    parser.add_argument("--steps", default="4,8,14,20", help="noise_step values to try")
    parser.add_argument("--backbone", default="shapes")
    args = parser.parse_args()

    import refbench
    from refbench.data.shapes import ShapesConfig, generate
    from refbench.plugins import PluginHost
    from refbench.results.metrics import SEMANTIC_MIOU

    from methods.seg4diff.model import Seg4Diff, Seg4DiffConfig

    host = PluginHost()
    probe = Seg4Diff(Seg4DiffConfig(backbone=args.backbone, device="cpu"), host=host)
    n_layers = len(probe.layers)
    for i, name in enumerate(probe.layer_names):
        print(f"layer {i}: {name}")
    root = Path(tempfile.mkdtemp(prefix="refshapes-select-"))
    generate(root, ShapesConfig(seed=args.seed, images={"train": args.images, "val": 1, "testA": 1, "testB": 1}))
    steps = [int(s) for s in args.steps.split(",")]
    rows = []
    for layer in range(n_layers):
        for step in steps:
            figures = []
            for background in (True, False):
                results = refbench.evaluate(
                    "seg4diff", "refshapes-semantic", "train", host=host, data_root=root,
                    dataset_options={"background": background},
                    set={"seg4diff.backbone": args.backbone, "seg4diff.device": "cpu",
                         "seg4diff.layer": layer, "seg4diff.noise_step": step})
                figures.append(float(results.metrics[SEMANTIC_MIOU].iloc[0]) * 100)
            rows.append((layer, step, *figures))  # noqa: PERF401
            print(f"layer {layer} noise_step {step}: semantic mIoU with background {figures[0]:.2f}, "
                  f"without {figures[1]:.2f}", flush=True)
    best = max(rows, key=lambda r: r[2])
    print(f"\nbest on train (with background, the default protocol): layer {best[0]} "
          f"(of {n_layers}), noise_step {best[1]}: {best[2]:.2f} / {best[3]:.2f}")


if __name__ == "__main__":
    main()
