"""Semi-supervised methods (labelled + unlabelled batches): ``cct``, ``cac`` and ``crcfp``.

Each unsupervised part is one loss term that the others reuse: :class:`CAC` adds L_cont, :class:`CCT`
adds L_cross, :class:`CRCFP` is both plus entropy; :class:`SemiMethod` owns the shared step and warm-up.
"""

from pathseg.methods.semi.base import SemiMethod
from pathseg.methods.semi.cac import CAC, ContextAwareConsistency
from pathseg.methods.semi.cct import CCT, CrossConsistency
from pathseg.methods.semi.crcfp import CRCFP

__all__ = ["CAC", "CCT", "CRCFP", "ContextAwareConsistency", "CrossConsistency", "SemiMethod"]
