"""Input stage: a video file or an image folder -> :class:`~flowmap.types.Frames`.

Videos are decoded with PyAV (FFmpeg), honouring the display-matrix rotation that phones
write; image folders are read with Pillow in natural sort order (``img2`` before
``img10``), honouring EXIF orientation. Every frame becomes uint8 RGB: grayscale,
palette, RGBA (alpha dropped), CMYK, float and 16-bit images are converted rather than
rejected. Anything that cannot be used (missing, empty, truncated, not an image or
video, frames of different sizes, too few frames, too large for the memory) raises
:class:`~flowmap.errors.InputError` with one actionable line, never a decoder's traceback.

:class:`FrameConfig` (in :mod:`flowmap.config`), :func:`working_shape` and
:func:`resize_images` (in :mod:`flowmap.resolution`) are re-exported here, where they lived.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from flowmap.config import FrameConfig, KeyframeConfig
from flowmap.errors import InputError
from flowmap.memory import check_frames_memory
from flowmap.resolution import resize_images, working_shape  # noqa: F401  (re-exported: they lived here)
from flowmap.keyframes import choose_keyframes, thumbnail
from flowmap.types import Frames, FrameScan
from flowmap.validate import MIN_FRAMES, check_frame_config

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
"""File suffixes (lower case) read as images in a folder; other files are ignored."""

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts", ".mts"})
"""Common video suffixes; any other non-image file is still tried with FFmpeg."""

GENERIC_FOLDER_NAMES = ("images", "frames", "rgb", "color", "imgs", "input")
"""Frame folders named like this take their sequence's name (the parent folder's)."""


def _components(path: Path) -> list[str]:
    """Name candidates from the most specific up: the file stem or folder name, then the
    parents; a generic frame-folder name (``images``...) goes last."""
    parts = [path.stem if path.is_file() else path.name] + [p.name for p in path.parents if p.name]
    if parts[0].lower() in GENERIC_FOLDER_NAMES and len(parts) > 1:
        parts = parts[1:] + parts[:1]
    return parts


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "source"


def source_names(paths: list[Path]) -> list[str]:
    """Short unique names of sources (videos, frame folders), for output folders and
    model cards: the most specific component, with parent components prepended
    (``a-x``, ``b-x``) while names collide; ``fox/images`` -> ``fox``."""
    comps = [_components(p) for p in paths]
    depth = [1] * len(paths)
    while True:
        names = [_safe("-".join(reversed(c[:d]))) for c, d in zip(comps, depth)]
        dup = [k for k, n in enumerate(names) if names.count(n) > 1]
        grow = [k for k in dup if depth[k] < len(comps[k])]
        if not grow:
            break
        for k in grow:
            depth[k] += 1
    seen: dict[str, int] = {}
    for k, n in enumerate(names):  # still equal (same components): number them
        if names.count(n) > 1:
            seen[n] = seen.get(n, 0) + 1
            names[k] = f"{n}-{seen[n]}"
    return names


def natural_key(name: str) -> list:
    """Sort key that orders digit runs by value: ``img2`` < ``img10``, case-insensitive."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def to_rgb8(array: np.ndarray) -> np.ndarray:
    """Convert a decoded image to (H, W, 3) uint8 RGB.

    Accepts (H, W) grayscale, (H, W, 1|2|3|4) gray/gray+alpha/RGB/RGBA arrays of
    uint8, uint16 (scaled by 255/65535), other integers (assumed 16-bit when the values
    fit, else scaled by their maximum), bool, or floats (assumed in [0, 1] when the
    maximum is <= 1, else in [0, 255]). Alpha is dropped, not composited.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"cannot interpret an image array of shape {array.shape}")
    a = a[:, :, :1] if a.shape[2] == 2 else a[:, :, :3]
    if a.dtype == np.uint8:
        out = a
    elif a.dtype == np.bool_:
        out = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.integer):
        top = 65535.0 if a.dtype == np.uint16 or (a.size and 0 <= a.min() and a.max() <= 65535) else float(max(a.max(), 1))
        out = np.clip(np.rint(a.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    else:
        f = np.nan_to_num(a.astype(np.float64))
        top = 1.0 if f.size == 0 or f.max() <= 1.0 else 255.0
        out = np.clip(np.rint(f * (255.0 / top)), 0, 255).astype(np.uint8)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


def read_image(path: Path) -> np.ndarray:
    """Read one image file as (H, W, 3) uint8 RGB, applying its EXIF orientation.

    Grayscale, palette, RGBA/LA (alpha dropped), CMYK, 16-bit and float images are
    converted by :func:`to_rgb8`.

    Raises:
        InputError: the file cannot be decoded (not an image, corrupt or truncated).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()  # Pillow raises on truncated files here
            im = ImageOps.exif_transpose(im)
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
                im = im.convert("RGB")
            array = np.asarray(im)
    except UnidentifiedImageError:
        raise InputError(f"cannot read image {path}: not an image file Pillow can decode; replace or remove it") from None
    except OSError as exc:
        if exc.errno is not None:  # the file system's error (permission, I/O), not the decoder's
            raise InputError(f"cannot read image {path}: {exc.strerror}") from None
        reason = str(exc) or type(exc).__name__
        hint = "" if "truncat" in reason.lower() or "corrupt" in reason.lower() else " (corrupt?)"
        raise InputError(f"cannot read image {path}: {reason}{hint}; replace or remove it") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types on corrupt bytes
        reason = str(exc) or type(exc).__name__
        raise InputError(f"cannot read image {path}: {reason} (corrupt or truncated?); replace or remove it") from None
    try:
        return to_rgb8(array)
    except ValueError as exc:
        raise InputError(f"cannot read image {path}: {exc}; convert it to an 8-bit RGB image") from None


