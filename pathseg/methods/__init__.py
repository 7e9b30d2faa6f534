"""Training methods. Importing this package registers every method in ``METHODS``."""

from pathseg.methods.base import METHODS, Method
from pathseg.methods import supervised  # noqa: F401  (registers)

__all__ = ["METHODS", "Method"]
from pathseg.methods import semi  # noqa: F401
from pathseg.methods import weak  # noqa: F401
from pathseg.methods import segcls  # noqa: F401
from pathseg.methods import ssl  # noqa: F401
from pathseg.methods import distill  # noqa: F401
