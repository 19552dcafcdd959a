"""Shared fixtures: a model small enough that every test runs in seconds on one CPU core."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jepa3d  # noqa: E402

# A miniature of the tiny preset; the CLI tests pass the same values as flags.
SMALL = dict(num_points=128, num_groups=16, group_size=8, dim=32, depth=2, heads=2, pred_dim=32,
             pred_depth=2, pred_heads=2, batch_size=8, epochs=2)
SMALL_FLAGS = ["--num-points", "128", "--num-groups", "16", "--group-size", "8", "--dim", "32", "--depth", "2",
               "--heads", "2", "--pred-dim", "32", "--pred-depth", "2", "--pred-heads", "2", "--batch-size", "8"]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m jepa3d ARGS` as a user runs it (one thread, this checkout's code)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "jepa3d", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def rewrite_metadata(src, dst, **changes):
    """A copy of checkpoint `src` at `dst` with metadata fields replaced (values are the stored strings)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(tensors, str(dst), metadata={**meta, **changes})
    return dst


@pytest.fixture
def configs():
    return jepa3d.make_configs("tiny", **SMALL)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # CI has 2 cores; tests are tiny and deterministic
    yield
