"""Cross-modal distillation (issue 16): teachers behind one interface (TorchScript, a local
torch.hub clone, precomputed .npy maps, the built-in one), paired data (built-in RGB-D, TUM,
LiDAR + cameras), the teacher-features cache (round trip, resume, refusal to mix), the distill
objectives, and the per-point probe."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import SHARED, SMALL, SMALL_FLAGS, run_cli

import jepa3d
import jepa3d_data as D

PIL = pytest.importorskip("PIL.Image")
NUSCENES = SHARED / "nuscenes_sample"


class Identity(torch.nn.Module):
    """A teacher whose feature at each pixel is the pixel's colour (stride 1)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images


def test_bilinear_lookup_with_per_axis_strides():
    fmap = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)    # (B, C, h, w): cells 2 wide, 4 tall
    centres = torch.tensor([[[(2 - 1) / 2 + 2 * j, (4 - 1) / 2 + 4 * i] for i in range(3) for j in range(4)]])
    out = D.bilinear_lookup(fmap, centres, stride=(2.0, 4.0))
    assert torch.equal(out[0], fmap[0].flatten(1).T)


def test_feature_grid_occlusion_sees_a_sparse_occluder():
    K = torch.tensor([[[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]]])
    # a near point and a far one 3 pixels apart: different pixels, the same 14-pixel feature cell
    pts = torch.tensor([[[0.2, -0.1, 2.0], [0.46, -0.2, 4.0]]])
    cams = [{"K": K, "to_camera": torch.eye(4)[None], "image_size": (80, 100), "stride": 14.0}]
    fmap = [torch.zeros(1, 3, 6, 8)]
    _, seen_pixel, _ = D.pixel_features(pts, cams, fmap, occlusion="pixel")
    _, seen_cell, _ = D.pixel_features(pts, cams, fmap, occlusion="feature")
    assert seen_pixel.tolist() == [[True, True]] and seen_cell.tolist() == [[True, False]]


def test_torchscript_teacher(tmp_path):
    path = tmp_path / "teacher.pt"
    torch.jit.script(torch.nn.Conv2d(3, 5, 4, stride=4)).save(str(path))
    teacher = D.load_teacher(f"torchscript:{path}")
    assert teacher(torch.rand(2, 3, 32, 48)).shape == (2, 5, 8, 12)
    (tmp_path / "bad.pt").write_bytes(b"not a module")
    with pytest.raises(ValueError, match="not a TorchScript module"):
        D.load_teacher(f"torchscript:{tmp_path / 'bad.pt'}")
    torch.jit.script(torch.nn.Flatten()).save(str(tmp_path / "flat.pt"))
    with pytest.raises(ValueError, match=r"must map images \(B, 3, H, W\) to feature maps"):
        D.load_teacher(f"torchscript:{tmp_path / 'flat.pt'}")(torch.rand(1, 3, 8, 8))


def test_torch_export_teacher_of_any_image_size(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 5, 3, 2, 1)).eval()
    side = {0: torch.export.Dim("b", min=1, max=1024), 2: 4 * torch.export.Dim("h", min=2, max=1024),
            3: 4 * torch.export.Dim("w", min=2, max=1024)}                 # any batch, any multiple of 4
    program = torch.export.export(net, (torch.rand(2, 3, 32, 48),), dynamic_shapes={"input": side})
    torch.export.save(program, str(tmp_path / "teacher.pt2"))
    teacher = D.load_teacher(f"export:{tmp_path / 'teacher.pt2'}")
    images = torch.rand(1, 3, 40, 56)                                    # not the size it was exported with
    assert torch.allclose(teacher(images), net(images)) and teacher(images).shape == (1, 5, 10, 14)
    with pytest.raises(D.TeacherError, match="failed on images"):          # outside the program's shapes
        teacher(torch.rand(1, 3, 4, 4))
    (tmp_path / "bad.pt2").write_bytes(b"not a program")
    with pytest.raises(ValueError, match="not a torch.export program"):
        D.load_teacher(f"export:{tmp_path / 'bad.pt2'}")
    with pytest.raises(FileNotFoundError, match="no such torch.export program"):
        D.load_teacher(f"export:{tmp_path / 'none.pt2'}")


HUBCONF = '''
import torch

class TinyViT(torch.nn.Module):
    """DINOv2's interface: patch_size, forward_features -> {'x_norm_patchtokens': (B, h*w, C)}."""
    patch_size = 14

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 6, 14, stride=14)

    def forward_features(self, x):
        return {"x_norm_patchtokens": self.proj(x).flatten(2).transpose(1, 2)}


def tiny_vit(pretrained=True):
    assert not pretrained, "jepa3d must never ask a hub model to download weights"
    return TinyViT()
'''


