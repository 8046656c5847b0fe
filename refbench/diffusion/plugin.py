"""The built-in backbones, registered as an ordinary plugin (entry point ``diffusion``)."""

from __future__ import annotations

from refbench import hookimpl
from refbench.specs import BackboneSpec

SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@hookimpl
def refbench_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec("sd15", "refbench.diffusion.backbone:load_pretrained",
                     f"Stable Diffusion 1.5 ({SD15_HUB_ID}) from the hub cache",
                     {"source": SD15_HUB_ID}),
        BackboneSpec("tiny", "refbench.diffusion.presets:build_tiny",
                     "SD 1.5 block structure at small width, seeded random weights (tests, demos)"),
        BackboneSpec("sd15-random", "refbench.diffusion.presets:build_sd15_random",
                     "full SD 1.5 architecture, seeded random weights (speed and memory figures)"),
    ]
