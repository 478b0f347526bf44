"""Procedural synthetic scene with a known camera path (for ``flowmap demo`` and tests).

A closed box room (floor, ceiling, four walls) holds a few boxes and spheres at
different depths, so a moving camera sees strong parallax and occlusion, and every
ray hits a surface (no sky, depth is defined everywhere). Frames are rendered by
analytic ray casting in NumPy:

* Geometry: planes, spheres and boxes rotated about the vertical axis; a ray
  ``o + t d`` with ``d = R K^-1 (u, v, 1)`` has ``t`` equal to the z-depth of the hit.
* Appearance: a solid (3D) texture per primitive, a function of the world hit point
  only (value noise at four octaves mixed into a distinct colour per primitive),
  times a fixed Lambertian term. The same surface
  point therefore has the same colour in every view (brightness constancy), which
  is what optical flow assumes. Images are anti-aliased with 2 x 2 supersampling;
  depth is the z-depth at the pixel centre.
* Cameras: OpenCV axes (x right, y down, z forward), ``c2w`` 4 x 4 float64; the
  world has y up and the floor at y = 0. Pixel centres follow OpenCV (centre of
  pixel column ``i`` at ``u = i``), the principal point is the image centre
  ``((W - 1) / 2, (H - 1) / 2)``, and the focal length follows from the diagonal
  field of view.

Ray-primitive intersections and the box signed distance are textbook formulas
(e.g. Shirley & Marschner, "Fundamentals of Computer Graphics", ch. 4; Quilez,
"distance functions", iquilezles.org).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from flowmap.errors import InputError
from flowmap.io import atomic_dir
from flowmap.layout import write_intrinsics, write_poses

PATHS = ("orbit", "forward", "sideways")
"""Camera paths accepted by :func:`make_scene`."""

SCENE_CENTRE = np.array([0.0, 0.5, 0.0])
"""World point (y up, metres-like units) the orbit turns around and looks at."""

ROOM_MIN = np.array([-4.5, 0.0, -2.5])
ROOM_MAX = np.array([4.5, 4.0, 7.5])
"""Corners of the closed room (world units); all camera paths stay inside it."""

LIGHT_DIR = np.array([0.35, 0.85, 0.4]) / np.linalg.norm([0.35, 0.85, 0.4])
"""Direction towards the fixed directional light (world, unit length)."""

SOURCE = "flowmap synthetic scene"
"""The ``source`` entry of the written ``intrinsics.json``."""


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------


def _apply(M: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(3, R) = M (3, 3) @ p (3, R), as three broadcast products (BLAS is slow on these shapes)."""
    return M[:, 0, None] * p[0] + M[:, 1, None] * p[1] + M[:, 2, None] * p[2]


