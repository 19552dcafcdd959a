"""4D data: the built-in figures in motion, clip cutting, and the readers of the layouts users
hold (MSR-Action3D .bin/.npz, depth-PNG folders, TUM RGB-D, a folder of frame files), each
checked on small files written in exactly that format, and on the real depth frames in
../shared/data when present."""
import json

import numpy as np
import pytest
import torch

import jepa3d_data as D
from conftest import ROOT, SHARED, run_cli

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
    assert np.isclose(frames[0][0, 0], (10 - 16) * float(d0[8, 10]) / 1000 / 280)  # metres
    # --intrinsics replaces the guess: fx 560 about cx 12 halves and shifts x
    mine = D.open_dataset(tmp_path, "train", num_points=64, frames=4, intrinsics=(560, 560, 12, 12))
    assert not torch.equal(mine.frames_data, train.frames_data)
    assert np.isclose(D.read_msr_bin(tmp_path / "a01_s01_e01_sdepth.bin", (560, 560, 12, 12))[0][0, 0],
                      (10 - 12) * float(d0[8, 10]) / 1000 / 560)                   # millimetres -> metres
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
    # forced onto folders that hold none: one line naming the folder, for both depth layouts
    (tmp_path / "rgb" / "note.txt").write_text("not a sequence")
    for layout, what in (("tum-rgbd", "rgb: no TUM RGB-D sequence"), ("depth-sequence", "rgb: no depth sequence")):
        with pytest.raises(D.DataError, match=what):
            D.open_dataset(tmp_path / "rgb", "train", dataset=layout)


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
    report = D.inspect_data(root, frames=4)
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
    r = run_cli("inspect", root, "--frames", "2", "--frame-stride", "2", "--intrinsics", "500", "500", "300", "250")
    assert r.returncode == 0, r.stderr
    train = json.loads(r.stdout)["splits"]["train"]
    assert train["frame_stride"] == 2 and train["samples"] == 2   # span 3 of 5 frames: starts 0 and 2


# ----------------------------------------------------------------------------- the model on clips
import jepa3d  # noqa: E402


def clip_cfg(**kw):
    return jepa3d.make_configs("tiny4d", **{"frames": 6, "num_points": 64, "num_groups": 8, "group_size": 8, "num_targets": 2,
                                                  **kw})[0]


def clips(B=3, T=6, P=96, seed=0):
    return torch.randn(B, T, P, 3, generator=torch.Generator().manual_seed(seed))


def test_tokenize_clips_frame_by_frame_with_time():
    cfg = clip_cfg()
    x = clips()
    pts = jepa3d.fit_points(x, cfg.num_points, torch.Generator().manual_seed(0))
    patches, centres = jepa3d.tokenize(pts, cfg, torch.Generator().manual_seed(1))
    assert patches.shape == (3, 6 * 8, 8, 3) and centres.shape == (3, 6 * 8, 4)
    # frame i's tokens sit at t = (2i - 5) / 6 and are that frame's own patches
    assert torch.allclose(centres[0, ::8, 3], (2 * torch.arange(6.0) - 5) / 6)
    frame2 = centres[:, 16:24, :3]                                # centres of frame 2 are points of frame 2
    assert (frame2[:, :, None] - pts[:, 2, None]).norm(dim=-1).amin(-1).max() < 1e-6
    # a single-cloud model reads the same clip frame by frame: B*T clouds, 3 coordinates
    p3, c3 = jepa3d.tokenize(pts, clip_cfg(frames=1, sampler="context-block"), torch.Generator().manual_seed(1))
    assert p3.shape == (18, 8, 8, 3) and c3.shape == (18, 8, 3)


