"""Rendering workload: a vectorised ray tracer in PyTorch, rendered in chunks, encoded to MP4.

The kernel traces every pixel of a frame at once with tensor operations (ray-sphere and
ray-plane intersection, sun and emitter shadow rays, mirror and glossy reflections, jittered
antialiasing samples), so the same code runs on CPU and CUDA. The scene is a few spheres of
different materials on a ground plane under a sky, seen from a camera orbiting it; all of
it follows from a seed.

Fan-out renders frame ranges (``plan_chunks`` -> ``render_chunk``) into verified units of
PNGs; fan-in (``encode_video``) checks the chunks form the whole sequence and writes an H.264
MP4 plus a contact sheet.

Determinism: random numbers come from an integer hash of (seed, frame, sample, pixel), never
from global RNG state, so a frame does not depend on batching or on which device traced it.
The float32 kernel uses only correctly rounded operations (+ - * / sqrt, min, comparisons),
whose results do not depend on the CPU's vector instruction set; the one transcendental step,
gamma, runs in float64 so its last-bit differences cannot change an 8-bit pixel. A CPU frame
is therefore bit-for-bit reproducible (the tests pin one by SHA-256); a CUDA frame is close
to it but not identical.

torch, numpy, Pillow and imageio are imported inside the functions that need them, so a DAG
file importing this module stays cheap to parse.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import operator
import random
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fanout.compute import available_cpus, torch_device
from fanout.errors import BadInputError
from fanout.storage import sha256_file

if TYPE_CHECKING:
    import numpy as np
    import torch

    from fanout.storage import ArtifactStore

FRAME_NAME = "frame-{:05d}.png"
_FRAME_RE = re.compile(r"^frame-(\d{5})\.png$")
VIDEO_NAME = "render.mp4"
CONTACT_SHEET_NAME = "contact_sheet.png"

MAX_FRAMES = 99_999  # five digits in the frame file name
MAX_SIDE = 8192
MAX_SAMPLES = 4096
MAX_SEED = 2**32 - 1  # the jitter hash works on 32-bit words

# -- scene constants -----------------------------------------------------------------------
MAX_BOUNCES = 3
"""Path segments per camera ray: the primary hit plus two reflections."""
_HIT_EPS = 1e-3  # minimum ray distance, so a ray does not hit the surface it leaves
_SURFACE_OFFSET = 2e-3  # secondary rays start this far along the normal
_FOG_DISTANCE = 40.0
_GROUND_REFLECTIVITY = 0.08
_TEXTURE_HALF_SIZE = 3.6  # the texture covers [-h, h] x [-h, h] of the ground (x, z)
_TEXTURE_BORDER = 0.08
_SUN_ANGULAR_RADIUS = math.radians(2.5)  # > 0 gives soft shadow edges
_FOV_Y = math.radians(45.0)
_CAMERA_TARGET = (0.0, 0.8, 0.0)
# Rays traced at once: bounds peak memory (temporaries take a few hundred bytes per ray).
_RAYS_PER_BATCH = {"cpu": 1 << 18, "cuda": 1 << 21}

_U32 = 0xFFFFFFFF

# matplotlib's viridis at 0, 0.1, ..., 1 (sRGB), for texture values.
_VIRIDIS = (
    (0.267004, 0.004874, 0.329415),
    (0.282623, 0.140926, 0.457517),
    (0.253935, 0.265254, 0.529983),
    (0.206756, 0.371758, 0.553117),
    (0.163625, 0.471133, 0.558148),
    (0.127568, 0.566949, 0.550556),
    (0.134692, 0.658636, 0.517649),
    (0.266941, 0.748751, 0.440573),
    (0.477504, 0.821444, 0.318195),
    (0.741388, 0.873449, 0.149561),
    (0.993248, 0.906157, 0.143936),
)


def _linear(srgb: tuple[float, ...]) -> tuple[float, ...]:
    """Display colours are written in sRGB; shading happens in linear light."""
    return tuple(c**2.2 for c in srgb)


_SKY_ZENITH = _linear((0.30, 0.50, 0.88))
_SKY_HORIZON = _linear((0.86, 0.90, 0.97))
_SKY_AMBIENT = _linear((0.45, 0.52, 0.62))
_SUN_COLOR = (2.0, 1.85, 1.6)  # linear, > 1: direct sun outshines the sky
_CHECKER_LIGHT = _linear((0.82, 0.82, 0.80))
_CHECKER_DARK = _linear((0.30, 0.32, 0.36))
_TEXTURE_BORDER_COLOR = _linear((0.08, 0.08, 0.09))
_BLACK = (0.0, 0.0, 0.0)


# -- validation ----------------------------------------------------------------------------
def _check_int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high], else BadInputError naming the parameter."""
    if isinstance(value, bool):
        raise BadInputError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise BadInputError(f"{name} must be an integer, got {value!r}") from None
    if not low <= value <= high:
        raise BadInputError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def _check_render_params(n_frames: Any, width: Any, height: Any, samples: Any, seed: Any) -> dict:
    return {
        "n_frames": _check_int("n_frames", n_frames, 1, MAX_FRAMES),
        "width": _check_int("width", width, 1, MAX_SIDE),
        "height": _check_int("height", height, 1, MAX_SIDE),
        "samples": _check_int("samples", samples, 1, MAX_SAMPLES),
        "seed": _check_int("seed", seed, 0, MAX_SEED),
    }


