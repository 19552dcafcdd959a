"""The CLI as a user runs it, on the built-in data."""
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import SMALL_FLAGS, run_cli

ROOT = Path(__file__).resolve().parents[1]


def jepa3d(*args, check=True):
    proc = run_cli(*args)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_pretrain_end_to_end_then_resume(tmp_path):
    out = tmp_path / "run"
    proc = jepa3d("pretrain", "--preset", "tiny", *SMALL_FLAGS, "--epochs", "1", "--max-steps", "30",
                  "--out", out, "--log-every", "5")
    result = json.loads(proc.stdout)
    assert result["step"] == 30 and not result["finished"]
    assert "30/" in proc.stderr  # progress on stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(30))
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last < first  # it learns
    assert rows[-1]["target_std"] > 0.02  # and has not collapsed
    assert {"lr", "momentum", "clouds_per_s", "target_std"} <= set(rows[-1])
    assert (out / "checkpoint.safetensors").exists() and json.loads((out / "run.json").read_text())["seed"] == 0

    # a second plain run must not overwrite the first
    ckpt = (out / "checkpoint.safetensors").read_bytes()
    again = jepa3d("pretrain", "--preset", "tiny", "--out", out, check=False)
    assert again.returncode == 1 and "--resume" in again.stderr and "Traceback" not in again.stderr
    assert (out / "checkpoint.safetensors").read_bytes() == ckpt

    bad = jepa3d("pretrain", "--out", out, "--resume", "--dim", "64", check=False)
    assert bad.returncode == 2 and "--dim" in bad.stderr

    resumed = json.loads(jepa3d("pretrain", "--out", out, "--resume", "--max-steps", "34").stdout)
    assert resumed["step"] == 34
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(34))


def test_mask_preview_writes_a_coloured_ply(tmp_path):
    ply = tmp_path / "m.ply"
    result = json.loads(jepa3d("mask-preview", "--out", ply, "--num-points", "256", "--num-groups", "32",
                               "--group-size", "16").stdout)
    lines = ply.read_text().splitlines()
    end = lines.index("end_header")
    assert "element vertex 256" in lines and len(lines) == end + 1 + 256
    colours = {tuple(line.split()[3:]) for line in lines[end + 1:]}
    assert len(colours) >= 3  # context plus target blocks (plus maybe unused)
    assert result["context"] > 0 and result["target"] > 0


def test_help_lists_every_option_with_its_default():
    text = jepa3d("pretrain", "--help").stdout
    for option in ("--num-targets", "--sampler", "--predictor", "--loss", "--epochs", "--lr", "--resume"):
        assert option in text
    assert "paper: 384" in text and "tiny: 96" in text