def test_hub_teacher_from_a_local_clone(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(HUBCONF)
    weights = tmp_path / "w.pth"
    teacher = D.load_teacher(f"hub:{repo}:tiny_vit")
    state = {k: torch.full_like(v, 0.01) for k, v in teacher.model.state_dict().items()}
    torch.save(state, weights)
    teacher = D.load_teacher(f"hub:{repo}:tiny_vit", weights=str(weights))
    assert torch.equal(teacher.model.proj.bias, torch.full((6,), 0.01))
    out = teacher(torch.rand(1, 3, 60, 100))                 # resized down to 56 x 98: a 4 x 7 patch grid
    assert out.shape == (1, 6, 4, 7)
    with pytest.raises(FileNotFoundError, match="not a local torch.hub repository"):
        D.load_teacher(f"hub:{tmp_path}:tiny_vit")
    torch.save({"proj.weight": print}, tmp_path / "code.pth")                # a pickle that is not plain tensors
    with pytest.raises(ValueError, match="code.pth: not a file of plain tensors") as refused:
        D.load_teacher(f"hub:{repo}:tiny_vit", weights=str(tmp_path / "code.pth"))
    assert "weights_only=False" not in str(refused.value)                    # never advised


def test_npy_teacher(tmp_path):
    np.save(tmp_path / "cam0.npy", np.ones((4, 3, 5), np.float16))
    teacher = D.load_teacher(f"npy:{tmp_path}")
    assert teacher(torch.zeros(1, 3, 30, 50), ["cam0.jpg"]).shape == (1, 4, 3, 5)
    with pytest.raises(FileNotFoundError, match="cam1.npy: no precomputed feature map for image cam1.jpg"):
        teacher(torch.zeros(1, 3, 30, 50), ["cam1.jpg"])
    with pytest.raises(ValueError, match="--teacher 'nope'"):
        D.load_teacher("nope")


def test_builtin_rgbd_points_come_from_their_pixels():
    data = D.builtin_rgbd("test", frames=3, num_points=64, per_class=1)
    assert len(data.videos) == 10 and data.part_names == list(D.BODY_PARTS)
    frame = data.videos[0][1]()
    assert frame.points.shape == (64, 3) and frame.images[0].shape == (96, 96, 3) and frame.parts.shape == (64,)
    K, to_camera = frame.cameras[0]
    uv, _, inside = D.project_points(torch.from_numpy(frame.points)[None].float(),
                                          torch.tensor(K, dtype=torch.float32)[None],
                                          torch.tensor(to_camera, dtype=torch.float32)[None], (96, 96))
    assert inside.all()
    # each point lands on a figure pixel (the backdrop is grey noise): within its pixel, up to the depth noise
    assert (uv - uv.round()).abs().max() < 0.5
    again = D.builtin_rgbd("test", frames=3, num_points=64, per_class=1).videos[0][1]()
    assert np.array_equal(again.points, frame.points) and np.array_equal(again.images[0], frame.images[0])


def write_tum_rgbd(root, frames=3):
    """A TUM folder whose RGB encodes each pixel's column and row: (u, v, 7) as bytes."""
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    v, u = np.mgrid[0:48, 0:64]
    lines = []
    for i in range(frames):
        depth = np.zeros((48, 64), np.uint16)
        depth[8:40, 10 + i:50 + i] = 5000 + 500 * i
        PIL.fromarray(depth.astype(np.uint16)).save(root / "depth" / f"{i}.png")
        PIL.fromarray(np.stack([u, v, np.full_like(u, 7)], -1).astype(np.uint8)).save(root / "rgb" / f"{i}.png")
        lines.append(f"{i}.0 rgb/{i}.png {i}.001 depth/{i}.png")
    (root / "associations.txt").write_text("\n".join(lines) + "\n")


def test_tum_pairs_every_point_with_its_own_pixel(tmp_path):
    write_tum_rgbd(tmp_path / "tum")
    torch.jit.script(Identity()).save(str(tmp_path / "id.pt"))
    intr = (60.0, 60.0, 32.0, 24.0)
    data = D.open_paired(tmp_path / "tum", num_points=50, intrinsics=intr)
    meta = D.write_teacher_features(tmp_path / "cache", {"train": data},
                                    D.load_teacher(f"torchscript:{tmp_path / 'id.pt'}"), {"teacher": "id"},
                                    occlusion="pixel")
    assert meta["complete"] and meta["teacher_dim"] == 3
    ds = D.read_teacher_cache(tmp_path / "cache", "train", D.ReadOptions(frames=1))
    frame = data.videos[0][0]()
    pixel = frame.points[:, :2] * np.array([1, -1]) * 60 / -frame.points[:, 2:] + np.array([32, 24])
    feats = ds.teacher[0, :, 1:].float().numpy() * 255
    assert ds.teacher[0, :, 0].all()                                        # every depth point is seen
    assert np.abs(feats[:, :2] - pixel).max() < 0.6 and np.allclose(feats[:, 2], 7, atol=0.1)


def test_cache_round_trip_resume_and_refusal(tmp_path):
    splits = {s: D.builtin_rgbd(s, frames=4, num_points=32, per_class=2) for s in ("train", "test")}
    teacher, made_by = D.load_teacher("builtin"), {"teacher": "builtin", "n": 1}
    D.write_teacher_features(tmp_path, splits, teacher, made_by)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["chunk_00000.npz", "chunk_00001.npz"]
    ds = D.open_dataset(tmp_path, "train", frames=4)
    assert D.detect_layout(tmp_path) == "teacher-cache" and len(ds) == 20 and ds.teacher_dim == 32
    clip, label = ds[3]
    assert clip.shape == (4, 32, 3) and label == 1 and ds.clip_point_labels(3).shape == (4, 32)
    assert ds.teacher_targets(3).shape == (4, 32, 1 + 32)  # visible, feature: a tensor of its own, not point channels
    with np.load(tmp_path / "train" / "chunk_00000.npz") as f:
        assert f["feat"].dtype == np.float16 and f["xyz"].shape == (16 * 4, 32, 3)
    # the stored feature is the teacher's at the point's pixel
    frame = splits["train"].videos[3][2]()
    fmap = teacher(torch.from_numpy(frame.images[0]).permute(2, 0, 1)[None].float() / 255)
    cams = [{"K": torch.tensor(frame.cameras[0][0], dtype=torch.float32)[None],
             "to_camera": torch.tensor(frame.cameras[0][1], dtype=torch.float32)[None], "image_size": (96, 96),
             "stride": (4.0, 4.0)}]
    want, seen, _ = D.pixel_features(torch.from_numpy(frame.points)[None], cams, [fmap], occlusion="feature")
    assert torch.allclose(ds.teacher[3 * 4 + 2, :, 1:].float(), want[0].half().float())
    # resume: a missing chunk is written again, the others are kept as they are
    kept = (tmp_path / "train" / "chunk_00000.npz").stat().st_mtime_ns
    (tmp_path / "train" / "chunk_00001.npz").unlink()
    meta = json.loads((tmp_path / D.CACHE_META).read_text())
    meta["complete"] = False
    (tmp_path / D.CACHE_META).write_text(json.dumps(meta))
    with pytest.raises(D.DataError, match="incomplete"):
        D.open_dataset(tmp_path, "train")
    D.write_teacher_features(tmp_path, splits, teacher, made_by)
    assert (tmp_path / "train" / "chunk_00001.npz").is_file()
    assert (tmp_path / "train" / "chunk_00000.npz").stat().st_mtime_ns == kept
    assert torch.equal(D.open_dataset(tmp_path, "train", frames=4)[3][0], clip)
    with pytest.raises(D.DataError, match="made another way .*differs in n"):
        D.write_teacher_features(tmp_path, splits, teacher, {**made_by, "n": 2})


@pytest.mark.skipif(not NUSCENES.is_dir(), reason=f"{NUSCENES} is absent")
def test_nuscenes_sample_pairs_lidar_with_six_cameras(tmp_path):
    data = D.open_paired(NUSCENES, num_points=4096)
    frame = data.videos[0][0]()
    assert len(frame.images) == 6 and frame.images[0].shape == (900, 1600, 3)
    meta = D.write_teacher_features(tmp_path, {"train": data}, D.load_teacher("builtin"), {"teacher": "builtin"})
    ds = D.read_teacher_cache(tmp_path, "train", D.ReadOptions(frames=1))
    share = ds.teacher[..., 0].float().mean().item()
    assert meta["teacher_dim"] == 32 and 0.3 < share < 1.0                 # the cameras see most of a sweep, not all
    with pytest.raises(D.DataError, match="no train/test split"):
        D.open_paired(NUSCENES, "test")
    # every point labelled by its annotated 3D box (issue 29): against the box test written out here
    calib = json.loads((NUSCENES / "calib.json").read_text())
    want = np.zeros(len(frame.points), np.int64)
    for b in calib["boxes_lidar"]:
        x, y, z, dx, dy, dz, yaw = b["box"]
        R = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
        local = (frame.points[:, :2] - [x, y]) @ R                                  # R^T (p - c), row vectors
        label = 1 + b["label"] if b["label"] >= 0 else 11                        # -1: none of the 10 categories
        want[(np.abs(local) <= [dx / 2, dy / 2]).all(1) & (np.abs(frame.points[:, 2] - z) <= dz / 2)] = label
    assert np.array_equal(frame.parts, want) and 20 < (want > 0).sum() < 0.5 * len(want)
    assert data.part_names[:2] == ["background", "car"] and data.part_names[-1] == "other"
    assert len(data.part_names) == 12                                            # + 10 categories + other (label -1)
    assert ds.part_names == data.part_names and torch.equal(ds.point_labels[0], torch.from_numpy(want))


@pytest.mark.parametrize("objective,distill,frames,tokens", [
    ("distill", "dense", 1, "frame"), ("distill", "global", 1, "frame"), ("distill", "dense", 4, "tube"),
    ("jepa+distill", "dense", 4, "frame"), ("jepa+distill", "global", 4, "frame")])
def test_distill_objectives_learn_a_batch(objective, distill, frames, tokens):
    cfg, _ = jepa3d.make_configs("tiny", **{**SMALL, "epochs": 1}, objective=objective, distill=distill,
                                 teacher_dim=6, frames=frames, tokens=tokens, num_targets=2,
                                 sampler="tube" if frames > 1 else "context-block")
    torch.manual_seed(0)
    model = jepa3d.JEPA(cfg)
    shape = (4, 128) if frames == 1 else (4, frames, 128)
    xyz = torch.randn(*shape, 3)
    feats = torch.cat([xyz.sin(), xyz.cos()], -1)                  # a function of the geometry: learnable
    teacher = torch.cat([(torch.rand(shape) > 0.2).float()[..., None], feats], -1)  # visible, feature
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss, stats = model(xyz, torch.Generator().manual_seed(step), teacher)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["distill_loss"].item())
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="needs 6-wide teacher features with every point, got no teacher"):
        model(xyz, torch.Generator())
    with pytest.raises(ValueError, match="pretrain on a `jepa3d teacher-features` cache"):
        jepa3d.make_configs("tiny", objective="distill")[0].check_masking()


