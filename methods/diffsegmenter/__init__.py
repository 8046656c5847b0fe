"""DiffSegmenter ("Diffusion Model is Secretly a Training-free Open Vocabulary Semantic
Segmenter", Wang et al.) and the attribute-binding variants of "Attribute binding enhancement
improvement for diffusion model based zero-shot image segmentation" (Nanli Wu), as a plugin.

This module only registers names; the model code in ``model.py`` (torch, diffusers) is imported
when a method runs.
"""

from __future__ import annotations

from refbench import MethodSpec, hookimpl

_MODEL = "methods.diffsegmenter.model"


@hookimpl
def refbench_methods() -> list[MethodSpec]:
    return [
        MethodSpec("diffsegmenter", f"{_MODEL}:DiffSegmenter",
                   "DiffSegmenter (Wang et al., arXiv 2309.02773), as its code computes it: "
                   "training-free cross-attention of the read token, refined by self-attention"),
        MethodSpec("diffsegmenter_ncr", f"{_MODEL}:DiffSegmenterNCR",
                   "DiffSegmenter + noun-chunk replacement (Nanli Wu's attribute binding, eq. 3)"),
        MethodSpec("diffsegmenter_uea", f"{_MODEL}:DiffSegmenterUEA",
                   "DiffSegmenter + unconditioned-embedding averaging at the target token "
                   "(Nanli Wu's attribute binding, eq. 4)"),
        MethodSpec("diffsegmenter_ab", f"{_MODEL}:DiffSegmenterAB",
                   "DiffSegmenter + both attribute-binding steps (Nanli Wu's eq. 5)"),
    ]
