"""The parts VPD adds to the diffusion backbone: the text adapter and a top-down decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TextAdapter(nn.Module):
    """c + gamma * MLP(c): starts as the identity (gamma = 1e-4) and learns a residual."""

    def __init__(self, width: int, gamma_init: float = 1e-4):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.gamma = nn.Parameter(torch.full((width,), gamma_init))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return context + self.gamma * self.mlp(context)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class TopDownDecoder(nn.Module):
    """Fuses features coarse to fine (LAVT style): upsample, concatenate the next scale, two
    conv3x3-BN-ReLU; then a 1x1 conv to class logits at the finest scale."""

    def __init__(self, in_channels: list[int], width: int, classes: int = 2):
        super().__init__()
        stages = []
        previous = in_channels[0]
        for channels in in_channels[1:]:
            stages.append(nn.Sequential(*_conv_bn_relu(previous + channels, width),
                                        *_conv_bn_relu(width, width)))
            previous = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Conv2d(previous, classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[0]
        for stage, feature in zip(self.stages, features[1:]):
            x = F.interpolate(x, size=feature.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, feature], dim=1))
        return self.head(x)
