"""VPD for referring segmentation and its frozen and LoRA variants (seed 000), as a plugin.

Registration only; the model (torch, diffusers, peft) lives in ``model.py``.
"""

from __future__ import annotations

from refbench import MethodSpec, hookimpl

_MODEL = "methods.vpd.model"


@hookimpl
def refbench_methods() -> list[MethodSpec]:
    return [
        MethodSpec("vpd", f"{_MODEL}:VPD", "SD UNet as trainable backbone + text adapter; "
                   "decoder on UNet features and cross-attention maps", trainable=True),
        MethodSpec("f_vpd", f"{_MODEL}:FrozenVPD", "VPD with the UNet frozen and no text adapter "
                   "(seed 000's F-VPD)", trainable=True),
        MethodSpec("lora_vpd", f"{_MODEL}:LoRAVPD", "VPD with the UNet frozen and LoRA on the "
                   "cross-attention Q/K/V, text adapter on", trainable=True),
    ]
