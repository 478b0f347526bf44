"""Training across videos: one depth network and weight MLP for many videos (``flowmap train``).

FlowCam (METHOD.md section 7) trains FlowMap's pose pipeline (depth network, weighted
Procrustes) across a corpus of videos with the same self-supervised loss, and the
FlowMap paper (section 5; METHOD.md 5) starts its runs from such a network, which then
converges in 2,000 instead of 20,000 steps. ``flowmap train`` does this for flowmap's
model: every step draws a random video, a random window of ``optim.window`` consecutive
frames in it and random pixels, and descends the FlowMap objective (reprojected flow and
tracks, METHOD.md 4) with the focal length of that window from the softmin over
candidates (METHOD.md 3.3; nothing per video is learned, so the weights transfer).

Each video's correspondences are computed once and cached (``CKPT.cache/``, the run's
cache format). The weights file ``CKPT`` (:mod:`flowmap.pretrained`) is written
atomically every ``checkpoint_every`` steps and at the end, with a model card
(``CKPT`` with suffix ``.md``) and the loss curve (``-loss.png``). The loop state
(optimiser, sampling generator, history) is checkpointed beside the correspondences, so a
killed run continues with ``resume=True`` and ends in the same state as an uninterrupted
one. A validation loss on held-back videos (fixed windows and pixels) is logged every
``val_every`` steps.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from flowmap.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from flowmap.config import TrainConfig
from flowmap.correspondences.cache import load_or_compute
from flowmap.errors import FlowmapError, InputError, NumericalError
from flowmap.frames import load_frames, source_names
from flowmap.io import atomic_write, lock_out
from flowmap.model.flowmap import FlowMapModel, VideoTensors
from flowmap.objective import window_losses
from flowmap.optimize import descend, lr_factor, window_size, window_step
from flowmap.pretrained import architecture, save_weights
from flowmap.resolution import resize_images, working_shape
from flowmap.validate import validate_train

__all__ = ["TrainConfig", "TrainResult", "TrainSource", "prepare_sources", "train"]

STATE_NAME = "train-state.pt"


@dataclass
class TrainSource:
    """One video prepared for training.

    Attributes:
        name: the folder's or file's name (a folder ``images`` takes its parent's).
        path: where it was read from.
        data: working-resolution frames and correspondences.
        image_size: (H, W) of its input frames (the focal length's pixels).
    """

    name: str
    path: Path
    data: VideoTensors
    image_size: tuple[int, int]


@dataclass
class TrainResult:
    """What ``train`` produced.

    Attributes:
        path: the weights file.
        history: per logged step ``{"step", "loss", "flow", "tracks", "lr", ["val"]}``.
        train_s: wall seconds of the steps (all sessions of a resumed training).
        warnings: skipped steps, an unreadable state file.
    """

    path: Path
    history: list[dict]
    train_s: float
    warnings: list[str]


def prepare_sources(
    paths: list[Path], names: list[str], cfg: TrainConfig, cache: Path | None, device: str, progress: bool = True
) -> list[TrainSource]:
    """Decode every source and compute (or load from ``cache``) its correspondences.

    Raises:
        InputError: a source cannot be read (the message names it).
    """
    sources = []
    for path, name in tqdm(
        list(zip(paths, names)), desc="correspondences", disable=not progress or len(paths) < 2, dynamic_ncols=True
    ):
        try:
            frames = load_frames(Path(path), cfg.frames)
        except InputError as exc:
            raise InputError(f"training source {path}: {exc}") from None
        shape = working_shape(frames.height, frames.width, cfg.frames.pixel_budget, cfg.frames.multiple)
        corr = load_or_compute(cache, frames.images, shape, cfg.correspondences, progress=False)
        data = VideoTensors.from_numpy(resize_images(frames.images, shape), corr, device)
        sources.append(TrainSource(name, Path(path), data, (frames.height, frames.width)))
    return sources


def _val_batches(sources: list[TrainSource], cfg: TrainConfig) -> list[tuple[int, int, int, torch.Tensor, torch.Tensor]]:
    """Fixed (source, start, window, solve pixels, loss pixels) of the validation loss."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    batches = []
    for i, src in enumerate(sources):
        n = src.data.n
        window = window_size(n, cfg.optim.window)
        h, w = src.data.shape
        for start in np.linspace(0, n - window, cfg.val_windows).round().astype(int):
            pixels = torch.randperm(h * w, generator=gen)[: cfg.optim.procrustes_points]
            loss_pixels = torch.randperm(h * w, generator=gen)[: cfg.optim.loss_points or h * w]
            batches.append((i, int(start), window, pixels, loss_pixels))
    return batches


@torch.no_grad()
def _val_loss(model: FlowMapModel, sources: list[TrainSource], batches, cfg: TrainConfig) -> float:
    """Mean FlowMap loss of ``model`` on the fixed validation windows (NaN without any)."""
    losses = []
    for i, start, window, pixels, loss_pixels in batches:
        src = sources[i]
        model.image_size = src.image_size
        dev = src.data.images.device
        out = model(src.data, start, start + window, pixels.to(dev))
        loss = window_losses(out, src.data, start, start + window, loss_pixels.to(dev), cfg.optim.objective, True)["loss"]
        if torch.isfinite(loss):
            losses.append(float(loss))
    return float(np.mean(losses)) if losses else math.nan


def train(
    train_paths: list[Path],
    out: Path,
    cfg: TrainConfig | None = None,
    val_paths: list[Path] | None = None,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train the depth network and the weight MLP across videos; write the weights to ``out``.

    Args:
        train_paths: videos or image folders to train on (at least one).
        out: the weights file to write (``.pt``); its model card and loss curve go beside it.
        cfg: settings (default :class:`TrainConfig`).
        val_paths: held-back videos for the validation loss (none: no validation).
        device: torch device.
        resume: continue from the loop state in ``OUT.cache/`` (same sources and settings).
        progress: show progress bars.
        command: the command line, recorded in the model card.
        stop_after: testing aid: raise KeyboardInterrupt after this many steps (the loop
            state of that step has been written when ``checkpoint_every`` divides it).

    Returns:
        :class:`TrainResult`.

    Raises:
        InputError: no sources, a missing or unreadable source, an output that is not a
            ``.pt`` path or lies below a file, a bad setting (:func:`flowmap.validate.validate_train`),
            another process writing ``out``.
        OutputError: the weights or the cache cannot be written (disk full, permissions).
        NumericalError: more than ``cfg.max_bad_steps`` non-finite steps.
    """
    cfg = cfg or TrainConfig()
    out = Path(out)
    val_paths = list(val_paths or [])
    validate_train(list(train_paths), val_paths, out, cfg)
    with lock_out(out):
        return _train_locked(list(train_paths), out, cfg, val_paths, device, resume, progress, command, stop_after)


def _train_locked(
    train_paths: list[Path],
    out: Path,
    cfg: TrainConfig,
    val_paths: list[Path],
    device: str,
    resume: bool,
    progress: bool,
    command: str | None,
    stop_after: int | None,
) -> TrainResult:
    """:func:`train` once its settings are valid and ``out`` is locked."""
    names = source_names([*train_paths, *val_paths])
    cache = out.parent / f"{out.name}.cache"
    fresh = not cache.exists()
    t_prep = time.perf_counter()
    try:
        sources = prepare_sources(train_paths, names[: len(train_paths)], cfg, cache, device, progress)
        val_sources = prepare_sources(val_paths, names[len(train_paths) :], cfg, cache, device, progress)
    except FlowmapError:
        if fresh:  # a bad source leaves nothing behind (a cache kept for --resume stays)
            shutil.rmtree(cache, ignore_errors=True)
        raise
    prep_s = time.perf_counter() - t_prep

    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = FlowMapModel(cfg.optim.depth, cfg.optim.weights, cfg.optim.focal, sources[0].image_size).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = cfg.schedule()
    val_batches = _val_batches(val_sources, cfg)
    history: list[dict] = []
    warnings: list[str] = []
    lr_scale, bad_steps, first_step, train_s = 1.0, 0, 0, 0.0

    run_id = fingerprint(cfg, [s.name for s in sources], [s.data.n for s in sources], [s.name for s in val_sources])
    state_path = cache / STATE_NAME
    state = load_checkpoint(state_path, run_id, warnings) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        history = list(state["history"])
        lr_scale, bad_steps, first_step, train_s = state["lr_scale"], state["bad_steps"], state["step"], state["train_s"]
        prep_s += state.get("prepare_s", 0.0)  # the first session computed the correspondences

    arch = architecture(cfg.optim.depth, cfg.optim.weights)

    def meta(step: int) -> dict:
        return {
            "train_sources": [s.name for s in sources],
            "val_sources": [s.name for s in val_sources],
            "frames": {s.name: s.data.n for s in sources + val_sources},
            "steps_done": step,
            "steps": cfg.steps,
            "train_s": train_s,
            "prepare_s": prep_s,
            "device": device,
            "threads": torch.get_num_threads(),
            "torch": str(torch.__version__),
            "python": platform.python_version(),
            "command": command,
            "settings": asdict(cfg),
            "history": history,
        }

    def save(step: int) -> None:
        save_checkpoint(
            state_path,
            {
                "fingerprint": run_id,
                "step": step,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "generator": generator.get_state(),
                "history": history,
                "lr_scale": lr_scale,
                "bad_steps": bad_steps,
                "train_s": train_s,
                "prepare_s": prep_s,
            },
        )
        save_weights(out, model.depth_net, model.weight_net, arch, meta(step))

    bar = tqdm(range(first_step, cfg.steps), initial=first_step, total=cfg.steps, desc="training",
               disable=not progress, dynamic_ncols=True)
    smooth = None
    for step in bar:
        t0 = time.perf_counter()
        i = int(torch.randint(0, len(sources), (1,), generator=generator))
        src = sources[i]
        model.image_size = src.image_size  # the focal candidates are in this video's pixels
        factor = lr_factor(step, schedule) * lr_scale
        for group in opt.param_groups:
            group["lr"] = cfg.lr * factor
        _, losses = window_step(model, src.data, cfg.optim.window, cfg.optim, generator, True)
        if not descend(opt, model, losses["loss"]):
            bad_steps += 1
            lr_scale *= 0.5
            warnings.append(f"step {step} ({src.name}): non-finite loss or gradient, step skipped and learning rate halved")
            if bad_steps > cfg.max_bad_steps:
                raise NumericalError(f"the training diverged ({bad_steps} non-finite steps); try a lower --lr or another --seed")
        else:
            value = float(losses["loss"].detach())
            smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        train_s += time.perf_counter() - t0
        last = step == cfg.steps - 1
        validate = bool(val_batches) and ((step + 1) % cfg.val_every == 0 or last or step == 0)
        if step % cfg.log_every == 0 or last or validate:
            entry = {"step": step, "source": src.name, "lr": cfg.lr * factor,
                     **{k: float(losses[k].detach()) for k in ("loss", "flow", "tracks") if k in losses}}
            if validate:
                entry["val"] = _val_loss(model, val_sources, val_batches, cfg)
            history.append(entry)
            bar.set_postfix(loss=f"{smooth or math.nan:.4f}", **({"val": f"{entry['val']:.4f}"} if "val" in entry else {}))
        if (step + 1) % cfg.checkpoint_every == 0 and not last:
            save(step + 1)
        if stop_after is not None and step + 1 >= stop_after and not last:
            raise KeyboardInterrupt
    save(cfg.steps)
    write_model_card(out, meta(cfg.steps))
    state_path.unlink(missing_ok=True)
    return TrainResult(out, history, train_s, warnings)


def card_paths(weights: Path) -> tuple[Path, Path]:
    """The model card (``.md``) and loss curve (``-loss.png``) beside a weights file."""
    weights = Path(weights)
    return weights.with_suffix(".md"), weights.with_name(weights.stem + "-loss.png")


def write_model_card(weights: Path, meta: dict) -> None:
    """Write the model card and the loss-curve plot beside ``weights`` (both atomically).

    The card lists the folders trained on and held back, the steps, the time, the
    command that rebuilds the checkpoint, the settings and the loss curve (as a table
    and as a plot).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    card, plot = card_paths(weights)
    hist = meta["history"]
    steps = np.array([h["step"] for h in hist])
    loss = np.array([h["loss"] for h in hist])
    val = [(h["step"], h["val"]) for h in hist if "val" in h]

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if len(loss):
        k = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, label=f"training (mean of {k} logged steps)")
    if val:
        ax.plot(*zip(*val), "o-", label="validation (held-back videos)")
    ax.set_xlabel("step")
    ax.set_ylabel("FlowMap loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(weights.name)
    fig.tight_layout()
    atomic_write(plot, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)

    blocks = max(1, len(hist) // 20)
    rows = []
    for b in range(0, len(hist), blocks):
        chunk = hist[b : b + blocks]
        vals = [h["val"] for h in chunk if "val" in h]
        rows.append(
            f"| {chunk[0]['step']}-{chunk[-1]['step']} | {np.mean([h['loss'] for h in chunk]):.4f} | "
            + (f"{vals[-1]:.4f}" if vals else "") + " |"
        )
    frames = meta["frames"]
    text = "\n".join(
        [
            f"# Model card: {weights.name}",
            "",
            (
                "Depth network and correspondence-weight MLP of flowmap, trained across videos with the "
                "self-supervised FlowMap loss (`flowmap train`; FlowCam's idea, METHOD.md sections 5 and 7). "
                "No poses, intrinsics or depth were used."
            ),
            "",
            "## Data",
            "",
            f"- Trained on {len(meta['train_sources'])} folders: "
            + ", ".join(f"`{n}` ({frames[n]} frames)" for n in meta["train_sources"]),
            "- Held back for the validation loss: "
            + (", ".join(f"`{n}` ({frames[n]} frames)" for n in meta["val_sources"]) or "none"),
            "",
            "## Training",
            "",
            f"- Steps: {meta['steps_done']} (one random window of one random video per step)",
            (
                f"- Time: {meta['train_s']:.0f} s of steps, {meta['prepare_s']:.0f} s decoding and correspondences; "
                f"device {meta['device']}, {meta['threads']} thread(s), torch {meta['torch']}, Python {meta['python']}"
            ),
            f"- Rebuild: `{meta['command']}`" if meta.get("command") else "- Rebuild: see the settings below",
            f"- Final training loss (mean of the last 100 logged steps): {np.mean(loss[-100:]):.4f}" if len(loss) else "",
            f"- Final validation loss: {val[-1][1]:.4f}" if val else "",
            "",
            f"## Loss curve (plot: `{plot.name}`)",
            "",
            "| steps | training loss (mean) | validation loss (last) |",
            "| --- | --- | --- |",
            *rows,
            "",
            "## Settings",
            "",
            "```json",
            json.dumps(meta["settings"], indent=1, default=str),
            "```",
            "",
        ]
    )
    atomic_write(card, lambda tmp: Path(tmp).write_text(text))
