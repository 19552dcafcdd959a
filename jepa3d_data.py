"""jepa3d_data: the datasets jepa3d reads, and train-time augmentation.

Every dataset returns the same item: (points float32 (P, 3), label int64), centred and
scaled to the unit sphere, y up. `open_dataset(path)` detects the on-disk layout; with no
path it returns the built-in procedural shapes, which need no download.

Bad input raises DataError with one line naming the file and what is wrong.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch


class DataError(ValueError):
    """A dataset problem the user can fix; the message names the file and the problem."""


# ----------------------------------------------------------------------------- datasets
class ArrayDataset(torch.utils.data.Dataset):
    """Clouds held in memory. points (N, P, 3) float32, labels (N,) int64."""

    def __init__(self, points, labels, classes: list[str], name: str, source: str = ""):
        self.points = torch.as_tensor(np.ascontiguousarray(points), dtype=torch.float32)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.classes, self.name, self.source = list(classes), name, source
        assert self.points.ndim == 3 and self.points.shape[-1] == 3 and len(self.points) == len(self.labels)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.points[i], self.labels[i]


def normalize(points: np.ndarray) -> np.ndarray:
    """Centre a cloud (P, 3) and scale it into the unit sphere (any input units)."""
    points = points - points.mean(axis=0, keepdims=True)
    radius = np.sqrt((points**2).sum(axis=1)).max()
    return points / radius if radius > 0 else points


# ----------------------------------------------------------------------------- built-in shapes
# Procedural objects built from surface-sampled primitives, y up. Each class draws its own
# proportions; every cloud also gets a random yaw, per-part sampling density and jitter.

def _box(rng, n, centre, size):
    """n points on the surface of an axis-aligned box. -> (n, 3)"""
    sx, sy, sz = size
    areas = np.array([sy * sz, sy * sz, sx * sz, sx * sz, sx * sy, sx * sy])
    face = rng.choice(6, size=n, p=areas / areas.sum())
    uv = rng.uniform(-0.5, 0.5, size=(n, 3)) * np.array(size)
    axis, sign = face // 2, np.where(face % 2 == 0, -0.5, 0.5)
    uv[np.arange(n), axis] = sign * np.array(size)[axis]
    return uv + np.array(centre)


def _cylinder(rng, n, centre, radius, height, axis=1, caps=(True, True)):
    """n points on a cylinder along `axis` (caps: bottom, top). -> (n, 3)"""
    areas = np.array([2 * math.pi * radius * height, math.pi * radius**2 * caps[0], math.pi * radius**2 * caps[1]])
    part = rng.choice(3, size=n, p=areas / areas.sum())
    theta = rng.uniform(0, 2 * math.pi, n)
    r = np.where(part == 0, radius, radius * np.sqrt(rng.uniform(0, 1, n)))
    h = np.where(part == 0, rng.uniform(-height / 2, height / 2, n), np.where(part == 1, -height / 2, height / 2))
    local = np.stack([r * np.cos(theta), h, r * np.sin(theta)], axis=1)
    return _orient(local, axis) + np.array(centre)


def _cone(rng, n, centre, radius, height, axis=1, top_radius=0.0):
    """n points on the side of a (truncated) cone, base at centre, apex up `axis`. -> (n, 3)"""
    t = rng.uniform(0, 1, n)
    # area-uniform along the slant: density grows with the radius at height t
    if radius != top_radius:
        t = (radius - np.sqrt(radius**2 - t * (radius**2 - top_radius**2))) / (radius - top_radius)
    theta = rng.uniform(0, 2 * math.pi, n)
    r = radius + (top_radius - radius) * t
    local = np.stack([r * np.cos(theta), t * height, r * np.sin(theta)], axis=1)
    return _orient(local, axis) + np.array(centre)


def _ellipsoid(rng, n, centre, radii):
    """n points on an ellipsoid (denser near the flat parts, like many scanned objects). -> (n, 3)"""
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * np.array(radii) + np.array(centre)


def _torus(rng, n, centre, major, minor, axis=2, arc=2 * math.pi):
    """n points on a torus around `axis`, swept over `arc` radians. -> (n, 3)"""
    u, v = rng.uniform(0, arc, n), rng.uniform(0, 2 * math.pi, n)
    local = np.stack([(major + minor * np.cos(v)) * np.cos(u), minor * np.sin(v),
                      (major + minor * np.cos(v)) * np.sin(u)], axis=1)
    return _orient(local, axis) + np.array(centre)


def _orient(local, axis):
    """Map a y-axis primitive onto axis 0 (x), 1 (y) or 2 (z)."""
    return local[:, {0: [1, 0, 2], 1: [0, 1, 2], 2: [0, 2, 1]}[axis]]


def _area(kind, *a):
    """Rough surface area of a part, to share the points between parts."""
    if kind == "box":
        sx, sy, sz = a[1]
        return 2 * (sx * sy + sy * sz + sx * sz)
    if kind == "cylinder":
        return 2 * math.pi * a[1] * a[2] + 2 * math.pi * a[1] ** 2
    if kind == "cone":
        return math.pi * (a[1] + (a[4] if len(a) > 4 else 0)) * math.hypot(a[1], a[2])
    if kind == "ellipsoid":
        p = 1.6075
        x, y, z = a[1]
        return 4 * math.pi * (((x * y) ** p + (x * z) ** p + (y * z) ** p) / 3) ** (1 / p)
    return 4 * math.pi**2 * a[1] * a[2] * (a[4] if len(a) > 4 else 2 * math.pi) / (2 * math.pi)  # torus


_SAMPLERS = {"box": _box, "cylinder": _cylinder, "cone": _cone, "ellipsoid": _ellipsoid, "torus": _torus}


def _legs(rng, w, d, h, thick, round_legs):
    inset = rng.uniform(0.05, 0.15)
    parts = []
    for sx in (-1, 1):
        for sz in (-1, 1):
            c = (sx * (w / 2 - inset * w), h / 2, sz * (d / 2 - inset * d))
            parts.append(("cylinder", c, thick / 2, h) if round_legs else ("box", c, (thick, h, thick)))
    return parts


def _chair(rng):
    w, d, leg = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.3)
    seat, back = rng.uniform(0.06, 0.15), rng.uniform(0.7, 1.4)
    return [("box", (0, leg + seat / 2, 0), (w, seat, d)),
            ("box", (0, leg + seat + back / 2, -d / 2 + 0.04), (w, back, 0.08))] + \
        _legs(rng, w, d, leg, rng.uniform(0.05, 0.1), rng.random() < 0.5)


def _table(rng):
    w, d, h, top = rng.uniform(1.5, 2.5), rng.uniform(0.8, 1.5), rng.uniform(0.9, 1.3), rng.uniform(0.05, 0.12)
    if rng.random() < 0.3:  # round pedestal table
        r = rng.uniform(0.7, 1.1)
        return [("cylinder", (0, h + top / 2, 0), r, top), ("cylinder", (0, h / 2, 0), 0.08, h),
                ("cylinder", (0, 0.03, 0), r * 0.5, 0.06)]
    return [("box", (0, h + top / 2, 0), (w, top, d))] + _legs(rng, w, d, h, rng.uniform(0.06, 0.12), rng.random() < 0.5)


def _lamp(rng):
    h, base = rng.uniform(1.2, 2.2), rng.uniform(0.25, 0.45)
    shade_r, shade_h = rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6)
    shade = ("cone", (0, h, 0), shade_r, shade_h, 1, shade_r * rng.uniform(0.3, 0.7)) if rng.random() < 0.7 \
        else ("ellipsoid", (0, h + 0.2, 0), (shade_r, shade_r * 0.8, shade_r))
    return [("cylinder", (0, 0.04, 0), base, 0.08), ("cylinder", (0, h / 2, 0), rng.uniform(0.02, 0.05), h), shade]


def _mug(rng):
    r, h = rng.uniform(0.35, 0.6), rng.uniform(0.7, 1.3)
    return [("cylinder", (0, h / 2, 0), r, h, 1, (True, False)),
            ("torus", (r + 0.05, h / 2, 0), h * rng.uniform(0.25, 0.35), rng.uniform(0.04, 0.07), 2, math.pi)]


def _airplane(rng):
    length, span = rng.uniform(3.0, 4.5), rng.uniform(2.5, 4.5)
    body = rng.uniform(0.2, 0.35)
    wing_x = rng.uniform(-0.3, 0.3)
    return [("ellipsoid", (0, 0, 0), (length / 2, body, body)),
            ("box", (wing_x, 0, 0), (rng.uniform(0.5, 0.9), 0.05, span)),
            ("box", (-length / 2 + 0.25, 0.4, 0), (0.4, rng.uniform(0.5, 0.9), 0.05)),
            ("box", (-length / 2 + 0.2, 0.1, 0), (0.3, 0.04, span * rng.uniform(0.25, 0.4)))]


def _bottle(rng):
    r, h = rng.uniform(0.25, 0.45), rng.uniform(1.0, 1.8)
    neck_r, neck_h, shoulder = r * rng.uniform(0.25, 0.4), rng.uniform(0.3, 0.6), rng.uniform(0.15, 0.35)
    return [("cylinder", (0, h / 2, 0), r, h, 1, (True, False)),
            ("cone", (0, h, 0), r, shoulder, 1, neck_r),
            ("cylinder", (0, h + shoulder + neck_h / 2, 0), neck_r, neck_h, 1, (False, True))]


def _bookshelf(rng):
    w, h, d, t = rng.uniform(1.0, 2.0), rng.uniform(1.8, 3.0), rng.uniform(0.4, 0.7), 0.05
    shelves = int(rng.integers(2, 6))
    parts = [("box", (-w / 2, h / 2, 0), (t, h, d)), ("box", (w / 2, h / 2, 0), (t, h, d)),
             ("box", (0, h / 2, -d / 2), (w, h, t))]
    return parts + [("box", (0, h * i / shelves, 0), (w, t, d)) for i in range(shelves + 1)]


def _car(rng):
    length, width, height = rng.uniform(3.5, 4.8), rng.uniform(1.6, 2.0), rng.uniform(0.6, 0.9)
    wheel = rng.uniform(0.3, 0.42)
    cabin = rng.uniform(0.4, 0.6)
    parts = [("box", (0, wheel + height / 2, 0), (length, height, width)),
             ("box", (-rng.uniform(0, 0.4), wheel + height + cabin / 2, 0), (length * rng.uniform(0.4, 0.6), cabin, width * 0.9))]
    for sx in (-1, 1):
        for sz in (-1, 1):
            parts.append(("cylinder", (sx * length * 0.32, wheel, sz * width / 2), wheel, 0.2, 2))
    return parts


def _guitar(rng):
    lower, upper = rng.uniform(0.5, 0.7), rng.uniform(0.35, 0.5)
    neck = rng.uniform(1.5, 2.2)
    return [("ellipsoid", (0, lower, 0), (lower, lower * 0.9, 0.15)),
            ("ellipsoid", (0, 2 * lower + upper * 0.6, 0), (upper, upper * 0.9, 0.15)),
            ("box", (0, 2 * lower + neck / 2 + upper, 0), (0.12, neck, 0.06)),
            ("box", (0, 2 * lower + neck + upper + 0.15, 0), (0.22, 0.3, 0.06))]


def _bed(rng):
    length, width, h = rng.uniform(2.0, 2.4), rng.uniform(1.0, 1.9), rng.uniform(0.3, 0.5)
    head = rng.uniform(0.6, 1.2)
    return [("box", (0, h, 0), (length, rng.uniform(0.25, 0.4), width)),
            ("box", (-length / 2, h + head / 2 - 0.1, 0), (0.08, head, width)),
            ("box", (length / 2, h + 0.1, 0), (0.08, rng.uniform(0.3, 0.6), width))] + \
        _legs(rng, length, width, h * 0.6, 0.08, False)


def _sofa(rng):
    length, depth, seat = rng.uniform(2.0, 3.2), rng.uniform(0.8, 1.1), rng.uniform(0.35, 0.5)
    back, arm = rng.uniform(0.4, 0.7), rng.uniform(0.15, 0.3)
    return [("box", (0, seat / 2, 0), (length, seat, depth)),
            ("box", (0, seat + back / 2, -depth / 2 + 0.12), (length, back, 0.24)),
            ("box", (-length / 2 - arm / 2, seat * 0.8, 0), (arm, seat * 1.6, depth)),
            ("box", (length / 2 + arm / 2, seat * 0.8, 0), (arm, seat * 1.6, depth))]


def _rocket(rng):
    r, h, nose = rng.uniform(0.2, 0.35), rng.uniform(2.0, 3.5), rng.uniform(0.5, 0.9)
    fins = int(rng.integers(3, 5))
    parts = [("cylinder", (0, h / 2, 0), r, h, 1, (True, False)), ("cone", (0, h, 0), r, nose, 1)]
    for i in range(fins):
        a = 2 * math.pi * i / fins
        fin = rng.uniform(0.3, 0.5)
        parts.append(("box", ((r + fin / 2) * math.cos(a), 0.3, (r + fin / 2) * math.sin(a)),
                      (abs(math.cos(a)) * fin + 0.04, 0.6, abs(math.sin(a)) * fin + 0.04)))
    return parts


BUILTIN_CLASSES: dict[str, Callable] = {
    "airplane": _airplane, "bed": _bed, "bookshelf": _bookshelf, "bottle": _bottle, "car": _car,
    "chair": _chair, "guitar": _guitar, "lamp": _lamp, "mug": _mug, "rocket": _rocket, "sofa": _sofa,
    "table": _table,
}


def make_shape(name: str, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """One random instance of a built-in class -> (num_points, 3) float32, unit sphere, y up."""
    parts = BUILTIN_CLASSES[name](rng)
    weight = np.array([_area(p[0], *p[1:]) for p in parts]) * rng.uniform(0.4, 2.5, len(parts))  # uneven density
    counts = rng.multinomial(num_points, weight / weight.sum())
    pts = np.concatenate([_SAMPLERS[p[0]](rng, c, *p[1:]) for p, c in zip(parts, counts)])
    yaw = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    pts = normalize(pts @ rot.T)
    pts += rng.normal(scale=0.01, size=pts.shape)  # sensor-like jitter
    return pts.astype(np.float32)


def builtin_dataset(split: str = "train", num_points: int = 1024, per_class: int | None = None,
                    seed: int = 0) -> ArrayDataset:
    """The built-in procedural dataset: 12 classes, 100 train / 25 test clouds each by default.
    Deterministic: the same (split, num_points, per_class, seed) always gives the same clouds."""
    if split not in ("train", "test"):
        raise DataError(f"built-in data has splits train and test, not {split!r}")
    per_class = per_class or (100 if split == "train" else 25)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    names = sorted(BUILTIN_CLASSES)
    points = np.stack([make_shape(c, num_points, rng) for c in names for _ in range(per_class)])
    labels = np.repeat(np.arange(len(names)), per_class)
    return ArrayDataset(points, labels, names, name=f"builtin-{split}", source="built-in procedural shapes")


# ----------------------------------------------------------------------------- opening datasets
def open_dataset(path: str | Path | None, split: str = "train", dataset: str | None = None,
                 num_points: int = 1024, **kw) -> torch.utils.data.Dataset:
    """Open a dataset: built-in when path is None, else the layout detected at path (or the
    one named by `dataset`)."""
    if path is None and dataset in (None, "builtin"):
        return builtin_dataset(split, num_points)
    raise DataError(f"{path}: reading datasets from disk is not supported yet")


# ----------------------------------------------------------------------------- augmentation
# Batched, on whatever device the batch is on, drawn from the step's generator.

def scale_translate(points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Point-MAE's PointcloudScaleAndTranslate: per-sample anisotropic scale in [2/3, 3/2] and
    shift in [-0.2, 0.2]. (B, P, 3) -> (B, P, 3)."""
    B = points.shape[0]
    scale = torch.empty(B, 1, 3, device=points.device).uniform_(2 / 3, 3 / 2, generator=generator)
    shift = torch.empty(B, 1, 3, device=points.device).uniform_(-0.2, 0.2, generator=generator)
    return points * scale + shift