def test_tube_and_future_masks():
    cfg = clip_cfg(sampler="tube", num_targets=2, target_scale=(0.25, 0.25))
    _, centres = jepa3d.tokenize(clips(), cfg, torch.Generator().manual_seed(0))
    m = jepa3d.sample_tube(centres, cfg, torch.Generator().manual_seed(3))
    assert m.targets.shape == (3, 2, 6 * 2)                       # 2 tubes x 6 frames x 2 patches
    for b in range(3):
        for t in range(2):
            frames = m.targets[b, t] // 8
            assert torch.equal(frames, torch.arange(6).repeat_interleave(2))   # every frame, k per frame
        context = set(m.context[b][m.context_keep[b]].tolist())
        assert not context & set(m.targets[b].flatten().tolist())
        assert len(context) == 48 - len(set(m.targets[b].flatten().tolist()))
    cfg = clip_cfg(sampler="future", future_frames=2)
    m = jepa3d.sample_future(centres, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(m.context, torch.arange(32).expand(3, -1))   # the first 4 frames, all of them
    assert (m.targets // 8 >= 4).all() and m.context_keep is None   # targets only in the last 2 frames
    with pytest.raises(ValueError, match="needs clips"):
        clip_cfg(frames=1, sampler="tube").check_masking()
    with pytest.raises(ValueError, match="leaves no context frame"):
        clip_cfg(sampler="future", future_frames=6).check_masking()


@pytest.mark.parametrize("sampler", ["tube", "future", "context-block", "knn-blocks"])
def test_jepa_learns_on_clips_with_every_sampler(sampler):
    torch.manual_seed(0)
    model = jepa3d.JEPA(clip_cfg(sampler=sampler))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = jepa3d.fit_points(clips(B=4), 64, torch.Generator().manual_seed(0))
    losses = []
    for step in range(6):
        loss, stats = model(x, torch.Generator().manual_seed(step % 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses)) and min(losses[4:]) < losses[0]
    assert model.encoder.pos_embed[0].in_features == 4


def test_per_frame_model_pools_every_frame():
    cfg = clip_cfg(frames=1, sampler="context-block")
    enc = jepa3d.random_encoder(cfg, 0).eval()
    x = jepa3d.fit_points(clips(B=2), 64, torch.Generator().manual_seed(0))
    tokens, _ = jepa3d.encode(enc, cfg, x, torch.Generator().manual_seed(5))
    assert tokens.shape == (2, 6 * 8, cfg.dim)
    g = torch.Generator().manual_seed(5)
    patches, centres = jepa3d.tokenize(x, cfg, g)                 # (B*T, G, K, 3): frame by frame
    alone = enc(patches[1 * 6 + 3][None], centres[1 * 6 + 3][None])   # frame 3 of clip 1 as its own cloud
    assert torch.allclose(alone[0], tokens[1, 3 * 8:4 * 8], atol=1e-5)


def test_video_accuracy_sums_clip_scores():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    videos = torch.tensor([0, 0, 1, 1])
    # video 0: 1.1 vs 0.9 -> class 0 (right); video 1: 0.9 vs 1.1 -> class 1 (wrong)
    assert jepa3d.video_accuracy(scores, videos, torch.tensor([0, 0]), 2)[0] == 50.0


# ----------------------------------------------------------------------------- the CLI on clips
def test_cli_4d_pretrain_resume_preview_probe_finetune(tmp_path):
    run = tmp_path / "run"
    small = ["--frames", "4", "--num-points", "64", "--num-groups", "8", "--group-size", "8", "--batch-size", "8",
             "--num-targets", "2"]
    r = run_cli("pretrain", "--preset", "tiny4d", *small, "--epochs", "1", "--out", run, "--max-steps", "3",
                "--log-every", "1")
    assert r.returncode == 0, r.stderr
    assert "jepa3d pretrain: 1000 clips of 4 frames" in r.stderr         # the built-in 4D data by default
    r = run_cli("pretrain", "--out", run, "--resume", "--max-steps", "5")
    assert r.returncode == 0, r.stderr
    straight = tmp_path / "straight"
    r = run_cli("pretrain", "--preset", "tiny4d", *small, "--epochs", "1", "--out", straight, "--max-steps", "5")
    assert r.returncode == 0, r.stderr
    last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
    again = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["step"] == again["step"] == 4 and last["loss"] == again["loss"]      # resumed exactly
    ckpt = run / "checkpoint.safetensors"
    r = run_cli("mask-preview", "--checkpoint", ckpt, "--out", tmp_path / "m.ply")
    assert r.returncode == 0, r.stderr
    preview = json.loads(r.stdout)
    assert preview["points"] == 4 * 64 and preview["sampler"] == "tube" and preview["target"] > 0
    r = run_cli("linear-probe", "--checkpoint", ckpt, "--classifier", "svc", "--out", tmp_path / "lp")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["test_clouds"] == 200 and 0 <= res["svc"]["video_accuracy"] <= 100
    # MSR-Action3D files in the raw format: fine-tune reports clip and video accuracy
    msr = tmp_path / "msr"
    msr.mkdir()
    rng = np.random.default_rng(0)
    for a in (1, 2):
        for s in (1, 2, 6, 7):
            depth = np.zeros((10, 24, 32), np.uint32)
            for f in range(10):
                c = 8 + (f if a == 1 else -f // 2)
                depth[f, 6:18, c:c + 8] = rng.integers(1500, 2500, (12, 8))
            write_msr_bin(msr / f"a{a:02d}_s{s:02d}_e01_sdepth.bin", depth)
    r = run_cli("finetune", "--task", "msr-action3d", "--data", msr, "--checkpoint", ckpt, "--epochs", "1",
                "--batch-size", "4", "--frames", "4", "--out", tmp_path / "ft")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert "video_accuracy" in res and "accuracy" in res
    # a clip model refuses single clouds; a single-cloud task needs its own data
    r = run_cli("linear-probe", "--checkpoint", ckpt, "--dataset", "builtin", "--out", tmp_path / "bad")
    assert r.returncode == 2 and "takes clips of 4 frames" in r.stderr
    # a random clip encoder with point tubes (the baseline of --tokens tube); a checkpoint keeps its own tokens
    r = run_cli("linear-probe", "--checkpoint", "none", "--preset", "tiny4d", *small[:8], "--tokens", "tube",
                "--classifier", "svc", "--out", tmp_path / "tubes")
    assert r.returncode == 0, r.stderr
    assert "clips of 4 frames, tube tokens" in json.loads(r.stdout)["encoder"]
    r = run_cli("linear-probe", "--checkpoint", ckpt, "--tokens", "tube", "--out", tmp_path / "bad2")
    assert r.returncode == 2 and "keeps the tokens it was trained with" in r.stderr


def test_a_cloud_model_pretrains_on_one_frame_per_clip():
    x = clips(B=5, T=6, P=20)
    train = jepa3d.TrainConfig(subsample="fps")
    one, _ = jepa3d._step_inputs(x, None, clip_cfg(frames=1, sampler="context-block", num_points=20), train,
                                 torch.Generator().manual_seed(0), None)
    assert one.shape == (5, 20, 3)
    assert all(any(torch.equal(one[b], x[b, t]) for t in range(6)) for b in range(5))
    kept, _ = jepa3d._step_inputs(x, None, clip_cfg(num_points=20), train, torch.Generator(), None)
    assert kept is x                                                          # a clip model keeps the clip


def test_sequence_data_makes_a_clip_model_unless_told(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for seq in range(4):
            d = tmp_path / "data" / cls / f"s{seq}"
            d.mkdir(parents=True)
            for f in range(3):
                np.save(d / f"{f}.npy", rng.normal(size=(40, 3)))
    small = ["--preset", "tiny", "--num-points", "32", "--num-groups", "8", "--group-size", "8", "--batch-size", "4",
             "--num-targets", "1", "--max-steps", "1"]
    r = run_cli("pretrain", "--data", tmp_path / "data", *small, "--out", tmp_path / "clip")
    assert r.returncode == 0, r.stderr
    assert "8 clips of 16 frames" in r.stderr                      # ReadOptions.frames: 3-frame videos repeat their last
    r = run_cli("pretrain", "--data", tmp_path / "data", *small, "--frames", "1", "--out", tmp_path / "frame")
    assert r.returncode == 0, r.stderr
    assert "24 clouds" in r.stderr                                 # the per-frame baseline: every frame is a clip of 1


def test_tube_tokens_group_anchors_across_neighbouring_frames():
    cfg = clip_cfg(tokens="tube", tube_radius=1, tube_stride=2, frames=5)   # anchors in frames 0, 2, 4
    x = jepa3d.fit_points(clips(B=2, T=5), cfg.num_points, torch.Generator().manual_seed(0))   # (2, 5, 64, 3)
    patches, centres = jepa3d.tokenize(x, cfg, torch.Generator().manual_seed(1))
    assert patches.shape == (2, 3 * 8, 3 * 8, 4) and centres.shape == (2, 3 * 8, 4)
    assert torch.allclose(centres[0, ::8, 3], torch.tensor([-4.0, 0.0, 4.0]) / 5)   # t of frames 0, 2, 4
    # token 8 + g is anchored in frame 2: its points come from frames 1, 2, 3 (dt -2/5, 0, 2/5), K each
    tube = patches[1, 8 + 3]                                                  # (3K, 4)
    assert torch.allclose(tube[:, 3].unique(), torch.tensor([-0.4, 0.0, 0.4]))
    for f, dt in ((1, -0.4), (2, 0.0), (3, 0.4)):
        pts = tube[(tube[:, 3] - dt).abs() < 1e-6, :3] + centres[1, 8 + 3, :3]
        assert len(pts) == 8 and (pts[:, None] - x[1, f][None]).norm(dim=-1).amin(1).max() < 1e-5
    # the first anchor frame clamps its past to itself
    assert (patches[0, :8, :, 3] >= 0).all()
    model = jepa3d.JEPA(cfg)
    loss, _ = model(x, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and model.encoder.patch_embed.first[0].in_features == 4
    with pytest.raises(ValueError, match="tube tokens need"):
        clip_cfg(tokens="tube", objective="reconstruct").check_masking()
    # the mask preview of a tube-token clip: every frame's points take a role from its nearest anchor frame
    pts, roles = jepa3d.mask_preview(clips(B=1, T=5, P=96)[0], cfg)
    assert pts.shape == (5 * 64, 3) and roles.shape == (5 * 64,) and (roles >= 1).all()


def test_msr_archive_parent_folder_is_read_through_depth(tmp_path):
    # the MSR-Action3D archive unpacks to Depth/: its parent folder is detected and read as it comes
    (tmp_path / "Depth").mkdir()
    depth = np.zeros((3, 24, 32))
    depth[:, 6:18, 8:20] = 2000
    for name in ("a01_s01_e01", "a02_s07_e01"):
        write_msr_bin(tmp_path / "Depth" / f"{name}_sdepth.bin", depth)
    assert D.detect_layout(tmp_path) == "msr-action3d"
    assert D.open_dataset(tmp_path, "train", num_points=16, frames=2).video_names == ["a01_s01_e01"]
    assert D.open_dataset(tmp_path, "test", num_points=16, frames=2).video_names == ["a02_s07_e01"]
    (tmp_path / "Depth" / "a02_s07_e01_sdepth.bin").unlink()
    with pytest.raises(D.DataError, match="no MSR-Action3D video of the test split .*one folder down"):
        D.open_dataset(tmp_path, "test", num_points=16, frames=2, dataset="msr-action3d")


def test_tum_listings_as_the_public_tools_write_them(tmp_path):
    # associate.py writes its first argument's column first: rgb-first and depth-first files both
    # occur (tum2klg ships depth-first); listings need not be in time order
    (tmp_path / "depth").mkdir()
    (tmp_path / "rgb").mkdir()
    for i in range(4):
        depth = np.zeros((48, 64), np.uint16)
        depth[10:30, 20 + 4 * i:40 + 4 * i] = 5000                  # drifting right with time
        write_png16(tmp_path / "depth" / f"{i}.png", depth)
        PIL.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "rgb" / f"{i}.png")
    rgb_first = [f"{i}.00 rgb/{i}.png {i}.01 depth/{i}.png" for i in range(4)]
    depth_first = [f"{i}.01 depth/{i}.png {i}.00 rgb/{i}.png" for i in (2, 0, 3, 1)]   # shuffled too
    read = {}
    for name, lines in (("rgb first", rgb_first), ("depth first", depth_first)):
        (tmp_path / "associations.txt").write_text("# associate.py output\n" + "\n".join(lines) + "\n")
        read[name] = D.open_dataset(tmp_path, "train", num_points=64, frames=4).frames_data
        pairs = D.open_paired(tmp_path, num_points=64, intrinsics=(60.0, 60.0, 32.0, 24.0))
        assert [f().names for f in pairs.videos[0]] == [[f"{i}.png"] for i in range(4)]
    assert torch.equal(read["rgb first"], read["depth first"])
    assert (read["rgb first"][:, :, 0].mean(1).diff() > 0).all()     # time order: the patch moves right
    # the columns told apart by bit depth when the folders do not say
    for i in range(4):
        (tmp_path / "depth" / f"{i}.png").rename(tmp_path / "depth" / f"d{i}.png")
    (tmp_path / "x").mkdir()
    for i in range(4):
        (tmp_path / "depth" / f"d{i}.png").rename(tmp_path / "x" / f"d{i}.png")
        (tmp_path / "rgb" / f"{i}.png").rename(tmp_path / "x" / f"{i}.png")
    (tmp_path / "associations.txt").write_text("\n".join(f"{i}.0 x/d{i}.png {i}.1 x/{i}.png" for i in range(4)))
    assert torch.equal(D.open_dataset(tmp_path, "train", num_points=64, frames=4).frames_data, read["rgb first"])
    (tmp_path / "associations.txt").write_text("0.0 x/0.png 0.1 x/1.png\n")
    with pytest.raises(D.DataError, match="associations.txt: cannot tell which of x/0.png and x/1.png is the depth"):
        D.open_dataset(tmp_path, "train", num_points=64, frames=4)
    (tmp_path / "associations.txt").unlink()
    (tmp_path / "depth.txt").write_text("1.0 x/d0.png\n0.5 x/d1.png\n1.0 x/d2.png\n")
    with pytest.raises(D.DataError, match="depth.txt: timestamp 1.0 is listed twice"):
        D.open_dataset(tmp_path, "train", num_points=64, frames=2)


def test_saturated_depth_is_dropped_and_a_depth_range_applies(tmp_path):
    # 16-bit depth stores "nothing measured" as 65535 (TUM: 13.1 m): such pixels are not points,
    # and the reader says how many went; --min-depth / --max-depth cut the range in metres
    (tmp_path / "depth").mkdir()
    lines = []
    for i in range(2):
        depth = np.zeros((48, 64), np.uint16)
        depth[10:30, 20:40] = 5000                                  # 1 m: the scene
        depth[0:5, 0:10] = 65535                                    # saturated
        depth[40:45, 50:60] = 15000                                 # 3 m: far
        write_png16(tmp_path / "depth" / f"{i}.png", depth)
        lines.append(f"{i}.0 depth/{i}.png")
    (tmp_path / "depth.txt").write_text("\n".join(lines) + "\n")
    for kw, far in (({}, 3.0), ({"max_depth": 2.0}, 1.0)):
        ds = D.open_dataset(tmp_path, "train", num_points=500, frames=2, **kw)
        z = -D.depth_to_points(np.asarray(PIL.open(tmp_path / "depth" / "0.png")), D.TUM_INTRINSICS, 5000.0,
                               keep=D.DepthKeep(D.PNG_SATURATED, 0.0, kw.get("max_depth")))[:, 2]
        assert np.isclose(z.max(), far) and len(z) == 400 + 50 * (far > 2)
        assert len(ds) == 1
    r = run_cli("inspect", tmp_path, "--frames", "2", "--max-depth", "2")
    assert r.returncode == 0 and "dropped 100 of 1000 depth pixels at the sensor's saturation value 65535 and " \
                                  "100 outside 0.0-2.0 m" in r.stderr, r.stderr


@pytest.mark.skipif(not (SHARED / "deformingthings4d_example").is_dir(), reason="the real DT4D sample is absent")
def test_the_intrinsics_in_use_are_printed():
    r = run_cli("inspect", SHARED / "deformingthings4d_example", "--frames", "4")
    assert r.returncode == 0 and "depth back-projected with fx 519.93, fy 519.93, cx 300.0, cy 250.0 (cam_intr.txt)" \
        in r.stderr, r.stderr
    r = run_cli("inspect", SHARED / "deformingthings4d_example", "--frames", "4", "--intrinsics", "500", "500", "300", "250")
    assert "(--intrinsics)" in r.stderr


def test_a_cloud_checkpoint_previews_one_frame_of_a_clip(tmp_path):
    cfg = jepa3d.make_configs("tiny", num_points=64, num_groups=16, group_size=8)[0]
    pts, roles = jepa3d.mask_preview(clips(B=1, T=4, P=96)[0], cfg)
    assert pts.shape == (64, 3) and roles.shape == (64,) and (roles == 1).any()
