"""GlaS 2015 colon glands (Sirinukunwattana et al., MedIA 2017): instance maps and an image-level grade.

Layouts accepted (``split`` is ``train``, ``testA`` or ``testB``)::

    root/Grade.csv                                  the original file, all 165 images
    root/<split>/images/<split>_N.bmp               staged layout (../shared/data/glas)
    root/<split>/annotations/<split>_N_anno.bmp
  or, as released (one flat folder):
    root/<split>_N.bmp, root/<split>_N_anno.bmp

``_anno.bmp`` is an instance map (0 = background, 1..N = glands). ``Grade.csv`` gives each image's GlaS
grade (``benign``/``malignant``); it has CR-only line endings and a space after each comma.

Views:
    ``view="binary"``: classes background / gland (mask = ``anno > 0``).
    ``view="grade"``: classes background / benign gland / malignant gland; every gland pixel takes the
    image's grade (GlaS grades whole images, not glands).

Every image found on disk is used (the count is not assumed); each must have a row in Grade.csv, which
gives its grade and its patient. ``labels`` is always the one-hot image grade ``[benign, malignant]``
(a real weak label). The patient ID (column 2 of Grade.csv) is ``meta["patient"]`` of each sample and
``GlaS.patients`` (one per image); ``meta["source"]`` / ``GlaS.sources`` is ``"patient<ID>"``, the group
that ``by="source"`` splits keep on one side. Sizes vary (775x522 mostly, not all): nothing here assumes one.

Example:
    >>> ds = GlaS(view="grade")  # doctest: +SKIP
    >>> s = ds[0]; s["labels"], sorted(set(s["mask"].ravel())), s["meta"]["patient"]  # doctest: +SKIP
    (array([0., 1.], dtype=float32), [0, 2], '2')
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import numpy as np

from pathseg.data.base import DATASETS, SegmentationDataset
from pathseg.errors import DataError
from pathseg.io.files import read_image
from pathseg.sample import Sample, make_sample

GRADES = ("benign", "malignant")
GLAS_NOMINAL_MPP = 0.62
"""µm/px usually quoted for GlaS (20x); the files do not record it. Pass ``mpp=None`` to report none."""


def read_grade_csv(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Parse GlaS ``Grade.csv`` (any line endings, spaces after commas) into ``{name: row}``.

    Each row has ``patient`` and ``grade`` (lower-case GlaS grade) and ``fine_grade``.

    Example:
        >>> read_grade_csv("Grade.csv")["train_1"]["grade"]  # doctest: +SKIP
        'malignant'
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: GlaS Grade.csv not found; it ships with the GlaS release, put it in the dataset root")
    text = path.read_bytes().decode("utf-8-sig", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    rows = [[f.strip() for f in r] for r in csv.reader(io.StringIO(text)) if r and any(f.strip() for f in r)]
    if not rows or len(rows[0]) < 3 or rows[0][0].lower() != "name":
        raise DataError(f"{path}: expected a header 'name, patient ID, grade (GlaS), ...'; got {rows[:1]}")
    out: dict[str, dict[str, str]] = {}
    for n, r in enumerate(rows[1:], start=2):
        if len(r) < 3:
            raise DataError(f"{path}: record {n} has {len(r)} fields, expected at least 3: {r}")
        grade = r[2].lower()
        if grade not in GRADES:
            raise DataError(f"{path}: record {n} ({r[0]}) has grade {r[2]!r}, expected benign or malignant")
        out[r[0]] = {"patient": r[1], "grade": grade, "fine_grade": r[3] if len(r) > 3 else ""}
    return out


def _natural_key(s: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s))


@DATASETS.register("glas")
class GlaS(SegmentationDataset):
    """GlaS gland segmentation with the image grade as weak label.

    Options:
        split: ``"train"`` (default), ``"testA"``, ``"testB"``.
        view: ``"binary"`` (background/gland) or ``"grade"`` (background/benign gland/malignant gland).
        mpp: resolution to report (default :data:`GLAS_NOMINAL_MPP`).

    Attributes (one entry per image, in ``ids`` order): ``patients`` (Grade.csv patient IDs) and
    ``sources`` (``"patient<ID>"``); ``grade(i)`` and ``patient(i)`` for one image.
    """

    name = "glas"
    class_names = ["background", "gland"]
    default_subdir = "glas"
    download_hint = (
        "Get the GlaS@MICCAI2015 data (Warwick-QU) from https://warwick.ac.uk/fac/cross_fac/tia/data/glascontest/ "
        "(Sirinukunwattana et al., Medical Image Analysis 35, 2017) with its Grade.csv."
    )
    views = {"binary": ["background", "gland"], "grade": ["background", "benign_gland", "malignant_gland"]}

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        *,
        view: str = "binary",
        mpp: float | None = GLAS_NOMINAL_MPP,
    ) -> None:
        super().__init__(root)
        if view not in self.views:
            raise DataError(f"glas: unknown view {view!r}; use one of {', '.join(self.views)}")
        self.split, self.view, self.mpp = split, view, mpp
        self.class_names = list(self.views[view])
        self.grades = read_grade_csv(self.root / "Grade.csv")

        staged = self.root / split / "images"
        if staged.is_dir():
            images = [p for p in staged.glob(f"{split}_*.bmp")]
            anno_dir = self.root / split / "annotations"
        else:
            images = [p for p in self.root.glob(f"{split}_*.bmp") if not p.stem.endswith("_anno")]
            anno_dir = self.root
        images.sort(key=lambda p: _natural_key(p.stem))
        if not images:
            raise DataError(
                f"glas: no {split}_*.bmp images in {staged} or {self.root}; {self.download_hint}"
            )
        self._images = images
        self._annos = [anno_dir / f"{p.stem}_anno.bmp" for p in images]
        self.ids = [p.stem for p in images]
        missing = [i for i in self.ids if i not in self.grades]
        if missing:
            raise DataError(f"{self.root / 'Grade.csv'}: no grade for {missing[:5]}; use the Grade.csv of this release")

    # computed from ``ids``, so they stay aligned in a ``subset`` view
    @property
    def patients(self) -> list[str]:
        """Grade.csv patient ID of each image (``ids`` order)."""
        return [self.grades[i]["patient"] for i in self.ids]

    @property
    def sources(self) -> list[str]:
        """``"patient<ID>"`` of each image (``ids`` order): the groups of a patient-grouped split."""
        return [f"patient{p}" for p in self.patients]

    def grade(self, i: int) -> str:
        """``"benign"`` or ``"malignant"`` for image ``i``."""
        return self.grades[self.ids[i]]["grade"]

    def patient(self, i: int) -> str:
        """Grade.csv patient ID of image ``i``."""
        return self.grades[self.ids[i]]["patient"]

    def load(self, i: int) -> Sample:
        img_path, anno_path = self._images[i], self._annos[i]
        image = read_image(img_path)
        anno = read_image(anno_path, mode=None)
        if anno.ndim == 3:  # a colour-saved label map: all channels carry the same ids
            anno = anno[..., 0]
        if anno.shape != image.shape[:2]:
            raise DataError(
                f"{anno_path}: annotation size {anno.shape[1]}x{anno.shape[0]} does not match image "
                f"{img_path.name} ({image.shape[1]}x{image.shape[0]})"
            )
        grade = self.grade(i)
        gland = anno > 0
        value = 1 if self.view == "binary" else 1 + GRADES.index(grade)
        mask = np.where(gland, value, 0).astype(np.int64)
        labels = np.array([grade == "benign", grade == "malignant"], dtype=np.float32)
        patient = self.patient(i)
        sample = make_sample(
            image,
            mask,
            id=self.ids[i],
            instances=anno.astype(np.int32),
            labels=labels,
            source=f"patient{patient}",
            mpp=self.mpp,
            path=str(img_path),
            num_classes=self.num_classes,
        )
        sample["meta"]["patient"] = patient  # type: ignore[typeddict-unknown-key]
        return sample
