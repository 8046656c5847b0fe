"""Prompt-embedding edits: attribute binding ("Attribute binding enhancement improvement for
diffusion model based zero-shot image segmentation", Nanli Wu, sections 3.2-3.3) and Compel's
word up-weighting, which DiffSegmenter's code applies to the class word.

Noun-chunk replacement (eq. 3): the chunk naming the referent is encoded on its own, and its
token embeddings replace the chunk's positions in the full prompt's embedding, so the chunk's
words attend only to each other inside the text encoder. Unconditioned-embedding averaging
(eq. 4): at the target token q, E_q <- alpha * E_q + (1 - alpha) * U_q with U the embedding of the
empty prompt, which lowers the weight of the noun against its modifiers. Applied in that order
they give eq. 5. Compel's "word++" (weight w = 1.1^2): E_q <- U_q + w (E_q - U_q), which moves the
word away from the empty prompt; followed by eq. 4 it composes to U_q + w * alpha * (E_q - U_q).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def replace_chunk(embedding: torch.Tensor, chunk_positions: Sequence[int],
                  chunk_embedding: torch.Tensor, chunk_alone_positions: Sequence[int]) -> torch.Tensor:
    """Eq. 3 for one prompt: (L, D) -> (L, D) with the chunk's rows taken from ``chunk_embedding``
    (the chunk encoded alone; its BOS, EOS and padding are not spliced)."""
    if len(chunk_positions) != len(chunk_alone_positions):
        raise ValueError(f"the chunk has {len(chunk_alone_positions)} tokens alone but "
                         f"{len(chunk_positions)} inside the prompt")
    out = embedding.clone()
    out[list(chunk_positions)] = chunk_embedding[list(chunk_alone_positions)]
    return out


def average_with_unconditioned(embedding: torch.Tensor, target_positions: Sequence[int],
                               unconditioned: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 4 for one prompt: rows q of ``embedding`` become alpha * E_q + (1 - alpha) * U_q."""
    out = embedding.clone()
    q = list(target_positions)
    out[q] = alpha * embedding[q] + (1 - alpha) * unconditioned[q]
    return out


def emphasise(embedding: torch.Tensor, positions: Sequence[int], unconditioned: torch.Tensor,
              weight: float) -> torch.Tensor:
    """Compel's weighting for one prompt: rows q become U_q + weight * (E_q - U_q)."""
    out = embedding.clone()
    q = list(positions)
    out[q] = unconditioned[q] + weight * (embedding[q] - unconditioned[q])
    return out
