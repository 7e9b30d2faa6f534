"""Synthetic H&E: an infinite, deterministic virtual slide rendered through a stain absorption model.

Everything is a function of global coordinates, so any window renders identically however it is
tiled (tiles rendered apart and concatenated equal one large render, bit for bit):

* **Tissue classes** (``CLASS_NAMES``): background (glass and fat), tumour, stroma, inflammatory,
  necrosis. Each class has a smooth random field (hashed value noise, three octaves of 280, 110 and
  45 µm) evaluated at the pixel centre in µm; the pixel takes the class with the largest field.
  A very low-frequency "tissue envelope" field leaves some regions as bare glass.
* **Nuclei** (``NUCLEUS_TYPES``) come from two hashed jittered grids (12 µm cells for large nuclei,
  6.5 µm cells for small ones): each grid cell holds one candidate whose position, size, shape and
  darkness are hashed from (seed, cell); it is kept according to the tissue class at its centre.
  Tumour nuclei are large and pleomorphic, lymphocytes small, round and dark, fibroblasts elongated
  along the stroma fibres, and necrosis holds small pyknotic fragments. Overlaps are resolved by a
  hashed priority, so the result does not depend on drawing order or on the window.
* **Stains**: per-pixel hematoxylin, eosin and a small residual concentration give the optical
  density ``OD = c_H·v_H + c_E·v_E + c_R·v_R`` and ``RGB = round(255·exp(−OD))`` (Beer–Lambert;
  see :mod:`pathseg.transforms.stain`). Centre 0 uses the Ruifrok & Johnston vectors; every other
  centre perturbs the vectors and stain intensities (:func:`centre_stains`), so the same tissue
  looks different across centres.

Sizes are in µm, so ``mpp`` (µm per pixel) sets the pixel scale: pixel ``(x, y)`` samples the point
``((x + 0.5)·mpp, (y + 0.5)·mpp)`` µm.

Example:
    >>> r = render_region(0, 0, 256, 256, seed=0, centre=1)
    >>> r["image"].shape, r["mask"].dtype
    ((256, 256, 3), dtype('int64'))

The package, by concern: :mod:`~pathseg.data.synth.noise` (hashing, value noise), :mod:`~pathseg.data.synth.tissue`
(class layout, fibres), :mod:`~pathseg.data.synth.stains` (per-centre stains), :mod:`~pathseg.data.synth.nuclei`,
:mod:`~pathseg.data.synth.render` (:func:`render_region`), :mod:`~pathseg.data.synth.dataset` (:class:`SyntheticHE`,
image files) and :mod:`~pathseg.data.synth.slide` (pyramidal whole-slide images).
"""

from pathseg.data.synth.dataset import SyntheticHE, write_synthetic_images
from pathseg.data.synth.nuclei import NUCLEI_MAX_MPP, NUCLEUS_TYPES
from pathseg.data.synth.render import render_region
from pathseg.data.synth.slide import write_synthetic_slide
from pathseg.data.synth.stains import centre_stains
from pathseg.data.synth.tissue import CLASS_NAMES, render_mask

__all__ = [
    "CLASS_NAMES",
    "NUCLEI_MAX_MPP",
    "NUCLEUS_TYPES",
    "centre_stains",
    "render_region",
    "render_mask",
    "SyntheticHE",
    "write_synthetic_images",
    "write_synthetic_slide",
]
