"""DiffSegmenter and its attribute-binding variants (seed 003), as a refbench plugin.

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
                   "training-free: cross-attention of the referent's token, refined by self-attention"),
        MethodSpec("diffsegmenter_ncr", f"{_MODEL}:DiffSegmenterNCR",
                   "DiffSegmenter + noun-chunk replacement (seed 003, eq. 3)"),
        MethodSpec("diffsegmenter_uea", f"{_MODEL}:DiffSegmenterUEA",
                   "DiffSegmenter + unconditioned-embedding averaging at the target token (eq. 4)"),
        MethodSpec("diffsegmenter_ab", f"{_MODEL}:DiffSegmenterAB",
                   "DiffSegmenter + both attribute-binding steps (eq. 5)"),
    ]