def _check_texture(texture: Any) -> np.ndarray | None:
    """The texture as a C-contiguous float32 array, or BadInputError naming ``texture``."""
    import numpy as np

    if texture is None:
        return None
    try:
        array = np.asarray(texture, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"texture must be a 2-D float array: {exc}") from None
    if array.ndim != 2 or min(array.shape) < 2:
        raise BadInputError(f"texture must be a 2-D array of at least 2x2, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise BadInputError("texture contains NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise BadInputError(f"texture values must lie in [0, 1], got [{low:.4g}, {high:.4g}]")
    return np.ascontiguousarray(np.clip(array, 0.0, 1.0))


def _texture_digest(texture: np.ndarray | None) -> str | None:
    if texture is None:
        return None
    digest = hashlib.sha256(repr(texture.shape).encode())
    digest.update(texture.tobytes())
    return digest.hexdigest()


def _resolve_device(device: Any) -> torch.device:
    """None or 'auto'/'cpu'/'cuda' go through the project setting; 'cuda:1' or a device pass through."""
    import torch

    if device is None or device in ("auto", "cpu", "cuda"):
        return torch_device(device)
    return torch.device(device)


# -- random numbers ------------------------------------------------------------------------
def _pcg(x):
    """PCG hash of 32-bit words (Jarzynski & Olano 2020); works on Python ints and int64 tensors.

    The multipliers are below 2**31, so products of 32-bit words fit int64 without overflow.
    """
    state = (x * 747796405 + 2891336453) & _U32
    word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) & _U32
    return (word >> 22) ^ word


def _stream_key(seed: int, frame_index: int, sample: int, dimension: int) -> int:
    """One 32-bit key per (seed, frame, sample, random dimension), mixed on the host."""
    key = _pcg(seed & _U32)
    for part in (frame_index, sample, dimension):
        key = _pcg((key + part) & _U32)
    return key


def _uniform(pixel_ids: torch.Tensor, key: int) -> torch.Tensor:
    """A float32 in [0, 1) per pixel id, a pure function of (pixel id, key)."""
    import torch

    bits = _pcg((_pcg((pixel_ids + key) & _U32) + key) & _U32)
    return (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))


class _Randoms:
    """Random dimensions for one sample of one frame; dimension numbers are fixed per use."""

    def __init__(self, seed: int, frame_index: int, sample: int):
        self.seed, self.frame_index, self.sample = seed, frame_index, sample

    def __call__(self, pixel_ids: torch.Tensor, dimension: int) -> torch.Tensor:
        return _uniform(pixel_ids, _stream_key(self.seed, self.frame_index, self.sample, dimension))

    def vector(self, pixel_ids: torch.Tensor, first_dimension: int) -> torch.Tensor:
        """Three uniforms in [-1, 1) per pixel, as an (N, 3) tensor."""
        import torch

        return torch.stack([self(pixel_ids, first_dimension + k) * 2 - 1 for k in range(3)], dim=1)


# Random dimensions: 0-1 pixel jitter, then per bounce: sun (2), emitter point (3), gloss (3).
_DIM_PIXEL = 0
_DIMS_PER_BOUNCE = 8


# -- small vector helpers ------------------------------------------------------------------
# Dot products are spelled out as three products and two sums: a fixed evaluation order keeps
# CPU results bit-identical whatever the thread count or SIMD width.
def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / _dot(v, v).clamp(min=1e-20).sqrt()[..., None]


def _py_normalize(v: tuple[float, float, float]) -> tuple[float, float, float]:
    length = math.sqrt(sum(c * c for c in v))
    return (v[0] / length, v[1] / length, v[2] / length)


def _py_cross(a, b) -> tuple[float, float, float]:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


# -- scene ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SphereSpec:
    """One sphere: geometry and material (colours linear, reflectivity in [0, 1])."""

    center: tuple[float, float, float]
    radius: float
    material: str  # diffuse | metal | mirror | emitter
    albedo: tuple[float, float, float]
    reflectivity: float
    gloss: float  # 0 is a perfect mirror; larger blurs the reflection
    emission: tuple[float, float, float]


@dataclass(frozen=True)
class SceneSpec:
    """Everything the seed decides, as plain Python values."""

    spheres: tuple[SphereSpec, ...]
    sun_direction: tuple[float, float, float]  # unit vector towards the sun
    camera_phase: float  # radians where the orbit starts


