"""Dense features from a plain ViT: a simple feature pyramid over 4 intermediate blocks (ViTDet-style).

A ViT keeps one token grid (stride = patch size) through all its blocks. :class:`VitPyramid` taps 4 blocks
(evenly spaced by default, e.g. 5/11/17/23 of 24, normalised by the ViT's final norm as DINOv2's
``get_intermediate_layers`` does), puts the tokens on the stride-16 grid and makes a pyramid of them the way
ViTDet's simple feature pyramid does (Li et al. 2022, "Exploring plain vision transformer backbones"):

=========== ============================================ =============================
level        from block (default, depth d)               scale op
=========== ============================================ =============================
stride 4     d/4                                          2 x (deconv 2x2 /2), LN, GELU
stride 8     d/2                                          deconv 2x2 /2
stride 16    3d/4                                         identity
stride 32    d                                            max-pool 2x2
=========== ============================================ =============================

each followed by conv 1x1 -> LN -> conv 3x3 -> LN to the level's channels. A /14 ViT's grid is resampled
(bilinear) to stride 16 first; a tile whose side is not a multiple of the patch size is resized to the
nearest multiple before the patch embedding (position embeddings are interpolated by timm for any grid).

:class:`SmpVitEncoder` wraps the pyramid as a segmentation_models_pytorch encoder: ``out_channels`` includes
the input and a stride-2 conv stem, ``forward`` returns ``[x, stem, p4, p8, p16, p32]``, and an
``output_stride`` of 16 or 8 (DeepLabV3+/DeepLabV3) keeps the coarse levels at that stride. Inputs arrive in
pathseg's normalisation (ImageNet mean/std) and are re-normalised to the weights' own (H-optimus-0, CONCH)
inside the encoder, so the data pipeline, checkpoints and ONNX models need no change.

Shape:
    VitPyramid: (B, 3, H, W) -> [(B, C_i, H/s_i, W/s_i) for s_i in (4, 8, 16, 32)] (sides rounded up)
    SmpVitEncoder: (B, 3, H, W) -> [x, (B, c, H/2, W/2), *pyramid]

Example:
    >>> enc = build_vit_encoder("vit_small_patch16_224")
    >>> [tuple(f.shape) for f in enc(torch.zeros(1, 3, 224, 224))]
    [(1, 64, 56, 56), (1, 128, 28, 28), (1, 256, 14, 14), (1, 512, 7, 7)]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pathseg.errors import ConfigError
from pathseg.models.vit.specs import IMAGENET_MEAN, IMAGENET_STD, VitSpec

PYRAMID_STRIDES = (4, 8, 16, 32)
DEFAULT_CHANNELS = (64, 128, 256, 512)
"""Level widths; with the stride-2 stem (64) these are ResNet-18's, so every smp decoder fits unchanged."""


def default_indices(depth: int) -> list[int]:
    """The 4 tapped blocks: the ends of the four quarters of the network (0-based)."""
    if depth < 4:
        raise ConfigError(f"a ViT pyramid taps 4 blocks; this ViT has only {depth}")
    return [max(0, round(depth * q / 4) - 1) for q in (1, 2, 3, 4)]


def _layer_norm_2d(channels: int) -> nn.Module:
    from timm.layers import LayerNorm2d

    return LayerNorm2d(channels)


