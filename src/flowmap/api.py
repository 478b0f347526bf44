"""Public Python API: ``flowmap.reconstruct(source) -> Reconstruction``.

The run itself is :func:`flowmap.pipeline.run` (the one orchestration); this module is
the name users import.
"""

from flowmap.config import RunConfig
from flowmap.pipeline import reconstruct

__all__ = ["RunConfig", "reconstruct"]
