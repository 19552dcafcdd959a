"""Rendered views (issue 32): clouds without cameras seen by a ring of virtual cameras, drawn as
z-buffered splats for a 2D teacher; every point's feature averaged over the views that see it;
the cache of any point-cloud dataset, its random projection, and pretraining on it."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import SHARED, SMALL_FLAGS, run_cli

import jepa3d_data as D

CFG = D.TeacherFeaturesConfig(views=4, image_size=64)


def test_the_ring_of_cameras_looks_at_the_centre_from_its_distance():
    for up in "xyz":
        cfg = D.TeacherFeaturesConfig(views=5, image_size=64, elevation=20.0, up=up)
        K, to_camera = D.view_cameras(cfg)
        R, t = to_camera[:, :3, :3], to_camera[:, :3, 3]
        assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-6)
        assert torch.allclose(torch.linalg.det(R), torch.ones(5), atol=1e-6)          # rotations, not mirrors
        eye = -(R.transpose(1, 2) @ t[..., None])[..., 0]                             # camera centres
        assert torch.allclose(eye.norm(dim=-1), torch.full((5,), D.RENDER_DISTANCE), atol=1e-5)
        axis = torch.eye(3)[D.UP_AXES[up]]
        assert torch.allclose(eye @ axis, torch.full((5,), D.RENDER_DISTANCE * math.sin(math.radians(20))), atol=1e-5)
        # the centre lands on the image's centre, the up axis points up the image in every view
        uv, depth, inside = D.project_points(torch.stack([torch.zeros(3), 0.5 * axis])[None].expand(5, 2, 3),
                                             K.expand(5, 3, 3), to_camera, (64, 64))
        assert torch.allclose(uv[:, 0], torch.full((5, 2), 31.5), atol=1e-4) and inside.all()
        assert (uv[:, 1, 1] < uv[:, 0, 1] - 5).all()


def test_a_splat_is_a_disc_and_the_unit_sphere_fits_the_image():
    cfg = D.TeacherFeaturesConfig(views=3, image_size=64, splat=0.05, shading="depth")
    image = D.render_views(torch.zeros(1, 1, 3), cfg)                           # one point at the centre
    drawn = (image[0] < 1).nonzero()[:, 1:].float()                              # (pixels, 2) rows, cols
    assert len(drawn) == 3 * len(drawn.unique(dim=0))                            # the same disc in every view
    r = (drawn - 31.5).norm(dim=-1).max()
    assert 0.05 * 64 - 1 <= r <= 0.05 * 64 + 1
    sphere = torch.nn.functional.normalize(torch.randn(1, 4000, 3), dim=-1)     # the unit sphere: inside, ~95% wide
    image = D.render_views(sphere, D.TeacherFeaturesConfig(views=3, image_size=64, splat=0.0))
    cols = (image[0, 0] < 1).any(0).nonzero()
    assert 0 < cols.min() and cols.max() < 63 and cols.max() - cols.min() > 0.85 * 64


def test_near_points_hide_far_ones_and_normal_shading_shows_the_surface():
    x = torch.linspace(-0.5, 0.5, 60)
    plane = torch.stack(torch.meshgrid(x, x, indexing="ij"), -1).reshape(-1, 2)
    near = torch.cat([torch.full((len(plane), 1), 0.6), plane], 1)               # a square facing +x, in front
    far = torch.cat([torch.full((len(plane), 1), -0.6), plane], 1)
    cfg = D.TeacherFeaturesConfig(views=1, image_size=64, elevation=0.0, up="y", shading="depth")
    K, to_camera = D.view_cameras(cfg)                                           # y up: view 0 sits on +x
    assert torch.allclose(to_camera[0, 2, :3], -torch.eye(3)[0])
    both, alone, behind = (D.render_views(c[None], cfg)[0, 0] for c in (torch.cat([near, far]), near, far))
    assert both[32, 32] < 1 and torch.equal(both[20:44, 20:44], alone[20:44, 20:44])  # the near square hides the far
    assert behind[32, 32] > alone[32, 32]                                        # farther is lighter
    lit = D.render_views(near[None], D.TeacherFeaturesConfig(views=1, image_size=64, elevation=0.0))
    assert 0.8 < lit[0, 0, 32, 32] < 0.86                                        # faces the light: fully lit


def test_mean_over_views_averages_the_cameras_that_see_a_point():
    K = torch.tensor([[[50.0, 0.0, 15.5], [0.0, 50.0, 15.5], [0.0, 0.0, 1.0]]])
    front = torch.eye(4)
    front[2, 3] = 3.0
    back = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0]))
    back[2, 3] = 3.0
    cams = [{"K": K, "to_camera": T[None], "image_size": (32, 32)} for T in (front, back)]
    maps = [torch.full((1, 2, 32, 32), 1.0), torch.full((1, 2, 32, 32), 3.0)]
    # on the axis, one behind the other: each camera sees only its near one; off the axis: both see it
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, -0.5], [0.3, 0.0, 0.0]]])
    first, seen, which = D.pixel_features(pts, cams, maps)
    mean, seen_mean, _ = D.pixel_features(pts, cams, maps, combine="mean")
    assert torch.equal(seen, seen_mean) and which.tolist() == [[1, 0, 0]]
    assert first[0, :, 0].tolist() == [3.0, 1.0, 1.0]
    assert mean[0, :, 0].tolist() == [3.0, 1.0, 2.0]


def test_rendered_cache_of_the_builtin_shapes_projects_linearly_and_pretrains(tmp_path):
    base = ["teacher-features", "--dataset", "builtin", "--per-class", "1", "--views", "3", "--image-size", "48",
            "--num-points", "256"]
    r = run_cli(*base, "--out", tmp_path / "full")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["teacher_dim"] == 32 and out["points_per_frame"] == 256 and out["splits"] == {"train": 12, "test": 12}
    assert 0.4 < out["visible_share"] < 1.0                                      # a ring sees the outside, not all
    r = run_cli(*base, "--project", "8", "--out", tmp_path / "proj")
    assert r.returncode == 0, r.stderr
    full, proj = (D.read_teacher_cache(tmp_path / name, "train", D.ReadOptions(frames=1)) for name in ("full", "proj"))
    assert torch.equal(full.frames_data, proj.frames_data)                        # the same clouds, normalised
    assert torch.equal(full.teacher[..., 0], proj.teacher[..., 0])
    want = full.teacher[..., 1:].float() @ D.random_projection(32, 8)            # projecting commutes with the lookup
    assert torch.allclose(proj.teacher[..., 1:].float(), want, atol=2e-2, rtol=1e-2)
    meta = json.loads((tmp_path / "proj" / "teacher_features.json").read_text())
    assert meta["made_by"]["render"]["views"] == 3 and meta["made_by"]["project"] == 8
    again = run_cli(*base[:-4], "--views", "4", "--image-size", "48", "--num-points", "256", "--out", tmp_path / "full")
    assert again.returncode == 1 and "differs in render" in again.stderr and "Traceback" not in again.stderr
    r = run_cli("pretrain", "--data", tmp_path / "proj", *SMALL_FLAGS, "--objective", "jepa+distill", "--epochs", "1",
                "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["finished"] and "distill" in r.stderr
    r = run_cli("linear-probe", "--checkpoint", tmp_path / "run" / "checkpoint.safetensors", "--dataset", "builtin",
                "--out", tmp_path / "probe")
    assert r.returncode == 0, r.stderr                                           # the cloud model probes clouds


def test_a_clip_dataset_is_not_rendered(tmp_path):
    r = run_cli("teacher-features", "--dataset", "builtin4d", "--out", tmp_path / "x")
    assert r.returncode == 2 and "Traceback" not in r.stderr                     # not a choice


@pytest.mark.skipif(not (SHARED / "modelnet40_normal_resampled_sample").is_dir(),
                    reason="needs ../shared/data/modelnet40_normal_resampled_sample")
def test_real_modelnet40_text_files_render_and_cache(tmp_path):
    r = run_cli("teacher-features", "--data", SHARED / "modelnet40_normal_resampled_sample", "--up", "z",
                "--views", "2", "--image-size", "64", "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["points_per_frame"] == 1024 and out["splits"]["train"] > 0 and out["visible_share"] > 0.3
    meta = D.cache_meta(tmp_path / "c")
    assert meta["made_by"]["render"]["up"] == "z" and meta["splits"]["train"]["classes"]
    data = D.open_paired(SHARED / "modelnet40_normal_resampled_sample", render=D.TeacherFeaturesConfig(views=2))
    frame = data.videos[0][0]()
    assert len(frame.images) == 2 and frame.images[0].shape == (128, 128, 3) and frame.images[0].dtype == np.uint8
    assert np.abs(np.linalg.norm(frame.points, axis=1).max() - 1) < 1e-5        # normalised into the unit sphere


def test_reprobe_exports_the_teachers_view_features_and_probes_them_beside_others(tmp_path):
    import sys

    sys.path.insert(0, str(D.Path(__file__).resolve().parents[1] / "benchmarks"))
    import reprobe

    folder = tmp_path / "npz"
    folder.mkdir()
    train, test = D.builtin_dataset("train", 256, per_class=5), D.builtin_dataset("test", 256, per_class=2)
    for split, ds in (("train", train), ("test", test)):
        np.savez(folder / f"shapes_{split}.npz", points=ds.points.numpy(), labels=ds.labels.numpy())
    reprobe.export_teacher("builtin", str(folder), str(tmp_path / "t.npz"), {"views": 2, "image_size": 48})
    t = np.load(tmp_path / "t.npz")
    assert t["train_features"].shape == (60, 32) and t["test_features"].shape == (24, 32)
    assert t["train_features"].dtype == np.float16 and "rendered views" in str(t["source"])
    # pooling is linear: the features are the mean over views of each view's mean-pooled map
    cfg = D.TeacherFeaturesConfig(views=2, image_size=48)
    grey = D.render_views(torch.from_numpy(D.normalize_batch(train.points[:1].numpy())), cfg)
    fmap = D.load_teacher("builtin")(grey[0][:, None].expand(-1, 3, -1, -1))
    assert np.allclose(t["train_features"][0], fmap.mean((0, 2, 3)).numpy(), atol=2e-3)
    alone = reprobe.reprobe(str(tmp_path / "t.npz"), "logreg", 1.0, on="validation")
    both = reprobe.reprobe(str(tmp_path / "t.npz"), "logreg", 1.0, on="validation", concat=str(tmp_path / "t.npz"))
    assert both["concat"] and both["scored"] == alone["scored"] == 12               # one cloud per class held out