def make_scene(seed: int) -> SceneSpec:
    """The scene for ``seed``: a mirror sphere, coloured spheres around it, a hovering light."""
    seed = _check_int("seed", seed, 0, MAX_SEED)
    # random.Random's stream is stable across Python versions, unlike numpy's legacy RNGs.
    rng = random.Random(seed)

    def colour(saturation: tuple[float, float], value: tuple[float, float]) -> tuple[float, ...]:
        rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value))
        return _linear(rgb)

    spheres = [
        SphereSpec((0.0, 1.0, 0.0), 1.0, "mirror", (0.92, 0.92, 0.92), 0.85, 0.0, (0.0, 0.0, 0.0)),
    ]
    materials = ["diffuse", "diffuse", "diffuse", "metal", "mirror"]
    rng.shuffle(materials)
    base_angle = rng.uniform(0, 2 * math.pi)
    for i, material in enumerate(materials):
        for _attempt in range(100):
            radius = rng.uniform(0.35, 0.7)
            angle = base_angle + 2 * math.pi * (i + rng.uniform(-0.2, 0.2)) / len(materials)
            distance = rng.uniform(2.0, 3.2)
            center = (distance * math.cos(angle), radius, distance * math.sin(angle))
            if all(math.dist(center, s.center) > radius + s.radius + 0.1 for s in spheres):
                break
        if material == "diffuse":
            spheres.append(
                SphereSpec(center, radius, material, colour((0.55, 0.85), (0.7, 0.95)), 0.0, 0.0, _BLACK)
            )
        elif material == "metal":
            tint = colour((0.3, 0.6), (0.85, 1.0))
            spheres.append(SphereSpec(center, radius, material, tint, 0.75, 0.12, _BLACK))
        else:
            spheres.append(SphereSpec(center, radius, material, (0.9, 0.9, 0.9), 0.9, 0.0, _BLACK))

    # The light hovers between two of the ring spheres, above their tops.
    angle = base_angle + 2 * math.pi * (rng.randrange(len(materials)) + 0.5) / len(materials)
    distance = rng.uniform(1.8, 2.6)
    warm = _linear(colorsys.hsv_to_rgb(rng.uniform(0.05, 0.12), 0.45, 1.0))
    spheres.append(
        SphereSpec(
            (distance * math.cos(angle), rng.uniform(1.9, 2.5), distance * math.sin(angle)),
            0.3,
            "emitter",
            (0.0, 0.0, 0.0),
            0.0,
            0.0,
            tuple(12.0 * c for c in warm),
        )
    )

    elevation = math.radians(rng.uniform(35, 55))
    azimuth = rng.uniform(0, 2 * math.pi)
    sun = (
        math.cos(elevation) * math.cos(azimuth),
        math.sin(elevation),
        math.cos(elevation) * math.sin(azimuth),
    )
    return SceneSpec(tuple(spheres), sun, rng.uniform(0, 2 * math.pi))


def camera_pose(frame_index: int, n_frames: int, phase: float = 0.0) -> tuple[tuple, tuple]:
    """(eye, target) for a frame: one smooth orbit that dollies in and rises, looping seamlessly."""
    t = frame_index / n_frames
    turn = 2 * math.pi * t
    angle = phase + turn
    radius = 8.5 - 1.5 * math.sin(turn) ** 2
    height = 1.3 + 2.4 * (0.5 - 0.5 * math.cos(turn))
    eye = (radius * math.cos(angle), height, radius * math.sin(angle))
    return eye, _CAMERA_TARGET


@dataclass(frozen=True)
class _Scene:
    """A SceneSpec as tensors on the render device."""

    centers: torch.Tensor  # (S, 3)
    radii_sq: torch.Tensor  # (S,)
    radii: torch.Tensor  # (S,)
    albedo: torch.Tensor  # (S, 3)
    reflectivity: torch.Tensor  # (S,)
    gloss: torch.Tensor  # (S,)
    emission: torch.Tensor  # (S, 3)
    emitter: int
    emitter_center: torch.Tensor  # (3,)
    emitter_radius: float
    emitter_emission: torch.Tensor  # (3,)
    sun: torch.Tensor  # (3,) unit vector
    sun_u: torch.Tensor  # (3,) two unit vectors across the sun direction, for soft shadows
    sun_v: torch.Tensor
    sun_color: torch.Tensor
    sky_zenith: torch.Tensor
    sky_horizon: torch.Tensor
    sky_ambient: torch.Tensor
    checker_light: torch.Tensor
    checker_dark: torch.Tensor
    border_color: torch.Tensor
    colormap: torch.Tensor  # (K, 3) linear
    texture: torch.Tensor | None  # (rows, cols) in [0, 1]
    spec: SceneSpec
    device: torch.device


