"""The validation split: a stratified, seeded part of a train split that every choice is made on."""
import json

import pytest
import torch
from click.testing import CliRunner

import jepa3d
import jepa3d_data


def test_validation_indices_are_stratified_seeded_and_keep_videos_whole():
    labels = torch.arange(4).repeat_interleave(torch.tensor([50, 20, 2, 1]))   # 73 items, 4 classes
    val = jepa3d.validation_indices(labels)
    per_class = torch.bincount(labels[val], minlength=4).tolist()
    assert per_class == [5, 2, 1, 0]                  # ~10% of each, at least one of a class that has two
    assert torch.equal(val, jepa3d.validation_indices(labels))             # a pure function of the seed
    assert not torch.equal(val, jepa3d.validation_indices(labels, seed=1))
    videos = torch.arange(73) // 3                    # clips cut from 25 videos, three each
    labels = videos % 2
    held = jepa3d.validation_indices(labels, videos)
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
    assert out["fit"] == 30 and out["scored"] == 12
    for kind in ("svc", "logreg"):
        assert abs(out[kind]["accuracy"] - 100 * 11 / 12) < 1e-3, out
    val = reprobe.reprobe(str(tmp_path / "f.npz"), "svc-val", 1.0, on="validation")
    assert val["fit"] == 27 and val["scored"] == 3 and "C" in val["svc-val"]   # the train split's own 10%
    paired = reprobe.reprobe(str(tmp_path / "f.npz"), "both", 1.0, against=str(tmp_path / "f.npz"))
    assert paired["svc"]["difference"] == 0 and paired["svc"]["mcnemar"]["p_value"] == 1.0


def _clusters(n_per_class: int, seed: int) -> dict:
    """Three classes whose means differ along two dimensions, of which only the first separates
    them (the second's spread is 100x larger): a small C, all multipliers at their bound, weighs
    the dimensions by the mean difference and under-fits; a fitted SVM finds the first."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(n_per_class)
    means = torch.stack([y.float(), 3 * y.float()], 1)                        # (N, 2)
    return {"features": means + torch.randn(len(y), 2, generator=g) * torch.tensor([0.1, 10.0]), "labels": y}


def test_svc_with_C_chosen_on_validation_fits_what_a_fixed_C_under_fits():
    train, test = _clusters(60, 1), _clusters(40, 2)
    fixed = jepa3d.fit_and_score("svc", train, test, 3)
    chosen = jepa3d.fit_and_score("svc-val", train, test, 3)
    z = jepa3d.fit_and_score("svc-val-z", train, test, 3)
    assert fixed["accuracy"] < 80 and chosen["accuracy"] > 95 and z["accuracy"] > 95
    assert chosen["C"] in jepa3d.PROBE_C_GRID and chosen["C"] > jepa3d.ProbeConfig.C
    curve = list(chosen["validation_curve"].values())
    assert curve[0] == curve[1] and len(curve) < len(jepa3d.PROBE_C_GRID)   # walked the plateau, stopped at the top
    assert chosen["standard_error"] == pytest.approx((chosen["accuracy"] * (100 - chosen["accuracy"]) / 120) ** 0.5)


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_items():
    stats = pytest.importorskip("scipy.stats", reason="scipy (with the test extra's scikit-learn) is the reference")
    g = torch.Generator().manual_seed(0)
    for n, p_a, p_b in ((40, 0.7, 0.5), (500, 0.86, 0.82), (300, 0.9, 0.9)):
        a, b = torch.rand(n, generator=g) < p_a, torch.rand(n, generator=g) < p_b
        test = jepa3d.mcnemar(a, b)
        assert test["a_only"] == int((a & ~b).sum()) and test["b_only"] == int((~a & b).sum())
        reference = stats.binomtest(test["a_only"], test["a_only"] + test["b_only"], 0.5).pvalue
        assert test["p_value"] == pytest.approx(reference, rel=1e-9, abs=1e-12)
    same = torch.ones(10, dtype=torch.bool)
    assert jepa3d.mcnemar(same, same)["p_value"] == 1.0


def test_linear_probe_against_random_reports_every_probe_its_error_and_a_paired_test(tmp_path):
    result = CliRunner().invoke(jepa3d.make_cli(), [
        "--threads", "1", "linear-probe", "--checkpoint", "none", "--preset", "tiny", "--num-points", "128",
        "--num-groups", "16", "--group-size", "8", "--classifier", "evidence", "--against-random",
        "--out", str(tmp_path)])                                             # a random encoder against itself
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("svc", "svc_val", "svc_val_z", "logreg"):
        assert out["gain_over_random_init"][key] == 0.0 and 0 < out[key]["standard_error"] < 5
        assert out["mcnemar_vs_random_init"][key] == {"a_only": 0, "b_only": 0, "p_value": 1.0}
    assert out["svc_val"]["C"] in jepa3d.PROBE_C_GRID and "predictions" not in out["svc"]
    assert "chosen on validation" in result.stderr and "McNemar p=1" in result.stderr