def test_bad_options_fail_in_one_line_without_traceback(tmp_path):
    proc = jepa3d("pretrain", "--preset", "tiny", "--heads", "5", "--out", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "divide" in proc.stderr and "Traceback" not in proc.stderr
    proc = jepa3d("pretrain", "--out", tmp_path / "none", "--resume", check=False)
    assert proc.returncode == 1 and "no such checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_import_needs_torch_alone():
    code = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('click', 'numpy', 'h5py', 'safetensors', 'jepa3d_data'):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
import jepa3d, torch
m = jepa3d.JEPA(jepa3d.make_configs('tiny')[0])
loss, _ = m(torch.randn(2, 512, 3), torch.Generator().manual_seed(0))
print(float(loss))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_python_m_jepa3d_loads_the_module_once(tmp_path):
    # A folder dataset with more points than asked makes jepa3d_data call FPS, which imports
    # jepa3d: under `python -m jepa3d` that import must find the running module, not run the
    # file a second time (two copies of every class in one process).
    import numpy as np

    for split in ("train", "test"):
        (tmp_path / "data" / split / "a").mkdir(parents=True)
        np.save(tmp_path / "data" / split / "a" / "0.npy", np.random.default_rng(0).random((300, 3), dtype=np.float32))
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import atexit, sys\n"
        "def report():\n"
        "    copies = {id(m) for m in list(sys.modules.values()) if 'Encoder' in vars(m)}\n"
        "    print('COPIES', len(copies), 'jepa3d_data' in sys.modules, file=sys.stderr)\n"
        "atexit.register(report)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "jepa3d", "inspect", tmp_path / "data", "--num-points", "128"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["splits"]["train"]["points_per_cloud"] == 128
    assert "COPIES 1 True" in proc.stderr


def test_protocols_run_from_python_with_torch_alone():
    code = """
import sys
for name in ('click', 'numpy', 'h5py', 'safetensors', 'jepa3d_data'):
    sys.modules[name] = None  # as if not installed: import fails, importlib.util.find_spec says None
import torch
from jepa3d import linear_probe, few_shot, embed, finetune, Encoder, make_configs, FewShotConfig, FinetuneConfig

class Clouds(torch.utils.data.Dataset):  # a dataset of the user's own, in torch alone
    classes = ["small", "medium", "large"]
    def __init__(self, n, seed):
        self.labels = torch.arange(n) % 3
        g = torch.Generator().manual_seed(seed)
        self.points = torch.randn(n, 128, 3, generator=g) * (1 + self.labels[:, None, None])
    def __len__(self):
        return len(self.labels)
    def __getitem__(self, i):
        return self.points[i], self.labels[i]

cfg = make_configs("tiny", num_points=128, num_groups=16, group_size=8, dim=32, depth=2, heads=2)[0]
torch.manual_seed(0)
enc = Encoder(cfg)
train, test = Clouds(60, 0), Clouds(30, 1)
print(linear_probe(enc, cfg, train, test)["svc"]["accuracy"])
print(few_shot(enc, cfg, train, test, FewShotConfig(way=3, shot=5, query=5, folds=2))["accuracy_mean"])
print(tuple(embed(enc, cfg, test)["features"].shape))
print(finetune(enc, cfg, train, test, FinetuneConfig(epochs=1, batch_size=20))["steps"])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    svm, fs, shape, steps = proc.stdout.split("\n")[:4]
    assert 0 <= float(svm) <= 100 and 0 <= float(fs) <= 100
    assert shape == "(30, 64)" and steps == "3"


def test_pretrain_warns_once_when_the_features_collapse(tmp_path):
    # --collapse-below 5 sits above any target_std, so the warning must come, and only once
    proc = jepa3d("pretrain", "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "4", "--log-every", "1",
                  "--collapse-below", "5", "--out", tmp_path / "run")
    assert proc.stderr.count("features are collapsing") == 1
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"mean_loss", "target_spread", "pred_spread"} <= set(row) and "batch mean" in proc.stderr


def test_pretrain_draws_its_learning_curve_and_resumes_it(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)  # --eval-data: a labelled npz pair of the user's, 3 classes
    for split, n in (("train", 30), ("test", 15)):
        labels = np.arange(n) % 3
        np.savez(tmp_path / f"blobs_{split}.npz", labels=labels,
                 points=(rng.normal(size=(n, 128, 3)) * (1 + labels[:, None, None])).astype(np.float32))
    out = tmp_path / "run"
    jepa3d("pretrain", "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "4", "--save-every", "2", "--eval-every", "2",
           "--eval-data", tmp_path, "--out", out)
    probe = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    assert [p["step"] for p in probe] == [0, 2, 4] and all(0 < p["probe_accuracy"] <= 100 for p in probe)
    # the probe read --eval-data's train split: less its validation part -> the validation part
    assert probe[0]["probe"].endswith("on npz-train (train less the validation split) -> npz-train (validation: "
                                      "10% of train, seed 0)") and probe[0]["probe_split"] == "validation"
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    jepa3d("pretrain", "--out", out, "--resume", "--max-steps", "6", "--eval-every", "2")
    probe = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    assert [p["step"] for p in probe] == [0, 2, 4, 6]
    assert json.loads(jepa3d("plot", out).stdout)["curves"].endswith("curves.png")


def test_a_run_on_the_built_in_scans_draws_its_curve_on_them(tmp_path):
    jepa3d("pretrain", "--dataset", "builtin-scan", "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "1",
           "--eval-every", "1", "--out", tmp_path)
    probe = json.loads((tmp_path / "probe.jsonl").read_text().splitlines()[0])
    assert "builtin-scan-train (validation" in probe["probe"], probe["probe"]
