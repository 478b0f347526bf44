"""Pretrained weights of the depth network and the correspondence-weight MLP.

A weights file is what ``flowmap train`` writes and ``flowmap run --init`` reads: the
state of :class:`~flowmap.model.depth.DepthNet` and
:class:`~flowmap.model.weights.CorrespondenceWeights` trained across videos with the
FlowMap loss (FlowCam's idea, METHOD.md sections 5 and 7), with the architecture it
was built for, :data:`WEIGHTS_FORMAT`, and what it was trained on. It holds tensors and
plain data only, so it loads with ``torch.load(weights_only=True)``. The package ships
one, ``flowmap/checkpoints/default.pt`` (``--init default``), trained by this project on
``../shared/train`` only, with its model card ``default.md`` beside it.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import torch

from flowmap.errors import InputError
from flowmap.io import atomic_write
from flowmap.model.depth import DepthNetConfig
from flowmap.model.weights import WeightMLPConfig

__all__ = [
    "WEIGHTS_FORMAT", "Pretrained", "architecture", "check_tensors", "default_path", "load_pretrained",
    "network_shapes", "resolve_init", "save_weights",
]

WEIGHTS_FORMAT = 1
"""Version of the weights file's layout; a file of another version is refused with one line."""

_KIND = "flowmap-weights"


def architecture(depth: DepthNetConfig, weights: WeightMLPConfig) -> dict:
    """The network settings a weights file must match, as plain (JSON) data."""
    return json.loads(json.dumps({"depth": asdict(depth), "weights": asdict(weights)}))


def default_path() -> Path:
    """The checkpoint shipped inside the package (``--init default``)."""
    return Path(str(resources.files("flowmap") / "checkpoints" / "default.pt"))


@dataclass
class Pretrained:
    """Loaded weights.

    Attributes:
        depth_net, weight_net: state dicts of the two networks.
        digest: SHA-256 (16 hex) of the file: part of a run's checkpoint fingerprint.
        path: where they were read from.
        meta: what the file says about its training (sources, steps, losses).
    """

    depth_net: dict
    weight_net: dict
    digest: str
    path: Path
    meta: dict = field(default_factory=dict)

    def apply(self, depth_net: torch.nn.Module, weight_net: torch.nn.Module) -> None:
        """Load the weights into the two networks (in place)."""
        depth_net.load_state_dict(self.depth_net)
        weight_net.load_state_dict(self.weight_net)


def save_weights(
    path: Path | str, depth_net: torch.nn.Module, weight_net: torch.nn.Module, arch: dict, meta: dict | None = None
) -> None:
    """Write the two networks' weights to ``path`` atomically (tensors on the CPU).

    Args:
        path: the weights file (``.pt``).
        depth_net, weight_net: the networks.
        arch: :func:`architecture` of their settings.
        meta: plain data about the training (sources, steps, time, losses).
    """

    def cpu(module: torch.nn.Module) -> dict:
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    state = {
        "kind": _KIND,
        "format": WEIGHTS_FORMAT,
        "architecture": arch,
        "depth_net": cpu(depth_net),
        "weight_net": cpu(weight_net),
        "meta": json.loads(json.dumps(meta or {}, default=str)),  # plain data: loads with weights_only=True
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_pretrained(path: Path | str, depth: DepthNetConfig, weights: WeightMLPConfig) -> Pretrained:
    """Read a weights file for networks of the given settings.

    Args:
        path: the file written by ``flowmap train`` (or :func:`save_weights`).
        depth, weights: the settings of the networks it must fit.

    Returns:
        :class:`Pretrained`.

    Raises:
        InputError (one line): a missing or unreadable file, a file that is not flowmap
            weights (e.g. a run's resume checkpoint), another format version, another
            architecture, or damaged weights (a tensor missing, of another shape, or
            not finite: :func:`check_tensors`).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--init {path}: no such file; give a checkpoint written by flowmap train, 'default' or 'none'")
    blob = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (pickle, zip, EOF errors: one line, never a traceback)
        raise InputError(
            f"--init {path}: cannot be read as a checkpoint ({type(exc).__name__}); give a file written by flowmap train"
        ) from None
    if not isinstance(state, dict) or state.get("kind") != _KIND:
        raise InputError(f"--init {path}: not a flowmap weights file; give a file written by flowmap train")
    if state.get("format") != WEIGHTS_FORMAT:
        raise InputError(
            f"--init {path}: weights of format {state.get('format')}, this flowmap reads format {WEIGHTS_FORMAT}; "
            "retrain it with this version's flowmap train, or use --init default"
        )
    expected = architecture(depth, weights)
    if state.get("architecture") != expected:
        raise InputError(
            f"--init {path}: the checkpoint's network ({_describe(state.get('architecture'))}) differs from this run's "
            f"({_describe(expected)}); use a checkpoint trained with the same network settings"
        )
    for key, expected_shapes in network_shapes(depth, weights).items():
        check_tensors(path, key, state.get(key), expected_shapes)
    digest = hashlib.sha256(blob).hexdigest()[:16]
    return Pretrained(state["depth_net"], state["weight_net"], digest, path, dict(state.get("meta") or {}))


def network_shapes(depth: DepthNetConfig, weights: WeightMLPConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """Name -> shape of every tensor of the two networks of these settings (what a
    weights file must hold, under the keys ``depth_net`` and ``weight_net``)."""
    from flowmap.model.depth import DepthNet
    from flowmap.model.weights import CorrespondenceWeights

    nets = {"depth_net": DepthNet(depth), "weight_net": CorrespondenceWeights(depth.feature_dim, weights)}
    return {key: {name: tuple(t.shape) for name, t in net.state_dict().items()} for key, net in nets.items()}


def check_tensors(path: Path, key: str, tensors, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise one line unless ``tensors`` holds exactly the tensors ``shapes`` names, each of
    that shape and finite (a damaged file fails here, not in ``load_state_dict`` or an SVD)."""
    fix = "retrain it with flowmap train (or --resume the training), or use --init default"
    if not isinstance(tensors, dict):
        raise InputError(f"--init {path}: the file holds no {key} weights; {fix}")
    missing = sorted(set(shapes) - set(tensors))
    extra = sorted(set(tensors) - set(shapes))
    if missing or extra:
        names = ", ".join((missing or extra)[:3])
        raise InputError(f"--init {path}: {key} {'lacks' if missing else 'has unknown'} tensors ({names}); {fix}")
    for name, shape in shapes.items():
        value = tensors[name]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise InputError(f"--init {path}: {key}.{name} has shape {got}, expected {shape}; {fix}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(f"--init {path}: {key}.{name} holds NaN or infinite values; {fix}")


def _describe(arch) -> str:
    if not isinstance(arch, dict):
        return "unknown"
    d = arch.get("depth", {})
    return f"channels {d.get('channels')}, features {d.get('feature_dim')}, downsample {d.get('net_downsample')}"


def resolve_init(init: str | Path | None, depth: DepthNetConfig, weights: WeightMLPConfig) -> Pretrained | None:
    """``--init``: "none" (or None) -> None; "default" -> the shipped checkpoint; else a path.

    Raises:
        InputError: see :func:`load_pretrained`; "default" when the package lacks its
            checkpoint (a broken install).
    """
    if init is None or str(init) == "none":
        return None
    if str(init) == "default":
        path = default_path()
        if not path.is_file():
            raise InputError(
                f"the shipped checkpoint {path} is missing (a broken install?); reinstall flowmap or use --init none"
            )
        return load_pretrained(path, depth, weights)
    return load_pretrained(Path(init), depth, weights)
