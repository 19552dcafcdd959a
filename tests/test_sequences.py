"""4D data: the built-in figures in motion, clip cutting, and the readers of the layouts users
hold (MSR-Action3D .bin/.npz, depth-PNG folders, TUM RGB-D, a folder of frame files), each
checked on small files written in exactly that format, and on the real depth frames in
../shared/data when present."""
import json

import numpy as np
import pytest
import torch

import jepa3d_data as D
from conftest import ROOT, run_cli

SHARED = ROOT.parent / "shared" / "data"
PIL = pytest.importorskip("PIL.Image", reason="the depth-PNG readers need Pillow (pip install 'jepa3d[images]')")


def write_msr_bin(path, depth):
    """depth (F, H, W) -> an MSR-Action3D .bin: uint32 frames, width, height, then uint32 depth."""
    F, H, W = depth.shape
    np.concatenate([np.array([F, W, H], "<u4"), depth.astype("<u4").ravel()]).tofile(path)


def write_png16(path, depth):
    PIL.fromarray(depth.astype(np.uint16)).save(path)


# ----------------------------------------------------------------------------- clips
def test_clips_cover_every_video_and_keep_motion():
    videos = [np.arange(n * 4 * 3, dtype=np.float32).reshape(n, 4, 3) for n in (10, 3)]
    ds = D.SequenceDataset(videos, [0, 1], ["a", "b"], "t", frames=4, stride=2)
    # span 7: video 0 (10 frames) gives starts 0 and 3 (the tail), video 1 (3 frames) one clamped clip
    assert ds.clips.tolist() == [[0, 0], [0, 3], [1, 0]]
    assert ds.labels.tolist() == [0, 0, 1] and ds.videos_of.tolist() == [0, 0, 1]
    x, y = ds[2]
    assert x.shape == (4, 4, 3) and int(y) == 1
    assert torch.equal(x[1], x[2]) and torch.equal(x[2], x[3])      # frames 2, 4, 6 -> 2, 2, 2 (last frame)
    # the clip is normalised as a whole: frame 0 and the last frame keep their offset
    x, _ = ds[0]
    assert abs(float(x.norm(dim=-1).max()) - 1) < 1e-6 and abs(float(x.mean(dim=(0, 1)).abs().max())) < 1e-6
    assert float((x[-1] - x[0]).mean(dim=0).norm()) > 0.5


def test_builtin4d_is_deterministic_and_frames_alike_across_actions():
    a = D.builtin4d_dataset("train", 128, 8, per_class=2)
    b = D.builtin4d_dataset("train", 128, 8, per_class=2)
    assert len(a) == 2 * len(D.ACTIONS) and a[0][0].shape == (8, 128, 3)
    assert torch.equal(a.frames_data, b.frames_data)
    assert not torch.equal(a.frames_data, D.builtin4d_dataset("test", 128, 8, per_class=2).frames_data)
    # approach and retreat: the same body, opposite motion along the sensor's axis (z)
    app, ret = D.ACTIONS.index("approach"), D.ACTIONS.index("retreat")
    dz = [float(a[2 * c][0][-1, :, 2].mean() - a[2 * c][0][0, :, 2].mean()) for c in (app, ret)]
    assert dz[0] > 0.1 and dz[1] < -0.1


def test_visibility_drops_the_hidden_side():
    rng = np.random.default_rng(0)
    full = D.make_motion("nod", 256, 4, np.random.default_rng(3), partial=False)
    part = D.make_motion("nod", 256, 4, np.random.default_rng(3), partial=True)
    assert full.shape == part.shape == (4, 256, 3)
    # a sensor at +z sees the front: the partial view's points sit further towards +z
    assert part[..., 2].mean() > full[..., 2].mean() + 0.02
    pts = np.concatenate([rng.uniform(-1, 1, (2000, 3)) * [1, 1, 0] + [0, 0, 1],   # a front plane z=1
                          rng.uniform(-1, 1, (200, 3)) * [1, 1, 0]])               # a hidden plane z=0
    keep = D._visible(pts[None], grid=8)[0]                      # 2000 points leave no cell of 8x8 empty
    assert keep[:2000].all() and not keep[2000:].any()


