"""COLMAP as a baseline: SIFT features, matching and structure from motion through pycolmap.

The settings follow /work/shared/data/README.md (how the reference numbers of the shared
sequences were measured): SIFT on the images as stored, sequential matching for videos
and exhaustive matching for short sequences, incremental mapping (or COLMAP's global
mapper, GLOMAP, which pycolmap 4.x ships as ``global_mapping``), one shared
SIMPLE_PINHOLE camera (focal length unknown, principal point at the image centre and not
refined, no distortion).

Conventions of the result: ``c2w`` camera-to-world with OpenCV camera axes (COLMAP's
axes are the same: x right, y down, z forward); ``K`` in flowmap pixel coordinates
(centre of pixel column i at u = i). COLMAP puts the centre of the top-left pixel at
(0.5, 0.5) (COLMAP documentation, "Output format"), so its principal point is moved by
-0.5 px on both axes here.

Source: Schönberger & Frahm, "Structure-from-Motion Revisited", CVPR 2016 (incremental);
Pan et al., "Global Structure-from-Motion Revisited", ECCV 2024 (GLOMAP).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowmap.errors import InputError
from flowmap.refine.colmap_io import extract_sift, quiet_colmap, sift_options
from flowmap.frames import IMAGE_SUFFIXES
from flowmap.frames import list_images as frame_files


@dataclass
class ColmapConfig:
    """Settings of a COLMAP baseline run.

    Attributes:
        matcher: "auto" (sequential when the sequence has at least
            ``sequential_min_frames`` frames, else exhaustive), "sequential" or
            "exhaustive".
        mapper: "incremental" (COLMAP's default SfM) or "global" (GLOMAP inside
            COLMAP 3.12+ / pycolmap 4.x).
        num_threads: CPU threads for extraction, matching and mapping (-1: all cores,
            as torch uses for flowmap on the CPU).
        sequential_min_frames: frame count from which "auto" picks sequential matching
            (40, the issue's rule).
        sequential_overlap: how many following frames each frame is matched with in
            sequential matching (COLMAP's default 10, plus quadratic overlap).
        camera_model: COLMAP camera model of the one shared camera; "SIMPLE_PINHOLE"
            (f, cx, cy) matches flowmap's model: one focal, no distortion.
        max_num_features: SIFT features per image (COLMAP's default 8192).
        seed: random seed of RANSAC and the mappers (-1: COLMAP's non-deterministic
            default).
        verbose: keep COLMAP's own log output (glog on stderr); off by default.
    """

    matcher: str = "auto"
    mapper: str = "incremental"
    num_threads: int = -1
    sequential_min_frames: int = 40
    sequential_overlap: int = 10
    camera_model: str = "SIMPLE_PINHOLE"
    max_num_features: int = 8192
    seed: int = 0
    verbose: bool = False


@dataclass
class ColmapResult:
    """The largest model of a COLMAP run, indexed like the input frames.

    Attributes:
        names: N image names, in the input order (flowmap's frame order by default).
        c2w: (N, 4, 4) float64 camera-to-world, OpenCV axes; NaN for frames that are
            not registered in the chosen model. COLMAP's world frame and scale.
        registered: (N,) bool, True where the frame has a pose.
        K: (3, 3) float64 intrinsics in pixels (centre of pixel column i at u = i) of
            the input images, None when no model was built.
        n_models: number of models COLMAP produced (0 when mapping failed).
        time_s: wall seconds of extraction + matching + mapping.
        matcher: the matcher actually used ("sequential" or "exhaustive").
        mapper: the mapper used ("incremental" or "global").
        image_size: (height, width) of the images in pixels, None without a model.
        timings: wall seconds per stage: ``extract_s`` (SIFT), ``match_s`` (matching and
            two-view verification), ``map_s`` (the mapper); they add up to ``time_s``.
    """

    names: list[str]
    c2w: np.ndarray
    registered: np.ndarray
    K: np.ndarray | None
    n_models: int
    time_s: float
    matcher: str = ""
    mapper: str = ""
    image_size: tuple[int, int] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_registered(self) -> int:
        return int(self.registered.sum())

    @property
    def focal(self) -> float | None:
        """Focal length in pixels (mean of fx, fy), None without a model."""
        return None if self.K is None else float(0.5 * (self.K[0, 0] + self.K[1, 1]))


def list_images(image_dir: Path) -> list[str]:
    """File names of the images directly inside ``image_dir``, in flowmap's frame order.

    The same files and order as a flowmap run on that folder
    (:func:`flowmap.frames.list_images`: natural sort, hidden files skipped).

    Raises:
        InputError: the folder does not exist or holds no image.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise InputError(f"image folder {image_dir} does not exist; pass a folder of frames (NNNNNN.jpg)")
    names = [p.name for p in frame_files(image_dir)]
    if not names:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {image_dir}; pass a folder of frames")
    return names


def choose_matcher(cfg: ColmapConfig, n_frames: int) -> str:
    """Resolve ``cfg.matcher`` ("auto" -> "sequential" from ``cfg.sequential_min_frames`` frames on).

    Raises:
        InputError: unknown matcher name.
    """
    if cfg.matcher == "auto":
        return "sequential" if n_frames >= cfg.sequential_min_frames else "exhaustive"
    if cfg.matcher not in ("sequential", "exhaustive"):
        raise InputError(f"unknown COLMAP matcher {cfg.matcher!r}; use auto, sequential or exhaustive")
    return cfg.matcher


def global_mapper_available() -> bool:
    """True when the installed pycolmap offers COLMAP's global mapper (``global_mapping``)."""
    import pycolmap

    return hasattr(pycolmap, "global_mapping") and hasattr(pycolmap, "GlobalPipelineOptions")


def _extract_and_match(database: Path, image_dir: Path, names: list[str], cfg: ColmapConfig, matcher: str, timings: dict) -> None:
    """SIFT and matching into ``database``; their wall seconds into ``timings``."""
    import pycolmap

    t0 = time.perf_counter()
    extract_sift(database, image_dir, names, cfg.camera_model, sift_options(cfg.num_threads, cfg.max_num_features))
    _forget_focal_priors(database, cfg)
    timings["extract_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = cfg.num_threads
    if matcher == "sequential":
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = cfg.sequential_overlap
        pairing.num_threads = cfg.num_threads
        pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu)
    else:
        pycolmap.match_exhaustive(database, matching_options=matching, device=pycolmap.Device.cpu)
    timings["match_s"] = time.perf_counter() - t0


def _forget_focal_priors(database: Path, cfg: ColmapConfig) -> None:
    """Make the focal length unknown to COLMAP even where the images carry EXIF focal data.

    COLMAP initialises a camera from EXIF (focal length and sensor size) when it can and
    then treats that focal as a prior (calibrated two-view geometry, no focal sanity
    check). The benchmark gives COLMAP what flowmap gets, pixels only: such cameras are
    reset to COLMAP's no-EXIF default, focal = ``default_focal_length_factor`` x the
    larger image side, without prior.
    """
    import pycolmap

    db = pycolmap.Database.open(database)
    try:
        for camera in db.read_all_cameras():
            if camera.has_prior_focal_length:
                default = pycolmap.ImageReaderOptions().default_focal_length_factor * max(camera.width, camera.height)
                params = list(camera.params)
                for i in camera.focal_length_idxs():
                    params[i] = default
                camera.params = params
                camera.has_prior_focal_length = False
                db.update_camera(camera)
    finally:
        db.close()


def _map(database: Path, image_dir: Path, sparse_dir: Path, cfg: ColmapConfig) -> dict:
    import pycolmap

    if cfg.mapper == "incremental":
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = cfg.num_threads
        options.random_seed = cfg.seed
        # SIMPLE_PINHOLE: the principal point stays at the image centre, as in flowmap.
        options.ba_refine_principal_point = False
        options.ba_refine_extra_params = False
        return pycolmap.incremental_mapping(database, image_dir, sparse_dir, options=options)
    options = pycolmap.GlobalPipelineOptions()
    options.num_threads = cfg.num_threads
    options.random_seed = cfg.seed
    options.mapper.bundle_adjustment.refine_principal_point = False
    options.mapper.bundle_adjustment.refine_extra_params = False
    return pycolmap.global_mapping(database, image_dir, sparse_dir, options=options)


def _to_result(models: dict, names: list[str], elapsed: float, matcher: str, mapper: str, timings: dict) -> ColmapResult:
    n = len(names)
    c2w = np.full((n, 4, 4), np.nan)
    registered = np.zeros(n, dtype=bool)
    models = [m for m in models.values() if m.num_reg_images() > 0]
    if not models:
        return ColmapResult(names, c2w, registered, None, 0, elapsed, matcher, mapper, timings=timings)
    best = max(models, key=lambda m: m.num_reg_images())
    index = {name: i for i, name in enumerate(names)}
    for image in best.images.values():
        if not image.has_pose or image.name not in index:
            continue
        i = index[image.name]
        w2c = np.eye(4)
        w2c[:3, :] = image.cam_from_world().matrix()
        c2w[i] = np.linalg.inv(w2c)
        registered[i] = True
    camera = next(iter(best.cameras.values()))
    K = np.array(camera.calibration_matrix(), dtype=np.float64)
    K[0, 2] -= 0.5  # COLMAP: top-left pixel centre at (0.5, 0.5); flowmap/OpenCV: (0, 0)
    K[1, 2] -= 0.5
    size = (int(camera.height), int(camera.width))
    return ColmapResult(names, c2w, registered, K, len(models), elapsed, matcher, mapper, size, timings)


def run_colmap(
    image_dir: Path, workdir: Path, cfg: ColmapConfig | None = None, image_names: list[str] | None = None
) -> ColmapResult:
    """Run COLMAP (SIFT, matching, mapping) on a folder of frames; keep the largest model.

    The images are used as stored (no resizing): the result's ``K`` is in pixels of
    those images. Every file of ``workdir`` that a previous run left (database, models)
    is replaced.

    Args:
        image_dir: folder of frames; sorted file names give the frame order.
        workdir: scratch folder for ``database.db`` and the models under ``sparse/``.
        cfg: settings (defaults: :class:`ColmapConfig`).
        image_names: use only these files of ``image_dir``, in this order (default: all
            images, sorted by name).

    Returns:
        :class:`ColmapResult` of the model with the most registered frames, frames in
        the order of ``image_names`` (sorted names by default); c2w (N, 4, 4) OpenCV
        axes, NaN where unregistered.

    Raises:
        InputError: no images, a name not in the folder, an unknown matcher or mapper,
            or the global mapper asked for but not offered by the installed pycolmap.
    """
    import pycolmap

    cfg = cfg or ColmapConfig()
    image_dir, workdir = Path(image_dir), Path(workdir)
    names = list_images(image_dir)
    if image_names is not None:
        missing = sorted(set(image_names) - set(names))
        if missing or not image_names:
            raise InputError(f"images {missing[:3]} are not in {image_dir}; pass names of files in that folder")
        names = list(image_names)
    matcher = choose_matcher(cfg, len(names))
    if cfg.mapper not in ("incremental", "global"):
        raise InputError(f"unknown COLMAP mapper {cfg.mapper!r}; use incremental or global")
    if cfg.mapper == "global" and not global_mapper_available():
        raise InputError(f"pycolmap {pycolmap.__version__} has no global mapper; use --mappers incremental")
    workdir.mkdir(parents=True, exist_ok=True)
    database = workdir / "database.db"
    sparse_dir = workdir / "sparse"
    database.unlink(missing_ok=True)
    shutil.rmtree(sparse_dir, ignore_errors=True)
    sparse_dir.mkdir()

    with quiet_colmap(cfg.verbose):
        if cfg.seed >= 0:
            pycolmap.set_random_seed(cfg.seed)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        _extract_and_match(database, image_dir, names, cfg, matcher, timings)
        t1 = time.perf_counter()
        models = _map(database, image_dir, sparse_dir, cfg)
        elapsed = time.perf_counter() - t0
        timings["map_s"] = time.perf_counter() - t1
    return _to_result(models, names, elapsed, matcher, cfg.mapper, timings)
