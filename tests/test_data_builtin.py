"""The built-in procedural dataset and the augmentations."""
import numpy as np
import torch

import jepa3d_data


def test_builtin_has_many_classes_is_deterministic_and_normalised():
    a = jepa3d_data.builtin_dataset("train", 256, per_class=2)
    b = jepa3d_data.builtin_dataset("train", 256, per_class=2)
    test = jepa3d_data.builtin_dataset("test", 256, per_class=2)
    assert len(a.classes) >= 10 and len(a) == 2 * len(a.classes)
    assert torch.equal(a.points, b.points) and not torch.equal(a.points, test.points)
    points, label = a[0]
    assert points.shape == (256, 3) and points.dtype == torch.float32 and label.dtype == torch.int64
    radius = a.points.norm(dim=-1).amax(-1)
    assert torch.all(radius < 1.1) and torch.all(radius > 0.9)  # unit sphere plus jitter
    assert sorted(set(a.labels.tolist())) == list(range(len(a.classes)))
    # two instances of a class differ (random proportions, yaw, density)
    assert not torch.allclose(a.points[0], a.points[1])


def test_builtin_scan_is_one_side_of_an_object_on_a_floor_and_deterministic(monkeypatch):
    a = jepa3d_data.builtin_dataset("train", 512, per_class=2, scan=True)
    assert torch.equal(a.points, jepa3d_data.builtin_dataset("train", 512, per_class=2, scan=True).points)
    assert a.classes == jepa3d_data.builtin_dataset("train", 512, per_class=2).classes and len(a) == 24
    assert a.points.shape == (24, 512, 3) and a.points.norm(dim=-1).amax() < 1.1
    y = a.points[..., 1]
    on_floor = (y < y.amin(-1, keepdim=True) + 0.05).float().mean(-1)    # the lowest plane of each scan
    assert on_floor.median() > 0.05
    # a sphere as the object, no clutter: the sensor sees one cap of it, not the whole surface
    rng = np.random.default_rng(0)
    sphere = rng.normal(size=(4096, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    monkeypatch.setattr(jepa3d_data, "make_shape", lambda *args: sphere.copy())
    monkeypatch.setattr(jepa3d_data, "BUILTIN_CLASSES", {"ball": None})
    for seed in range(4):
        scan = jepa3d_data.make_scan("ball", 1024, np.random.default_rng(seed)).astype(np.float64)
        ball = scan[scan[:, 1] > scan[:, 1].min() + 0.1]                    # not the floor it stands on
        # the sphere through them (|p|^2 = 2 p.c + r^2 - |c|^2, least squares), and where on it they lie
        solution = np.linalg.lstsq(np.c_[2 * ball, np.ones(len(ball))], (ball ** 2).sum(1), rcond=None)[0]
        directions = ball - solution[:3]
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        assert np.linalg.norm(directions.mean(0)) > 0.4                     # a whole sphere: ~0; a half: 0.5


def test_each_class_is_a_distinct_shape():
    rng = np.random.default_rng(0)
    clouds = {c: jepa3d_data.make_shape(c, 512, rng) for c in jepa3d_data.BUILTIN_CLASSES}
    # height profile differs between classes: compare the sorted y coordinates
    profiles = {c: np.sort(x[:, 1]) for c, x in clouds.items()}
    names = list(profiles)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(profiles[a] - profiles[b]).mean() > 0.01, (a, b)


def test_augmentations_are_batched_and_reproducible():
    pts = torch.randn(4, 100, 3)
    for name in ("scale-translate", "rotate", "jitter", "scale-translate+rotate"):
        fn = jepa3d_data.augmentation(name)
        x = fn(pts, torch.Generator().manual_seed(0))
        y = fn(pts, torch.Generator().manual_seed(0))
        assert x.shape == pts.shape and torch.equal(x, y) and not torch.equal(x, pts)
    rotated = jepa3d_data.rotate_up(pts, torch.Generator().manual_seed(0))
    assert torch.allclose(rotated[..., 1], pts[..., 1])  # y is up: heights unchanged
    assert torch.allclose(rotated.norm(dim=-1), pts.norm(dim=-1), atol=1e-5)
    assert jepa3d_data.augmentation("none") is None
