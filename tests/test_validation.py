"""The validation split: a stratified, seeded part of a train split that every choice is made on."""
import json

import torch
from click.testing import CliRunner

import jepa3d
import jepa3d_data


def test_validation_indices_are_stratified_seeded_and_keep_videos_whole():
    labels = torch.arange(4).repeat_interleave(torch.tensor([50, 20, 2, 1]))   # 73 items, 4 classes
    val = jepa3d_data.validation_indices(labels)
    per_class = torch.bincount(labels[val], minlength=4).tolist()
    assert per_class == [5, 2, 1, 0]                  # ~10% of each, at least one of a class that has two
    assert torch.equal(val, jepa3d_data.validation_indices(labels))             # a pure function of the seed
    assert not torch.equal(val, jepa3d_data.validation_indices(labels, seed=1))
    videos = torch.arange(73) // 3                    # clips cut from 25 videos, three each
    labels = videos % 2
    held = jepa3d_data.validation_indices(labels, videos)
    inside = set(videos[held].tolist())
    rest = set(videos[torch.tensor([i for i in range(73) if i not in set(held.tolist())])].tolist())
    assert inside and not inside & rest               # no video on both sides


def test_the_validation_option_reads_train_as_train_less_val_and_val():
    data = {"data": None, "dataset": None, "validation": True}
    fit = jepa3d_data.open_split(data, "train", 256, 16, False)
    val = jepa3d_data.open_split(data, "test", 256, 16, False)
    train = jepa3d_data.open_split({"data": None, "dataset": None}, "train", 256, 16, False)
    assert len(fit) + len(val) == len(train) and not set(fit.indices) & set(val.indices)
    assert "validation" in val.name and val.validation and not fit.validation and val.classes == train.classes
    assert torch.equal(val[0][0], train[val.indices[0]][0]) and int(val.labels[0]) == int(train.labels[val.indices[0]])
    assert fit.fingerprint != val.fingerprint != train.fingerprint


def test_linear_probe_on_the_validation_split_never_reads_test(tmp_path):
    result = CliRunner().invoke(jepa3d.make_cli(), ["--threads", "1", "linear-probe", "--checkpoint", "none",
                                                    "--preset", "tiny", "--validation", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert "validation" in json.dumps(out) and out["test_clouds"] == 120, out


def test_reprobe_reads_a_features_file_the_way_linear_probe_fits(tmp_path):
    import sys

    import numpy as np

    sys.path.insert(0, str(jepa3d_data.Path(__file__).resolve().parents[1] / "benchmarks"))
    import reprobe

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 4
    arrays = {"classes": np.array(["a", "b", "c"]), "source": np.array("synthetic")}
    for split, n in (("train", 30), ("test", 12)):
        y = torch.arange(3).repeat_interleave(n // 3)
        arrays[f"{split}_features"] = (centres[y] + torch.randn(n, 8, generator=g)).numpy().astype(np.float16)
        arrays[f"{split}_labels"] = y.numpy().astype(np.int16)
    arrays["test_labels"][0] = 1                                              # one test cloud mislabelled
    np.savez_compressed(tmp_path / "f.npz", **arrays)
    out = reprobe.reprobe(str(tmp_path / "f.npz"), "both", 1.0)
    assert out["train"] == 30 and out["test"] == 12
    for kind in ("svc", "logreg"):
        assert abs(out[kind]["accuracy"] - 100 * 11 / 12) < 1e-3, out
