"""Style and object classifiers: the judges that play UnlearnCanvas's ViT-L role (evaluation only)."""
from __future__ import annotations

import torch
from torch import nn


class ConceptClassifier(nn.Module):
    """Small CNN over 32x32 RGB in [-1, 1]."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()

        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                    nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *stage(3, width), nn.MaxPool2d(2), *stage(width, width * 2), nn.MaxPool2d(2),
            *stage(width * 2, width * 4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_model_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1], the range every MiniCanvas model uses."""
    return images_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) float in [-1, 1] -> (N, H, W, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
