"""Sample transforms: paired geometry, colour, stain augmentation and normalisation.

A transform is ``t(sample, rng) -> sample``; build a pipeline from config with
:func:`build_transforms` (names in ``TRANSFORMS``) and finish with :func:`to_tensor`.

Example:
    >>> aug = build_transforms([
    ...     {"name": "random_crop", "size": 256}, {"name": "flip"}, {"name": "rotate90"},
    ...     {"name": "scale", "range": [0.8, 1.25]}, {"name": "hed_jitter", "sigma": 0.05},
    ... ])
    >>> batch_item = to_tensor(aug(sample, np.random.default_rng(0)))   # doctest: +SKIP
"""

from pathseg.transforms.paired import (
    LABEL_FILL,
    TRANSFORMS,
    CenterCrop,
    Compose,
    RandomCrop,
    RandomFlip,
    RandomRotate90,
    RandomScale,
    Resize,
    build_transforms,
    resize_pair,
    to_tensor,
    to_tensors,
)
from pathseg.transforms.color import ColorJitter, GaussianBlur, Grayscale  # noqa: E402  (registers)
from pathseg.transforms.stain import (  # noqa: E402  (registers)
    RUIFROK_HED,
    STAIN_NORMALIZERS,
    HEDJitter,
    MacenkoNormalizer,
    ReinhardNormalizer,
    StainNormalize,
    create_stain_normalizer,
    hed_to_rgb,
    rgb_to_hed,
)

__all__ = [
    "TRANSFORMS",
    "LABEL_FILL",
    "Compose",
    "build_transforms",
    "to_tensor",
    "to_tensors",
    "resize_pair",
    "RandomFlip",
    "RandomRotate90",
    "RandomCrop",
    "CenterCrop",
    "RandomScale",
    "Resize",
    "ColorJitter",
    "GaussianBlur",
    "Grayscale",
    "HEDJitter",
    "StainNormalize",
    "RUIFROK_HED",
    "STAIN_NORMALIZERS",
    "MacenkoNormalizer",
    "ReinhardNormalizer",
    "create_stain_normalizer",
    "rgb_to_hed",
    "hed_to_rgb",
]
