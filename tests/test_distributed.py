"""torchrun + DistributedDataParallel on CPU (gloo): two processes, one run folder, ranks in sync."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jepa3d
from conftest import SMALL_FLAGS

ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "jepa3d", "--device", "cpu", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_shards_split_each_global_batch_without_overlap():
    for batch in jepa3d.epoch_batches(100, 12, seed=0, epoch=0):
        shards = [jepa3d.shard(batch, r, 3) for r in range(3)]
        assert sorted(sum(shards, [])) == sorted(batch) and all(len(s) == 4 for s in shards)


def test_two_gloo_ranks_stay_in_sync_and_rank0_alone_writes(tmp_path):
    out = tmp_path / "run"
    proc = torchrun("pretrain", "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "6", "--save-every", "3",
                    "--out", out, "--log-every", "2")
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1  # one result line, from rank 0
    result = results[0]
    # the three parameter digests (student, predictor, EMA teacher) agree bit for bit across ranks
    assert result["world_size"] == 2 and result["ranks_in_sync"] is True and result["step"] == 6
    written = {"checkpoint.safetensors", "metrics.jsonl", "run.json", ".lock"}  # .lock: rank 0 owns the folder
    if importlib.util.find_spec("matplotlib"):
        written.add("curves.png")
    assert {p.name for p in out.iterdir()} == written  # rank 0's files only: no second metrics or checkpoint
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2 and info["batch_size"] == 8  # the global batch: 4 clouds per rank
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6))

    # resume on two ranks from rank 0's checkpoint; the single-process reader accepts it too
    resumed = torchrun("pretrain", "--out", out, "--resume", "--max-steps", "8")
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["step"] == 8
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(8))
    model, meta, _ = jepa3d.load_jepa(out / "checkpoint.safetensors")
    assert json.loads(meta["step"]) == 8


def test_global_batch_must_divide_by_the_ranks(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "jepa3d", "--device", "cpu", "pretrain", "--preset", "tiny", *SMALL_FLAGS[:-2],
           "--batch-size", "7", "--max-steps", "2", "--out", tmp_path / "odd"]
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0 and "must divide by the 2 torchrun processes" in proc.stderr
    assert "jepa3d.py\", line" not in proc.stderr  # torchrun prints its own traceback; ours has none
    assert not (tmp_path / "odd" / "checkpoint.safetensors").exists()


def test_params_digest_sees_a_changed_or_swapped_weight():
    import torch

    model = jepa3d.MiniPointNet(8)
    before = jepa3d.params_digest(model)
    with torch.no_grad():
        w = model.first[0].weight
        saved = w.clone()
        w[2, 1] += 1e-6
        assert not torch.equal(jepa3d.params_digest(model), before)
        w.copy_(saved)
        assert torch.equal(jepa3d.params_digest(model), before)
        w[[0, 1]] = saved[[1, 0]]  # same values, other places: the position weights tell
        assert not torch.equal(jepa3d.params_digest(model), before)
