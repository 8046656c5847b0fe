"""Does a backbone's UNet know what is where? Linear probes for shape and colour per latent cell.

DiffSegmenter can only localise a word whose object the UNet's features tell apart. This fits a
linear classifier on the features of each latent cell that one object mostly covers (at one
noise level, empty prompt) to predict that object's shape and its colour, on RefShapes scenes
drawn on the fly, and reports balanced accuracy on held-out scenes per feature map. A model
whose shape probes sit near chance cannot give shape words maps that follow the shape, whatever
its text side does.

    python benchmarks/shapes_probe.py [--backbone shapes] [--timestep 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_table  # noqa: E402

COVERED = 0.6  # a cell is labelled with the object covering at least this share of it


def labelled_scenes(rng: np.random.Generator, count: int, size: int, cells: int):
    """Pixels (B, 3, size, size) and per-cell shape and colour labels (B, cells, cells), -1 for
    cells no single object covers enough, from the scenes the miniature model trains on."""
    from refbench.data.shapes import COLOURS, SHAPES
    from refbench.pretrain.scenes import draw_scene

    colours = list(COLOURS)
    pixels, shapes, paints = [], [], []
    for _ in range(count):
        scene = draw_scene(rng, size, cells)
        pixels.append(scene.pixels)
        cover, owner = scene.masks.max(0)
        for labels, values in ((shapes, [SHAPES.index(shape) for shape, _ in scene.objects]),
                               (paints, [colours.index(colour) for _, colour in scene.objects])):
            label = torch.tensor(values)[owner]
            label[cover < COVERED] = -1
            labels.append(label)
    return torch.stack(pixels), torch.stack(shapes), torch.stack(paints), len(SHAPES), len(colours)


def feature_maps(backbone, pixels: torch.Tensor, timestep: int, cells: int) -> dict[str, torch.Tensor]:
    """Per-cell features (B * cells^2, C) of the VAE latent and of each UNet block's output."""
    from refbench.diffusion.prompts import encode

    unet, captured = backbone.unet, {}
    blocks = {f"down {i}": b for i, b in enumerate(unet.down_blocks)}
    blocks.update({"mid": unet.mid_block}, **{f"up {i}": b for i, b in enumerate(unet.up_blocks)})

    def keep(name):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            captured[f"{name} ({out.shape[-1]}x{out.shape[-1]})"] = F.interpolate(out, size=(cells, cells), mode="nearest")
        return hook

    handles = [block.register_forward_hook(keep(name)) for name, block in blocks.items()]
    try:
        with torch.no_grad():
            latents = backbone.vae.encode(pixels).latent_dist.mean * backbone.vae.config.scaling_factor
            steps = torch.full((len(pixels),), timestep)
            noisy = backbone.scheduler.add_noise(latents, torch.randn_like(latents), steps)
            context = encode(backbone.text_encoder, backbone.tokenizer, [""] * len(pixels))
            unet(noisy, steps, encoder_hidden_states=context)
    finally:
        for handle in handles:
            handle.remove()
    maps = {"VAE latent": latents, **captured}
    return {name: m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]) for name, m in maps.items()}


def balanced_accuracy(train_x, train_y, test_x, test_y, classes: int) -> float:
    """A standardised linear softmax classifier (Adam, 300 full-batch steps), mean recall."""
    train_x, train_y = train_x[train_y >= 0], train_y[train_y >= 0]
    test_x, test_y = test_x[test_y >= 0], test_y[test_y >= 0]
    mean, spread = train_x.mean(0), train_x.std(0) + 1e-6
    linear = torch.nn.Linear(train_x.shape[1], classes)
    optimiser = torch.optim.Adam(linear.parameters(), lr=1e-2)
    for _ in range(300):
        optimiser.zero_grad()
        F.cross_entropy(linear((train_x - mean) / spread), train_y).backward()
        optimiser.step()
    with torch.no_grad():
        predicted = linear((test_x - mean) / spread).argmax(1)
    return float(np.mean([(predicted[test_y == c] == c).float().mean() for c in range(classes)
                          if (test_y == c).any()]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="shapes")
    parser.add_argument("--timestep", type=int, default=200)
    parser.add_argument("--train-scenes", type=int, default=400)
    parser.add_argument("--test-scenes", type=int, default=150)
    args = parser.parse_args()
    from refbench.diffusion.backbone import load_backbone
    from refbench.plugins import PluginHost

    torch.manual_seed(0)
    backbone = load_backbone(args.backbone, "cpu", private=True, host=PluginHost())
    size, cells = backbone.image_size, backbone.unet.config.sample_size
    rng = np.random.default_rng(123)
    train = labelled_scenes(rng, args.train_scenes, size, cells)
    test = labelled_scenes(rng, args.test_scenes, size, cells)
    train_features = feature_maps(backbone, train[0], args.timestep, cells)
    test_features = feature_maps(backbone, test[0], args.timestep, cells)
    rows = []
    for name in train_features:
        shape = balanced_accuracy(train_features[name], train[1].flatten(), test_features[name],
                                  test[1].flatten(), train[3])
        colour = balanced_accuracy(train_features[name], train[2].flatten(), test_features[name],
                                   test[2].flatten(), train[4])
        rows.append([name, str(train_features[name].shape[1]), f"{shape:.2f}", f"{colour:.2f}"])
    print(f"{args.backbone}, t={args.timestep}: balanced accuracy of linear probes per latent cell "
          f"(chance: shape {1 / train[3]:.2f}, colour {1 / train[4]:.2f})")
    print_table(["features", "channels", "shape", "colour"], rows)


if __name__ == "__main__":
    main()
