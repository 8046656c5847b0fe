"""Seg4Diff ("Seg4Diff: Unveiling Open-Vocabulary Segmentation in Text-to-Image Diffusion
Transformers", Chaehyun Kim, Heeseong Shin, Eunbeen Hong, Heeji Yoon, Anurag Arnab, Paul Hongsuck
Seo, Sunghwan Hong, Seungryong Kim, NeurIPS 2025, arXiv 2509.18096), training-free, as a plugin.

This module only registers the name; the model code in ``model.py`` (torch, diffusers) is
imported when the method runs.
"""

from __future__ import annotations

from refbench import MethodSpec, hookimpl

SOURCE = ('"Seg4Diff: Unveiling Open-Vocabulary Segmentation in Text-to-Image Diffusion '
          'Transformers", Kim C., Shin H., Hong E., Yoon H., Arnab A., Seo P. H., Hong S., Kim S., '
          'NeurIPS 2025, arXiv 2509.18096 (https://github.com/cvlab-kaist/Seg4Diff)')


@hookimpl
def refbench_methods() -> list[MethodSpec]:
    return [
        MethodSpec("seg4diff", "methods.seg4diff.model:Seg4Diff",
                   "Seg4Diff as its code computes it (zero-shot, no LoRA): the image-to-text "
                   "joint attention of one semantic-grounding MM-DiT block (SD3: block 9) at one "
                   "noise level, one prompt of the image's class names, no refinement",
                   source=SOURCE),
    ]
