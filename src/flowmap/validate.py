"""Every option and path check of a run, in one place, before any stage runs.

:func:`validate_run` is called by :func:`flowmap.pipeline.run` before a frame is
decoded, so a run that cannot work (a bad option, an output folder that cannot be
written, a device that is not there) fails at once with one actionable line
(:class:`~flowmap.errors.InputError`, exit code 2 on the command line). The individual
checks are public for the stages' own entry points (e.g.
:func:`flowmap.frames.load_frames` checks its :class:`~flowmap.config.FrameConfig`).
"""

from __future__ import annotations

import math
from pathlib import Path

from flowmap.config import FrameConfig, RunConfig, TrainConfig
from flowmap.correspondences import CorrespondenceConfig
from flowmap.correspondences.flow import FLOW_BACKENDS
from flowmap.errors import InputError
from flowmap.keyframes import check_keyframe_config
from flowmap.pretrained import Pretrained, resolve_init
from flowmap.refine.config import RefineConfig

MIN_FRAMES = 3
"""Fewest frames a reconstruction can use (two flow pairs)."""

OUTPUT_CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
"""Camera models the refinement may adjust: the outputs (COLMAP model, transforms.json,
intrinsics.json) describe a pinhole camera without distortion, so a distortion model
(SIMPLE_RADIAL, which :mod:`flowmap.refine` can fit) is not offered to users."""


def check_focal(focal_px: float | None) -> None:
    """Raise :class:`InputError` unless ``focal_px`` is None or a finite positive number of pixels."""
    if focal_px is None:
        return
    try:
        value = float(focal_px)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(
            f"--focal must be a positive number of pixels (of the input frames), got {focal_px}; "
            "leave it out to estimate the focal length"
        )


def check_steps(steps: int, init: str = "none") -> None:
    """Raise :class:`InputError` for a negative step count, or 0 (feed-forward mode)
    without a pretrained network to run (``--init none``)."""
    if steps < 0:
        raise InputError(f"--steps must be >= 0, got {steps}")
    if steps == 0 and str(init) == "none":
        raise InputError(
            "--steps 0 runs the network feed-forward, which needs pretrained weights: use --init default "
            "(or a checkpoint of flowmap train), or --steps 1 or more"
        )


def check_threads(threads: int | None) -> None:
    """Raise :class:`InputError` for a thread count below 1 (None: the libraries' defaults)."""
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")


def check_frame_config(cfg: FrameConfig) -> None:
    """Raise :class:`InputError` for a stride, max_frames or pixel budget that cannot work."""
    if cfg.stride < 1:
        raise InputError(f"--stride must be 1 or more, got {cfg.stride}")
    if cfg.max_frames is not None and cfg.max_frames < MIN_FRAMES:
        raise InputError(f"--max-frames must be at least {MIN_FRAMES}, got {cfg.max_frames}")
    if cfg.pixel_budget < 16 * 16:
        raise InputError(f"--pixel-budget must be at least 256 pixels (16 x 16), got {cfg.pixel_budget}")


def check_correspondence_config(cfg: CorrespondenceConfig) -> None:
    """Raise :class:`InputError` for a flow scale, backend or track setting that cannot work."""
    if cfg.flow.scale is not None and not cfg.flow.scale > 0:
        raise InputError(f"flow scale must be positive, got {cfg.flow.scale}")
    if cfg.flow.backend not in FLOW_BACKENDS:
        raise InputError(f"unknown flow backend {cfg.flow.backend!r}; use one of {', '.join(FLOW_BACKENDS)}")
    t = cfg.tracks
    if t.enabled and (t.query_every < 1 or t.grid < 1 or t.radius < 1):
        raise InputError("track query_every, grid and radius must be at least 1")


REFINE_MODES = ("fast", "colmap", "none")


def refine_config(mode: str, camera_model: str = "SIMPLE_PINHOLE") -> RefineConfig | None:
    """The refinement settings of ``--refine MODE --camera-model MODEL``.

    Returns:
        A :class:`flowmap.refine.RefineConfig`: its defaults for "fast" (OpenCV SIFT),
        :meth:`~flowmap.refine.RefineConfig.colmap` for "colmap" (COLMAP's DSP-SIFT, the
        refinement before issue 23); None for "none" (no refinement).

    Raises:
        InputError: an unknown mode or camera model.
    """
    if mode not in REFINE_MODES:
        raise InputError(f"unknown --refine {mode!r}; use one of {', '.join(REFINE_MODES)}")
    if mode == "none":
        return None
    config = RefineConfig(camera_model=camera_model) if mode == "fast" else RefineConfig.colmap(camera_model=camera_model)
    check_refine_config(config)
    return config


def check_refine_config(config: RefineConfig | None) -> None:
    """Raise InputError for invalid refinement settings (None: no refinement, always valid)."""
    if config is None:
        return
    if config.camera_model not in OUTPUT_CAMERA_MODELS:
        raise InputError(
            f"unknown --camera-model {config.camera_model!r}; use one of {', '.join(OUTPUT_CAMERA_MODELS)}"
        )
    try:
        config.check()
    except ValueError as exc:
        raise InputError(f"invalid refinement settings: {exc}") from None


