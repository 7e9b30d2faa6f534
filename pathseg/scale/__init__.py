"""Running pathseg across machines: whole-slide inference on a Ray cluster (:mod:`pathseg.scale.ray_predict`).

Nothing here imports Ray at import time; it is an optional extra (``pip install "pathseg[ray]"``).
"""

from pathseg.scale.ray_predict import predict_slides_ray

__all__ = ["predict_slides_ray"]