@pytest.mark.parametrize("frames", [1, 4])
def test_dense_distillation_on_a_random_share_of_the_points(frames):
    cfg, _ = jepa3d.make_configs("tiny", **{**SMALL, "epochs": 1}, objective="distill", teacher_dim=6, frames=frames)
    torch.manual_seed(0)
    model = jepa3d.JEPA(cfg)
    shape = (4, 128) if frames == 1 else (4, frames, 128)
    xyz = torch.randn(*shape, 3)
    teacher = torch.cat([torch.ones(*shape, 1), xyz.sin(), xyz.cos()], -1)
    every, _ = model(xyz, torch.Generator().manual_seed(0), teacher)
    model.cfg = dataclasses.replace(cfg, distill_points=128)                   # as many as there are: the same loss
    assert torch.equal(model(xyz, torch.Generator().manual_seed(0), teacher)[0], every)
    model.cfg = dataclasses.replace(cfg, distill_points=16)
    some, stats = model(xyz, torch.Generator().manual_seed(0), teacher)
    assert some != every and abs(some.item() - every.item()) < 0.2 and stats["visible_share"] == 1.0
    some.backward()
    assert all(p.grad is not None for p in model.distill_head.parameters())


def test_tokens_to_points_takes_each_frames_own_tokens():
    cfg, _ = jepa3d.make_configs("tiny", **SMALL, frames=4)
    points = torch.randn(2, 4, 128, 3)
    centres = jepa3d.tokenize(points, cfg, torch.Generator().manual_seed(0))[1]       # (2, 4*16, 4)
    frame_id = (torch.arange(4).repeat_interleave(16).float()[None, :, None]).expand(2, 64, 1)
    out = jepa3d.tokens_to_points(frame_id, centres, points, 16)
    assert out.shape == (2, 4, 128, 1) and torch.allclose(out[..., 0], torch.arange(4.0)[None, :, None])
    tubes = jepa3d.tokens_to_points(torch.arange(2.0).repeat_interleave(16)[None, :, None].expand(2, 32, 1),
                                    centres[:, :32], points, 16)      # 2 anchor frames (0 and 2) for 4 frames
    assert tubes[0, :, 0, 0].tolist() == pytest.approx([0.0, 1.0, 1.0, 1.0])   # frame 1 ties: the later anchor