def _dot(v: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(R,) = v (3,) . p (3, R)."""
    return v[0] * p[0] + v[1] * p[1] + v[2] * p[2]


# Primitives work on points and directions in (3, R) layout (one contiguous row per
# coordinate), which is several times faster in NumPy than (R, 3).


@dataclass(frozen=True)
class Plane:
    """Half-space boundary ``{p : normal . p = offset}``; ``normal`` points into free space."""

    normal: np.ndarray  # (3,) unit
    offset: float

    def bounds(self) -> None:
        """No bounding sphere (infinite)."""
        return None

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Ray parameter ``t`` (R,) of rays ``origin (3,) + t dirs (3, R)`` (inf: no hit)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (self.offset - origin @ self.normal) / _dot(self.normal, dirs)
        return np.where(t > 0.0, t, np.inf)  # nan (parallel) compares False

    def normals(self, points: np.ndarray) -> np.ndarray:
        """(3, R) unit normals (into free space) at surface points (3, R)."""
        return np.broadcast_to(self.normal[:, None], points.shape)

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """(R,) signed distance of points (3, R), positive in free space."""
        return _dot(self.normal, points) - self.offset


@dataclass(frozen=True)
class Sphere:
    """Solid sphere."""

    centre: np.ndarray  # (3,)
    radius: float

    def bounds(self) -> tuple[np.ndarray, float]:
        """Bounding sphere (centre (3,), radius)."""
        return self.centre, self.radius

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Nearest positive ray parameter ``t`` (R,) of rays ``origin (3,) + t dirs (3, R)`` (inf: no hit).

        Solves ``a t^2 + 2 h t + c = 0`` with the cancellation-free root pair
        ``q = -(h + sign(h) sqrt(h^2 - a c))``, ``t = q / a, c / q``.
        """
        oc = origin - self.centre
        a = _dot(dirs, dirs)
        half_b = _dot(oc, dirs)
        c = oc @ oc - self.radius**2
        disc = half_b**2 - a * c
        hit = disc >= 0.0
        q = -(half_b + np.copysign(np.sqrt(np.where(hit, disc, 0.0)), half_b))
        with np.errstate(divide="ignore", invalid="ignore"):
            t0, t1 = q / a, c / q
        near, far = np.minimum(t0, t1), np.maximum(t0, t1)
        t = np.where(near > 0.0, near, far)
        return np.where(hit & (t > 0.0), t, np.inf)

    def normals(self, points: np.ndarray) -> np.ndarray:
        """(3, R) outward unit normals at surface points (3, R)."""
        return (points - self.centre[:, None]) / self.radius

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """(R,) signed distance of points (3, R), positive outside."""
        return np.linalg.norm(points - self.centre[:, None], axis=0) - self.radius


@dataclass(frozen=True)
class Box:
    """Solid box with half extents ``half_size``, rotated by ``yaw`` radians about world y."""

    centre: np.ndarray  # (3,)
    half_size: np.ndarray  # (3,)
    yaw: float

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) box-to-world rotation."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])

    def bounds(self) -> tuple[np.ndarray, float]:
        """Bounding sphere (centre (3,), radius)."""
        return self.centre, float(np.linalg.norm(self.half_size))

    def _local(self, points: np.ndarray) -> np.ndarray:
        """(3, R) box coordinates R^T (p - c) of world points (3, R)."""
        return _apply(self.rotation.T, points - self.centre[:, None])

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Nearest positive ray parameter ``t`` (R,) by the slab method (inf: no hit)."""
        o = self.rotation.T @ (origin - self.centre)
        d = _apply(self.rotation.T, dirs)
        t_near = np.full(dirs.shape[1], -np.inf)
        t_far = np.full(dirs.shape[1], np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            for axis in range(3):
                inv = 1.0 / d[axis]
                t_a = (-self.half_size[axis] - o[axis]) * inv
                t_b = (self.half_size[axis] - o[axis]) * inv
                np.fmax(t_near, np.minimum(t_a, t_b), out=t_near)
                np.fmin(t_far, np.maximum(t_a, t_b), out=t_far)
        t = np.where(t_near > 0.0, t_near, t_far)
        return np.where((t_near <= t_far) & (t > 0.0), t, np.inf)

    def normals(self, points: np.ndarray) -> np.ndarray:
        """(3, R) outward unit normals at surface points (3, R): the face the point is on."""
        local = self._local(points) / self.half_size[:, None]
        axis = np.argmax(np.abs(local), axis=0)
        cols = np.arange(local.shape[1])
        n_local = np.zeros_like(local)
        n_local[axis, cols] = np.sign(local[axis, cols])
        return _apply(self.rotation, n_local)

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """(R,) exact signed distance of points (3, R), positive outside."""
        q = np.abs(self._local(points)) - self.half_size[:, None]
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=0)
        inside = np.minimum(q.max(axis=0), 0.0)
        return outside + inside


Primitive = Plane | Sphere | Box


@dataclass(frozen=True)
class SolidTexture:
    """Colour as a function of the 3D point (value noise), the same from every view.

    Each octave ``o`` is a random lattice sampled with trilinear interpolation (value
    noise; Perlin, "An image synthesizer", SIGGRAPH 1985; Ebert et al., "Texturing and
    Modeling", ch. 2) at ``rotations[o] @ p * frequencies[o]``, periodic over the
    lattice; then ``rgb = 0.5 + 0.45 tanh(base + sum_o mixing[o] noise_o(p))``.

    Attributes:
        lattices: (O, G, G, G) float32 random values, zero mean, unit variance.
        rotations: (O, 3, 3) random rotations (hide the lattice axes).
        frequencies: (O,) lattice cells per world unit.
        mixing: (O, 3) RGB amplitude of each octave.
        base: (3,) RGB offset (the primitive's dominant colour, before tanh).
    """

    lattices: np.ndarray
    rotations: np.ndarray
    frequencies: np.ndarray
    mixing: np.ndarray
    base: np.ndarray

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """(3, R) float32 RGB in [0.05, 0.95] at world points (3, R)."""
        raw = np.broadcast_to(self.base.astype(np.float32)[:, None], points.shape).copy()
        octaves = zip(self.lattices, self.rotations, self.frequencies, self.mixing, strict=True)
        for lattice, rotation, frequency, mixing in octaves:
            coords = _apply(rotation * frequency, points)
            noise = map_coordinates(lattice, coords, order=1, mode="grid-wrap", prefilter=False)
            raw += mixing.astype(np.float32)[:, None] * noise
        return 0.5 + 0.45 * np.tanh(raw)


@dataclass(frozen=True)
class SceneGeometry:
    """The primitives of the scene and their solid textures (same order).

    ``primitives[i]`` is textured by ``textures[i]``; the ids returned by
    :func:`cast_rays` index both.
    """

    primitives: tuple[Primitive, ...]
    textures: tuple[SolidTexture, ...]

    def signed_distances(self, points: np.ndarray) -> np.ndarray:
        """(P, R) signed distance of world points (R, 3) to every primitive (positive: free space)."""
        p = np.ascontiguousarray(np.asarray(points, dtype=np.float64).T)
        return np.stack([prim.signed_distance(p) for prim in self.primitives])


# Dominant colours (before tanh) of the primitives, chosen to be distinct.
_PALETTE = np.array(
    [
        [0.3, 0.1, -0.4],  # floor: warm
        [-0.2, -0.1, 0.2],  # ceiling
        [-0.4, 0.0, 0.5],  # back wall: blue
        [0.0, 0.4, -0.2],  # front wall: green
        [0.5, -0.2, 0.1],  # left wall: red
        [-0.3, 0.3, 0.3],  # right wall: teal
        [0.8, 0.4, -0.6],  # box: orange
        [-0.6, 0.6, -0.4],  # pillar: green
        [0.6, -0.5, 0.6],  # low box: magenta
        [0.0, -0.3, 0.9],  # sphere: blue
        [0.9, 0.8, -0.2],  # sphere: yellow
        [-0.5, -0.5, -0.5],  # sphere: dark
    ]
)


def _room() -> list[Plane]:
    planes = []
    for axis in range(3):
        e = np.eye(3)[axis]
        planes.append(Plane(normal=e, offset=float(ROOM_MIN[axis])))  # n.p >= min
        planes.append(Plane(normal=-e, offset=-float(ROOM_MAX[axis])))  # -n.p >= -max
    # Order: floor, ceiling, back, front, left, right (matches _PALETTE).
    x_min, x_max, y_min, y_max, z_min, z_max = planes
    return [y_min, y_max, z_min, z_max, x_min, x_max]


def _texture(rng: np.random.Generator, base: np.ndarray, scale: float) -> SolidTexture:
    # Four octaves, from blobs of about a unit to detail of about 0.05 unit (3-6 px at
    # the typical distances; ``scale`` halves it on the floor, seen at grazing angles,
    # so the 2 x 2 supersampling does not alias). Each octave mostly modulates
    # brightness (shared weight) with some colour (own weights); amplitudes fall slowly
    # with frequency so every scale carries contrast for coarse-to-fine flow.
    frequencies = scale * np.array([1.5, 4.0, 9.0, 18.0]) * rng.uniform(0.9, 1.1, 4)
    size = 32
    lattices = rng.normal(size=(frequencies.size, size, size, size)).astype(np.float32)
    rotations = Rotation.random(frequencies.size, random_state=rng).as_matrix()
    amplitude = (frequencies / frequencies.min()) ** -0.25
    brightness = rng.uniform(0.7, 1.0, frequencies.size)
    mixing = (brightness[:, None] + 0.4 * rng.normal(size=(frequencies.size, 3))) * amplitude[:, None] * 0.9
    return SolidTexture(lattices=lattices, rotations=rotations, frequencies=frequencies, mixing=mixing, base=base)


def make_geometry(seed: int = 0) -> SceneGeometry:
    """The scene: a closed room with three boxes and three spheres at different depths.

    Args:
        seed: jitters object positions (by up to 0.15 units) and draws the textures.

    Returns:
        SceneGeometry with 12 primitives: floor, ceiling, back, front, left, right
        wall, then 3 boxes and 3 spheres resting on the floor, within about 2 units
        of ``SCENE_CENTRE``.
    """
    rng = np.random.default_rng(seed)

    def jitter(c: list[float]) -> np.ndarray:
        j = rng.uniform(-0.15, 0.15, 3)
        j[1] = 0.0  # keep objects resting on the floor
        return np.asarray(c, dtype=np.float64) + j

    objects: list[Primitive] = [
        Box(centre=jitter([-0.9, 0.4, 0.3]), half_size=np.array([0.4, 0.4, 0.4]), yaw=0.35),
        Box(centre=jitter([1.2, 0.9, -1.0]), half_size=np.array([0.25, 0.9, 0.25]), yaw=-0.25),
        Box(centre=jitter([0.3, 0.15, 1.4]), half_size=np.array([0.5, 0.15, 0.3]), yaw=0.6),
        Sphere(centre=jitter([0.35, 0.55, -0.3]), radius=0.55),
        Sphere(centre=jitter([-1.6, 0.35, -1.4]), radius=0.35),
        Sphere(centre=jitter([1.6, 0.3, 1.0]), radius=0.3),
    ]
    primitives = tuple(_room() + objects)
    scales = [0.5] + [1.0] * (len(primitives) - 1)  # floor first
    textures = tuple(_texture(rng, _PALETTE[i], scales[i]) for i in range(len(primitives)))
    return SceneGeometry(primitives=primitives, textures=textures)


def cast_rays(geometry: SceneGeometry, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of rays ``origin + t dirs``.

    Args:
        geometry: the scene.
        origin: (3,) world ray origin (the camera centre), shared by all rays.
        dirs: (3, R) world ray directions (any length; with ``R K^-1 (u, v, 1)`` the
            returned ``t`` is the z-depth).

    Returns:
        t: (R,) float64 ray parameter of the nearest hit (inf where nothing is hit,
            which cannot happen from inside the room).
        ids: (R,) int64 index of the primitive hit (into ``geometry.primitives``).
    """
    n = dirs.shape[1]
    t_best = np.full(n, np.inf)
    ids = np.zeros(n, dtype=np.int64)
    length_sq = _dot(dirs, dirs)
    for i, prim in enumerate(geometry.primitives):
        bounds = prim.bounds()
        if bounds is None:
            t = prim.intersect(origin, dirs)
            closer = t < t_best
            t_best[closer], ids[closer] = t[closer], i
            continue
        # Only rays through the bounding sphere (distance of its centre to the ray
        # line <= radius, centre in front) can hit the object.
        centre, radius = bounds
        oc = centre - origin
        along = _dot(oc, dirs)
        candidates = np.flatnonzero((along > 0.0) & (oc @ oc - along**2 / length_sq <= (radius * 1.001) ** 2))
        if candidates.size == 0:
            continue
        t = prim.intersect(origin, dirs[:, candidates])
        closer = t < t_best[candidates]
        sel = candidates[closer]
        t_best[sel], ids[sel] = t[closer], i
    return t_best, ids


def shade(geometry: SceneGeometry, points: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(3, R) float32 RGB in [0, 1] of surface points (3, R) of primitives ``ids`` (R,).

    Solid texture times a static Lambertian term ``0.45 + 0.55 max(0, n . l)``:
    view-independent, so a surface point has the same colour in every frame.
    """
    rgb = np.empty(points.shape, dtype=np.float32)
    for i, (prim, tex) in enumerate(zip(geometry.primitives, geometry.textures, strict=True)):
        sel = np.flatnonzero(ids == i)
        if sel.size == 0:
            continue
        p = points[:, sel]
        lambert = 0.45 + 0.55 * np.clip(_dot(LIGHT_DIR, prim.normals(p)), 0.0, None)
        rgb[:, sel] = tex(p) * lambert.astype(np.float32)
    return rgb


# ---------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 1.0, 0.0])) -> np.ndarray:
    """(4, 4) float64 c2w of a camera at ``eye`` looking at ``target``, OpenCV axes.

    Camera z is the viewing direction, x = (-up) x z points right and y = z x x points
    down (towards ``-up``) in the image.
    """
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(-up, z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def camera_path(n_frames: int, path: str = "orbit") -> np.ndarray:
    """(N, 4, 4) float64 c2w (OpenCV axes) of a smooth camera path through the room.

    Paths (the extent is fixed, so fewer frames mean larger steps):
        orbit: 36 degrees of arc at radius 4 around ``SCENE_CENTRE`` at about 1.1 units
            above it, with a 0.15-unit vertical bob, looking at the centre.
        forward: 2 units of travel towards the scene with a small sideways sway,
            looking at the centre.
        sideways: 2.4 units of travel along world x at fixed orientation (pure
            translation).

    Raises:
        InputError: unknown ``path`` or ``n_frames < 2``.
    """
    if n_frames < 2:
        raise InputError(f"synthetic scene needs at least 2 frames, got {n_frames}; pass n_frames >= 2")
    if path not in PATHS:
        raise InputError(f"unknown synthetic camera path {path!r}; use one of {', '.join(PATHS)}")
    s = np.linspace(0.0, 1.0, n_frames)
    centre = SCENE_CENTRE
    poses = []
    for si in s:
        if path == "orbit":
            angle = math.radians(-18.0 + 36.0 * si)
            bob = 0.15 * math.sin(2.0 * math.pi * si)
            eye = centre + np.array([4.0 * math.sin(angle), 1.1 + bob, 4.0 * math.cos(angle)])
            poses.append(look_at(eye, centre))
        elif path == "forward":
            eye = np.array([0.3 * math.sin(math.pi * si), 1.5 - 0.2 * si, 5.5 - 2.0 * si])
            poses.append(look_at(eye, centre))
        else:
            c2w = look_at(np.array([0.0, 1.4, 4.5]), centre)
            c2w[:3, 3] += np.array([-1.2 + 2.4 * si, 0.0, 0.0])
            poses.append(c2w)
    return np.stack(poses)


def intrinsics(height: int, width: int, fov_deg: float = 60.0) -> np.ndarray:
    """(3, 3) float64 pinhole K in pixels, OpenCV pixel centres.

    The focal length gives a *diagonal* field of view of ``fov_deg``:
    ``f = 0.5 sqrt(W^2 + H^2) / tan(fov / 2)`` (60 degrees: f = 1.08 max(H, W) at
    4:3); principal point at the image centre ``((W - 1) / 2, (H - 1) / 2)``.
    """
    f = 0.5 * math.hypot(width, height) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _pixel_rays(K: np.ndarray, c2w: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(3, R) world directions ``R_c2w K^-1 (u, v, 1)`` of pixel positions u, v (R,).

    The camera-space z of each direction is 1, so the ray parameter of a hit is its
    z-depth.
    """
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    return _apply(c2w[:3, :3], np.stack([x, y, np.ones_like(x)]))


def render(
    geometry: SceneGeometry, c2w: np.ndarray, K: np.ndarray, height: int, width: int, supersample: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Render one frame by ray casting.

    Args:
        geometry: the scene.
        c2w: (4, 4) camera-to-world, OpenCV axes.
        K: (3, 3) intrinsics in pixels, OpenCV pixel centres (pixel column i has its
            centre at u = i).
        height, width: image size in pixels.
        supersample: s x s rays per pixel on a regular sub-pixel grid, averaged
            (box filter) for the colour.

    Returns:
        image: (H, W, 3) uint8 RGB.
        depth: (H, W) float32 z-depth of the ray through the pixel centre.
    """
    v, u = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    u, v = u.ravel(), v.ravel()
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    du, dv = (o.ravel() for o in np.meshgrid(offsets, offsets, indexing="xy"))
    # One batch: the pixel centres (for depth), then every sub-pixel sample (for colour).
    u_all = np.concatenate([u, (u[None] + du[:, None]).ravel()])
    v_all = np.concatenate([v, (v[None] + dv[:, None]).ravel()])
    dirs = _pixel_rays(K, c2w, u_all, v_all)
    origin = c2w[:3, 3]
    t, ids = cast_rays(geometry, origin, dirs)
    n = u.size
    depth = t[:n].reshape(height, width).astype(np.float32)
    points = origin[:, None] + t[n:] * dirs[:, n:]
    rgb = shade(geometry, points, ids[n:]).reshape(3, supersample**2, n).mean(axis=1)
    image = np.clip(np.rint(rgb.T * 255.0), 0, 255).astype(np.uint8).reshape(height, width, 3)
    return image, depth


@dataclass(frozen=True)
class SyntheticScene:
    """Rendered frames with their ground truth.

    Attributes:
        images: (N, H, W, 3) uint8 RGB frames.
        c2w: (N, 4, 4) float64 camera-to-world, OpenCV axes (x right, y down, z forward).
        K: (3, 3) float64 intrinsics in pixels (OpenCV pixel centres), shared.
        depth: (N, H, W) float32 z-depth at the pixel centres, world units.
        names: N image names ``000000.png`` ...
    """

    images: np.ndarray
    c2w: np.ndarray
    K: np.ndarray
    depth: np.ndarray
    names: list[str]


def make_scene(
    n_frames: int = 24,
    height: int = 192,
    width: int = 256,
    seed: int = 0,
    path: str = "orbit",
    fov_deg: float = 60.0,
) -> SyntheticScene:
    """Render the synthetic scene along a camera path.

    Deterministic for a given set of arguments. At the defaults neighbouring frames
    are a few pixels apart (up to about 10 px of flow), like a video.

    Args:
        n_frames: number of frames (>= 2) along the fixed-extent path.
        height, width: image size in pixels (>= 8 each).
        seed: object jitter and textures (see :func:`make_geometry`).
        path: "orbit", "forward" or "sideways" (see :func:`camera_path`).
        fov_deg: diagonal field of view in degrees, in (10, 150).

    Returns:
        SyntheticScene (images, c2w, K, depth, names).

    Raises:
        InputError: bad size, field of view, frame count or path name.
    """
    if height < 8 or width < 8:
        raise InputError(f"synthetic image size must be at least 8 x 8 pixels, got {height} x {width}")
    if not 10.0 < fov_deg < 150.0:
        raise InputError(f"synthetic field of view must be between 10 and 150 degrees, got {fov_deg}")
    c2w = camera_path(n_frames, path)
    K = intrinsics(height, width, fov_deg)
    geometry = make_geometry(seed)
    rendered = [render(geometry, pose, K, height, width) for pose in c2w]
    return SyntheticScene(
        images=np.stack([r[0] for r in rendered]),
        c2w=c2w,
        K=K,
        depth=np.stack([r[1] for r in rendered]),
        names=[f"{i:06d}.png" for i in range(n_frames)],
    )


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _is_previous_sequence(directory: Path) -> bool:
    try:
        return json.loads((directory / "intrinsics.json").read_text()).get("source") == SOURCE
    except (OSError, ValueError, AttributeError):
        return False


def write_sequence(scene: SyntheticScene, directory: Path | str) -> Path:
    """Write the scene in the layout of the test sequences (``shared/data/*/``).

    Writes ``directory/images/000000.png ...``, ``poses.txt`` (header line, then
    ``name tx ty tz qx qy qz qw``, camera-to-world, OpenCV axes, quaternion in x y z w
    order) and ``intrinsics.json`` (``width height fx fy cx cy`` in pixels and
    ``"source": "flowmap synthetic scene"``). Everything goes to a temporary folder
    next to ``directory`` that is renamed at the end, so nothing is half-written. An
    existing synthetic sequence at ``directory`` is replaced.

    Returns:
        ``directory``.

    Raises:
        InputError: ``directory`` exists and is not empty and not a synthetic sequence.
    """
    directory = Path(directory)
    occupied = directory.exists() and (not directory.is_dir() or any(directory.iterdir()))
    if occupied and not _is_previous_sequence(directory):
        raise InputError(f"{directory} exists and is not a flowmap synthetic sequence; choose a new or empty folder")
    with atomic_dir(directory) as tmp:
        (tmp / "images").mkdir()
        for name, image in zip(scene.names, scene.images, strict=True):
            if not cv2.imwrite(str(tmp / "images" / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {tmp / 'images' / name}")
        write_poses(tmp / "poses.txt", list(scene.names), scene.c2w)
        H, W = scene.images.shape[1:3]
        write_intrinsics(tmp / "intrinsics.json", scene.K, W, H, SOURCE)
    return directory