def _to_device(spec: SceneSpec, texture: np.ndarray | None, device: torch.device) -> _Scene:
    import torch

    def vec(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)

    spheres = spec.spheres
    emitter = next(i for i, s in enumerate(spheres) if s.material == "emitter")
    sun = spec.sun_direction
    # Any vector not parallel to the sun gives a basis across it.
    sun_u = _py_normalize(_py_cross(sun, (0.0, 0.0, 1.0) if abs(sun[2]) < 0.9 else (1.0, 0.0, 0.0)))
    sun_v = _py_cross(sun, sun_u)
    spread = math.tan(_SUN_ANGULAR_RADIUS)
    return _Scene(
        centers=vec([s.center for s in spheres]),
        radii_sq=vec([s.radius**2 for s in spheres]),
        radii=vec([s.radius for s in spheres]),
        albedo=vec([s.albedo for s in spheres]),
        reflectivity=vec([s.reflectivity for s in spheres]),
        gloss=vec([s.gloss for s in spheres]),
        emission=vec([s.emission for s in spheres]),
        emitter=emitter,
        emitter_center=vec(spheres[emitter].center),
        emitter_radius=spheres[emitter].radius,
        emitter_emission=vec(spheres[emitter].emission),
        sun=vec(sun),
        sun_u=vec([c * spread for c in sun_u]),
        sun_v=vec([c * spread for c in sun_v]),
        sun_color=vec(_SUN_COLOR),
        sky_zenith=vec(_SKY_ZENITH),
        sky_horizon=vec(_SKY_HORIZON),
        sky_ambient=vec(_SKY_AMBIENT),
        checker_light=vec(_CHECKER_LIGHT),
        checker_dark=vec(_CHECKER_DARK),
        border_color=vec(_TEXTURE_BORDER_COLOR),
        colormap=vec([_linear(c) for c in _VIRIDIS]),
        texture=None if texture is None else torch.from_numpy(texture).to(device),
        spec=spec,
        device=device,
    )


# -- the kernel ----------------------------------------------------------------------------
def _sky(scene: _Scene, directions: torch.Tensor) -> torch.Tensor:
    """Radiance arriving from the sky along unit ``directions``: gradient, sun disc and glow."""
    up = directions[:, 1].clamp(0.0, 1.0).sqrt()[:, None]
    colour = scene.sky_horizon * (1 - up) + scene.sky_zenith * up
    cos_sun = _dot(directions, scene.sun[None])
    glow = ((cos_sun - 0.9) * 10).clamp(0.0, 1.0)
    glow = glow * glow
    glow = glow * glow  # a fourth power without pow(), see the module docstring
    disc = (cos_sun > math.cos(_SUN_ANGULAR_RADIUS)).to(directions.dtype)
    return colour + scene.sun_color * (0.25 * glow + 20.0 * disc)[:, None]


