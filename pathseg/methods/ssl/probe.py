"""Linear probe of a frozen encoder: how much of a segmentation its features already carry.

Fine-tuning changes the encoder, so a fine-tuning score alone cannot tell features that were poor from
features that fine-tuning overwrote. The probe keeps the encoder fixed and fits only a linear pixel
classifier on top:

    f(x)    = [ up(h_2(x)) ; up(h_3(x)) ; up(h_4(x)) ; up(h_5(x)) ]   the encoder's features at strides 4, 8,
              16, 32 (smp's feature list, index 0 = the input), each bilinearly resized to stride ``stride``
              and concatenated (C = Σ channels: 960 for a ResNet-18)
    z       = (f - μ) / σ                                             standardised with the training pixels'
              per-channel mean and std
    p(y|z)  = softmax(W z + b)                                        fitted by L-BFGS on the labelled pixels,
              min  mean_i CE(W z_i + b, y_i) + λ ||W||²

Pixels are taken on the stride-``stride`` grid (labels at each grid point; ``IGNORE_INDEX`` skipped).
Prediction: the logits on the grid, bilinearly upsampled to the image, argmax.

Example:
    >>> model = create_model("unet", encoder="resnet18", weights="runs/ssl/dsf/encoder.safetensors")  # doctest: +SKIP
    >>> feats = [dense_features(model, im) for im in images]                       # doctest: +SKIP
    >>> x, y = grid_pixels(feats, masks)                                           # doctest: +SKIP
    >>> head = fit_linear_probe(x, y, num_classes=2)                               # doctest: +SKIP
    >>> pred = probe_predict(head, feats[0], images[0].shape[:2])                  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pathseg.errors import DataError
from pathseg.sample import IGNORE_INDEX


@torch.inference_mode()
def dense_features(model: torch.nn.Module, image: np.ndarray, *, stride: int = 4, stages: Sequence[int] = (2, 3, 4, 5),
                   ) -> torch.Tensor:
    """``f(x)`` of the module docstring for one (H, W, 3) uint8 image: (C, ceil(H/stride), ceil(W/stride)) float32.

    ``model``: a pathseg segmentation model (its ``encoder`` returns the smp feature list, stage 0 = the input)."""
    from pathseg.transforms import to_tensor

    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise DataError(f"dense_features: expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    m = 32  # the deepest stage's stride: pad to a multiple so every stage lines up with the image
    ph, pw = -h % m, -w % m
    padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect") if ph or pw else image
    x = to_tensor({"image": padded})["image"][None]
    was = model.training
    model.eval()
    try:
        feats = model.encoder(x)
    finally:
        model.train(was)
    gh, gw = -(-padded.shape[0] // stride), -(-padded.shape[1] // stride)
    out = [F.interpolate(feats[s], size=(gh, gw), mode="bilinear", align_corners=False) for s in stages]
    f = torch.cat(out, 1)[0]
    return f[:, :-(-h // stride), :-(-w // stride)].contiguous()


def grid_labels(mask: np.ndarray, stride: int) -> np.ndarray:
    """The label at each stride-``stride`` grid point (the pixel at the centre of each cell, clipped inside)."""
    h, w = mask.shape
    rows = np.minimum(np.arange(-(-h // stride)) * stride + stride // 2, h - 1)
    cols = np.minimum(np.arange(-(-w // stride)) * stride + stride // 2, w - 1)
    return np.asarray(mask)[rows[:, None], cols[None, :]]


def grid_pixels(features: Sequence[torch.Tensor], masks: Sequence[np.ndarray], *, stride: int = 4,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled grid pixels of every image: (N, C) features and (N,) int64 labels."""
    xs, ys = [], []
    for f, m in zip(features, masks):
        lab = torch.from_numpy(grid_labels(m, stride).astype(np.int64))
        if lab.shape != f.shape[1:]:
            raise DataError(f"grid_pixels: features {tuple(f.shape[1:])} and labels {tuple(lab.shape)} differ")
        keep = lab != IGNORE_INDEX
        xs.append(f[:, keep].T)
        ys.append(lab[keep])
    return torch.cat(xs), torch.cat(ys)


@dataclass
class LinearProbe:
    """The fitted head: ``softmax(W (f - mean) / std + b)``."""

    weight: torch.Tensor  # (K, C)
    bias: torch.Tensor  # (K,)
    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)
    loss: float  # the final training objective

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(C, h, w) features -> (K, h, w) logits."""
        z = (features - self.mean[:, None, None]) / self.std[:, None, None]
        return torch.einsum("kc,chw->khw", self.weight, z) + self.bias[:, None, None]


def fit_linear_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, l2: float = 1e-3,
                     max_iter: int = 200) -> LinearProbe:
    """Minimise ``mean CE(W z + b, y) + l2 ||W||²`` over the standardised pixels ``z`` by L-BFGS (full batch)."""
    if len(y) == 0:
        raise DataError("fit_linear_probe: no labelled pixels")
    x = x.float()
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(num_classes, z.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(objective)
        final = float(objective().detach())
    return LinearProbe(w.detach(), b.detach(), mean, std, final)


def probe_predict(probe: LinearProbe, features: torch.Tensor, size: tuple[int, int], *, stride: int = 4,
                  ) -> np.ndarray:
    """The (H, W) label map: grid logits bilinearly upsampled to ``size`` (the image), then argmax.

    The grid point of cell k sits at pixel ``k·stride + stride/2``; resizing the (h, w) grid to (h·stride,
    w·stride) with ``align_corners=False`` puts it there, and the map is then cropped to ``size``."""
    logits = probe.logits(features)[None]
    h, w = logits.shape[-2:]
    up = F.interpolate(logits, size=(h * stride, w * stride), mode="bilinear", align_corners=False)
    return up[0, :, :size[0], :size[1]].argmax(0).numpy()
