"""Tests of the input stage (flowmap.frames): image folders, videos, conversions, errors.

Every input is tiny and written to tmp_path by the test: PNG/JPEG/TIFF with Pillow or
OpenCV, MP4 with PyAV (the FFmpeg-native mpeg4 encoder, so no optional codec is needed).
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

import flowmap.memory
from flowmap.errors import InputError
from flowmap.frames import FrameConfig, count_frames, iter_frames, load_frames, rotate_display, to_rgb8, working_shape

RNG_SEED = 0


def textured(h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 smooth random texture (survives lossy codecs recognisably)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def marked(h: int = 32, w: int = 48) -> np.ndarray:
    """Black frame with a white 8x8 block top-left and a red 8x8 block top-right."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:8, :8] = 255
    img[:8, -8:] = (255, 0, 0)
    return img


def write_folder(folder: Path, images: list[np.ndarray], suffix: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        p = folder / f"{i:03d}{suffix}"
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def write_video(
    path: Path, images: list[np.ndarray], rotation: float | None = None, faststart: bool = False, rate: int = 10
) -> Path:
    """Encode RGB frames as an MP4 (mpeg4, high quality); ``rotation`` sets the display matrix."""
    options = {"movflags": "faststart"} if faststart else {}
    h, w = images[0].shape[:2]
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.bit_rate = 4_000_000
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for img in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def block_centre(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Mean (row, col) of the pixels within 60 levels of ``colour``."""
    near = np.abs(image.astype(int) - np.array(colour)).max(axis=-1) < 60
    assert near.sum() > 20, "marker not found"
    return np.argwhere(near).mean(axis=0)


# ----------------------------------------------------------------------------- image folders


def test_folder_natural_order_ignores_stray_and_hidden_files(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, seed in (("img10.png", 10), ("img2.png", 2), ("IMG1.png", 1)):
        Image.fromarray(textured(seed=seed)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\x00\x01junk")
    (folder / "._img3.png").write_bytes(b"macOS resource fork, not a PNG")
    (folder / "sub").mkdir()
    frames = load_frames(folder, FrameConfig())
    assert frames.names == ["IMG1.png", "img2.png", "img10.png"]
    assert frames.images.shape == (3, 32, 48, 3) and frames.images.dtype == np.uint8
    assert np.array_equal(frames.images[2], textured(seed=10))
    assert frames.source_indices == [0, 1, 2] and frames.fps is None


def test_folder_stride_and_max_frames(tmp_path):
    write_folder(tmp_path / "f", [textured(seed=i) for i in range(9)])
    frames = load_frames(tmp_path / "f", FrameConfig(stride=2, max_frames=3))
    assert frames.source_indices == [0, 2, 4] and frames.names == ["000.png", "002.png", "004.png"]
    assert np.array_equal(frames.images[1], textured(seed=2))


def test_16bit_grayscale_rgba_palette_cmyk_images_are_converted(tmp_path):
    rgb = textured(seed=3)
    gray = rgb[..., 0]
    folder = tmp_path / "mixed"
    folder.mkdir()
    # 16-bit colour and grey (OpenCV writes them; Pillow reads RGB and I;16)
    cv2.imwrite(str(folder / "a_rgb16.png"), (rgb.astype(np.uint16) * 257)[..., ::-1])
    cv2.imwrite(str(folder / "b_gray16.png"), gray.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "c_gray16.tif"), gray.astype(np.uint16) * 257)
    Image.fromarray(gray).save(folder / "d_gray8.png")
    rgba = np.dstack([rgb, np.full(gray.shape, 7, np.uint8)])  # nearly transparent: alpha is dropped
    Image.fromarray(rgba).save(folder / "e_rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "f_cmyk.tif")
    Image.fromarray(rgb).quantize(256).save(folder / "g_palette.png")
    cv2.imwrite(str(folder / "h_float.tif"), gray.astype(np.float32) / 255.0)
    frames = load_frames(folder, FrameConfig())
    assert frames.images.shape == (8, 32, 48, 3) and frames.images.dtype == np.uint8
    grey3 = np.repeat(gray[..., None], 3, axis=2)
    expected = [rgb, grey3, grey3, grey3, rgb, rgb, None, grey3]
    for name, img, exp in zip(frames.names, frames.images, expected):
        if exp is None:  # palette quantisation changes colours a little
            assert np.abs(img.astype(int) - rgb).mean() < 8, name
        else:
            assert np.abs(img.astype(int) - exp).max() <= 1, name


def test_to_rgb8_scaling_rules():
    assert to_rgb8(np.array([[0, 257, 65535]], np.uint16)).tolist() == [[[0] * 3, [1] * 3, [255] * 3]]
    assert to_rgb8(np.array([[0.0, 0.5, 1.0]], np.float32))[0, :, 0].tolist() == [0, 128, 255]
    assert to_rgb8(np.array([[0.0, 128.0, 300.0]]))[0, :, 0].tolist() == [0, 128, 255]
    assert to_rgb8(np.array([[True, False]]))[0, :, 0].tolist() == [255, 0]
    gray_alpha = np.dstack([np.full((2, 2), 9, np.uint8), np.zeros((2, 2), np.uint8)])
    assert (to_rgb8(gray_alpha) == 9).all() and to_rgb8(gray_alpha).shape == (2, 2, 3)
    big_endian = np.array([[65535]], dtype=">u2")
    assert to_rgb8(big_endian)[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="shape"):
        to_rgb8(np.zeros((2, 2, 5), np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    img = marked()  # 32 x 48
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise
    (tmp_path / "f").mkdir()
    for i in range(3):
        Image.fromarray(img).save(tmp_path / "f" / f"{i}.jpg", exif=exif.tobytes(), quality=95)
    frames = load_frames(tmp_path / "f", FrameConfig())
    assert frames.images.shape == (3, 48, 32, 3)
    shown = np.ascontiguousarray(np.rot90(img, k=-1))  # clockwise
    assert np.allclose(block_centre(frames.images[0], (255, 255, 255)), block_centre(shown, (255, 255, 255)), atol=1)
    assert np.allclose(block_centre(frames.images[0], (255, 0, 0)), block_centre(shown, (255, 0, 0)), atol=1)


def test_different_sizes_name_the_odd_files(tmp_path):
    images = [textured(seed=i) for i in range(5)] + [textured(40, 48, seed=5), textured(32, 40, seed=6)]
    write_folder(tmp_path / "f", images)
    with pytest.raises(InputError) as info:
        load_frames(tmp_path / "f", FrameConfig())
    msg = str(info.value)
    assert "2 of 7 are not 48x32" in msg and "005.png (48x40)" in msg and "006.png (40x32)" in msg
    assert "000.png" not in msg and "\n" not in msg


def test_too_few_frames(tmp_path):
    write_folder(tmp_path / "two", [textured(seed=i) for i in range(2)])
    with pytest.raises(InputError, match="gives 2 usable frame.*at least 3"):
        load_frames(tmp_path / "two", FrameConfig())
    write_folder(tmp_path / "five", [textured(seed=i) for i in range(5)])
    with pytest.raises(InputError, match="gives 2 usable frame.*--stride 3 \\(lower it\\)"):
        load_frames(tmp_path / "five", FrameConfig(stride=3))
    with pytest.raises(InputError, match="--max-frames must be at least 3"):
        load_frames(tmp_path / "five", FrameConfig(max_frames=2))
    with pytest.raises(InputError, match="--stride must be 1 or more"):
        load_frames(tmp_path / "five", FrameConfig(stride=0))
    with pytest.raises(InputError, match="--pixel-budget must be at least 256"):
        load_frames(tmp_path / "five", FrameConfig(pixel_budget=0))


def test_unreadable_images_are_named(tmp_path):
    good = [textured(seed=i) for i in range(3)]
    folder = tmp_path / "trunc"
    paths = write_folder(folder, good)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cannot read image .*001\.png.*truncated"):
        load_frames(folder, FrameConfig())
    folder = tmp_path / "fake"
    paths = write_folder(folder, good, suffix=".jpg")
    paths[2].write_text("this is not a JPEG")
    with pytest.raises(InputError, match=r"cannot read image .*002\.jpg: not an image file"):
        load_frames(folder, FrameConfig())
    paths[2].write_bytes(b"")
    with pytest.raises(InputError, match=r"002\.jpg"):
        load_frames(folder, FrameConfig())


def test_paths_that_are_not_frames(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_frames(tmp_path / "missing", FrameConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="contains no images.*give a folder of frames or a video"):
        load_frames(tmp_path / "empty", FrameConfig())
    single = write_folder(tmp_path / "one", [textured()])[0]
    with pytest.raises(InputError, match="is a single image"):
        load_frames(single, FrameConfig())
    notes = tmp_path / "notes.txt"
    notes.write_text("hello, not a video\n" * 20)
    with pytest.raises(InputError, match=r"cannot decode .*notes\.txt as a video"):
        load_frames(notes, FrameConfig())
    # a folder holding a video, or frames one level down: say what to give instead
    (tmp_path / "holder").mkdir()
    write_video(tmp_path / "holder" / "clip.mp4", [textured()] * 3)
    with pytest.raises(InputError, match=r"it holds a video: give its path instead, e.g. .*clip\.mp4"):
        load_frames(tmp_path / "holder", FrameConfig())
    write_folder(tmp_path / "dataset" / "images", [textured(seed=i) for i in range(3)])
    with pytest.raises(InputError, match=r"did you mean .*dataset/images\?"):
        load_frames(tmp_path / "dataset", FrameConfig())


# ----------------------------------------------------------------------------- videos


def test_video_frames_selection_and_rate(tmp_path):
    images = [textured(seed=i) for i in range(7)]
    path = write_video(tmp_path / "clip.mp4", images, rate=12)
    frames = load_frames(path, FrameConfig(stride=2, max_frames=3))
    assert frames.source_indices == [0, 2, 4] and frames.names == ["000000.jpg", "000001.jpg", "000002.jpg"]
    assert frames.fps == pytest.approx(12.0) and frames.images.shape == (3, 32, 48, 3)
    for k, i in enumerate(frames.source_indices):  # each kept frame is the source frame it claims to be
        errors = [np.abs(frames.images[k].astype(int) - img).mean() for img in images]
        assert int(np.argmin(errors)) == i and errors[i] < 0.5 * sorted(errors)[1]


def test_video_keyframes_only_and_frame_by_frame(tmp_path):
    """Issue 25: ``wanted`` decodes only the keyframes (names by position among the frames
    stride keeps); iter_frames and count_frames see the same frames one at a time."""
    images = [textured(seed=i) for i in range(9)]
    path = write_video(tmp_path / "clip.mp4", images)
    cfg = FrameConfig(stride=2)
    assert count_frames(path, cfg) == 5
    frames = load_frames(path, cfg, wanted=[0, 2, 4])
    assert frames.source_indices == [0, 4, 8] and frames.names == ["000000.jpg", "000002.jpg", "000004.jpg"]
    streamed = list(iter_frames(path, cfg, [1, 3]))
    assert [(k, name, i) for k, name, i, _ in streamed] == [(1, "000001.jpg", 2), (3, "000003.jpg", 6)]
    for (_, _, i, image) in streamed:
        errors = [np.abs(image.astype(int) - img).mean() for img in images]
        assert int(np.argmin(errors)) == i
    folder = tmp_path / "frames"
    write_folder(folder, images)
    assert load_frames(folder, cfg, wanted=[1, 4]).names == ["002.png", "008.png"]
    assert [name for _, name, _, _ in iter_frames(folder, cfg, [0, 2])] == ["000.png", "004.png"]


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_video_display_rotation_is_honoured(tmp_path, rotation):
    path = write_video(tmp_path / f"rot{rotation}.mp4", [marked()] * 3, rotation=rotation)
    frames = load_frames(path, FrameConfig())
    # display matrix angle = counter-clockwise rotation (FFmpeg av_display_rotation_get)
    shown = np.rot90(marked(), k=rotation // 90)
    assert frames.images.shape[1:3] == shown.shape[:2]
    for colour in ((255, 255, 255), (255, 0, 0)):
        assert np.allclose(block_centre(frames.images[0], colour), block_centre(shown, colour), atol=1.5)
    # OpenCV's FFmpeg reader applies the same orientation on its own (CAP_PROP_ORIENTATION_AUTO)
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    ok, bgr = capture.read()
    capture.release()
    assert ok and bgr.shape[:2] == frames.images.shape[1:3]
    assert np.abs(bgr[..., ::-1].astype(int) - frames.images[0]).mean() < 4


def test_rotate_display_convention():
    img = np.arange(6).reshape(2, 3)
    assert rotate_display(img, 0) is img
    assert rotate_display(img, 90).tolist() == [[2, 5], [1, 4], [0, 3]]  # counter-clockwise
    assert rotate_display(img, -90).tolist() == [[3, 0], [4, 1], [5, 2]]  # clockwise (portrait phone)
    assert rotate_display(img, 180).tolist() == [[5, 4, 3], [2, 1, 0]]
    assert rotate_display(img, -180).tolist() == rotate_display(img, 180).tolist()
    assert rotate_display(img, 89.6).tolist() == rotate_display(img, 90).tolist()


def test_truncated_videos_are_refused(tmp_path):
    images = [textured(seed=i) for i in range(30)]
    indexed_first = write_video(tmp_path / "fast.mp4", images, faststart=True)
    data = indexed_first.read_bytes()
    cut = tmp_path / "cut_fast.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut_fast\.mp4 is (corrupt or )?truncated"):
        load_frames(cut, FrameConfig())
    indexed_last = write_video(tmp_path / "plain.mp4", images)
    data = indexed_last.read_bytes()
    cut = tmp_path / "cut_plain.mp4"
    cut.write_bytes(data[: int(len(data) * 0.9)])  # the index (moov) at the end is lost
    with pytest.raises(InputError, match=r"cannot decode .*cut_plain\.mp4 as a video"):
        load_frames(cut, FrameConfig())
    # the complete files load; max_frames stops early without calling that truncation
    assert load_frames(indexed_first, FrameConfig()).n == 30
    assert load_frames(indexed_last, FrameConfig(max_frames=5)).n == 5


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(InputError, match="has no video stream"):
        load_frames(path, FrameConfig())


# ----------------------------------------------------------------------------- memory


def test_frames_that_would_not_fit_in_memory_are_refused_before_decoding(tmp_path, monkeypatch):
    write_folder(tmp_path / "f", [textured(seed=i) for i in range(10)])
    video = write_video(tmp_path / "clip.mp4", [textured(seed=i) for i in range(10)])
    need = 10 * 32 * 48 * 3
    monkeypatch.setattr(flowmap.memory, "available_memory", lambda: 1.5 * need)  # frames may use half
    decoded = []
    monkeypatch.setattr("flowmap.frames.read_image", lambda p: decoded.append(p))
    with pytest.raises(InputError, match=r"decoding 10 frames of 48x32 pixels needs .* use --max-frames 7 or --stride 2"):
        load_frames(tmp_path / "f", FrameConfig())
    assert decoded == []
    with pytest.raises(InputError, match=r"decoding 10 frames of 48x32 pixels"):
        load_frames(video, FrameConfig())
    # Matroska declares no frame count: the duration x frame rate stands in
    mkv = tmp_path / "clip.mkv"
    with av.open(str(video)) as src, av.open(str(mkv), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    with av.open(str(mkv)) as check:
        assert check.streams.video[0].frames == 0
    with pytest.raises(InputError, match=r"decoding 10 frames of 48x32 pixels"):
        load_frames(mkv, FrameConfig())
    # what the message suggests fits
    monkeypatch.undo()
    monkeypatch.setattr(flowmap.memory, "available_memory", lambda: 1.5 * need)
    assert load_frames(tmp_path / "f", FrameConfig(max_frames=7)).n == 7
    assert load_frames(video, FrameConfig(stride=2)).n == 5


# ----------------------------------------------------------------------------- fuzz


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    for i in rng.integers(0, len(b), int(rng.integers(1, 64))):
        b[i] = int(rng.integers(0, 256))
    return bytes(b)


def test_fuzz_random_bytes_give_input_errors_never_tracebacks(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    good = [textured(seed=i) for i in range(3)]
    png = io.BytesIO()
    Image.fromarray(good[0]).save(png, format="PNG")
    jpg = io.BytesIO()
    Image.fromarray(good[0]).save(jpg, format="JPEG")
    video = write_video(tmp_path / "ref.mp4", [textured(seed=i) for i in range(8)], faststart=True).read_bytes()
    outcomes = {"frames": 0, "error": 0}

    def attempt(path: Path) -> None:
        try:
            frames = load_frames(path, FrameConfig())
        except InputError as exc:
            assert "\n" not in str(exc) and str(exc)
            outcomes["error"] += 1
        else:
            assert frames.images.dtype == np.uint8 and frames.images.ndim == 4 and frames.n >= 3
            outcomes["frames"] += 1

    for case in range(36):
        folder = tmp_path / f"img{case}"
        write_folder(folder, good)
        kind = case % 4
        if kind == 0:
            blob, suffix = rng.bytes(int(rng.integers(0, 4000))), ".png"
        elif kind == 1:
            blob, suffix = _mutate(png.getvalue(), rng), ".png"
        elif kind == 2:
            blob, suffix = _mutate(jpg.getvalue(), rng), ".jpg"
        else:
            blob, suffix = jpg.getvalue()[: int(rng.integers(0, len(jpg.getvalue())))], ".jpg"
        (folder / f"003{suffix}").write_bytes(blob)
        attempt(folder)
    for case in range(120):
        kind = case % 3
        if kind == 0:
            blob = rng.bytes(int(rng.integers(0, 20000)))
        elif kind == 1:
            blob = _mutate(video, rng)
        else:
            blob = video[: int(rng.integers(0, len(video)))]
        path = tmp_path / f"fuzz{case}.mp4"
        path.write_bytes(blob)
        attempt(path)
    assert outcomes["error"] > 60  # most garbage is refused (some mutations still decode)


# ----------------------------------------------------------------------------- working resolution


@pytest.mark.parametrize("size", [(360, 640), (640, 360), (1080, 1920), (100, 100), (48, 64)])
def test_working_shape_keeps_aspect_and_budget(size):
    H, W = size
    h, w = working_shape(H, W, 43200, 16)
    assert h % 16 == 0 and w % 16 == 0 and h <= H and w <= W
    if H * W > 43200 * 1.5:
        assert 0.8 < h * w / 43200 < 1.25
        assert abs(np.log((h / w) / (H / W))) < 0.1
    with pytest.raises(InputError, match="too small"):
        working_shape(8, 64, 43200, 16)