def test_point_probe_beats_chance_on_parts():
    cfg, _ = jepa3d.make_configs("tiny", **SMALL)
    train = D.builtin_parts_dataset("train", 128, per_class=4)
    test = D.builtin_parts_dataset("test", 128, per_class=2)
    result = jepa3d.point_probe(jepa3d.random_encoder(cfg, 0), cfg, train, test, train.num_parts)
    assert result["train_points"] == 48 * 4 and result["test_points"] == 24 * 16
    majority = 100 * test.parts.flatten().bincount().max().item() / test.parts.numel()   # the best constant guess
    assert result["point_accuracy"] > 1.2 * majority and 0 < result["miou"] <= 100


def test_cli_teacher_features_distill_and_point_probe(tmp_path):
    cache = tmp_path / "cache"
    r = run_cli("teacher-features", "--out", cache, "--frames", "4", "--per-class", "1", "--num-points", "128")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["teacher_dim"] == 32 and out["frames"] == 80 and out["visible_share"] > 0.9
    again = run_cli("teacher-features", "--out", cache, "--frames", "4", "--per-class", "2", "--num-points", "128")
    assert again.returncode == 1 and "differs in per_class" in again.stderr and "Traceback" not in again.stderr
    for objective in ("distill", "jepa+distill"):
        run = tmp_path / objective
        r = run_cli("pretrain", "--data", cache, "--preset", "tiny4d", *SMALL_FLAGS, "--frames", "4",
                    "--num-targets", "2", "--objective", objective, "--epochs", "1", "--out", run)
        assert r.returncode == 0, r.stderr
        assert "distill" in r.stderr and json.loads(r.stdout)["finished"]
        r = run_cli("point-probe", "--checkpoint", run / "checkpoint.safetensors", "--data", cache, "--out",
                    tmp_path / "pp")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["miou"] > 0
    # the teacher's own features at the same points: the ceiling of what distilling it can pass on
    r = run_cli("point-probe", "--features", "teacher", "--checkpoint", "none", "--data", cache, "--out", tmp_path / "pt")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["encoder"] == "teacher features of the cache"
    r = run_cli("point-probe", "--features", "teacher", "--checkpoint", "none", "--out", tmp_path / "pt2")
    assert r.returncode == 1 and "needs a teacher-features cache" in r.stderr
    # distill on data without teacher features: one line, what to do
    r = run_cli("pretrain", "--objective", "distill", "--dataset", "builtin", "--out", tmp_path / "x")
    assert r.returncode == 2 and "teacher-features" in r.stderr and "Traceback" not in r.stderr


