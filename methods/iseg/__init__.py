"""iSeg ("iSeg: An Iterative Refinement-based Framework for Training-free Segmentation", Sun L.,
Cao J., Xie J., Khan F. S., Pang Y., arXiv 2409.03209, 2024; code github.com/linsun449/iseg.code),
as a plugin.

This module only registers the name; the model code in ``model.py`` (torch, diffusers) is
imported when the method runs.
"""

from __future__ import annotations

from refbench import MethodSpec, hookimpl

ISEG_SOURCE = ('"iSeg: An Iterative Refinement-based Framework for Training-free Segmentation", '
               'Sun L., Cao J., Xie J., Khan F. S., Pang Y., arXiv 2409.03209, 2024 '
               '(https://github.com/linsun449/iseg.code)')


@hookimpl
def refbench_methods() -> list[MethodSpec]:
    return [
        MethodSpec("iseg", "methods.iseg.model:ISeg",
                   "iSeg as its open-vocabulary code computes it: all of an image's classes in one "
                   "prompt, their token embeddings x 1.6, cross-attention clustered by KL and "
                   "refined 8 times by entropy-reduced self-attention", source=ISEG_SOURCE),
    ]
