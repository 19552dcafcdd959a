"""Issue 14: no silent corruption, no traceback, no unbounded allocation. Each test is one of the
issue's reproductions, run the way a user hits it."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import jepa3d
import jepa3d_data
from conftest import ROOT, SMALL, SMALL_FLAGS, rewrite_metadata, run_cli

def one_clean_line(proc, *words):
    """Exit 1, no traceback, one line on stderr (after any progress lines) naming `words`."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    error = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(error) == 1, proc.stderr
    for word in words:
        assert word in error[0], error[0]
    return error[0]


def small_checkpoint(tmp_path, steps=2, name="run"):
    data = jepa3d_data.builtin_dataset("train", 128, per_class=2)
    cfg, tcfg = jepa3d.make_configs("tiny", **SMALL)
    jepa3d.pretrain(data, tmp_path / name, cfg, tcfg, device=torch.device("cpu"), max_steps=steps, save_every=1)
    return tmp_path / name / "checkpoint.safetensors"


def shapenet_folder(root, clouds: dict, test: list | None = None):
    """A ShapeNet-55 layout: shapenet_pc/<name> for each cloud, all listed in train.txt, `test`
    (default: the first) in test.txt. Names may be any string (the lists are what is tested)."""
    (root / "shapenet_pc").mkdir(parents=True)
    (root / "ShapeNet-55").mkdir()
    for name, cloud in clouds.items():
        if cloud is not None:
            np.save(root / "shapenet_pc" / name, cloud)
    (root / "ShapeNet-55" / "train.txt").write_text("".join(n + "\n" for n in clouds))
    (root / "ShapeNet-55" / "test.txt").write_text("".join(n + "\n" for n in (test or list(clouds)[:1])))
    return root


# 1. divergence ----------------------------------------------------------------------------
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "nan"
    # fp32: a run that diverges inside its first save interval (bf16 keeps lr 1e6 finite a step longer)
    proc = run_cli("--precision", "fp32", "pretrain", "--preset", "tiny", *SMALL_FLAGS, "--lr", "1e6",
                   "--max-steps", "4", "--save-every", "2", "--out", out)
    one_clean_line(proc, "not finite", "--lr")
    assert proc.stdout == ""  # no result line, and never a bare NaN
    assert not (out / "checkpoint.safetensors").exists()
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))  # strict JSON


def test_a_run_that_diverges_later_never_overwrites_its_good_checkpoint(tmp_path, configs, monkeypatch):
    cfg, tcfg = configs
    data = jepa3d_data.builtin_dataset("train", 128, per_class=2)
    out = tmp_path / "run"
    jepa3d.pretrain(data, out, cfg, tcfg, device=torch.device("cpu"), max_steps=2, save_every=2)
    good = (out / "checkpoint.safetensors").read_bytes()
    real = jepa3d.train_step

    def poisoned(model, *args, **kwargs):  # the weights go bad in step 3, as a real divergence does
        stats = real(model, *args, **kwargs)
        with torch.no_grad():
            next(model.encoder.parameters()).fill_(float("nan"))
        return {**stats, "loss": torch.tensor(float("nan"))}

    monkeypatch.setattr(jepa3d, "train_step", poisoned)
    with pytest.raises(jepa3d.DivergedError, match=r"step 3: .*\(step 2\) is kept unchanged"):
        jepa3d.pretrain(data, out, cfg, tcfg, device=torch.device("cpu"), resume=True, max_steps=4, save_every=2)
    assert (out / "checkpoint.safetensors").read_bytes() == good


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    ckpt = small_checkpoint(tmp_path)
    tensors, meta = jepa3d.read_checkpoint(ckpt)
    key = next(k for k in tensors if k.startswith("target_encoder.") and tensors[k].is_floating_point())
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    from safetensors.torch import save_file
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=meta)
    proc = run_cli("linear-probe", "--checkpoint", tmp_path / "nan.safetensors")
    one_clean_line(proc, "nan.safetensors", "NaN")


