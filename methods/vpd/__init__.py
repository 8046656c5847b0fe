"""VPD for referring segmentation ("Unleashing Text-to-Image Diffusion Models for Visual
Perception", Zhao et al., ICCV 2023) and its frozen and LoRA variants (F-VPD and LoRA-VPD, from
the project page "Referring Image Segmentation via Text-to-Image Diffusion Models"), as a plugin.

Registration only; the model (torch, diffusers, peft) lives in ``model.py``.
"""

from __future__ import annotations

from refbench import MethodSpec, hookimpl

_MODEL = "methods.vpd.model"
VPD_SOURCE = ('"Unleashing Text-to-Image Diffusion Models for Visual Perception", Zhao W., Rao Y., '
              'Liu Z., Liu B., Zhou J., Lu J., ICCV 2023 (https://github.com/wl-zhao/VPD)')
VARIANTS_SOURCE = ('"Referring Image Segmentation via Text-to-Image Diffusion Models", project page '
                   'of melvinsevi (https://melvinsevi.github.io), on VPD')


@hookimpl
def refbench_methods() -> list[MethodSpec]:
    return [
        MethodSpec("vpd", f"{_MODEL}:VPD", "VPD: SD UNet as trainable backbone + text adapter; "
                   "decoder on UNet features and cross-attention maps", trainable=True,
                   source=VPD_SOURCE),
        MethodSpec("f_vpd", f"{_MODEL}:FrozenVPD", "F-VPD: VPD with the UNet frozen and no text "
                   "adapter", trainable=True, source=VARIANTS_SOURCE),
        MethodSpec("lora_vpd", f"{_MODEL}:LoRAVPD", "LoRA-VPD: VPD with the UNet frozen and LoRA "
                   "on the cross-attention Q/K/V, text adapter on", trainable=True,
                   source=VARIANTS_SOURCE),
    ]
