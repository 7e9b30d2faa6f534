"""Phase I of Háberová et al.: nuclei segmentation with U-Net / U-Net++ and a Dice loss.

Three pieces, each registered so a YAML config picks them by name (``configs/distill/``):

* method ``nuclei_dice``: ``L = L_dice (+ ce_weight · L_ce)``, with dropout (p = ``dropout``, 0.3 as
  published) on the decoder's feature map before the 1x1 classifier during training only;
* models ``unet_tconv`` and ``unetplusplus_tconv`` (:mod:`pathseg.models.tconv`, registered with every model
  family): smp U-Net / U-Net++ whose decoder blocks upsample with a learned 2x2 stride-2 transposed
  convolution instead of nearest interpolation (the published option "upsampling by transposed convolution");
* dataset ``nuclei_patches``: several nuclei datasets trained together (e.g. MoNuSeg and the
  synthetic set), each image cut into ``patch`` x ``patch`` tiles without overlap, the last row/column
  zero-padded (image 0, mask background; ``pad_mask_ignore`` scores the padding as ignore instead),
  optionally Macenko-normalised to a target image.

Example config (``pathseg train -c configs/distill/nuclei_unet.yaml``)::

    model: {name: unet_tconv}
    method: {name: nuclei_dice, params: {dropout: 0.3}}
    optim: {name: adam, lr: 1.0e-4, weight_decay: 0}
    data: {dataset: nuclei_patches, options: {patch: 512, sources: [{dataset: monuseg}, ...]}}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pathseg.data.base import DATASETS, SegmentationDataset
from pathseg.errors import ConfigError
from pathseg.losses.dice import dice_loss
from pathseg.methods.base import METHODS, Method
from pathseg.sample import IGNORE_INDEX, Sample, make_sample


@METHODS.register("nuclei_dice")
class NucleiDice(Method):
    """Dice-loss segmentation (Háberová et al. phase I); logs ``loss/dice`` and, when used, ``loss/ce``."""

    def __init__(self, model, *, dropout: float = 0.3, ce_weight: float = 0.0, smooth: float = 1.0,
                 dice_classes: str = "foreground", **kw: Any) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"method nuclei_dice: dropout must be in [0, 1), got {dropout}")
        super().__init__(model, **kw)
        self.dropout, self.ce_weight, self.smooth, self.dice_classes = float(dropout), float(ce_weight), smooth, dice_classes

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x = self._fmt(batch["image"])
        z = self.model.decode(self.model.encode(x))
        z = F.dropout2d(z, self.dropout, training=self.training)
        logits = self.model.classify(z)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        dice = dice_loss(logits, batch["mask"], smooth=self.smooth, classes=self.dice_classes,
                         ignore_index=self.ignore_index)
        out = {"loss/dice": dice}
        total = dice
        if self.ce_weight:
            ce = self.supervised_loss(logits, batch["mask"])
            out["loss/ce"] = ce
            total = total + self.ce_weight * ce
        out["loss"] = total
        return out


# ------------------------------------------------------------------------------------------------
# several nuclei datasets, tiled without overlap


@DATASETS.register("nuclei_patches")
class NucleiPatches(SegmentationDataset):
    """Binary nuclei masks from several datasets, cut into non-overlapping zero-padded tiles.

    Options:
        sources: list of ``{dataset: name, options: {...}}``; every one must be a nuclei dataset
            (classes background, nucleus). ``split`` is passed to each.
        patch: tile side in px (512 as published); 0 keeps whole images.
        macenko: path to a target image to Macenko-normalise every image to (None = off).
        pad_mask_ignore: padded pixels get ``IGNORE_INDEX`` instead of background.
        keep_instances: pass instance maps on (only when every source has them; MoNuSeg train has
            binary masks only), else ``instances`` is None.

    Example:
        >>> ds = NucleiPatches(sources=[{"dataset": "synthetic", "options": {"task": "nuclei", "n_images": 1,
        ...                              "size": 80}}], patch=64)
        >>> len(ds), ds[3]["image"].shape
        (4, (64, 64, 3))
    """

    name = "nuclei_patches"
    class_names = ["background", "nucleus"]

    def __init__(self, root: Any = None, split: str = "train", *, sources: list[dict[str, Any]] | None = None,
                 patch: int = 512, macenko: str | None = None, pad_mask_ignore: bool = False,
                 keep_instances: bool = False) -> None:
        import pathseg.data  # noqa: F401  (registers adapters)

        self.root = None  # type: ignore[assignment]
        if not sources:
            raise ConfigError("nuclei_patches: give data.options.sources, e.g. [{dataset: monuseg}, "
                              "{dataset: synthetic, options: {task: nuclei}}]")
        if patch < 0:
            raise ConfigError(f"nuclei_patches: patch must be ≥ 0 px, got {patch}")
        self.patch, self.pad_mask_ignore, self.split = int(patch), bool(pad_mask_ignore), split
        self.keep_instances = bool(keep_instances)
        self.datasets: list[SegmentationDataset] = []
        for src in sources:
            if not isinstance(src, dict) or "dataset" not in src:
                raise ConfigError(f"nuclei_patches: each source needs a 'dataset' key, got {src!r}")
            ds = DATASETS.get(src["dataset"])(split=split, **dict(src.get("options") or {}))
            if len(ds.class_names) != 2:
                raise ConfigError(f"nuclei_patches: source {src['dataset']!r} has classes {ds.class_names}; expected "
                                  "a binary nuclei dataset (background, nucleus), e.g. synthetic with task: nuclei")
            self.datasets.append(ds)
        self.stain_normalizer = None  # saved in checkpoints, so prediction normalises the same way
        if macenko:
            from pathseg.io.files import read_image
            from pathseg.transforms.stain import MacenkoNormalizer

            self.stain_normalizer = MacenkoNormalizer().fit(read_image(macenko), reference=str(macenko))
        self.index: list[tuple[int, int, int, int]] = []  # (dataset, image, y, x)
        self.ids = []
        self._last: tuple[tuple[int, int], Sample] | None = None
        for d, ds in enumerate(self.datasets):
            for i in range(len(ds)):
                h, w = self._size(ds, i)
                step_h, step_w = (self.patch or h), (self.patch or w)
                for y in range(0, h, step_h):
                    for x in range(0, w, step_w):
                        self.index.append((d, i, y, x))
                        self.ids.append(f"{ds.name}:{ds.ids[i]}:{y}:{x}")

    def _size(self, ds: SegmentationDataset, i: int) -> tuple[int, int]:
        size = getattr(ds, "size", None)
        if isinstance(size, int):
            return size, size
        s = self._image(ds, i)
        return s["image"].shape[:2]

    def _image(self, ds: SegmentationDataset, i: int) -> Sample:
        key = (id(ds), i)
        if self._last is None or self._last[0] != key:
            self._last = (key, ds[i])
        return self._last[1]

    def load(self, k: int) -> Sample:
        d, i, y, x = self.index[k]
        s = self._image(self.datasets[d], i)
        img, mask, inst = s["image"], s["mask"], s["instances"]
        if self.stain_normalizer is not None:
            img = self.stain_normalizer.transform(img)
        if self.patch:
            p = self.patch
            fill = IGNORE_INDEX if self.pad_mask_ignore else 0
            out_img = np.zeros((p, p, 3), np.uint8)
            out_mask = np.full((p, p), fill, np.int64)
            out_inst = np.zeros((p, p), np.int32) if inst is not None else None
            h, w = min(p, img.shape[0] - y), min(p, img.shape[1] - x)
            out_img[:h, :w] = img[y:y + h, x:x + w]
            out_mask[:h, :w] = mask[y:y + h, x:x + w]
            if inst is not None:
                out_inst[:h, :w] = inst[y:y + h, x:x + w]
            img, mask, inst = out_img, out_mask, out_inst
        meta = s["meta"]
        # instances only when every source has them (mixed batches must collate)
        return make_sample(img, mask, id=self.ids[k], instances=inst if self.keep_instances else None, source=meta.get("source", ""),
                           mpp=meta.get("mpp"), num_classes=2)