def _sphere_distances(scene: _Scene, origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """(N, S) distance along each ray to each sphere; inf where the ray misses it."""
    import torch

    offset = origins[:, None, :] - scene.centers[None]
    half_b = _dot(offset, directions[:, None, :])
    c = _dot(offset, offset) - scene.radii_sq[None]
    discriminant = half_b * half_b - c
    root = discriminant.clamp(min=0).sqrt()
    near, far = -half_b - root, -half_b + root
    distance = torch.where(near > _HIT_EPS, near, far)
    return torch.where((discriminant > 0) & (distance > _HIT_EPS), distance, torch.inf)


def _intersect(
    scene: _Scene, origins: torch.Tensor, directions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest hit per ray: (distance, object) with object -1 for a miss, S for the ground."""
    import torch

    n_spheres = scene.radii.shape[0]
    sphere_t, sphere_id = _sphere_distances(scene, origins, directions).min(dim=1)
    down = directions[:, 1] < -1e-6
    ground_t = torch.where(down, -origins[:, 1] / torch.where(down, directions[:, 1], -1.0), torch.inf)
    ground_t = torch.where(ground_t > _HIT_EPS, ground_t, torch.inf)
    on_ground = ground_t < sphere_t
    distance = torch.where(on_ground, ground_t, sphere_t)
    obj = torch.where(on_ground, n_spheres, sphere_id)
    return distance, torch.where(torch.isinf(distance), -1, obj)


def _occluded(
    scene: _Scene,
    origins: torch.Tensor,
    directions: torch.Tensor,
    max_distance: torch.Tensor | float,
    skip: int | None = None,
) -> torch.Tensor:
    """Whether a sphere blocks each shadow ray before ``max_distance``.

    The ground is left out: every light is above it and every shadow ray starts above it.
    """
    distance = _sphere_distances(scene, origins, directions)
    if skip is not None:
        distance[:, skip] = float("inf")
    if not isinstance(max_distance, float):
        max_distance = max_distance[:, None]
    return (distance < max_distance).any(dim=1)


def _colormap(scene: _Scene, values: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear viridis for values in [0, 1]."""
    steps = scene.colormap.shape[0] - 1
    position = values * steps
    lower = position.floor().clamp(0, steps - 1)
    weight = (position - lower)[:, None]
    index = lower.long()
    return scene.colormap[index] * (1 - weight) + scene.colormap[index + 1] * weight


def _sample_texture(texture: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup at u (columns) and v (rows), both in [0, 1]."""
    rows, cols = texture.shape
    x = u.clamp(0, 1) * (cols - 1)
    y = v.clamp(0, 1) * (rows - 1)
    x0 = x.floor().clamp(0, cols - 2)
    y0 = y.floor().clamp(0, rows - 2)
    wx, wy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    top = texture[y0, x0] * (1 - wx) + texture[y0, x0 + 1] * wx
    bottom = texture[y0 + 1, x0] * (1 - wx) + texture[y0 + 1, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def _ground_albedo(scene: _Scene, points: torch.Tensor) -> torch.Tensor:
    """Checkerboard; with a texture, the colour-mapped texture on a framed square in the middle.

    Texture row 0 lies at z = -h and column 0 at x = -h (h = _TEXTURE_HALF_SIZE).
    """
    import torch

    x, z = points[:, 0], points[:, 2]
    odd = (x.floor() + z.floor()).remainder(2) > 0.5
    albedo = torch.where(odd[:, None], scene.checker_dark, scene.checker_light)
    if scene.texture is None:
        return albedo
    half = _TEXTURE_HALF_SIZE
    extent = torch.maximum(x.abs(), z.abs())
    framed = extent < half + _TEXTURE_BORDER
    albedo = torch.where(framed[:, None], scene.border_color, albedo)
    inside = extent < half
    if inside.any():
        u = (x[inside] + half) / (2 * half)
        v = (z[inside] + half) / (2 * half)
        values = _sample_texture(scene.texture, u, v)
        albedo[inside] = _colormap(scene, values)
    return albedo


def _trace(
    scene: _Scene,
    origins: torch.Tensor,
    directions: torch.Tensor,
    pixel_ids: torch.Tensor,
    randoms: _Randoms,
) -> torch.Tensor:
    """Linear radiance (N, 3) along camera rays, following mirror bounces up to MAX_BOUNCES."""
    import torch

    n_spheres = scene.radii.shape[0]
    radiance = torch.zeros(origins.shape, dtype=torch.float32, device=origins.device)
    throughput = torch.ones(origins.shape, dtype=torch.float32, device=origins.device)
    row = torch.arange(origins.shape[0], device=origins.device)  # each live ray's slot in radiance
    up = torch.tensor([0.0, 1.0, 0.0], device=origins.device)

    for bounce in range(MAX_BOUNCES):
        distance, obj = _intersect(scene, origins, directions)
        missed = obj < 0
        if missed.any():
            radiance.index_add_(0, row[missed], throughput[missed] * _sky(scene, directions[missed]))
        # Only rays that hit something go on; dropping the rest keeps later bounces cheap.
        hit = ~missed
        row, origins, directions, throughput = row[hit], origins[hit], directions[hit], throughput[hit]
        distance, obj, ids = distance[hit], obj[hit], pixel_ids[hit]
        if row.numel() == 0:
            break

        points = origins + directions * distance[:, None]
        on_ground = obj == n_spheres
        sphere = obj.clamp(max=n_spheres - 1)
        normal = (points - scene.centers[sphere]) / scene.radii[sphere][:, None]
        normal = torch.where(on_ground[:, None], up, normal)
        albedo = scene.albedo[sphere]
        if on_ground.any():
            albedo[on_ground] = _ground_albedo(scene, points[on_ground])
        reflectivity = torch.where(on_ground, _GROUND_REFLECTIVITY, scene.reflectivity[sphere])
        gloss = torch.where(on_ground, 0.0, scene.gloss[sphere])
        emission = torch.where(on_ground[:, None], 0.0, scene.emission[sphere])
        # Metals tint their reflection; the ground and mirrors reflect white.
        tint = torch.where((reflectivity > 0.5)[:, None], albedo, 1.0)
        start = points + normal * _SURFACE_OFFSET
        dims = _DIM_PIXEL + 2 + bounce * _DIMS_PER_BOUNCE

        # Sun: a random direction inside its disc gives soft shadow edges.
        sun = (
            scene.sun[None]
            + (randoms(ids, dims) * 2 - 1)[:, None] * scene.sun_u
            + (randoms(ids, dims + 1) * 2 - 1)[:, None] * scene.sun_v
        )
        sun = _normalize(sun)
        sun_cos = _dot(normal, sun).clamp(min=0)
        sun_lit = ~_occluded(scene, start, sun, float("inf"))
        light = scene.sun_color * (sun_cos * sun_lit)[:, None]

        # Emitter sphere: a random point on it; irradiance falls off as r^2 / d^2.
        target = scene.emitter_center + scene.emitter_radius * _normalize(randoms.vector(ids, dims + 2))
        to_light = target - start
        light_dist_sq = _dot(to_light, to_light)
        light_dist = light_dist_sq.clamp(min=1e-12).sqrt()
        light_dir = to_light / light_dist[:, None]
        emitter_cos = _dot(normal, light_dir).clamp(min=0)
        emitter_lit = ~_occluded(scene, start, light_dir, light_dist - _HIT_EPS, skip=scene.emitter)
        falloff = (scene.emitter_radius**2 / light_dist_sq).clamp(max=1.0)
        light = light + scene.emitter_emission * (emitter_cos * falloff * emitter_lit)[:, None]

        # Sky light from the hemisphere, unoccluded: a cheap stand-in for global illumination.
        light = light + scene.sky_ambient * (0.6 + 0.4 * normal[:, 1])[:, None]

        # Distance fog blends far surfaces into the horizon colour (no pow/exp, see docstring).
        ratio = distance / _FOG_DISTANCE
        fog = (ratio * ratio / (1 + ratio * ratio))[:, None]
        surface = albedo * light * (1 - reflectivity)[:, None] + emission
        radiance.index_add_(0, row, throughput * (surface * (1 - fog) + scene.sky_horizon * fog))

        bounces = reflectivity > 0
        if not bounces.any():
            break
        mirror = directions - 2 * _dot(directions, normal)[:, None] * normal
        weight = throughput * (1 - fog) * tint * reflectivity[:, None]
        if bounce == MAX_BOUNCES - 1:
            # Out of bounces: what the mirror would show next is approximated by the sky.
            radiance.index_add_(0, row[bounces], (weight * _sky(scene, mirror))[bounces])
            break
        blurred = _normalize(mirror + gloss[:, None] * randoms.vector(ids, dims + 5))
        # A glossy direction that dips under the surface falls back to the mirror direction.
        directions = torch.where((_dot(blurred, normal) > 0)[:, None], blurred, mirror)
        row, origins, directions = row[bounces], start[bounces], directions[bounces]
        throughput, pixel_ids = weight[bounces], ids[bounces]
    return radiance


def _render_linear(scene: _Scene, frame_index: int, params: dict) -> torch.Tensor:
    """Mean linear radiance per pixel, (height, width, 3) float32 on the scene's device."""
    import torch

    n_frames, width, height = params["n_frames"], params["width"], params["height"]
    samples, seed = params["samples"], params["seed"]

    device = scene.device
    eye, target = camera_pose(frame_index, n_frames, scene.spec.camera_phase)
    forward = _py_normalize(tuple(t - e for t, e in zip(target, eye, strict=True)))
    right = _py_normalize(_py_cross(forward, (0.0, 1.0, 0.0)))
    up = _py_cross(right, forward)
    half_h = math.tan(_FOV_Y / 2)
    half_w = half_h * width / height
    eye_t = torch.tensor(eye, dtype=torch.float32, device=device)
    forward_t, right_t, up_t = (
        torch.tensor(axis, dtype=torch.float32, device=device) for axis in (forward, right, up)
    )

    n_pixels = width * height
    batch = _RAYS_PER_BATCH.get(device.type, _RAYS_PER_BATCH["cpu"])
    total = torch.zeros(n_pixels, 3, dtype=torch.float32, device=device)
    for sample in range(samples):
        randoms = _Randoms(seed, frame_index, sample)
        for first in range(0, n_pixels, batch):
            ids = torch.arange(first, min(first + batch, n_pixels), device=device)
            col = (ids % width).to(torch.float32) + randoms(ids, _DIM_PIXEL)
            row = (ids // width).to(torch.float32) + randoms(ids, _DIM_PIXEL + 1)
            sx = (col * (2.0 / width) - 1) * half_w
            sy = (1 - row * (2.0 / height)) * half_h
            directions = _normalize(forward_t + sx[:, None] * right_t + sy[:, None] * up_t)
            origins = eye_t.expand_as(directions)
            total[first : first + ids.numel()] += _trace(scene, origins, directions, ids, randoms)
    return (total / samples).reshape(height, width, 3)


def _to_srgb8(linear: torch.Tensor) -> torch.Tensor:
    """Clamp, gamma 2.2 in float64 (see the module docstring), round to uint8 on the CPU."""
    import torch

    encoded = linear.to(torch.float64).clamp(0.0, 1.0) ** (1 / 2.2)
    return (encoded * 255 + 0.5).floor().to(torch.uint8).cpu()


def render_frame(
    frame_index: int,
    *,
    n_frames: int,
    width: int,
    height: int,
    samples: int,
    seed: int,
    texture: np.ndarray | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Ray-trace frame ``frame_index`` of ``n_frames``: an (height, width, 3) uint8 tensor on the CPU.

    ``samples`` jittered rays per pixel are averaged (antialiasing, soft shadows, glossy
    reflections); cost grows with width * height * samples. ``texture`` (2-D, values in
    [0, 1]) is colour-mapped onto a square of the ground; None leaves the checkerboard.
    """
    params = _check_render_params(n_frames, width, height, samples, seed)
    frame_index = _check_int("frame_index", frame_index, 0, params["n_frames"] - 1)
    scene = _to_device(make_scene(params["seed"]), _check_texture(texture), _resolve_device(device))
    return _render_frame(scene, frame_index, params)


def _render_frame(scene: _Scene, frame_index: int, params: dict) -> torch.Tensor:
    import torch

    with torch.inference_mode():
        return _to_srgb8(_render_linear(scene, frame_index, params))


# -- fan-out -------------------------------------------------------------------------------
def plan_chunks(n_frames: int, chunk_size: int) -> list[dict]:
    """Split frames 0..n_frames-1 into consecutive ranges of at most ``chunk_size``.

    Returns [{"chunk": i, "start": s, "stop": e}, ...] (stop exclusive), ready for task mapping.
    """
    n_frames = _check_int("n_frames", n_frames, 1, MAX_FRAMES)
    chunk_size = _check_int("chunk_size", chunk_size, 1, MAX_FRAMES)
    return [
        {"chunk": i, "start": start, "stop": min(start + chunk_size, n_frames)}
        for i, start in enumerate(range(0, n_frames, chunk_size))
    ]


def _frames_checksum(digests: dict[str, str]) -> str:
    """One SHA-256 over the frames' names and file digests, in frame order."""
    combined = hashlib.sha256()
    for name in sorted(digests):
        combined.update(f"{name} {digests[name]}\n".encode())
    return combined.hexdigest()


def render_chunk(
    store: ArtifactStore,
    out_unit: str,
    *,
    start: int,
    stop: int,
    n_frames: int,
    width: int,
    height: int,
    samples: int,
    seed: int,
    texture: np.ndarray | None = None,
    device: str | torch.device | None = None,
) -> dict:
    """Render frames [start, stop) to ``out_unit/frame-NNNNN.png`` and commit the unit.

    A unit already verified with the same parameters (texture included) is skipped; one that
    is unverified (a frame missing or altered) or was rendered with other parameters is
    rendered again. Returns a JSON-able summary for XCom.
    """
    from PIL import Image

    began = time.perf_counter()
    params = _check_render_params(n_frames, width, height, samples, seed)
    params["start"] = _check_int("start", start, 0, params["n_frames"] - 1)
    params["stop"] = _check_int("stop", stop, params["start"] + 1, params["n_frames"])
    texture = _check_texture(texture)
    params["texture_sha256"] = _texture_digest(texture)

    manifest = store.verified(out_unit)
    if manifest is not None and manifest.get("params") == params:
        return _chunk_summary(out_unit, manifest, seconds=time.perf_counter() - began, skipped=True)

    import torch

    torch.set_num_threads(available_cpus())
    resolved = _resolve_device(device)
    scene = _to_device(make_scene(params["seed"]), texture, resolved)
    store.invalidate(out_unit)  # a crash while rewriting must not leave the old commit trusted
    digests = {}
    for frame_index in range(params["start"], params["stop"]):
        image = _render_frame(scene, frame_index, params)
        name = FRAME_NAME.format(frame_index)
        with store.staged(f"{out_unit}/{name}", suffix=".png") as tmp:
            Image.fromarray(image.numpy()).save(tmp, format="PNG")
            digests[name] = sha256_file(tmp)
    seconds = time.perf_counter() - began
    manifest = store.commit(
        out_unit,
        sorted(digests),
        kind="render_chunk",
        params=params,
        checksum=_frames_checksum(digests),
        device=str(resolved),
        render_seconds=round(seconds, 3),
    )
    return _chunk_summary(out_unit, manifest, seconds=seconds, skipped=False)


def _chunk_summary(out_unit: str, manifest: dict, *, seconds: float, skipped: bool) -> dict:
    params = manifest["params"]
    return {
        "out_unit": out_unit,
        "start": params["start"],
        "stop": params["stop"],
        "frames": params["stop"] - params["start"],
        "width": params["width"],
        "height": params["height"],
        "samples": params["samples"],
        "seconds": round(seconds, 3),
        "device": manifest["device"],
        "checksum": manifest["checksum"],
        "skipped": skipped,
    }


# -- fan-in --------------------------------------------------------------------------------
def _ranges(numbers: list[int]) -> str:
    """'0-3, 7, 9-10' for a sorted list, so a message about missing frames stays short."""
    parts, first = [], None
    for i, n in enumerate(numbers):
        if first is None:
            first = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(str(first) if first == n else f"{first}-{n}")
            first = None
    return ", ".join(parts)


def _collect_frames(store: ArtifactStore, chunk_units: list[str]) -> tuple[dict, list[str], dict]:
    """Check the chunks and return (shared params, frame paths in order, {unit: checksum})."""
    if isinstance(chunk_units, str) or not chunk_units:
        raise BadInputError(f"chunk_units must be a non-empty list of units, got {chunk_units!r}")
    shared: dict | None = None
    owner: dict[int, str] = {}
    sources: dict[str, str] = {}
    for unit in chunk_units:
        manifest = store.verified(unit)
        if manifest is None or manifest.get("kind") != "render_chunk":
            raise BadInputError(f"chunk {unit!r} is missing or not verified (no intact render_chunk commit)")
        params = {k: v for k, v in manifest["params"].items() if k not in ("start", "stop")}
        if shared is None:
            shared = params
        elif params != shared:
            raise BadInputError(f"chunk {unit!r} was rendered with {params}, other chunks with {shared}")
        for name in manifest["files"]:
            match = _FRAME_RE.match(name)
            if match is None:
                continue
            index = int(match[1])
            if index in owner:
                raise BadInputError(f"frame {index} is in two chunks: {owner[index]!r} and {unit!r}")
            owner[index] = unit
        sources[unit] = manifest["checksum"]
    n_frames = shared["n_frames"]
    missing = sorted(set(range(n_frames)) - owner.keys())
    if missing:
        raise BadInputError(
            f"frames {_ranges(missing)} of {n_frames} are in none of chunk_units (a chunk is missing)"
        )
    stray = sorted(owner.keys() - set(range(n_frames)))
    if stray:
        raise BadInputError(f"frames {_ranges(stray)} lie outside 0..{n_frames - 1}")
    paths = [f"{owner[i]}/{FRAME_NAME.format(i)}" for i in range(n_frames)]
    return shared, paths, sources


def _contact_sheet(thumbnails: list[tuple[int, Any]], columns: int = 6):
    """A grid of (frame index, thumbnail image) with the frame number on each."""
    from PIL import Image, ImageDraw, ImageFont

    pad = 4
    thumb_w, thumb_h = thumbnails[0][1].size
    columns = min(columns, len(thumbnails))
    rows = math.ceil(len(thumbnails) / columns)
    sheet = Image.new("RGB", (pad + columns * (thumb_w + pad), pad + rows * (thumb_h + pad)), (24, 24, 28))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for slot, (index, thumb) in enumerate(thumbnails):
        x = pad + (slot % columns) * (thumb_w + pad)
        y = pad + (slot // columns) * (thumb_h + pad)
        sheet.paste(thumb, (x, y))
        label = f"{index:05d}"
        box = draw.textbbox((x + 2, y + 1), label, font=font)
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
        draw.text((x + 2, y + 1), label, fill=(255, 255, 255), font=font)
    return sheet


def encode_video(
    store: ArtifactStore,
    chunk_units: list[str],
    out_unit: str,
    *,
    fps: float = 24,
    max_thumbnails: int = 36,
    thumbnail_width: int = 160,
) -> dict:
    """Fan-in: check the chunks form frames 0..n-1, encode ``render.mp4`` and a contact sheet.

    Every chunk must be verified and rendered with the same parameters, and together they
    must hold each frame exactly once; otherwise BadInputError names the problem. The video
    is H.264 in yuv420p (odd frame sizes are padded by one edge pixel to even). A unit
    already committed from the same chunks and fps is skipped. Returns a JSON-able summary.
    """
    import imageio_ffmpeg
    import numpy as np
    from PIL import Image

    began = time.perf_counter()
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps <= 240:
        raise BadInputError(f"fps must be a number in (0, 240], got {fps!r}")
    max_thumbnails = _check_int("max_thumbnails", max_thumbnails, 1, 1000)
    thumbnail_width = _check_int("thumbnail_width", thumbnail_width, 8, MAX_SIDE)
    params, paths, sources = _collect_frames(store, chunk_units)
    n_frames, width, height = params["n_frames"], params["width"], params["height"]

    manifest = store.verified(out_unit)
    if manifest is not None and manifest.get("sources") == sources and manifest.get("fps") == fps:
        return _video_summary(out_unit, manifest, store, seconds=time.perf_counter() - began, skipped=True)

    store.invalidate(out_unit)
    even_w, even_h = width + width % 2, height + height % 2
    picks = {round(i * (n_frames - 1) / max(max_thumbnails - 1, 1)) for i in range(max_thumbnails)}
    thumb_w = min(thumbnail_width, width)
    thumb_h = max(1, round(height * thumb_w / width))
    thumbnails = []
    with store.staged(f"{out_unit}/{VIDEO_NAME}", suffix=".mp4") as video_tmp:
        writer = imageio_ffmpeg.write_frames(
            str(video_tmp),
            (even_w, even_h),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=2,  # even sizes are all yuv420p needs; never let ffmpeg rescale
            ffmpeg_log_level="error",
            output_params=["-crf", "18", "-preset", "medium", "-movflags", "+faststart"],
        )
        writer.send(None)  # start ffmpeg
        try:
            for index, rel in enumerate(paths):
                image = Image.open(io.BytesIO(store.read_bytes(rel))).convert("RGB")
                if image.size != (width, height):
                    raise BadInputError(
                        f"{rel} is {image.size[0]}x{image.size[1]}, expected {width}x{height}"
                    )
                pixels = np.asarray(image)
                if (even_w, even_h) != (width, height):
                    pixels = np.pad(pixels, ((0, even_h - height), (0, even_w - width), (0, 0)), mode="edge")
                writer.send(np.ascontiguousarray(pixels))
                if index in picks:
                    thumbnails.append((index, image.resize((thumb_w, thumb_h), Image.Resampling.LANCZOS)))
        finally:
            writer.close()
    with store.staged(f"{out_unit}/{CONTACT_SHEET_NAME}", suffix=".png") as sheet_tmp:
        _contact_sheet(thumbnails).save(sheet_tmp, format="PNG")
    manifest = store.commit(
        out_unit,
        [VIDEO_NAME, CONTACT_SHEET_NAME],
        kind="render_video",
        frames=n_frames,
        fps=fps,
        width=even_w,
        height=even_h,
        duration_seconds=n_frames / fps,
        sources=sources,
    )
    return _video_summary(out_unit, manifest, store, seconds=time.perf_counter() - began, skipped=False)


def _video_summary(
    out_unit: str, manifest: dict, store: ArtifactStore, *, seconds: float, skipped: bool
) -> dict:
    video = f"{out_unit}/{VIDEO_NAME}"
    return {
        "out_unit": out_unit,
        "frames": manifest["frames"],
        "fps": manifest["fps"],
        "duration_seconds": manifest["duration_seconds"],
        "width": manifest["width"],
        "height": manifest["height"],
        "bytes": store.fs.size(store.path(video)),
        "video": video,
        "contact_sheet": f"{out_unit}/{CONTACT_SHEET_NAME}",
        "seconds": round(seconds, 3),
        "skipped": skipped,
    }
