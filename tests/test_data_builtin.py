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
