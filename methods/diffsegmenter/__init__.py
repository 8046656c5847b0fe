"""DiffSegmenter ("Diffusion Model is Secretly a Training-free Open Vocabulary Semantic
Segmenter", Wang et al.) and the attribute-binding variants of "Attribute binding enhancement
improvement for diffusion model based zero-shot image segmentation" (Nanli Wu), as a plugin.

This module only registers names; the model code in ``model.py`` (torch, diffusers) is imported
when a method runs.
"""

from __future__ import annotations

from refbench import MethodSpec, hookimpl

_MODEL = "methods.diffsegmenter.model"
DIFFSEGMENTER_SOURCE = ('"Diffusion Model is Secretly a Training-free Open Vocabulary Semantic '
                        'Segmenter", Wang J., Li X., Zhang J., et al., arXiv 2309.02773 '
                        '(https://github.com/VCG-team/DiffSegmenter)')
BINDING_SOURCE = ('"Attribute binding enhancement improvement for diffusion model based zero-shot '
                  'image segmentation", Nanli Wu (Beihang University), write-up; on DiffSegmenter')


@hookimpl
def refbench_methods() -> list[MethodSpec]:
    return [
        MethodSpec("diffsegmenter", f"{_MODEL}:DiffSegmenter",
                   "DiffSegmenter as its code computes it: training-free cross-attention of the "
                   "read token, refined by self-attention", source=DIFFSEGMENTER_SOURCE),
        MethodSpec("diffsegmenter_ncr", f"{_MODEL}:DiffSegmenterNCR",
                   "DiffSegmenter + noun-chunk replacement: the referent's noun chunk encoded "
                   "alone and spliced into the prompt embedding", source=BINDING_SOURCE),
        MethodSpec("diffsegmenter_uea", f"{_MODEL}:DiffSegmenterUEA",
                   "DiffSegmenter + unconditioned-embedding averaging at the target token "
                   "(ratio alpha)", source=BINDING_SOURCE),
        MethodSpec("diffsegmenter_ab", f"{_MODEL}:DiffSegmenterAB",
                   "DiffSegmenter + both attribute-binding steps (replacement, then averaging)",
                   source=BINDING_SOURCE),
    ]
