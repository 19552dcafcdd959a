"""Downstream: metric code against hand-computed cases, and every command end to end."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import SMALL_FLAGS

import jepa3d


# ----------------------------------------------------------------------------- metric code
def test_svm_matches_the_hand_solved_optimum():
    # two points x = -1 (class 0) and x = +1 (class 1). For class 1, by symmetry b = 0 and
    # 0.5 w^2 + 2C (1 - w)^2 is least at w = 4C / (1 + 4C): 0.8 for C = 1.
    W, b = jepa3d.fit_linear(torch.tensor([[-1.0], [1.0]]), torch.tensor([0, 1]), 2, C=1.0)
    assert W[0, 1].item() == pytest.approx(0.8, abs=1e-4) and W[0, 0].item() == pytest.approx(-0.8, abs=1e-4)
    assert b.abs().max().item() < 1e-4


def test_svm_and_logreg_separate_separable_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 5
    y = torch.arange(4).repeat_interleave(30)
    x = centres[y] + torch.randn(120, 16, generator=g)
    for kind in ("svm", "logreg"):
        W, b = jepa3d.fit_linear(x, y, 4, C=1.0, kind=kind)
        assert jepa3d.accuracy((x @ W + b).argmax(-1), y, 4) == (100.0, 100.0)


def test_accuracy_overall_and_class_mean():
    pred, y = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0]).clone()
    y[3] = 1
    pred[3] = 0  # 3/4 right; class 0 all right, class 1 all wrong
    assert jepa3d.accuracy(pred, y, 2) == (75.0, 50.0)


def test_part_miou_on_a_known_prediction():
    parts_of = [[0, 1], [2, 3, 4]]
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3], [0, 1, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 3, 3], [0, 1, 1, 1]])
    category = torch.tensor([0, 1, 0])
    m = jepa3d.part_miou(pred, target, category, parts_of, ["mug", "lamp"])
    # shape 0: part 0 IoU 1/2, part 1 IoU 2/3 -> 7/12; shape 1: 1, 1, part 4 absent in both -> 1; shape 2: 1
    assert m["instance_miou"] == pytest.approx(100 * (7 / 12 + 1 + 1) / 3)
    assert m["class_miou"] == pytest.approx(100 * ((7 / 12 + 1) / 2 + 1) / 2)
    assert m["per_category_iou"]["mug"] == pytest.approx(100 * (7 / 12 + 1) / 2)


def test_predictions_stay_inside_the_category():
    logits = torch.tensor([[[0.0, 1.0, 9.0]]])  # part 2 scores highest, but category 0 has parts 0 and 1
    assert jepa3d.restrict_to_category(logits, torch.tensor([0]), [[0, 1], [2]]).item() == 1


def test_few_shot_episode_composition():
    train_labels = torch.arange(10).repeat_interleave(15)
    test_labels = torch.arange(10).repeat_interleave(25)
    ep = jepa3d.sample_episode(train_labels, test_labels, 5, 10, 20, torch.Generator().manual_seed(0))
    assert len(set(ep["classes"])) == 5
    assert ep["support"].shape == (50,) and ep["query"].shape == (100,)
    assert torch.equal(ep["support_y"].bincount(), torch.full((5,), 10))
    assert torch.equal(ep["query_y"].bincount(), torch.full((5,), 20))
    for new, old in enumerate(ep["classes"]):  # episode labels map back to the chosen classes
        assert (train_labels[ep["support"][ep["support_y"] == new]] == old).all()
        assert (test_labels[ep["query"][ep["query_y"] == new]] == old).all()
    assert len(set(ep["support"].tolist())) == 50 and len(set(ep["query"].tolist())) == 100
    again = jepa3d.sample_episode(train_labels, test_labels, 5, 10, 20, torch.Generator().manual_seed(0))
    other = jepa3d.sample_episode(train_labels, test_labels, 5, 10, 20, torch.Generator().manual_seed(1))
    assert torch.equal(ep["support"], again["support"]) and not torch.equal(ep["support"], other["support"])
    with pytest.raises(ValueError, match="only 10 classes"):
        jepa3d.sample_episode(train_labels, test_labels, 11, 10, 20, torch.Generator())
    with pytest.raises(ValueError, match="only 0 classes"):
        jepa3d.sample_episode(train_labels, test_labels, 5, 16, 20, torch.Generator())


def test_interpolation_returns_the_centre_feature_at_a_centre():
    centres = torch.randn(2, 8, 3)
    feats = torch.randn(2, 8, 5)
    out = jepa3d.interpolate(centres, centres, feats)
    assert torch.allclose(out, feats, atol=1e-4)
    assert jepa3d.seg_layers(12) == (3, 7, 11) and jepa3d.seg_layers(4) == (0, 2, 3)


def test_segmenter_and_classifier_shapes(configs):
    cfg = configs[0]
    seg = jepa3d.Segmenter(jepa3d.Encoder(cfg), cfg, num_parts=7, num_categories=3).eval()
    out = seg(torch.randn(2, 128, 3), torch.tensor([0, 2]))
    assert out.shape == (2, 128, 7)
    cls = jepa3d.Classifier(jepa3d.Encoder(cfg), cfg, 5).eval()
    assert cls(torch.randn(3, 128, 3)).shape == (3, 5)


# ----------------------------------------------------------------------------- commands
def run(*args):
    result = CliRunner().invoke(jepa3d.make_cli(), [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1]), result


def test_per_class_accuracy_counts_each_test_class_apart():
    # class 0 stands apart (100%); class 2 trains on class 1's blob, so class 1's test points split between
    # 1 and 2; classes 2 and 3 have no test points: None, not 0 (a class the split lacks is not a failure);
    # the overall accuracy is the test-count-weighted mean of the per-class ones
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-10.0, 0.0], [10.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    y_train = torch.arange(4).repeat_interleave(20)
    train = {"features": centres[y_train] + 0.1 * torch.randn(80, 2, generator=g), "labels": y_train}
    y_test = torch.tensor([0] * 5 + [1] * 5)
    test = {"features": centres[y_test] + 0.1 * torch.randn(10, 2, generator=g), "labels": y_test}
    result = jepa3d.fit_and_score("logreg", train, test, 4)
    per_class = result["per_class_accuracy"]
    assert per_class[0] == 100.0 and per_class[3] is None and per_class[2] is None
    assert result["accuracy"] == pytest.approx((5 * per_class[0] + 5 * per_class[1]) / 10)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    run("pretrain", "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "3", "--out", out)
    return out / "checkpoint.safetensors"


def test_linear_probe_end_to_end(tmp_path, pretrained):
    for ckpt in (pretrained, "none"):
        result, _ = run("linear-probe", "--checkpoint", ckpt, "--preset", "tiny", "--classifier", "both",
                        "--num-points", "128", "--num-groups", "16", "--group-size", "8", "--out", tmp_path / "lp")
        assert result["train_clouds"] == 1200 and result["test_clouds"] == 300
        assert result["svc"]["accuracy"] > 50 and result["logreg"]["accuracy"] > 50  # 12 classes: chance is 8.3
        assert json.loads((tmp_path / "lp" / "metrics.json").read_text()) == result
    assert "target_encoder" in run("linear-probe", "--checkpoint", pretrained, "--out", tmp_path / "x")[0]["encoder"]
    assert "(encoder" in run("linear-probe", "--checkpoint", pretrained, "--encoder", "context",
                             "--out", tmp_path / "x")[0]["encoder"]


def test_against_random_reports_the_gain_over_the_same_config_at_init(tmp_path, pretrained):
    geometry = ["--num-points", "128", "--num-groups", "16", "--group-size", "8"]
    same, _ = run("linear-probe", "--checkpoint", "none", "--preset", "tiny", *geometry, "--against-random",
                  "--out", tmp_path / "a")  # a random encoder against itself: no gain, exactly
    assert same["gain_over_random_init"] == {"svc": 0.0}
    assert same["random_init"]["svc"]["accuracy"] == same["svc"]["accuracy"]
    result, _ = run("linear-probe", "--checkpoint", pretrained, *geometry, "--classifier", "both", "--against-random",
                    "--out", tmp_path / "b")
    for kind in ("svc", "logreg"):
        gain = result[kind]["accuracy"] - result["random_init"][kind]["accuracy"]
        assert result["gain_over_random_init"][kind] == pytest.approx(gain)


def test_few_shot_end_to_end(tmp_path, pretrained):
    result, res = run("few-shot", "--checkpoint", pretrained, "--way", "5", "--shot", "10", "--folds", "3",
                      "--out", tmp_path)
    assert result["folds"] == 3 and len(result["per_fold"]) == 3 and result["accuracy_mean"] > 40
    assert "+-" in res.stderr
    ft, _ = run("few-shot", "--checkpoint", pretrained, "--way", "3", "--shot", "2", "--query", "4", "--folds", "2",
                "--protocol", "finetune", "--episode-epochs", "2", "--out", tmp_path / "ft")
    assert ft["folds"] == 2 and "fine-tune" in ft["protocol"]["classifier"]


def test_finetune_classification_reports_the_last_epoch(tmp_path, pretrained):
    result, _ = run("finetune", "--task", "builtin", "--checkpoint", pretrained, "--epochs", "2", "--max-steps", "6",
                    "--vote", "2", "--out", tmp_path)
    assert result["reported"] == "last epoch" and "best_epoch_on_test" not in result
    assert {"accuracy", "voted_accuracy", "class_mean_accuracy"} <= set(result)
    assert (tmp_path / "finetuned.safetensors").exists()
    # the fine-tuned checkpoint serves the other commands (it has one encoder)
    probe, _ = run("linear-probe", "--checkpoint", tmp_path / "finetuned.safetensors", "--out", tmp_path / "lp")
    assert "(encoder" in probe["encoder"]
    best, _ = run("finetune", "--task", "builtin", "--checkpoint", "none", "--preset", "tiny", *SMALL_FLAGS[:6],
                  "--epochs", "2", "--max-steps", "4", "--select-best-on-test", "--out", tmp_path / "b")
    assert "test set" in best["best_epoch_on_test"]["note"]


def test_finetune_part_segmentation(tmp_path, pretrained):
    result, _ = run("finetune", "--task", "builtin-parts", "--checkpoint", pretrained, "--epochs", "1",
                    "--max-steps", "3", "--num-points", "128", "--num-groups", "16", "--out", tmp_path)
    assert 0 < result["instance_miou"] <= 100 and 0 < result["class_miou"] <= 100
    assert set(result["per_category_iou"]) >= {"chair", "mug"}


def test_embed_writes_features(tmp_path, pretrained):
    result, _ = run("embed", "--checkpoint", pretrained, "--split", "test", "--per-patch",
                    "--out", tmp_path / "f.npz")
    z = np.load(tmp_path / "f.npz")
    assert z["features"].shape == (300, 64) and z["tokens"].shape == (300, 16, 32)
    assert z["centres"].shape == (300, 16, 3) and len(z["classes"]) == 12
    assert json.loads((tmp_path / "f.npz.json").read_text()) == result


def test_downstream_bad_input_is_one_line(tmp_path):
    r = CliRunner().invoke(jepa3d.make_cli(), ["linear-probe", "--checkpoint", str(tmp_path / "nope.safetensors")])
    assert r.exit_code == 1 and "no such checkpoint" in r.stderr
    r = CliRunner().invoke(jepa3d.make_cli(), ["finetune", "--task", "modelnet40", "--checkpoint", "none"])
    assert r.exit_code == 2 and "needs --data" in r.stderr


def test_few_shot_reads_the_peers_fold_files_only_with_opt_in(tmp_path, pretrained):
    import pickle

    rng = np.random.default_rng(0)
    for fold in range(2):
        folder = tmp_path / "ModelNetFewshot" / "5way_10shot"
        folder.mkdir(parents=True, exist_ok=True)
        items = {split: [(rng.normal(size=(200, 6)).astype(np.float32), i % 5, "x") for i in range(n)]
                 for split, n in (("train", 50), ("test", 100))}
        with open(folder / f"{fold}.pkl", "wb") as fh:
            pickle.dump(items, fh)
    args = ["few-shot", "--checkpoint", str(pretrained), "--fold-files", str(tmp_path / "ModelNetFewshot"),
            "--way", "5", "--shot", "10", "--folds", "2", "--out", str(tmp_path / "out")]
    refused = CliRunner().invoke(jepa3d.make_cli(), args)
    assert refused.exit_code == 1 and "--trust-pickle" in refused.stderr and "0.pkl" in refused.stderr
    result, _ = run(*args, "--trust-pickle")
    assert result["folds"] == 2 and result["protocol"]["episodes"] == "peers' fold files"


def test_embed_labels_a_part_dataset_by_category_not_by_a_point(tmp_path, pretrained):
    run("embed", "--checkpoint", pretrained, "--dataset", "builtin-parts", "--split", "test", "--out", tmp_path / "p.npz")
    labels = np.load(tmp_path / "p.npz")["labels"]
    assert labels.shape == (300,) and sorted(set(labels.tolist())) == list(range(12))  # 12 categories, 25 each


# ----------------------------------------------------------------------------- the same protocols from Python
def _builtin(split, cfg):
    import jepa3d_data

    return jepa3d_data.open_dataset(None, split, num_points=cfg.num_points)


def test_library_protocols_give_the_cli_numbers(tmp_path, pretrained):
    encoder, cfg, _ = jepa3d.load_encoder(str(pretrained))
    train, test = _builtin("train", cfg), _builtin("test", cfg)

    cli, _ = run("linear-probe", "--checkpoint", pretrained, "--classifier", "both", "--out", tmp_path / "lp")
    lib = jepa3d.linear_probe(encoder, cfg, train, test, jepa3d.ProbeConfig(classifier="both"))
    for kind in ("svc", "logreg"):
        assert lib[kind]["accuracy"] == cli[kind]["accuracy"]
        assert lib[kind]["train_accuracy"] == cli[kind]["train_accuracy"]

    cli, _ = run("few-shot", "--checkpoint", pretrained, "--way", "5", "--shot", "5", "--query", "10", "--folds", "2",
                 "--out", tmp_path / "fs")
    lib = jepa3d.few_shot(encoder, cfg, train, test, jepa3d.FewShotConfig(way=5, shot=5, query=10, folds=2))
    assert lib["per_fold"] == cli["per_fold"] and lib["accuracy_mean"] == cli["accuracy_mean"]

    run("embed", "--checkpoint", pretrained, "--split", "test", "--out", tmp_path / "f.npz")
    lib = jepa3d.embed(encoder, cfg, test)
    assert np.array_equal(np.load(tmp_path / "f.npz")["features"], lib["features"].numpy())


def test_library_finetune_gives_the_cli_numbers(tmp_path, pretrained):
    import jepa3d_data

    cli, _ = run("finetune", "--task", "builtin", "--checkpoint", pretrained, "--epochs", "2", "--max-steps", "4",
                 "--vote", "2", "--out", tmp_path / "cli")
    encoder, cfg, _ = jepa3d.load_encoder(str(pretrained), drop_path=jepa3d.FinetuneConfig.drop_path)
    ft = jepa3d.FinetuneConfig(epochs=2)
    lib = jepa3d.finetune(encoder, cfg, _builtin("train", cfg), _builtin("test", cfg), ft, votes=2, max_steps=4,
                          augment=jepa3d_data.augmentation(ft.augment), out_dir=tmp_path / "lib")
    for key in ("accuracy", "voted_accuracy", "train_loss", "steps"):
        assert lib[key] == cli[key]


def test_every_augmentation_choice_is_one_the_data_module_applies():
    import jepa3d_data

    for cls in (jepa3d.TrainConfig, jepa3d.FinetuneConfig):
        choices = next(jepa3d.choices_of(f) for f in jepa3d.dataclasses.fields(cls) if f.name == "augment")
        for name in choices:
            fn = jepa3d_data.augmentation(name)
            assert (fn is None) == (name == "none")
    points = torch.zeros(2, 8, 3)
    jittered = jepa3d_data.augmentation("jitter")(points, torch.Generator().manual_seed(0))
    assert 0 < jittered.abs().max() <= 0.05
    with pytest.raises(ValueError, match="unknown augmentation"):
        jepa3d_data.augmentation("scale-translate+shear")


@pytest.mark.parametrize("C", [0.012, 1.0])
def test_svc_is_scikit_learns_svc(C):
    svm = pytest.importorskip("sklearn.svm")
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 24, generator=g) * 1.5
    y = torch.arange(6).repeat_interleave(torch.tensor([40, 25, 60, 33, 50, 45]))  # unequal classes
    x = centres[y] + torch.randn(len(y), 24, generator=g) * 2  # overlapping: many margin violations
    xq = centres[torch.arange(6).repeat(30)] + torch.randn(180, 24, generator=g) * 2
    ours = jepa3d.fit_svc(x, y, 6, C=C)
    ref = svm.SVC(C=C, kernel="linear").fit(x.numpy(), y.numpy())
    agree = (ours.predict(xq).numpy() == ref.predict(xq.numpy())).mean()
    assert agree >= 0.995, agree  # the peers' protocol: same predictions to within 0.2 points of accuracy
    # the same separating planes: sklearn orders pairs (0,1), (0,2), ... like ours; its coef_ is W
    assert np.allclose(ours.W.numpy(), ref.coef_, atol=2e-3 * np.abs(ref.coef_).max())
    assert np.allclose(-ours.rho.numpy(), ref.intercept_, atol=5e-2)
