"""Classification networks with class activation maps (CAM), and segmenters gated by one.

Two registered model names, both plain :class:`~pathseg.models.SegModel` so the loop, the checkpoints,
``pathseg evaluate`` and the whole-slide engine use them unchanged:

``"cam"``: a multi-label patch classifier for weak supervision (Han et al. 2022, phase 1). The encoder
is dilated to output stride 8 (the paper's ResNet-38 also keeps 1/8 resolution), the "decoder" is one
3x3 conv + BN + ReLU over the last encoder stage (the analogue of ResNet-38's ``bn7`` features) and the
1x1 pixel classifier is the CAM layer ``fc8``:

    features = model.encode(x)          # [..., mid (stage 4), late (stage 5)], 1/8 resolution
    z        = model.decode(features)   # "final" features (B, 256, H/8, W/8)
    cams     = model.classify(z)        # M_k = w_k . z + b_k, (B, K, H/8, W/8)
    logits   = cams.mean((2, 3))        # = w_k . GAP(z) + b_k: the class scores

``"<decoder>_gated"`` (e.g. ``deeplabv3plus_gated``): a segmenter and a ``cam`` classifier in one
model; the classifier's probability for the input patch gates the segmentation (the paper's
inference gate, :func:`pathseg.methods.weak.mlps.gate_checkpoint` builds it). The gate is folded
into the 1x1 pixel classifier so the model's output stays "logits": the decoder appends K channels
holding ``-GATE_OFFSET`` for every class whose probability is <= eps (0 otherwise) and the classifier
adds them with an identity block, so a gated class can never win the argmax and its softmax
probability is 0 (to float precision). Both networks use the checkpoint's one encoder name.

Example:
    >>> m = create_model("cam", encoder="resnet18", num_classes=3)
    >>> m.classify(m.decode(m.encode(torch.zeros(1, 3, 64, 64)))).shape
    torch.Size([1, 3, 8, 8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pathseg.models.factory import DECODERS, _smp

CAM_OUTPUT_STRIDE = 8
CAM_HEAD_CHANNELS = 256
GATE_OFFSET = 1.0e4
"""Logit offset subtracted from a gated class (its softmax probability becomes exp(-1e4) = 0)."""
DEFAULT_GATE_EPS = 0.1


class CamHead(nn.Module):
    """The classifier's last feature block ("bn7"): conv 3x3 + BN + ReLU over the last encoder stage."""

    def __init__(self, in_channels: int, out_channels: int = CAM_HEAD_CHANNELS) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return F.relu(self.bn(self.conv(features[-1])))


class CamNet(nn.Module):
    """Encoder (dilated to output stride 8) + :class:`CamHead`; :class:`SegModel` adds the CAM layer."""

    def __init__(self, encoder_name: str, encoder_weights: str | None = None, classes: int = 2, **_: object) -> None:
        super().__init__()
        self.encoder = _smp().encoders.get_encoder(encoder_name, weights=encoder_weights,
                                                   output_stride=CAM_OUTPUT_STRIDE)
        self.decoder = CamHead(self.encoder.out_channels[-1])


DECODERS.register("cam", CamNet)


def class_logits(cams: torch.Tensor) -> torch.Tensor:
    """Class scores from CAMs: the spatial mean (GAP of a linear layer = linear layer of GAP).

    Shape: cams (B, K, h, w) -> (B, K).
    """
    return cams.mean((2, 3))


class _GatedEncoder(nn.Module):
    """Runs the segmenter's encoder and the whole classifier; appends the gate offsets (B, K, 1, 1)."""

    def __init__(self, seg_encoder: nn.Module, cls_net: CamNet, classes: int) -> None:
        super().__init__()
        self.seg = seg_encoder
        self.cls_encoder, self.cls_head = cls_net.encoder, cls_net.decoder
        self.cls_fc = nn.Conv2d(CAM_HEAD_CHANNELS, classes, 1)
        self.register_buffer("gate_eps", torch.tensor(DEFAULT_GATE_EPS))

    @property
    def out_channels(self):
        return self.seg.out_channels

    def class_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's per-patch class probabilities, (B, K)."""
        z = self.cls_head(self.cls_encoder(x))
        return torch.sigmoid(class_logits(self.cls_fc(z)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        probs = self.class_probs(x)
        offset = torch.where(probs <= self.gate_eps, -GATE_OFFSET, 0.0).to(x.dtype)
        return [*self.seg(x), offset[..., None, None]]


class _GatedDecoder(nn.Module):
    def __init__(self, seg_decoder: nn.Module) -> None:
        super().__init__()
        self.seg = seg_decoder

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        z = self.seg(features[:-1])
        offset = features[-1].expand(-1, -1, *z.shape[-2:])
        return torch.cat([z, offset], 1)


class GatedNet(nn.Module):
    """``<base>_gated``: :class:`_GatedEncoder` + :class:`_GatedDecoder` over a registered segmenter."""

    def __init__(self, base: str, encoder_name: str, encoder_weights: str | None = None, classes: int = 2,
                 **kwargs: object) -> None:
        super().__init__()
        seg = DECODERS.get(base)(encoder_name=encoder_name, encoder_weights=None, classes=classes, **kwargs)
        cls = CamNet(encoder_name, None, classes)
        self.encoder = _GatedEncoder(seg.encoder, cls, classes)
        self.decoder = _GatedDecoder(seg.decoder)


for _base in [n for n in DECODERS.names() if n != "cam" and not n.endswith("_gated")]:
    DECODERS.register(f"{_base}_gated", lambda _b=_base, **kw: GatedNet(_b, **kw))

__all__ = ["CamHead", "CamNet", "GatedNet", "class_logits", "GATE_OFFSET", "DEFAULT_GATE_EPS"]
