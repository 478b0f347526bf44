"""Global refinement of FlowMap's cameras on COLMAP (pycolmap): SIFT matches on a
pose-guided pair graph, triangulation, bundle adjustment in rounds, optional
re-initialisation by COLMAP's global mapper, depth scales consistent with the result.

    from flowmap.refine import RefineConfig, refine
    result = refine(images, c2w, K, depth, RefineConfig())

Sources: COLMAP (Schönberger & Frahm, CVPR 2016); GLOMAP (Pan et al., ECCV 2024);
bundle adjustment (Triggs et al., 2000).
"""

from flowmap.refine.config import RefineConfig, Refinement
from flowmap.refine.core import refine

__all__ = ["RefineConfig", "Refinement", "refine"]