def rotate_up(points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation about the up (y) axis, per sample. (B, P, 3) -> (B, P, 3)."""
    B = points.shape[0]
    a = torch.empty(B, device=points.device).uniform_(0, 2 * math.pi, generator=generator)
    c, s, z, o = a.cos(), a.sin(), torch.zeros_like(a), torch.ones_like(a)
    rot = torch.stack([c, z, s, z, o, z, -s, z, c], dim=1).view(B, 3, 3)   # (B, 3, 3)
    return points @ rot.transpose(1, 2)


def jitter(points: torch.Tensor, generator: torch.Generator, sigma: float = 0.01, clip: float = 0.05) -> torch.Tensor:
    """Gaussian jitter per point, clipped. (B, P, 3) -> (B, P, 3)."""
    noise = torch.randn(points.shape, generator=generator, device=points.device) * sigma
    return points + noise.clamp(-clip, clip)


def augmentation(name: str) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
    """'scale-translate', 'rotate', 'jitter', combinations joined by '+', or 'none'."""
    if name == "none":
        return None
    table = {"scale-translate": scale_translate, "rotate": rotate_up, "jitter": jitter}
    steps = [table[n] for n in name.split("+")]

    def apply(points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for fn in steps:
            points = fn(points, generator)
        return points
    return apply