class _Level(nn.Module):
    """One pyramid level: scale op from the stride-16 map (ViTDet), then conv 1x1 -> LN -> conv 3x3 -> LN."""

    def __init__(self, dim: int, stride: int, out_channels: int) -> None:
        super().__init__()
        if stride == 4:
            half = max(dim // 2, 1)
            quarter = max(dim // 4, 1)
            self.scale = nn.Sequential(nn.ConvTranspose2d(dim, half, 2, stride=2), _layer_norm_2d(half), nn.GELU(),
                                       nn.ConvTranspose2d(half, quarter, 2, stride=2))
            width = quarter
        elif stride == 8:
            width = max(dim // 2, 1)
            self.scale = nn.ConvTranspose2d(dim, width, 2, stride=2)
        elif stride == 16:
            width, self.scale = dim, nn.Identity()
        elif stride == 32:
            width, self.scale = dim, nn.MaxPool2d(2)
        else:
            raise ConfigError(f"pyramid stride {stride}: expected one of {PYRAMID_STRIDES}")
        self.stride = stride
        self.proj = nn.Sequential(nn.Conv2d(width, out_channels, 1, bias=False), _layer_norm_2d(out_channels),
                                  nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                                  _layer_norm_2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.scale(x))


class VitPyramid(nn.Module):
    """A timm ViT and its simple feature pyramid: 4 maps at strides 4, 8, 16, 32 (see the module docstring).

    Attributes:
        vit: the timm ``VisionTransformer`` (its parameters are the ones the training modes freeze or adapt).
        spec: the :class:`~pathseg.models.vit.specs.VitSpec` it was built from.
        out_channels: channels of the 4 levels; ``reductions``: their strides.
        indices: the tapped blocks (0-based).
    """

    def __init__(self, vit: nn.Module, spec: VitSpec, *, out_channels: Sequence[int] = DEFAULT_CHANNELS,
                 output_stride: int = 32, indices: Sequence[int] | None = None,
                 input_mean: Sequence[float] = IMAGENET_MEAN, input_std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        if len(out_channels) != 4:
            raise ConfigError(f"out_channels: expected 4 level widths, got {list(out_channels)}")
        if output_stride not in (8, 16, 32):
            raise ConfigError(f"output_stride {output_stride}: expected 8, 16 or 32")
        self.vit, self.spec = vit, spec
        depth = len(vit.blocks)
        self.indices = list(indices) if indices is not None else default_indices(depth)
        if len(self.indices) != 4 or not all(0 <= i < depth for i in self.indices):
            raise ConfigError(f"feature_indices {self.indices}: expected 4 block indices in 0..{depth - 1}")
        self.patch_size = int(vit.patch_embed.patch_size[0])
        dim = int(vit.embed_dim)
        self.reductions = [min(s, output_stride) for s in PYRAMID_STRIDES]
        self.out_channels = [int(c) for c in out_channels]
        self.levels = nn.ModuleList(_Level(dim, s, c) for s, c in zip(self.reductions, self.out_channels))
        # x_model = (x * std_in + mean_in - mean_model) / std_model, one affine per channel
        m_in, s_in = torch.tensor(input_mean), torch.tensor(input_std)
        m, s = torch.tensor(spec.mean), torch.tensor(spec.std)
        self.renormalise = not (torch.allclose(m_in, m) and torch.allclose(s_in, s))
        self.register_buffer("in_scale", (s_in / s).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((m_in - m) / s).view(1, 3, 1, 1), persistent=False)

    def tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The 4 tapped blocks' patch tokens on the stride-16 grid, (B, D, ceil(H/16), ceil(W/16)) each.

        Runs the ViT's own modules (patch embedding, prefix tokens, blocks, final norm) with every size taken
        from the input tensor, so an ONNX export keeps H and W dynamic; the position embedding is resampled
        bicubically without antialiasing (as DINOv2's reference code, and exportable), and not at all for
        the pretraining grid. Shape-dependent resizes are always in an exported graph (identities at sizes
        that need none).
        """
        exporting = torch.onnx.is_in_onnx_export()
        h, w = x.shape[-2], x.shape[-1]
        if self.renormalise:
            x = x * self.in_scale + self.in_shift
        p = self.patch_size
        if exporting or h % p or w % p:  # nearest multiple of the patch size, so every pixel is seen
            x = F.interpolate(x, size=((h + p // 2) // p * p, (w + p // 2) // p * p), mode="bilinear",
                              align_corners=False)
        maps = self._blocks(x, exporting)
        base = ((h + 15) // 16, (w + 15) // 16)
        if exporting or p != 16 or h % 16 or w % 16:
            maps = [F.interpolate(m, size=base, mode="bilinear", align_corners=False) for m in maps]
        return maps

    def _blocks(self, x: torch.Tensor, exporting: bool) -> list[torch.Tensor]:
        vit = self.vit
        t = vit.patch_embed(x)  # (B, gh, gw, D): timm's dynamic_img_size patch embedding is NHWC
        b, gh, gw, d = t.shape
        t = t.reshape(b, -1, d)
        prefix = [tok.expand(b, -1, -1) for tok in (vit.cls_token, vit.reg_token) if tok is not None]
        if vit.pos_embed is not None:
            n_pos_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
            pos = vit.pos_embed[:, n_pos_prefix:]
            old = tuple(int(g) for g in vit.patch_embed.grid_size)
            if exporting or (gh, gw) != old:
                pos = pos.reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2)
                pos = F.interpolate(pos.float(), size=(gh, gw), mode="bicubic", align_corners=False)
                pos = pos.to(t.dtype).permute(0, 2, 3, 1).reshape(1, -1, d)
            if vit.no_embed_class:
                t = torch.cat([*prefix, t + pos], 1)
            else:
                t = torch.cat(prefix + [t], 1) + torch.cat([vit.pos_embed[:, :n_pos_prefix], pos], 1)
        elif prefix:
            t = torch.cat(prefix + [t], 1)
        t = vit.norm_pre(vit.patch_drop(vit.pos_drop(t)))
        checkpointing = getattr(vit, "grad_checkpointing", False) and torch.is_grad_enabled() and not exporting
        out, last = [], max(self.indices)
        for i, blk in enumerate(vit.blocks):
            t = checkpoint(blk, t, use_reentrant=False) if checkpointing else blk(t)
            if i in self.indices:
                out.append(vit.norm(t))
            if i == last:
                break
        n = vit.num_prefix_tokens
        return [o[:, n:].reshape(b, gh, gw, d).permute(0, 3, 1, 2) for o in out]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        exporting = torch.onnx.is_in_onnx_export()
        h, w = x.shape[-2], x.shape[-1]
        out = []
        for level, t in zip(self.levels, self.tokens(x)):
            y = level(t)
            s = level.stride
            if exporting or h % 32 or w % 32:  # exactly ceil(H/s) x ceil(W/s)
                y = F.interpolate(y, size=((h + s - 1) // s, (w + s - 1) // s), mode="bilinear", align_corners=False)
            out.append(y)
        return out


class SmpVitEncoder(nn.Module):
    """A :class:`VitPyramid` as a segmentation_models_pytorch encoder (features from stride 1, as smp's).

    ``out_channels`` = (3, stem, *pyramid.out_channels[:levels]); ``forward(x)`` = [x, stem(x), p4, p8, p16, p32]
    (the first ``levels`` pyramid maps: an smp encoder of depth ``levels + 1``).
    The stem (conv 3x3 /2, LN, GELU on the image) gives U-Net decoders their stride-2 skip.
    """

    def __init__(self, pyramid: VitPyramid, stem_channels: int = 64, levels: int = 4) -> None:
        super().__init__()
        if not 1 <= levels <= 4:
            raise ValueError(f"levels must be 1-4 (strides 4, 8, 16, 32), got {levels}")
        self.pyramid, self.levels = pyramid, int(levels)
        self.stem = nn.Sequential(nn.Conv2d(3, stem_channels, 3, stride=2, padding=1, bias=False),
                                  _layer_norm_2d(stem_channels), nn.GELU())
        self.out_channels = [3, int(stem_channels), *pyramid.out_channels[:levels]]
        self.reductions = [1, 2, *pyramid.reductions[:levels]]
        self._depth = levels + 1
        self._output_stride = max(self.reductions)

    @property
    def output_stride(self) -> int:
        return self._output_stride

    @property
    def vit(self) -> nn.Module:
        return self.pyramid.vit

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, self.stem(x), *self.pyramid(x)[: self.levels]]


__all__ = ["VitPyramid", "SmpVitEncoder", "default_indices", "PYRAMID_STRIDES", "DEFAULT_CHANNELS"]