# ----------------------------------------------------------------------------- depth back-projection
def test_depth_to_points_by_hand():
    depth = np.zeros((4, 6), np.uint16)
    depth[1, 4] = 2000                                  # pixel u=4, v=1 at 2 m (millimetres)
    p = D.depth_to_points(depth, (100.0, 50.0, 3.0, 2.0), 1000.0)
    # OpenCV: x = (4-3)*2/100 = 0.02, y = (1-2)*2/50 = -0.04, z = 2; turned y-up: (x, -y, -z)
    assert np.allclose(p, [[0.02, 0.04, -2.0]])
    extr = np.eye(4)
    extr[:3, 3] = [1, 2, 3]
    assert np.allclose(D.depth_to_points(depth, (100.0, 50.0, 3.0, 2.0), 1000.0, extr), [[1.02, 1.96, 5.0]])


# ----------------------------------------------------------------------------- MSR-Action3D
def test_msr_bin_and_npz(tmp_path):
    rng = np.random.default_rng(0)
    for a, s in [(1, 1), (2, 3), (1, 7), (20, 10)]:
        depth = np.zeros((5, 24, 32), np.uint32)
        depth[:, 8:16, 10:20] = rng.integers(1500, 2500, (5, 8, 10))
        write_msr_bin(tmp_path / f"a{a:02d}_s{s:02d}_e01_sdepth.bin", depth)
    train = D.open_dataset(tmp_path, "train", num_points=64, frames=4)
    test = D.open_dataset(tmp_path, "test", num_points=64, frames=4)
    assert D.detect_layout(tmp_path) == "msr-action3d"
    assert train.video_labels.tolist() == [0, 1] and test.video_labels.tolist() == [0, 19]
    assert len(train) == 4 and train[0][0].shape == (4, 64, 3) and train.classes[19] == "pick up & throw"
    frames = D.read_msr_bin(tmp_path / "a01_s01_e01_sdepth.bin")
    assert len(frames) == 5 and frames[0].shape == (80, 3)
    # the field's back-projection: x = (u - W/2) z / 280 about the image centre
    d0 = np.fromfile(tmp_path / "a01_s01_e01_sdepth.bin", "<u4")[3:].reshape(5, 24, 32)[0]
    assert np.isclose(frames[0][0, 0], (10 - 16) * float(d0[8, 10]) / 280)
    # the preprocessed .npz: equal frames (a plain array) and unequal ones (pickled, opt-in)
    np.savez(tmp_path / "a03_s02_e02.npz", point_clouds=rng.normal(size=(6, 50, 3)))
    obj = np.empty(2, object)
    obj[0], obj[1] = rng.normal(size=(30, 3)), rng.normal(size=(40, 3))
    np.savez(tmp_path / "a04_s02_e01.npz", point_clouds=obj)
    with pytest.raises(D.DataError, match="--trust-pickle"):
        D.open_dataset(tmp_path, "train", num_points=32, frames=4)
    ds = D.open_dataset(tmp_path, "train", num_points=32, frames=4, trust_pickle=True)
    assert sorted(ds.video_labels.tolist()) == [0, 1, 2, 3]


def test_msr_bad_files_name_the_file(tmp_path):
    write_msr_bin(tmp_path / "a01_s01_e01_sdepth.bin", np.ones((3, 4, 5)))
    with open(tmp_path / "a01_s01_e01_sdepth.bin", "ab") as f:
        f.write(b"\0\0\0\0")
    with pytest.raises(D.DataError, match="a01_s01_e01_sdepth.bin: header says 3 frames of 5x4"):
        D.open_dataset(tmp_path, "train", num_points=8, frames=2)
    write_msr_bin(tmp_path / "a01_s01_e01_sdepth.bin", np.zeros((3, 4, 5)))
    with pytest.raises(D.DataError, match="no frame has any point"):
        D.open_dataset(tmp_path, "train", num_points=8, frames=2)


