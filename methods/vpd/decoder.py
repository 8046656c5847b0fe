"""The parts VPD adds to the diffusion backbone, named as VPD names them (so its checkpoints'
``text_adapter.*`` and ``classifier.*`` keys load as they are): the text adapter and
SimpleDecoding (VPD's refer/models_refer/model.py and refer/lib/mask_predictor.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TextAdapter(nn.Module):
    """c + gamma * MLP(c), MLP = Linear, GELU, Linear; gamma (initialised to 1e-4) is a
    parameter of the network, not of the adapter, as in VPD."""

    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, texts: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return texts + gamma * self.fc(texts)


class SimpleDecoding(nn.Module):
    """VPD's top-down decoder over features ``dims`` (fine to coarse: [320, 640+T, 1280+T, 1280]
    for SD 1.5 at 512): hidden width dims[-1] // 2; stage k (from the coarsest) upsamples the
    running map bilinearly (align_corners=True) to the next finer feature, concatenates it, and
    applies conv3x3-BN-ReLU twice; a 1x1 conv gives 2 logits at the finest scale. With four
    features the layers are VPD's conv1_4 ... conv2_2, conv1_1; a backbone with fewer levels
    gets the same structure with the coarsest stages' names (conv1_3 ... for three)."""

    def __init__(self, dims: list[int], factor: int = 2):
        super().__init__()
        self.levels = len(dims)
        hidden = dims[-1] // factor
        previous = dims[-1]
        for k in range(self.levels, 1, -1):  # fuse the running map with feature k - 1
            inputs = previous + dims[k - 2]
            setattr(self, f"conv1_{k}", nn.Conv2d(inputs, hidden, 3, padding=1, bias=False))
            setattr(self, f"bn1_{k}", nn.BatchNorm2d(hidden))
            setattr(self, f"relu1_{k}", nn.ReLU(inplace=True))
            setattr(self, f"conv2_{k}", nn.Conv2d(hidden, hidden, 3, padding=1, bias=False))
            setattr(self, f"bn2_{k}", nn.BatchNorm2d(hidden))
            setattr(self, f"relu2_{k}", nn.ReLU(inplace=True))
            previous = hidden
        self.conv1_1 = nn.Conv2d(hidden, 2, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """``features`` fine to coarse, as ``dims``."""
        x = features[-1]
        for k in range(self.levels, 1, -1):
            skip = features[k - 2]
            if x.shape[-2] < skip.shape[-2] or x.shape[-1] < skip.shape[-1]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = torch.cat([x, skip], dim=1)
            for step in ("1", "2"):
                x = getattr(self, f"conv{step}_{k}")(x)
                x = getattr(self, f"bn{step}_{k}")(x)
                x = getattr(self, f"relu{step}_{k}")(x)
        return self.conv1_1(x)