def image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of an image file after its EXIF orientation, from its header only; None if unknown."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - read_image reports unreadable files properly
        return None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def rotate_display(image: np.ndarray, rotation: float) -> np.ndarray:
    """Apply a display rotation to a decoded video frame.

    Args:
        image: (H, W, 3) frame as stored in the stream.
        rotation: counter-clockwise angle in degrees, as in FFmpeg's
            ``av_display_rotation_get`` of the display matrix and PyAV's
            ``VideoFrame.rotation`` (a phone held upright typically stores -90).
            Rounded to the nearest multiple of 90.

    Returns:
        The frame as it should be displayed (H and W swap for +-90 degrees).
    """
    k = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(image, k=k)) if k else image


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` (not recursive) in natural sort order.

    Hidden files (``.DS_Store``, macOS ``._name.jpg`` resource forks) and files whose
    suffix is not in :data:`IMAGE_SUFFIXES` are ignored.
    """
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def select_indices(n: int, cfg: FrameConfig) -> list[int]:
    """Indices of the frames kept out of ``n``: every ``stride``-th, then the first ``max_frames``."""
    kept = list(range(0, n, cfg.stride))
    return kept if cfg.max_frames is None else kept[: cfg.max_frames]


def _check_same_size(sizes: list[tuple[int, int]], names: list[str], what: str = "frames") -> None:
    """Raise InputError naming the frames whose (height, width) differs from the most common one."""
    sizes = [tuple(size) for size in sizes]
    common = max(set(sizes), key=sizes.count)
    odd = [(name, size) for name, size in zip(names, sizes) if size != common]
    if not odd:
        return
    listed = ", ".join(f"{name} ({w}x{h})" for name, (h, w) in odd[:5])
    more = f" and {len(odd) - 5} more" if len(odd) > 5 else ""
    raise InputError(
        f"{what} differ in size: {len(odd)} of {len(sizes)} are not {common[1]}x{common[0]} pixels: {listed}{more}; "
        "all frames must have the same size (resize or remove the odd ones)"
    )


def _check_count(n: int, source: Path, cfg: FrameConfig) -> None:
    if n < MIN_FRAMES:
        hint = f" with --stride {cfg.stride} (lower it)" if cfg.stride > 1 else ""
        raise InputError(f"{source} gives {n} usable frame(s){hint}; flowmap needs at least {MIN_FRAMES}")


def _no_images_hint(folder: Path) -> str:
    """Why a folder without images may have been given, as the end of an error message."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    videos = sorted((p for p in entries if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES), key=lambda p: natural_key(p.name))
    if videos:
        return f"; it holds a video: give its path instead, e.g. {videos[0]}"
    subdirs = sorted((p for p in entries if p.is_dir() and list_images(p)), key=lambda p: natural_key(p.name))
    if subdirs:
        return f"; did you mean {subdirs[0]}?"
    return "; give a folder of frames or a video file"


def load_image_folder(folder: Path, cfg: FrameConfig, wanted: list[int] | None = None) -> Frames:
    """Frames from a folder of images, keeping the original file names.

    Image sizes are read from the file headers first, so frames of different sizes and
    a folder too large for the memory are refused before anything is decoded.

    Args:
        folder: the image folder.
        cfg: frame selection (stride, max_frames).
        wanted: sorted positions among the selected frames to decode (keyframes); None: all.

    Raises:
        InputError: no images in the folder, fewer than 3 frames after selection, an
            unreadable image, images of different sizes, or decoded frames that would
            not fit in the available memory.
    """
    chosen, indices = _selected_files(folder, cfg)
    positions = range(len(chosen)) if wanted is None else wanted
    chosen, indices = [chosen[k] for k in positions], [indices[k] for k in positions]
    names = [p.name for p in chosen]
    sizes = [image_size(p) for p in chosen]
    known = [(name, size) for name, size in zip(names, sizes) if size is not None]
    if known:
        _check_same_size([size for _, size in known], [name for name, _ in known])
        check_frames_memory(len(chosen), *known[0][1])
    images = [read_image(p) for p in chosen]
    _check_same_size([img.shape[:2] for img in images], names)
    return Frames(images=np.stack(images), names=names, source=folder, source_indices=indices, fps=None)


def _selected_files(folder: Path, cfg: FrameConfig) -> tuple[list[Path], list[int]]:
    """The image files kept by ``stride`` / ``max_frames`` and their indices in the folder.

    Raises:
        InputError: no images, or fewer than 3 after the selection.
    """
    files = list_images(folder)
    if not files:
        raise InputError(f"{folder} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))}){_no_images_hint(folder)}")
    indices = select_indices(len(files), cfg)
    _check_count(len(indices), folder, cfg)
    return [files[i] for i in indices], indices


def _frame_rotation(frame, stream) -> float:
    """Display rotation (degrees counter-clockwise) of a decoded frame.

    PyAV >= 14 exposes the display matrix as ``VideoFrame.rotation``; older versions
    only show FFmpeg's legacy ``rotate`` tag (clockwise degrees) in the stream metadata.
    """
    rotation = getattr(frame, "rotation", None)
    if rotation is not None:
        return float(rotation)
    try:
        return -float(stream.metadata.get("rotate", 0))
    except ValueError:
        return 0.0


def _declared_frames(stream) -> int:
    """Frame count the container declares for ``stream`` (0 when unknown)."""
    try:
        return max(0, int(stream.frames or 0))
    except (TypeError, ValueError):
        return 0


def _expected_frames(stream, container) -> int:
    """Frames the stream should hold: the declared count, else duration x rate (0 when unknown)."""
    declared = _declared_frames(stream)
    if declared:
        return declared
    try:
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        else:
            seconds = float(container.duration or 0) / 1e6  # AV_TIME_BASE
        return max(0, int(seconds * float(stream.average_rate or 0)))
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return 0


def load_video(path: Path, cfg: FrameConfig, wanted: list[int] | None = None) -> Frames:
    """Frames from a video file decoded with PyAV, rotated for display.

    Names are ``000000.jpg``, ``000001.jpg`` ... by position among the frames kept by
    ``stride`` / ``max_frames`` (with ``wanted``, the positions of the decoded ones).

    Args:
        path: the video.
        cfg: frame selection (stride, max_frames).
        wanted: sorted positions among the selected frames to keep (keyframes); None: all.

    Raises:
        InputError: see :func:`decode_video`; also decoded frames that would not fit in
            the available memory (checked before decoding).
    """

    def check(expected: int, height: int, width: int) -> None:
        n_kept = -(-expected // cfg.stride)
        n_kept = n_kept if cfg.max_frames is None else min(n_kept, cfg.max_frames)
        check_frames_memory(n_kept if wanted is None else len(wanted), height, width)

    fps = video_fps(path)
    positions, indices, images = [], [], []
    for k, i, image in decode_video(path, cfg, wanted, on_open=check):
        positions.append(k)
        indices.append(i)
        images.append(image)
    names = [f"{k:06d}.jpg" for k in positions]
    _check_same_size([img.shape[:2] for img in images], [f"frame {i}" for i in indices], what="the video's frames")
    return Frames(images=np.stack(images), names=names, source=path, source_indices=indices, fps=fps)


def video_fps(path: Path) -> float | None:
    """The average frame rate of a video's first stream (None when unknown or unreadable)."""
    import av

    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
            return float(rate) if rate else None
    except Exception:  # noqa: BLE001 - decode_video reports unreadable videos properly
        return None


def decode_video(
    path: Path, cfg: FrameConfig, wanted: list[int] | None = None, on_open: Callable[[int, int, int], None] | None = None
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Decode a video with PyAV, frame by frame, rotated for display.

    A stream that ends more than 2 % (and 2 frames) before the frame count in the
    container's header is treated as truncated: FFmpeg's threaded decoder otherwise
    stops silently at the end of the data.

    Args:
        path: the video.
        cfg: frame selection: every ``stride``-th frame, then the first ``max_frames``.
        wanted: sorted positions among the selected frames to convert and yield; None: all.
        on_open: called once with (expected frame count, coded height, coded width) before
            the first frame is decoded when the container states a count (e.g. a memory check).

    Yields:
        (position among the selected frames, index in the video, (H, W, 3) uint8 RGB).

    Raises:
        InputError: not a video FFmpeg can decode, no video stream, a corrupt or
            truncated stream, or fewer than 3 selected frames.
    """
    import av

    want = None if wanted is None else set(int(k) for k in wanted)
    selected = decoded = declared = 0
    complete = True
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream; give a video file or a folder of images")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            declared = _declared_frames(stream)
            expected = _expected_frames(stream, container)
            if expected and on_open is not None:
                on_open(expected, stream.codec_context.height, stream.codec_context.width)
            for i, frame in enumerate(container.decode(stream)):
                decoded = i + 1
                if i % cfg.stride:
                    continue
                k, selected = selected, selected + 1
                if want is None or k in want:
                    yield k, i, rotate_display(frame.to_ndarray(format="rgb24"), _frame_rotation(frame, stream))
                if cfg.max_frames is not None and selected >= cfg.max_frames:
                    complete = False
                    break
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - FFmpeg on arbitrary bytes raises many types
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        if selected and declared and decoded >= declared - max(2, declared // 50):
            pass  # an error in the last packets: every declared frame was decoded
        elif not selected:
            raise InputError(
                f"cannot decode {path} as a video ({reason}); give a complete video file (mp4, mov, ...) "
                "or a folder of images"
            ) from None
        else:
            raise InputError(
                f"{path} is corrupt or truncated: decoding failed after {decoded} frames ({reason}); "
                "re-export or re-download it"
            ) from None
    if complete and declared and decoded < declared - max(2, declared // 50):
        raise InputError(
            f"{path} is truncated: it declares {declared} frames but only {decoded} could be decoded; "
            "re-export or re-download it"
        )
    _check_count(selected, path, cfg)


def iter_frames(path: Path, cfg: FrameConfig, wanted: list[int] | None = None) -> Iterator[tuple[int, str, int, np.ndarray]]:
    """The frames selected by ``stride`` / ``max_frames`` one at a time (constant memory).

    Args:
        path: a video file or an image folder (checked as by :func:`load_frames`).
        cfg: frame selection.
        wanted: sorted positions among the selected frames to yield; None: all.

    Yields:
        (position, name, index in the source, (H, W, 3) uint8 RGB image); names as
        :func:`load_frames` gives them.

    Raises:
        InputError: as :func:`load_frames` (frames of different sizes only when read;
            unreadable files raise when the iteration reaches them).
    """
    path = check_source_path(path, cfg)
    if path.is_dir():
        try:
            chosen, indices = _selected_files(path, cfg)
        except PermissionError as exc:
            raise InputError(f"cannot read {exc.filename or path}: permission denied") from None
        for k in range(len(chosen)) if wanted is None else wanted:
            yield k, chosen[k].name, indices[k], read_image(chosen[k])
        return
    for k, i, image in decode_video(path, cfg, wanted):
        yield k, f"{k:06d}.jpg", i, image


def count_frames(path: Path, cfg: FrameConfig) -> int | None:
    """How many frames ``stride`` / ``max_frames`` select, from the folder listing or the
    video's header (nothing decoded); None when a video states no count or the path cannot
    be read (the loaders then say why)."""
    import av

    path = Path(path)
    try:
        if path.is_dir():
            return len(select_indices(len(list_images(path)), cfg))
        with av.open(str(path)) as container:
            expected = _expected_frames(container.streams.video[0], container)
    except Exception:  # noqa: BLE001 - decode_video reports unreadable videos properly
        return None
    if not expected:
        return None
    return len(select_indices(expected, cfg))


def load_frames(path: Path, cfg: FrameConfig, wanted: list[int] | None = None) -> Frames:
    """Decode a video file or an image folder into :class:`Frames`.

    Selection: every ``cfg.stride``-th frame, then the first ``cfg.max_frames``; of
    those, the positions ``wanted`` (the keyframes, :mod:`flowmap.keyframes`) when given.

    Args:
        path: a video file (mp4, mov, avi, mkv, webm, ... anything FFmpeg decodes) or a
            folder of images (jpg, jpeg, png, bmp, tif, tiff, webp; other files ignored).
        cfg: frame selection.
        wanted: sorted positions among the selected frames to decode; None: all.

    Returns:
        Frames with ``images`` (N, H, W, 3) uint8 RGB at the input resolution (videos
        rotated for display), ``names`` (video: ``000000.jpg`` ...; folder: the file
        names), the source indices of the kept frames and the video frame rate.

    Raises:
        InputError: missing path; no images in the folder; fewer than 3 usable frames;
            an unreadable or truncated image or video; a file that is neither image nor
            video; frames of different sizes (naming them); decoded frames that would
            take more than half the available memory (checked before decoding); a
            stride, max_frames or pixel budget that cannot work. The message is one
            actionable line.
    """
    path = check_source_path(path, cfg)
    if path.is_dir():
        try:
            return load_image_folder(path, cfg, wanted)
        except PermissionError as exc:
            raise InputError(f"cannot read {exc.filename or path}: permission denied") from None
    return load_video(path, cfg, wanted)


def check_source_path(path: Path, cfg: FrameConfig) -> Path:
    """``path`` as a Path once it can be a source: an existing folder, or a file that is
    not a single image; the frame selection valid.

    Raises:
        InputError: a stride, max_frames or pixel budget that cannot work; a missing
            path; a single image file.
    """
    path = Path(path)
    check_frame_config(cfg)
    if not path.exists():
        raise InputError(f"{path} does not exist; give a video file or a folder of images")
    if not path.is_dir() and path.suffix.lower() in IMAGE_SUFFIXES:
        raise InputError(f"{path} is a single image; give a folder of at least {MIN_FRAMES} images or a video")
    return path


def scan_frames(
    source: Path | Frames, cfg: FrameConfig, keyframes: KeyframeConfig, progress: bool = False, total: int | None = None
) -> FrameScan:
    """The cheap pass over every selected frame: grayscale at the working resolution,
    the motion between consecutive frames, and the keyframes (:mod:`flowmap.keyframes`).

    Frames are decoded one at a time (a video once, start to end), so memory holds only
    the grayscale copies (h * w bytes per frame).

    Args:
        source: a video file, an image folder, or decoded :class:`Frames` (all of them
            are scanned; ``cfg``'s stride and max_frames then do not apply).
        cfg: frame selection and working resolution (``pixel_budget``, ``multiple``).
        keyframes: the keyframe target and overlap limit.
        progress: show a tqdm bar (frames done / total, time left) on stderr.
        total: the expected frame count for the bar (:func:`count_frames`), if known.

    Returns:
        :class:`FrameScan`.

    Raises:
        InputError: as :func:`load_frames`; also frames that change size.
    """
    from tqdm.auto import tqdm

    if isinstance(source, Frames):
        items = ((k, name, i, img) for k, (name, i, img) in enumerate(zip(source.names, source.source_indices, source.images)))
        total = source.n
    else:
        items = iter_frames(Path(source), cfg)
    items = iter(items)
    first = next(items)  # an unreadable source fails here, before the progress bar shows
    size = first[3].shape[:2]
    shape = working_shape(size[0], size[1], cfg.pixel_budget, cfg.multiple)
    names, indices, gray, sizes = [], [], [], []
    # shown after 0.5 s: a short input is scanned before a bar could say anything useful
    bar = tqdm(total=total, desc="choosing keyframes", unit="frame", disable=not progress, leave=False, delay=0.5)
    with bar:
        for _, name, index, image in itertools.chain([first], items):
            names.append(name)
            sizes.append(image.shape[:2])
            indices.append(int(index))
            if image.shape[:2] == size:
                gray.append(_gray_at(image, shape))
            bar.update()
    _check_same_size(sizes, names)  # every odd frame named, as load_frames does
    gray = np.stack(gray)
    thumbs = np.stack([thumbnail(g, keyframes.thumb_width) for g in gray])
    keys, motion = choose_keyframes(thumbs, keyframes)
    return FrameScan(names=names, source_indices=indices, gray=gray, motion=motion, keys=keys)


def _gray_at(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) uint8 grayscale of an (H, W, 3) RGB frame at ``shape`` (the working
    resolution, resized as :func:`flowmap.resolution.resize_images` does).

    Converted to grayscale first, then resized: both are linear, so the result equals
    the resized colour frame's grayscale up to uint8 rounding (at most 1 level), at a
    half of the time (1.13 -> 0.51 ms a 848 x 364 frame: room-walkin's 1,091 frames 1.2 -> 0.6 s)."""
    import cv2

    return resize_images(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[None], shape)[0]