# ----------------------------------------------------------------------------- depth folders and TUM
def test_tum_layout(tmp_path):
    (tmp_path / "depth").mkdir()
    (tmp_path / "rgb").mkdir()
    lines = ["# depth maps", "# file: 'x'", "# timestamp filename"]
    for i in range(6):
        depth = np.zeros((48, 64), np.uint16)
        depth[10:30, 20 + i:40 + i] = 5000 + 100 * i              # 1 m away, drifting right
        write_png16(tmp_path / "depth" / f"{100 + i}.5.png", depth)
        lines.append(f"{100 + i}.5 depth/{100 + i}.5.png")
    (tmp_path / "depth.txt").write_text("\n".join(lines) + "\n")
    assert D.detect_layout(tmp_path) == "tum-rgbd"
    ds = D.open_dataset(tmp_path, "train", num_points=100, frames=3, frame_stride=2)
    assert len(ds) == 2 and ds.frames_data.shape == (6, 100, 3)   # span 5 of 6 frames: starts 0 and 1
    assert np.isclose(float(-ds.frames_data[0, :, 2].max()), 1.0)          # 5000 units = 1 m
    x = D.depth_to_points(np.asarray(PIL.open(tmp_path / "depth" / "100.5.png")), D.TUM_INTRINSICS, 5000.0)
    assert np.isclose(x[:, 0].min(), (20 - 318.6) / 517.3)
    (tmp_path / "depth.txt").write_text("1.0 ../../etc/passwd\n")
    with pytest.raises(D.DataError, match="depth.txt: entry"):
        D.open_dataset(tmp_path, "train", num_points=100, frames=3)
    with pytest.raises(D.DataError, match="no train/test split"):
        D.open_dataset(tmp_path, "test")


def test_depth_sequences_real_deformingthings4d():
    root = SHARED / "deformingthings4d_example"
    if not root.is_dir():
        pytest.skip(f"{root} is absent (real DeformingThings4D depth frames)")
    assert D.detect_layout(root) == "depth-sequence"
    ds = D.open_dataset(root, "train", num_points=2048, frames=5)
    assert len(ds) == 1 and ds.frames_data.shape == (5, 2048, 3)
    # cam_extr.txt is camera-to-world: the character stands on the world's ground (z = 0, z up)
    z = ds.frames_data[..., 2]
    assert -0.05 < float(z.min()) < 0.05 and float(z.max()) > 1.0
    report = D.inspect(root, frames=4)
    assert report["splits"]["train"]["sequences"] == 1 and report["splits"]["train"]["samples"] == 2


def test_sequence_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("jump", "run"):
            for seq in range(2):
                d = tmp_path / split / cls / f"seq{seq}"
                d.mkdir(parents=True)
                for f in (1, 2, 10):
                    np.save(d / f"frame{f}.npy", rng.normal(size=(40, 3)) + [f, 0, 0])
    assert D.detect_layout(tmp_path) == "sequence-folder"
    ds = D.open_dataset(tmp_path, "test", num_points=32, frames=3)
    assert len(ds) == 4 and ds.classes == ["jump", "run"] and ds.video_labels.tolist() == [0, 0, 1, 1]
    x = ds.frames_data[:3, :, 0].mean(dim=1)
    assert x[0] < x[1] < x[2]                                    # frame2 before frame10 (natural order)
    np.save(tmp_path / "train" / "run" / "seq1" / "frame3.npy", np.full((4, 3), np.nan))
    with pytest.raises(D.DataError, match="frame3.npy"):
        D.open_dataset(tmp_path, "train", num_points=32, frames=3)
    assert len(D.open_dataset(tmp_path, "train", num_points=32, frames=3, skip_bad=True).skipped) == 1


def test_inspect_cli_reports_sequences(tmp_path):
    root = SHARED / "deformingthings4d_example"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    r = run_cli("inspect", root, "--frames", "4")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["layout"] == "depth-sequence" and report["splits"]["train"]["frames_per_sequence"]["max"] == 5
