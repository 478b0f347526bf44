"""Public Python API: ``flowmap.reconstruct(source) -> Reconstruction``.

The run itself is :func:`flowmap.pipeline.run` (the one orchestration); this module is
the name users import.
"""

from flowmap.pipeline import RunConfig, reconstruct

__all__ = ["RunConfig", "reconstruct"]