# 2. checkpoints validated before allocation -----------------------------------------------
@pytest.mark.parametrize("change, words", [
    (dict(dim=16384), ["dim", "8192"]),                      # 4.4 GB before the old code noticed
    (dict(num_points=10**9), ["num_points"]),                 # 512 GB of points
    (dict(dim=-5), ["dim"]),
    (dict(dim=64, heads=2, pred_dim=64, pred_heads=2), ["shape"]),  # in bounds, but not the file's tensors
    (dict(depth=40), ["missing"]),
])
def test_a_checkpoint_config_is_checked_against_its_tensors_before_anything_is_built(tmp_path, change, words):
    ckpt = small_checkpoint(tmp_path)
    _, meta = jepa3d.read_header(ckpt)
    bad = rewrite_metadata(ckpt, tmp_path / "bad.safetensors",
                           model_config=json.dumps({**json.loads(meta["model_config"]), **change}))
    for call in (lambda: jepa3d.load_jepa(bad), lambda: jepa3d.load_encoder(str(bad))):
        with pytest.raises(jepa3d.CheckpointError, match="bad.safetensors") as err:
            call()
        for word in words:
            assert word in str(err.value)
    one_clean_line(run_cli("embed", "--checkpoint", bad, "--out", tmp_path / "e.npz"), "bad.safetensors")


def test_a_bad_config_never_allocates(tmp_path, monkeypatch):
    ckpt = small_checkpoint(tmp_path)
    _, meta = jepa3d.read_header(ckpt)
    big = dict(dim=4096, heads=8, pred_dim=4096, pred_heads=8, depth=64)  # in bounds: 13 GB of weights
    bad = rewrite_metadata(ckpt, tmp_path / "big.safetensors",
                           model_config=json.dumps({**json.loads(meta["model_config"]), **big}))
    built = []
    real = jepa3d.Encoder.__init__

    def spy(self, cfg):
        built.append(torch.empty(0).device)  # the device a tensor would be made on here
        real(self, cfg)

    monkeypatch.setattr(jepa3d.Encoder, "__init__", spy)
    with pytest.raises(jepa3d.CheckpointError, match="does not fit"):
        jepa3d.load_jepa(bad)
    assert built and all(d.type == "meta" for d in built)


@pytest.mark.parametrize("change, words", [
    (dict(step='"ten"'), ["step"]),
    (dict(format_version="two"), ["format_version"]),
    (dict(format_version="99"), ["newer"]),
])
def test_bad_checkpoint_metadata_is_one_line(tmp_path, change, words):
    ckpt = small_checkpoint(tmp_path)
    bad = rewrite_metadata(ckpt, tmp_path / "bad.safetensors", **change)
    one_clean_line(run_cli("linear-probe", "--checkpoint", bad), "bad.safetensors", *words)
    out = tmp_path / "run"
    bad.replace(out / "checkpoint.safetensors")
    one_clean_line(run_cli("pretrain", "--out", out, "--resume"), "checkpoint.safetensors", *words)


def test_a_folder_or_a_finetune_checkpoint_is_refused_in_one_line(tmp_path):
    ckpt = small_checkpoint(tmp_path)
    one_clean_line(run_cli("linear-probe", "--checkpoint", tmp_path / "run"), "is a folder")
    ft = tmp_path / "ft"
    proc = run_cli("finetune", "--task", "builtin", "--checkpoint", ckpt, "--epochs", "1", "--batch-size", "8",
                      "--out", ft)
    assert proc.returncode == 0, proc.stderr
    tuned = next(ft.glob("*.safetensors"))
    run = tmp_path / "again"
    run.mkdir()
    (run / "checkpoint.safetensors").write_bytes(tuned.read_bytes())
    one_clean_line(run_cli("pretrain", "--out", run, "--resume"), "checkpoint.safetensors")