def test_paired_bad_input_names_the_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "calib.json").write_text('{"lidar_file": "x.bin"}')
    with pytest.raises(D.DataError, match=r"a/calib.json: not a LiDAR \+ cameras calibration"):
        D.open_paired(tmp_path)
    eye = np.eye(4).tolist()
    (tmp_path / "a" / "calib.json").write_text(json.dumps({"lidar_file": "x.bin", "num_pts_feats": 4, "cameras": {
        "CAM": {"image": "cam.jpg", "cam2img": np.eye(3).tolist(), "lidar2cam": json.dumps(eye)}}}))
    np.zeros((10, 4), "<f4").tofile(tmp_path / "a" / "x.bin")
    frame = D.open_paired(tmp_path).videos[0][0]
    with pytest.raises(D.DataError, match="cam.jpg: unreadable image"):
        frame()
    np.zeros(7, "<f4").tofile(tmp_path / "a" / "x.bin")
    with pytest.raises(D.DataError, match="x.bin: 7 floats is not a whole number of 4-value points"):
        frame()
    (tmp_path / "a" / "calib.json").write_text(json.dumps({"lidar_file": "../../x.bin", "cameras": {}}))
    with pytest.raises(D.DataError, match="is not a file name inside the dataset"):
        D.open_paired(tmp_path)
    write_tum_rgbd(tmp_path / "tum")
    (tmp_path / "tum" / "associations.txt").write_text("0.0 rgb/0.png\n")
    with pytest.raises(D.DataError, match="associations.txt: line 1 has 2 fields"):
        D.open_paired(tmp_path / "tum")
    # an image whose size disagrees with K: freiburg1's default K on a 64x48 image
    write_tum_rgbd(tmp_path / "tum2", frames=1)
    with pytest.raises(D.DataError, match=r"rgb/0.png: the image is 64x48 but its intrinsics \(TUM freiburg1"):
        D.open_paired(tmp_path / "tum2").videos[0][0]()
    # through the CLI: one line, exit 1, no cache left behind
    r = run_cli("teacher-features", "--data", tmp_path / "tum2", "--out", tmp_path / "tf")
    assert r.returncode == 1 and "the image is 64x48" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "tf").exists()
    # a teacher whose output is not a feature map: one line naming it, not an "internal error"
    torch.jit.script(torch.nn.Flatten()).save(str(tmp_path / "flat.pt"))
    r = run_cli("teacher-features", "--data", tmp_path / "tum2", "--intrinsics", "60", "60", "32", "24",
                "--teacher", f"torchscript:{tmp_path / 'flat.pt'}", "--out", tmp_path / "tf")
    assert r.returncode == 1 and "flat.pt: returned (1, 9216)" in r.stderr and "internal" not in r.stderr
    assert not (tmp_path / "tf").exists()


