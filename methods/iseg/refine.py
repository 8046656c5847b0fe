"""iSeg's map arithmetic on captured attention, step by step as its code computes it.

- ``mixed_cross``: ``wsss/iSeg.py`` ``process_cross_att`` up to the clustering: per resolution
  the chosen heads' mean, each token's map divided by its sum over pixels, upsampled (bilinear)
  to the self-attention grid, times the resolution's weight, summed.
- ``kl_clusters``: ``wsss/featurecluster.py`` ``DFC_KL``: prototypes start at a grid of pixels
  (stride ``side // sqrt(clusters)``), then ``steps`` times every pixel joins its nearest
  prototype by the symmetric KL divergence of ``util/attn.py`` ``kl_dis`` (computed in float16,
  as the original casts it, each value + 1e-5) and each prototype becomes its members' mean;
  clusters left empty are dropped.
- ``cluster_means``: each pixel's token vector replaced by its cluster's mean (the original
  multiplies by the one-hot co-membership matrix and divides by the cluster sizes).
- ``entropy_reduced`` and ``iterate``: ``get_att_map``: the self-attention (query x key) divided
  by each key's maximum over queries, plus ``entropy`` x log10(e x a) where a > 0, clipped at 0,
  rows renormalised; the class maps (pixels x classes), shifted to a minimum of 0 and divided by
  their sum, are multiplied by it ``iterations`` times, shifted and renormalised each time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mixed_cross(maps: dict[int, torch.Tensor], weights: dict[int, float], grid: int) -> torch.Tensor:
    """``maps``: resolution -> (1, T, r, r) head-averaged cross-attention; (T, grid, grid)."""
    terms = []
    for resolution in sorted(maps):
        values = maps[resolution]
        normed = values / values.sum(dim=(-2, -1), keepdim=True)
        if resolution != grid:
            normed = F.interpolate(normed, size=(grid, grid), mode="bilinear", align_corners=False)
        terms.append(weights[resolution] * normed)
    return torch.stack(terms, dim=0).sum(0)[0]


def head_mean(layers: list[torch.Tensor], heads: tuple[int, ...] | None) -> torch.Tensor:
    """(1, heads, N, T) per layer, in call order -> the chosen heads' mean, (1, T, r, r), taken
    as the original takes it (heads concatenated, then laid out token-first, then indexed)."""
    probs = torch.cat(layers, dim=1)
    b, h, n, t = probs.shape
    r = int(round(n ** 0.5))
    probs = probs.reshape(b, h, r, r, t).permute(0, 1, 4, 2, 3)
    return (probs if heads is None else probs[:, list(heads)]).mean(1)


def cluster_grid(side: int, clusters: int) -> torch.Tensor:
    """The starting prototypes' pixel indices: rows and columns 0, s, 2s, ... with s =
    side // sqrt(clusters) (a float floor division, as the original: 64 // sqrt(32) = 11, so
    6 x 6 = 36 prototypes at latent 64)."""
    step = side // (clusters ** 0.5)
    line = torch.arange(0, side, step)[None].long()
    return (line.T * side + line).flatten()


def kl_divergence(anchor: torch.Tensor, points: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Symmetric KL of every anchor (P, T) to every point (N, T): (P, N), in ``dtype``."""
    a, b = anchor.to(dtype) + 1e-5, points.to(dtype) + 1e-5
    a, b = a.unsqueeze(-2), b.unsqueeze(-3)
    quotient = torch.log(a) - torch.log(b)
    return torch.sum(a * quotient, dim=-1) * 0.5 + (-torch.sum(b * quotient, dim=-1) * 0.5)


def kl_clusters(cross: torch.Tensor, clusters: int, steps: int,
                dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, int]:
    """(T, s, s) maps -> each pixel's cluster (N,), numbered 0..n-1 in prototype order, and n."""
    side = cross.shape[-1]
    x = cross.flatten(-2, -1).T
    x = torch.where(x == 0, 1e-6, x)
    prototypes = x[cluster_grid(side, clusters).to(x.device)]
    assignment = None
    for _ in range(steps):
        _, assignment = torch.min(kl_divergence(prototypes, x, dtype), dim=0)
        kept = assignment.unique()
        prototypes = torch.stack([x[assignment == c].mean(0) for c in kept], dim=0)
    assert assignment is not None
    kept, assignment = assignment.unique(return_inverse=True)
    return assignment, len(kept)


def cluster_means(cross: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """(T, s, s) maps -> (N, T): every pixel's token vector replaced by its cluster's mean, as
    the original computes it: the N x N co-membership matrix times the maps, divided by the
    cluster sizes (N x N is 64 MB at latent 64 in float32; a per-cluster sum would round
    differently, and the maps are compared with the original's to 1e-6)."""
    together = assignment[:, None] == assignment[None, :]  # the original's one_hot(c)[:, c], as bool
    x = cross.flatten(-2, -1).permute(1, 0)
    return torch.matmul(together.to(x.dtype), x) / together.sum(-1, keepdim=True)


def entropy_reduced(self_attention: torch.Tensor, entropy: float) -> torch.Tensor:
    """(1, N, N) query x key attention -> the row-stochastic transition matrix iSeg iterates."""
    a = self_attention.float()
    a = a / torch.amax(a, dim=-2, keepdim=True)
    a = a + torch.where(a == 0, 0, entropy * torch.log10(torch.e * a))
    a = torch.clamp(a, min=0)
    return a / a.sum(dim=-1, keepdim=True)


def iterate(transition: torch.Tensor, maps: torch.Tensor, iterations: int) -> torch.Tensor:
    """(1, N, N) and (1, N, C) class maps -> the refined maps (1, N, C)."""
    maps = maps - maps.amin(dim=-2, keepdim=True)
    maps = maps / maps.sum(dim=-2, keepdim=True)
    for _ in range(iterations):
        maps = torch.bmm(transition, maps)
        maps = maps - maps.amin(dim=-2, keepdim=True)
        maps = maps / maps.sum(dim=-2, keepdim=True)
    return maps