# 3. one run per folder --------------------------------------------------------------------
def test_a_run_folder_is_owned_by_one_process(tmp_path, configs):
    cfg, tcfg = configs
    out = tmp_path / "run"
    data = jepa3d_data.builtin_dataset("train", 128, per_class=2)
    held = jepa3d.lock_folder(out)  # another process's run, as far as the lock can tell
    try:
        with pytest.raises(jepa3d.RunFolderError, match="in use"):
            jepa3d.pretrain(data, out, cfg, tcfg, device=torch.device("cpu"), max_steps=1)
        proc = run_cli("pretrain", "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "1", "--out", out)
        one_clean_line(proc, "in use")
        assert not (out / "metrics.jsonl").exists()
    finally:
        held.close()
    jepa3d.pretrain(data, out, cfg, tcfg, device=torch.device("cpu"), max_steps=1)  # free again


def test_a_killed_run_does_not_leave_its_folder_locked(tmp_path):
    out = tmp_path / "run"
    code = f"import jepa3d, os; from pathlib import Path; jepa3d.lock_folder(Path({str(out)!r})); os._exit(9)"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    jepa3d.lock_folder(out).close()


# 4, 5. resume keeps the data, the settings and the logs -----------------------------------
def test_resume_refuses_other_data_and_keeps_run_json(tmp_path):
    out = tmp_path / "run"
    first = run_cli("pretrain", "--preset", "tiny", *SMALL_FLAGS, "--dataset", "builtin-parts",
                       "--max-steps", "3", "--save-every", "1", "--out", out)
    assert first.returncode == 0, first.stderr
    info = (out / "run.json").read_bytes()
    assert json.loads(info)["save_every"] == 1
    # without --data the run continues on its own data (not the built-in default's)
    resumed = run_cli("pretrain", "--out", out, "--resume", "--max-steps", "4")
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "run.json").read_bytes() == info
    other = run_cli("pretrain", "--out", out, "--resume", "--max-steps", "5", "--dataset", "builtin")
    one_clean_line(other, "--new-data", "builtin-parts")
    assert (out / "run.json").read_bytes() == info


def test_save_every_is_kept_on_resume(tmp_path):
    out = tmp_path / "run"
    run_cli("pretrain", "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "2", "--save-every", "2", "--out", out)
    seen = []
    real = jepa3d.save_checkpoint
    # in-process, to see every save: resume without --save-every saves at steps 4 and 6, not per epoch
    from click.testing import CliRunner
    import unittest.mock as mock
    with mock.patch.object(jepa3d, "save_checkpoint", lambda *a, **k: (seen.append(k["step"]), real(*a, **k))):
        result = CliRunner().invoke(jepa3d.make_cli(), ["pretrain", "--out", str(out), "--resume",
                                                        "--max-steps", "6"])
    assert result.exit_code == 0, result.output
    assert seen == [4, 6]


def test_metrics_stay_one_line_per_step_after_a_kill_before_the_first_checkpoint(tmp_path, configs):
    cfg, tcfg = configs
    data = jepa3d_data.builtin_dataset("train", 128, per_class=2)
    out = tmp_path / "run"
    out.mkdir()
    # what a run killed at step 3, before its first checkpoint, leaves: lines and a torn last one
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(3))
                                       + '{"step": 3, "lo')
    jepa3d.pretrain(data, out, cfg, tcfg, device=torch.device("cpu"), max_steps=4, save_every=2)
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
    with open(out / "metrics.jsonl", "a") as fh:  # killed mid-line after the checkpoint at 4
        fh.write('{"step": 4, "lo')
    jepa3d.pretrain(data, out, cfg, tcfg, device=torch.device("cpu"), resume=True, max_steps=6, save_every=2)
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(6))