class Scaled(torch.nn.Module):
    """A teacher with a parameter: another network than Identity, or than itself with other weights."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.scale


def test_the_cache_knows_which_network_made_it(tmp_path):
    def cache(path):
        return D.cache_teacher_features(tmp_path / "cache", cfg=D.TeacherFeaturesConfig(
            teacher=f"torchscript:{path}", frames=2, num_points=32, per_class=1))

    torch.jit.script(Scaled(2.0)).save(str(tmp_path / "a.pt"))
    first = cache(tmp_path / "a.pt")
    assert first["teacher_spec"] == f"torchscript:{tmp_path}/a.pt" and "sha256:" in first["made_by"]["teacher"]
    (tmp_path / "b.pt").write_bytes((tmp_path / "a.pt").read_bytes())      # the same network by another path
    again = cache(tmp_path / "b.pt")
    assert again["made_by"] == first["made_by"] and again["complete"]
    torch.jit.script(Scaled(3.0)).save(str(tmp_path / "a.pt"))               # another network at the same path
    with pytest.raises(D.DataError, match=r"made another way \(differs in teacher: torchscript sha256:\w+ now, "
                                          r"torchscript sha256:\w+ in the cache\)"):
        cache(tmp_path / "a.pt")
    assert D.teacher_identity(D.load_teacher("builtin"), "builtin") == D.teacher_identity(D.BuiltinTeacher(), "builtin")


@pytest.mark.skipif(not NUSCENES.is_dir(), reason="the real nuScenes sample (../shared/data) is absent")
def test_real_lidar_points_land_in_their_objects_2d_boxes():
    # nuScenes' 3D boxes (z: their geometric centre) against the six cameras' annotated 2D boxes:
    # every LiDAR point inside an object's 3D box projects into that object's 2D box
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from nuscenes_projection import in_box

    calib = json.loads((NUSCENES / "calib.json").read_text())
    xyz = np.fromfile(NUSCENES / calib["lidar_file"], "<f4").reshape(-1, calib["num_pts_feats"])[:, :3]
    hits = points = objects = 0
    for name, cam in calib["cameras"].items():
        K, to_cam = (np.array(json.loads(cam[k]) if isinstance(cam[k], str) else cam[k], dtype=np.float32)
                     for k in ("cam2img", "lidar2cam"))
        uv, _, inside = D.project_points(torch.from_numpy(xyz)[None], torch.from_numpy(K[:3, :3])[None],
                                         torch.from_numpy(to_cam)[None], (900, 1600))
        for b2 in calib["boxes_2d"].get(name, []):
            centre = np.array(b2["box_3d_camera"][:3])
            box = min(calib["boxes_lidar"],
                      key=lambda b: np.linalg.norm(to_cam[:3, :3] @ b["box"][:3] + to_cam[:3, 3] - centre))
            sel = torch.from_numpy(in_box(xyz, box["box"])) & inside[0]
            if sel.sum() < 3:
                continue
            x1, y1, x2, y2 = b2["bbox_xyxy"]
            u, v = uv[0, sel, 0], uv[0, sel, 1]
            hits += int(((u >= x1 - 1) & (u <= x2 + 1) & (v >= y1 - 1) & (v <= y2 + 1)).sum())
            points, objects = points + int(sel.sum()), objects + 1
    assert objects >= 40 and points >= 1000 and hits == points, (objects, points, hits)


class Constant(torch.nn.Module):
    """A teacher that returns a fixed map whatever it sees: NaN, or empty."""

    def __init__(self, value: float, size: int = 4):
        super().__init__()
        self.value, self.size = value, size

    def forward(self, images, names=None):
        return torch.full((len(images), 3, self.size, self.size), self.value)


def test_what_a_teacher_returns_and_a_cache_holds_is_checked(tmp_path):
    splits = {"train": D.builtin_rgbd("train", frames=2, num_points=16, per_class=1)}
    for teacher, what in ((Constant(float("nan")), "non-finite features"), (Constant(1.0, 0), "maps of shape")):
        with pytest.raises(D.TeacherError, match=what):
            D.write_teacher_features(tmp_path / "bad", splits, teacher, {"t": what})
        assert not (tmp_path / "bad").exists()                               # nothing left behind
    D.write_teacher_features(tmp_path / "c", splits, D.load_teacher("builtin"), {"num_points": 16})
    chunk = tmp_path / "c" / "train" / "chunk_00000.npz"
    good = dict(np.load(chunk))
    tampered = {"nan feat": {**good, "feat": np.full_like(good["feat"], np.nan)},
                "missing key": {k: v for k, v in good.items() if k != "visible"},
                "shape": {**good, "xyz": good["xyz"][:, :8]},
                "video ids": {**good, "video": good["video"] + 99},
                "huge": {**good, "pad": np.zeros(50_000_000, np.uint8)}}            # deflates to little, inflates big
    for name, arrays in tampered.items():
        np.savez_compressed(chunk, **arrays)
        with pytest.raises(D.DataError, match="chunk_00000.npz: (a damaged|unreadable) cache chunk"):
            D.open_dataset(tmp_path / "c", "train", frames=2)
    chunk.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(D.DataError, match="unreadable cache chunk"):
        D.open_dataset(tmp_path / "c", "train", frames=2)
    np.savez(chunk, **good)
    meta = json.loads((tmp_path / "c" / D.CACHE_META).read_text())
    for broken in ({**meta, "teacher_dim": "x"}, {**meta, "splits": {"train": {**meta["splits"]["train"], "chunks": 9}}},
                   [1, 2], {"format": D.CACHE_FORMAT, "complete": True}):
        (tmp_path / "c" / D.CACHE_META).write_text(json.dumps(broken))
        with pytest.raises(D.DataError, match="teacher_features.json: (damaged|not a)"):
            D.open_dataset(tmp_path / "c", "train", frames=2)
    (tmp_path / "c" / D.CACHE_META).write_text("[" * 100_000)                     # deeply nested JSON
    with pytest.raises(D.DataError, match="unreadable teacher-features metadata"):
        D.open_dataset(tmp_path / "c", "train", frames=2)
    (tmp_path / "c" / D.CACHE_META).write_text(json.dumps({**meta, "splits": {"train": {
        **meta["splits"]["train"], "labels": [99] * meta["splits"]["train"]["videos"]}}}))
    with pytest.raises(D.DataError, match="labels outside the classes"):
        D.open_dataset(tmp_path / "c", "train", frames=2)


def test_one_cache_is_written_by_one_run(tmp_path):
    import fcntl

    (tmp_path / "c").mkdir()
    with open(tmp_path / "c" / ".lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(jepa3d.RunFolderError, match="in use by another teacher-features run"):
            D.write_teacher_features(tmp_path / "c", {"train": D.builtin_rgbd("train", 2, 16, 1)},
                                     D.load_teacher("builtin"), {})


def test_calibrations_and_intrinsics_are_checked_where_parsed(tmp_path):
    (tmp_path / "a").mkdir()
    np.zeros((10, 4), "<f4").tofile(tmp_path / "a" / "x.bin")
    cam = {"image": "cam.jpg", "cam2img": np.eye(3).tolist(), "lidar2cam": np.eye(4).tolist()}
    for calib, what in (({"cameras": {}}, "names no camera"),
                        ({"num_pts_feats": 0, "cameras": {"C": cam}}, "num_pts_feats 0 is not"),
                        ({"cameras": {"C": {**cam, "lidar2cam": np.zeros((4, 4)).tolist()}}}, "not a rigid transform"),
                        ({"cameras": {"C": {**cam, "lidar2cam": (np.eye(4) * 1e300).tolist()}}}, "not a rigid")):
        (tmp_path / "a" / "calib.json").write_text(json.dumps({"lidar_file": "x.bin", **calib}))
        with pytest.raises(D.DataError, match=what):
            D.open_paired(tmp_path)
    image = np.zeros((48, 64, 3), np.uint8)
    with pytest.raises(D.DataError, match="not inside it"):                    # a focal of 1e300 pixels
        D._check_intrinsics(image, D._pinhole(1e300, 1e300, 32, 24), tmp_path / "cam.jpg", "cam2img")
    for intr in ((0, 500, 32, 24), (-5, 500, 32, 24), (float("nan"), 500, 32, 24), (1e-300 * 0, 1, 1, 1)):
        with pytest.raises(D.DataError, match="cannot back-project depth"):
            D.check_pinhole(intr, tmp_path, "--intrinsics")
    write_tum_rgbd(tmp_path / "tum", frames=1)
    PIL.fromarray(np.zeros((48, 64), np.uint8)).save(tmp_path / "tum" / "depth" / "0.png")   # 8-bit: not depth
    with pytest.raises(D.DataError, match="0.png: an 8-bit image"):
        D.open_dataset(tmp_path / "tum", "train", frames=1, num_points=16)


@pytest.mark.skipif(not NUSCENES.is_dir(), reason="the real nuScenes sample (../shared/data) is absent")
def test_inspect_shows_a_lidar_and_cameras_folder():
    for extra in ([], ["--dataset", "lidar-cameras"]):
        r = run_cli("inspect", NUSCENES, *extra)
        assert r.returncode == 0, r.stderr
        train = json.loads(r.stdout)["splits"]["train"]
        assert json.loads(r.stdout)["layout"] == "lidar-cameras" and len(train["cameras_of_first_frame"]) == 6
        assert all(c["size"] == [1600, 900] and c["points_in_view"] > 0 for c in train["cameras_of_first_frame"])
        assert "CAM_FRONT" in r.stderr and "fx fy cx cy [1266.42" in r.stderr


def test_a_teacher_that_raises_is_one_line():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise ValueError("my model wants 5 channels")

    with pytest.raises(D.TeacherError, match="teacher mine failed on images .*wants 5 channels"):
        D.ModuleTeacher(Broken(), "mine", normalize=False)(torch.rand(1, 3, 8, 8))


def test_texture_colours_no_longer_tell_the_parts_apart():
    """--colours texture (issue 32): the image's colour at a point predicts its body part from the
    part colours, hardly from a texture that ignores the parts (nearest class mean over RGB)."""
    def colour_part_accuracy(colours: str) -> float:
        rgb, part = [], []
        for video in D.builtin_rgbd("train", 2, 256, 1, colours=colours).videos:
            f = video[0]()
            K, T = (torch.tensor(m, dtype=torch.float32)[None] for m in f.cameras[0])
            image = torch.from_numpy(f.images[0]).permute(2, 0, 1)[None].float() / 255
            cams = [{"K": K, "to_camera": T, "image_size": image.shape[-2:]}]
            feats, seen, _ = D.pixel_features(torch.from_numpy(f.points)[None], cams, [image])
            rgb.append(feats[0][seen[0]])
            part.append(torch.from_numpy(f.parts)[seen[0]])
        rgb, part = torch.cat(rgb), torch.cat(part)
        means = torch.stack([rgb[part == p].mean(0) for p in range(len(D.BODY_PARTS))])
        return ((rgb[:, None] - means).norm(dim=-1).argmin(1) == part).float().mean().item()

    parts, texture = colour_part_accuracy("parts"), colour_part_accuracy("texture")
    assert parts > 0.7 and texture < 0.45, (parts, texture)
    frames = D.builtin_rgbd("train", 2, 64, 1).videos[0][0]()
    again = D.builtin_rgbd("train", 2, 64, 1, colours="parts").videos[0][0]()
    assert np.array_equal(frames.images[0], again.images[0])                     # the default stream is unchanged


@pytest.mark.skipif(not NUSCENES.is_dir(), reason=f"{NUSCENES} is absent")
def test_malformed_boxes_name_the_calibration(tmp_path):
    import shutil

    shutil.copytree(NUSCENES, tmp_path / "s")
    calib = json.loads((tmp_path / "s" / "calib.json").read_text())
    for bad in ({"categories": None}, {"boxes_lidar": [{"label": 3, "box": [0, 0, 0, 1, 1]}]},
                {"boxes_lidar": [{"label": 10, "box": [0, 0, 0, 1, 1, 1, 0]}]}):
        (tmp_path / "s" / "calib.json").write_text(json.dumps({**calib, **bad}))
        with pytest.raises(D.DataError, match=r"calib.json: boxes_lidar needs categories"):
            D.open_paired(tmp_path / "s")
    del calib["boxes_lidar"]                                                     # no boxes: no labels, as before
    (tmp_path / "s" / "calib.json").write_text(json.dumps(calib))
    data = D.open_paired(tmp_path / "s", num_points=64)
    assert data.part_names is None and data.videos[0][0]().parts is None
