"""flowmap: camera poses, intrinsics and dense depth from a video by gradient descent.

Implements FlowMap (Smith, Charatan, Tewari, Sitzmann, 3DV 2025). The public API is
:func:`reconstruct`, which returns a :class:`Reconstruction`.
"""

from flowmap.types import Correspondences, Frames, Reconstruction, Solution

__all__ = ["Correspondences", "Frames", "Reconstruction", "RunConfig", "Solution", "reconstruct"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported lazily so that `import flowmap` stays cheap (torch is imported on use).
    if name == "RunConfig":
        from flowmap import config

        return config.RunConfig
    if name == "reconstruct":
        from flowmap import pipeline

        return pipeline.reconstruct
    raise AttributeError(name)