# 6. one error boundary ---------------------------------------------------------------------
def test_os_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_cli("pretrain", "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "1", "--out", blocker / "run")
    one_clean_line(proc, "file")
    debug = run_cli("--debug", "pretrain", "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "1",
                       "--out", blocker / "run")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    env = run_cli("pretrain", "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "1", "--out", blocker / "run",
                     env={"JEPA3D_DEBUG": "1"})
    assert "Traceback" in env.stderr


def test_a_worker_process_data_error_is_one_line(tmp_path):
    rng = np.random.default_rng(0)
    clouds = {f"02691156-{i:04d}.npy": rng.normal(size=(256, 3)).astype(np.float32) for i in range(8)}
    clouds["02691156-0005.npy"][7, 1] = np.nan
    root = shapenet_folder(tmp_path / "shapenet", clouds)
    proc = run_cli("pretrain", "--data", root, "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "2",
                      "--workers", "1", "--out", tmp_path / "run")
    line = one_clean_line(proc, "02691156-0005.npy")
    assert "Original Traceback" not in line and len(proc.stderr.splitlines()) < 6


def test_finite_json_metrics_when_the_run_is_fine(tmp_path, configs):
    cfg, tcfg = configs
    data = jepa3d_data.builtin_dataset("train", 128, per_class=2)
    result = jepa3d.pretrain(data, tmp_path / "r", cfg, tcfg, device=torch.device("cpu"), max_steps=2)
    assert math.isfinite(result["final_loss"])


# 7. silent wrong data ---------------------------------------------------------------------
def write_npz_split(root, points, labels):
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        np.savez(root / f"set_{split}.npz", points=points, labels=labels)
    return root


def test_fractional_labels_are_refused_not_truncated(tmp_path):
    pts = np.random.default_rng(0).normal(size=(4, 32, 3)).astype(np.float32)
    root = write_npz_split(tmp_path / "d", pts, np.array([0, 1, 0.7, 1]))
    with pytest.raises(jepa3d_data.DataError, match=r"set_train.npz: label 0.7 is not an integer"):
        jepa3d_data.open_dataset(root)
    ok = write_npz_split(tmp_path / "ok", pts, np.array([0.0, 1.0, 0.0, 1.0]))  # whole floats are fine
    assert jepa3d_data.open_dataset(ok).labels.tolist() == [0, 1, 0, 1]


def test_negative_counts_in_headers_are_refused(tmp_path):
    ply = tmp_path / "neg.ply"
    ply.write_text("ply\nformat ascii 1.0\nelement vertex -3\nproperty float x\nproperty float y\n"
                   "property float z\nend_header\n1 2 3\n")
    with pytest.raises(jepa3d_data.DataError, match="neg.ply: .*negative"):
        jepa3d_data.read_cloud(ply)
    pcd = tmp_path / "neg.pcd"
    pcd.write_text("FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nPOINTS -2\nDATA ascii\n1 2 3\n")
    with pytest.raises(jepa3d_data.DataError, match="neg.pcd: .*POINTS -2"):
        jepa3d_data.read_cloud(pcd)


def test_split_lists_cannot_reach_outside_the_dataset(tmp_path):
    np.save(tmp_path / "outside-b.npy", np.random.default_rng(1).normal(size=(64, 3)))
    root = shapenet_folder(tmp_path / "shapenet", {"02691156-a.npy": np.random.default_rng(0).normal(size=(64, 3)),
                                                   "../../outside-b.npy": None})
    with pytest.raises(jepa3d_data.DataError, match=r"train.txt: entry '../../outside-b.npy' is not a file name"):
        jepa3d_data.open_dataset(root)
    mn = tmp_path / "mn"
    (mn / "chair").mkdir(parents=True)
    (mn / "modelnet40_shape_names.txt").write_text("chair\n")
    (mn / "modelnet40_train.txt").write_text("../chair_0001\n")
    with pytest.raises(jepa3d_data.DataError, match="modelnet40_train.txt: entry '../chair_0001'"):
        jepa3d_data.open_dataset(mn)


def test_inspect_reads_every_file_training_would(tmp_path):
    rng = np.random.default_rng(0)
    clouds = {f"02691156-{i}.npy": rng.normal(size=(64, 3)).astype(np.float32) for i in range(3)}
    clouds["02691156-2.npy"][5, 0] = np.nan
    root = shapenet_folder(tmp_path / "shapenet", clouds)
    report = jepa3d_data.inspect_data(root)
    assert any("02691156-2.npy" in p and "NaN" in p for p in report["splits"]["train"]["problems"])


def test_variant_on_other_data_and_a_task_on_the_wrong_layout_are_refused(tmp_path):
    proc = run_cli("linear-probe", "--checkpoint", "none", "--preset", "tiny", "--variant", "obj_bg")
    one_clean_line(proc, "--variant", "not ScanObjectNN")
    pts = np.random.default_rng(0).normal(size=(8, 64, 3)).astype(np.float32)
    root = write_npz_split(tmp_path / "mn", pts, np.arange(8) % 2)
    proc = run_cli("finetune", "--task", "scanobjectnn", "--data", root, "--checkpoint", "none", "--preset",
                      "tiny", "--epochs", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--task scanobjectnn reads scanobjectnn data" in proc.stderr
    proc = run_cli("finetune", "--task", "builtin", "--checkpoint", "none", "--batch-size", "1")
    assert proc.returncode == 2 and "--batch-size" in proc.stderr  # the head's BatchNorm needs 2


def test_few_shot_says_which_query_fits(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "d"
    root.mkdir()
    np.savez(root / "s_train.npz", points=rng.normal(size=(60, 64, 3)).astype(np.float32),
             labels=np.repeat(np.arange(6), 10))
    np.savez(root / "s_test.npz", points=rng.normal(size=(90, 64, 3)).astype(np.float32),
             labels=np.repeat(np.arange(6), 15))
    proc = run_cli("few-shot", "--data", root, "--checkpoint", "none", "--preset", "tiny", "--num-points", "64",
                      "--num-groups", "16", "--group-size", "8")
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr
    assert "--query 15" in proc.stderr


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import errno

    import safetensors.torch
    from click.testing import CliRunner

    out = tmp_path / "run"
    first = run_cli("pretrain", "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "2", "--save-every", "2",
                       "--out", out)
    assert first.returncode == 0, first.stderr
    good = (out / "checkpoint.safetensors").read_bytes()

    def full(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    result = CliRunner().invoke(jepa3d.make_cli(), ["pretrain", "--out", str(out), "--resume", "--max-steps", "4"])
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert "Traceback" not in result.output
    assert (out / "checkpoint.safetensors").read_bytes() == good
    assert not (out / "checkpoint.safetensors.tmp").exists()


def test_new_data_continues_on_other_data_on_purpose_and_records_it(tmp_path):
    out = tmp_path / "run"
    first = run_cli("pretrain", "--preset", "tiny", *SMALL_FLAGS, "--dataset", "builtin-parts", "--max-steps", "2",
                    "--save-every", "1", "--out", out)
    assert first.returncode == 0, first.stderr
    moved = run_cli("pretrain", "--out", out, "--resume", "--max-steps", "3", "--dataset", "builtin", "--new-data")
    assert moved.returncode == 0, moved.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["dataset"] == "builtin-train" and info["data_options"]["dataset"] == "builtin"
    again = run_cli("pretrain", "--out", out, "--resume", "--max-steps", "4")  # now the new data is the run's
    assert again.returncode == 0, again.stderr


# 9. threads on a shared CPU ---------------------------------------------------------------
def test_threads_option_sets_torch_threads_and_refuses_nonsense(tmp_path):
    from click.testing import CliRunner

    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(jepa3d.make_cli(), ["--threads", "1", "inspect", str(tmp_path / "none")])
        assert torch.get_num_threads() == 1 and "Traceback" not in result.output
        bad = CliRunner().invoke(jepa3d.make_cli(), ["--threads", "0", "inspect", str(tmp_path)])
        assert bad.exit_code == 2 and "--threads" in bad.output
    finally:
        torch.set_num_threads(before)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= jepa3d.auto_threads() <= cpus


def test_cpu_threads_caps_and_restores_and_fps_leaves_threads_as_they_were():
    torch.set_num_threads(2)
    with jepa3d.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with jepa3d.cpu_threads(4):  # never raises the count
        assert torch.get_num_threads() == 2
    pts = torch.randn(4, 256, 3)  # B*P small: the loop runs on one thread, the answer is the same
    pinned = jepa3d.farthest_point_sample(pts, 32)
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert torch.equal(pinned, jepa3d.farthest_point_sample(pts, 32))


def test_a_one_class_split_is_one_line_in_every_probe(tmp_path):
    # a folder with one class: the SVC's pairs of classes are empty; every probe says so in one line
    for split in ("train", "test"):
        (tmp_path / "one" / split / "chair").mkdir(parents=True)
        for i in range(3):
            np.save(tmp_path / "one" / split / "chair" / f"{i}.npy",
                    np.random.default_rng(i).random((200, 3), dtype=np.float32))
    for classifier in ("svc", "linear-svc", "logreg"):
        proc = run_cli("linear-probe", "--checkpoint", "none", "--preset", "tiny", "--data", tmp_path / "one",
                       "--classifier", classifier, "--out", tmp_path / classifier)
        one_clean_line(proc, "folder-train", "one class", "two classes or more")
    parts = jepa3d_data.ArrayDataset(np.random.default_rng(0).random((2, 64, 3)), [0, 0], ["mug"], "mugs",
                                     parts=np.zeros((2, 64)), parts_of=[[0]])
    cfg = jepa3d.make_configs("tiny", num_points=64, num_groups=8, group_size=8)[0]
    with pytest.raises(jepa3d.DataError, match="mugs: the train split holds 8 samples of one class"):
        jepa3d.point_probe(jepa3d.random_encoder(cfg, 0), cfg, parts, parts, 1)


def test_resume_refuses_other_data_of_the_same_layout_and_size(tmp_path):
    # two folders of the same layout, split names and sizes: only their contents differ
    for name, seed in (("a", 0), ("b", 1)):
        (tmp_path / name).mkdir()
        for split in ("train", "test"):
            np.savez(tmp_path / name / f"x_{split}.npz", labels=np.arange(16) % 2,
                     points=np.random.default_rng(seed).random((16, 128, 3), dtype=np.float32))
    out = tmp_path / "run"
    first = run_cli("pretrain", "--preset", "tiny", *SMALL_FLAGS, "--data", tmp_path / "a", "--max-steps", "1",
                    "--save-every", "1", "--out", out)
    assert first.returncode == 0, first.stderr
    assert len(json.loads((out / "run.json").read_text())["fingerprint"]) == 16
    other = run_cli("pretrain", "--out", out, "--resume", "--max-steps", "2", "--data", tmp_path / "b")
    one_clean_line(other, "other contents (fingerprint)", "--new-data")
    same = run_cli("pretrain", "--out", out, "--resume", "--max-steps", "2", "--data", tmp_path / "a")
    assert same.returncode == 0, same.stderr


def test_memory_is_bounded_by_what_was_asked_not_by_a_file(tmp_path):
    # a 4D checkpoint whose fields are each within bounds but ask for a 4096-frame clip of 2^20 points
    with pytest.raises(ValueError, match="4096 frames x 1048576 points .* use fewer frames or points"):
        jepa3d.make_configs("tiny4d", frames=4096, num_points=1 << 20)
    cfg, tcfg = jepa3d.make_configs("tiny4d")
    jepa3d.save_checkpoint(tmp_path / "c.safetensors", jepa3d.JEPA(cfg), None, None, tcfg, step=0, seed=0)
    big = rewrite_metadata(tmp_path / "c.safetensors", tmp_path / "big.safetensors",
                           model_config=json.dumps({**json.loads(jepa3d.read_header(tmp_path / "c.safetensors")[1]
                                                                 ["model_config"]), "frames": 4096}))
    one_clean_line(run_cli("linear-probe", "--checkpoint", big, "--out", tmp_path / "p"), "big.safetensors", "tokens")
    # an image whose header asks for 20000 x 20000 pixels is refused before it is decoded
    from PIL import Image

    Image.new("I;16", (9000, 8000)).save(tmp_path / "big.png")                 # below Pillow's own bomb limit
    with pytest.raises(jepa3d_data.DataError, match="big.png: a 9000x8000 image .* needs about 0.3 GiB"):
        jepa3d_data.read_depth_png(tmp_path / "big.png")
    Image.new("L", (20000, 20000)).save(tmp_path / "bomb.png")                 # beyond it: also one line
    with pytest.raises(jepa3d_data.DataError, match="bomb.png: unreadable image \\(DecompressionBombError"):
        jepa3d_data.read_rgb(tmp_path / "bomb.png")
    r = run_cli("teacher-features", "--per-class", "1000000000", "--out", tmp_path / "tf")
    assert r.returncode == 2 and "1000000000" in r.stderr and "Traceback" not in r.stderr


def test_a_full_disk_is_one_line_and_the_checkpoint_stays(tmp_path):
    import resource

    out = tmp_path / "run"
    assert run_cli("pretrain", "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "1", "--out", out).returncode == 0
    before = (out / "checkpoint.safetensors").read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "jepa3d", "pretrain", "--out", str(out), "--resume", "--max-steps", "2"],
                          capture_output=True, text=True, env=env, timeout=300,  # files may not grow past 20 kB
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000)))
    one_clean_line(proc, "could not write", "checkpoint.safetensors.tmp", "the previous checkpoint", "is intact")
    assert (out / "checkpoint.safetensors").read_bytes() == before and not (out / "checkpoint.safetensors.tmp").exists()
