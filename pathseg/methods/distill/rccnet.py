"""Moved: the cell classifiers (RCCNet, the small-patch ResNet-18 teacher) are :mod:`pathseg.models.cells`,
registered with every model family; these names stay for old imports."""

from pathseg.models.cells import CLASSIFIERS, RCCNet, SmallResNet18, create_classifier  # noqa: F401

__all__ = ["CLASSIFIERS", "RCCNet", "SmallResNet18", "create_classifier"]
