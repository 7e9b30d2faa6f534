"""Small models and slides for the whole-slide tests (imported by tests/inference and tests/io)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pathseg.inference.backends import TorchBackend

TWO_CLASSES = ["background", "tissue"]
BRIGHTNESS_CUT = 215.0  # mean RGB below this is tissue on the synthetic slides


class ColourModel(nn.Module):
    """A fixed, translation-equivariant classifier: two same-padded 3x3 convs, no downsampling.

    conv1 averages brightness over 3x3 (all channels); conv2 turns (cut - brightness) into the tissue
    logit and its negative into the background logit (centre tap only). Input: raw 0..255 RGB.
    """

    def __init__(self, cut: float = BRIGHTNESS_CUT, gain: float = 0.2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 1, 3, padding=1)
        self.conv2 = nn.Conv2d(1, 2, 3, padding=1)
        with torch.no_grad():
            self.conv1.weight.fill_(1 / 27)
            self.conv1.bias.zero_()
            self.conv2.weight.zero_()
            self.conv2.weight[0, 0, 1, 1] = gain
            self.conv2.weight[1, 0, 1, 1] = -gain
            self.conv2.bias.copy_(torch.tensor([-gain * cut, gain * cut]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


def colour_info(mpp: float = 0.5) -> dict:
    return {"model": "colour", "encoder": "none", "num_classes": 2, "class_names": TWO_CLASSES,
            "colors": [[230, 230, 230], [220, 40, 60]], "mpp": mpp, "mean": [0.0, 0.0, 0.0], "std": [1 / 255] * 3}


def colour_backend(mpp: float = 0.5) -> TorchBackend:
    return TorchBackend(ColourModel(), colour_info(mpp), device="cpu", threads=1)


def whole_image_probs(backend: TorchBackend, image: np.ndarray) -> np.ndarray:
    """Run the backend on one whole image: (H, W, 3) uint8 -> (K, H, W)."""
    return backend(image[None])[0]


def tiny_checkpoint(path: Path, *, mpp: float | None = 2.0, num_classes: int = 2) -> Path:
    """A random U-Net/ResNet-18 pathseg checkpoint (for CLI and ONNX tests)."""
    from pathseg.models.checkpoint import save_model_checkpoint
    from pathseg.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", encoder="resnet18", num_classes=num_classes)
    names = TWO_CLASSES if num_classes == 2 else [f"class{i}" for i in range(num_classes)]
    return save_model_checkpoint(path, model, names, mpp=mpp)
