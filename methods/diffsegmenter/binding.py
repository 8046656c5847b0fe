"""Attribute binding on prompt embeddings (seed 003, section 3.2-3.3).

Noun-chunk replacement (eq. 3): the chunk naming the referent is encoded on its own, and its
token embeddings replace the chunk's positions in the full prompt's embedding, so the chunk's
words attend only to each other inside the text encoder. Unconditioned-embedding averaging
(eq. 4): at the target token q, E_q <- alpha * E_q + (1 - alpha) * U_q with U the embedding of the
empty prompt, which lowers the weight of the noun against its modifiers. Applied in that order
they give eq. 5.
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
