"""The built-in backbones, registered as an ordinary plugin (entry point ``diffusion``)."""

from __future__ import annotations

from pathlib import Path

from refbench import hookimpl
from refbench.specs import BackboneSpec

SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD21_BASE_HUB_ID = "stabilityai/stable-diffusion-2-1-base"  # iSeg's backbone
SD3_MEDIUM_HUB_ID = "stabilityai/stable-diffusion-3-medium-diffusers"  # Seg4Diff's backbone
_FAMILY_PRESETS = "refbench.diffusion.family_presets"
# refbench's own miniature model, trained by `refbench pretrain-shapes` and shipped as package data
SHAPES_DIR = Path(__file__).parent / "assets" / "shapes"


# DiffSegmenter's settings for the shapes model, chosen on 400 RefShapes train sentences (README,
# "The shapes backbone"): its attention maps are at 4, 8 and 16, the 16/32/64 levels of a 512 input.
_SHAPES_DIFFSEGMENTER = {"weights": [0.0, 0.1, 0.3, 0.6], "timesteps": [100], "refine": False}
# iSeg's and GoCA's, chosen on the first 60 (iSeg) / the train split's (GoCA) refshapes-semantic
# train images (docs/methods/iseg.md and goca.md, "Settings on shapes"): the 16 x 16 map alone and
# no iteration (its coarse self-attention spreads a class over its neighbours), no background
# words; GoCA's maps refined once, the background offset 0.2. Seg4Diff needs none: its UNet
# analogue's layer is the rule chosen there (docs/methods/seg4diff.md).
_SHAPES_ISEG = {"weights": [0.0, 0.0, 0.0, 1.0], "iterations": 0, "background_words": ""}
_SHAPES_GOCA = {"refine_order": 1, "background_offset": 0.2}


@hookimpl
def refbench_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec("shapes", "refbench.diffusion.backbone:load_pretrained",
                     "refbench's pretrained miniature text-to-image model (RefShapes scenes, 64x64, "
                     "4.5M parameters, shipped)", {"source": str(SHAPES_DIR)},
                     recommended={**{name: _SHAPES_DIFFSEGMENTER for name in (
                         "diffsegmenter", "diffsegmenter_ncr", "diffsegmenter_uea", "diffsegmenter_ab")},
                         "iseg": _SHAPES_ISEG, "goca": _SHAPES_GOCA}),
        BackboneSpec("sd15", "refbench.diffusion.backbone:load_pretrained",
                     f"Stable Diffusion 1.5 ({SD15_HUB_ID}) from the hub cache",
                     {"source": SD15_HUB_ID}),
        BackboneSpec("sd21-base", "refbench.diffusion.backbone:load_pretrained",
                     f"Stable Diffusion 2.1-base ({SD21_BASE_HUB_ID}, 512) from the hub cache",
                     {"source": SD21_BASE_HUB_ID}, family="sd2"),
        BackboneSpec("sd3-medium", "refbench.diffusion.backbone:load_pretrained",
                     f"Stable Diffusion 3 Medium ({SD3_MEDIUM_HUB_ID}) from the hub cache",
                     {"source": SD3_MEDIUM_HUB_ID}, family="sd3"),
        BackboneSpec("tiny", "refbench.diffusion.presets:build_tiny",
                     "SD 1.5 block structure at small width, seeded random weights (tests, demos)"),
        BackboneSpec("sd15-random", "refbench.diffusion.presets:build_sd15_random",
                     "full SD 1.5 architecture, seeded random weights (speed and memory figures)"),
        BackboneSpec("tiny-sd2", f"{_FAMILY_PRESETS}:build_tiny_sd2",
                     "SD 2.x structure at small width (linear projections, heads per level, "
                     "v-prediction), seeded random weights", family="sd2"),
        BackboneSpec("tiny-sdxl", f"{_FAMILY_PRESETS}:build_tiny_sdxl",
                     "SDXL structure at small width (two CLIP encoders, text_time conditions, "
                     "attention at the two inner levels), seeded random weights", family="sdxl"),
        BackboneSpec("tiny-sd3", f"{_FAMILY_PRESETS}:build_tiny_sd3",
                     "SD3 MM-DiT at small width (two CLIPs and T5, joint attention, flow "
                     "matching), seeded random weights", family="sd3"),
        BackboneSpec("tiny-flux", f"{_FAMILY_PRESETS}:build_tiny_flux",
                     "Flux MM-DiT at small width (CLIP and T5, joint and single-stream blocks, "
                     "rotary positions), seeded random weights", family="flux"),
    ]
