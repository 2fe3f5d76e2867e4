"""A compact DeepLabV3+ for the examples: small residual backbone, ASPP, decoder.

Returns logits at the input resolution and the decoder features at 1/4 resolution (what
SPEEDLoss distils). ``need_fp=True`` adds UniMatch's feature-perturbation stream: the same
decoder on dropped-out backbone features. Trained from scratch: nothing is downloaded.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Block(nn.Module):
    """Residual basic block."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride, dilation),
                                  nn.Conv2d(cout, cout, 3, 1, dilation, dilation, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if stride == 1 and cin == cout
                     else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.skip(x))


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int, rates: Tuple[int, ...] = (2, 4, 6)) -> None:
        super().__init__()
        self.branches = nn.ModuleList([conv_bn(cin, cout, 1)] + [conv_bn(cin, cout, 3, dilation=r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))
        self.project = conv_bn(cout * (len(rates) + 2), cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], 1))


class SegOutput(NamedTuple):
    """What :class:`DeepLabV3Plus` returns: logits ``(B, K, H, W)``, decoder features
    ``(B, D, H/4, W/4)`` and, with ``need_fp=True``, the feature-perturbed logits."""

    logits: Tensor
    features: Tensor
    logits_fp: Optional[Tensor] = None


class DeepLabV3Plus(nn.Module):
    """``model(x) -> SegOutput(logits, features)``; ``model(x, need_fp=True)`` adds ``logits_fp``."""

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, num_classes: int, width: int = 32, feature_dim: int = 64) -> None:
        super().__init__()
        w = width
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)
        self.stem = nn.Sequential(conv_bn(3, w, stride=2), conv_bn(w, w))                   # 1/2
        self.layer1 = nn.Sequential(Block(w, w, stride=2), Block(w, w))                      # 1/4: low level
        self.layer2 = nn.Sequential(Block(w, 2 * w, stride=2), Block(2 * w, 2 * w))          # 1/8
        self.layer3 = nn.Sequential(Block(2 * w, 3 * w, dilation=2), Block(3 * w, 3 * w, dilation=2))
        self.aspp = ASPP(3 * w, feature_dim)
        self.reduce = conv_bn(w, 16, 1)
        self.fuse = nn.Sequential(conv_bn(feature_dim + 16, feature_dim), conv_bn(feature_dim, feature_dim))
        self.classifier = nn.Conv2d(feature_dim, num_classes, 1)

    def _decode(self, c1: Tensor, c4: Tensor) -> Tuple[Tensor, Tensor]:
        c4 = F.interpolate(self.aspp(c4), size=c1.shape[-2:], mode="bilinear", align_corners=False)
        feats = self.fuse(torch.cat([self.reduce(c1), c4], 1))
        return self.classifier(feats), feats

    def forward(self, x: Tensor, need_fp: bool = False):
        size = x.shape[-2:]
        c1 = self.layer1(self.stem((x - self.mean) / self.std))
        c4 = self.layer3(self.layer2(c1))
        if need_fp:  # UniMatch: one decoder pass over clean and dropped-out features
            logits, feats = self._decode(torch.cat([c1, nn.functional.dropout2d(c1, 0.5, self.training)]),
                                         torch.cat([c4, nn.functional.dropout2d(c4, 0.5, self.training)]))
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            (logits, logits_fp), (feats, _) = logits.chunk(2), feats.chunk(2)
            return SegOutput(logits, feats, logits_fp)
        logits, feats = self._decode(c1, c4)
        return SegOutput(F.interpolate(logits, size=size, mode="bilinear", align_corners=False), feats)