def resolve_device(name: str) -> str:
    """Map "auto" | "cpu" | "cuda" to a torch device string.

    Raises:
        InputError: "cuda" asked for but not available, or an unknown name.
    """
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is visible to torch; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda")
    return name


def check_out_parent(out: Path) -> None:
    """Refuse an output path below a file (``-o afile/out``): its folder could never be created."""
    for parent in Path(out).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"cannot write {out}: {parent} is a file, not a folder; choose an output path inside a folder")
            return


def check_out_folder(out_dir: Path) -> None:
    """Refuse an output folder path that is a file or lies below one."""
    out_dir = Path(out_dir)
    check_out_parent(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output path {out_dir} is a file; give a folder path")


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an output path that is a file or below one, or a non-empty folder without ``overwrite``."""
    out_dir = Path(out_dir)
    check_out_folder(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise InputError(f"output folder {out_dir} exists and is not empty; choose another or pass --overwrite")


def check_out_apart(source: Path, out: Path) -> None:
    """Refuse an output folder that is, or contains, the input (``--overwrite`` would delete it)."""
    src, dst = Path(source).resolve(), Path(out).resolve()
    if src == dst or dst in src.parents:
        raise InputError(f"output folder {out} holds the input {source}; choose an output folder elsewhere")


def check_source(path: Path, role: str = "") -> None:
    """Refuse a source (video or image folder) that does not exist; ``role`` prefixes the message."""
    if not Path(path).exists():
        raise InputError(f"{role}{path} does not exist; give a video file or a folder of images")


def check_gt_dir(gt_dir: Path | None) -> None:
    """Refuse a ground-truth folder (``--gt``) that is missing or cannot be read (None: no ground truth)."""
    if gt_dir is None:
        return
    from flowmap.evaluation import read_ground_truth

    read_ground_truth(Path(gt_dir))


def check_lr(lr: float) -> None:
    """Raise :class:`InputError` unless the learning rate is a finite positive number."""
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"--lr must be a finite positive number, got {lr}; e.g. --lr 1e-3")


def validate_train(train_paths: list[Path], val_paths: list[Path], out: Path, config: TrainConfig) -> None:
    """Every check of ``flowmap train`` before a frame is decoded or a file written: the
    sources (at least one, each present, none twice), the weights path and the settings.

    Raises:
        InputError: the first check that fails, as one line.
    """
    if not train_paths:
        raise InputError("flowmap train needs at least one source (a video or a folder of frames)")
    out = Path(out)
    if out.suffix != ".pt":
        raise InputError(f"-o {out}: the checkpoint must be a .pt file path, e.g. -o weights.pt")
    if out.is_dir():
        raise InputError(f"-o {out} is a folder; give the path of a .pt file")
    check_out_parent(out)
    if config.steps < 1:
        raise InputError(f"--steps must be at least 1, got {config.steps}")
    check_lr(config.lr)
    check_frame_config(config.frames)
    check_correspondence_config(config.correspondences)
    for role, paths in (("training source ", train_paths), ("validation source ", val_paths)):
        for path in paths:
            check_source(path, role)
    _check_distinct(list(train_paths), list(val_paths))


def _check_distinct(train_paths: list[Path], val_paths: list[Path]) -> None:
    """Refuse a source given twice, or both to train on and to validate on."""
    seen: dict[Path, str] = {}
    for path, role in [(p, "training") for p in train_paths] + [(p, "validation") for p in val_paths]:
        key = Path(path).resolve()
        if key in seen:
            if seen[key] != role:
                raise InputError(f"{path} is both a training and a validation source; hold it out of one")
            raise InputError(f"{path} is given twice as a {role} source; give each source once")
        seen[key] = role


def validate_run(
    source: Path | None, out: Path | None, config: RunConfig, overwrite: bool = False
) -> tuple[str, Pretrained | None]:
    """Check every option of ``config`` and the output path; nothing is decoded or written.

    Args:
        source: the video or image folder (None: decoded frames were given).
        out: the output folder (None: nothing will be written).
        config: the run's settings.
        overwrite: a non-empty ``out`` may be replaced.

    Returns:
        The resolved torch device ("cpu" or "cuda") and the weights ``--init`` names
        (:func:`flowmap.pretrained.resolve_init`; None for "none"), read once here.

    Raises:
        InputError: the first check that fails, as one line.
    """
    check_focal(config.focal)
    check_steps(config.optim.steps, config.init)
    init = resolve_init(config.init, config.optim.depth, config.optim.weights)
    check_frame_config(config.frames)
    check_keyframe_config(config.keyframes)
    check_correspondence_config(config.correspondences)
    check_refine_config(config.refine)
    check_threads(config.threads)
    device = resolve_device(config.device)
    check_gt_dir(config.outputs.gt_dir)
    if source is not None:
        check_source(source)
    if out is not None:
        check_out_dir(out, overwrite)
        if source is not None:
            check_out_apart(source, out)
    return device, init
