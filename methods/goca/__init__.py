"""GoCA ("Making Training-Free Diffusion Segmentors Scale with the Generative Power", Benyuan
Meng, Qianqian Xu, Zitai Wang, Xiaochun Cao, Longtao Huang and Qingming Huang, CVPR 2026,
arXiv 2603.06178), as a plugin.

This module only registers the name; the model code in ``model.py`` (torch, diffusers) is
imported when the method runs.
"""

from __future__ import annotations

from refbench import MethodSpec, hookimpl

GOCA_SOURCE = ('"Making Training-Free Diffusion Segmentors Scale with the Generative Power", '
               "Meng B., Xu Q., Wang Z., Cao X., Huang L., Huang Q., CVPR 2026, arXiv 2603.06178 "
               "(https://github.com/Darkbblue/goca)")


@hookimpl
def refbench_methods() -> list[MethodSpec]:
    return [
        MethodSpec("goca", "methods.goca.model:GoCA",
                   "GoCA as its code computes it: cross-attention heads and layers weighted from "
                   "the model's own activations, per-pixel rescaling over the prompt's content "
                   "tokens, self-attention refinement (SD 1.x, SDXL)", source=GOCA_SOURCE),
    ]
