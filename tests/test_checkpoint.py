"""Checkpoints: exact round trip, atomic writes, clear errors, exact resume."""
import json

import pytest
import torch

import jepa3d
import jepa3d_data
from conftest import rewrite_metadata


def trained_model(configs, steps=2):
    cfg, tcfg = configs
    torch.manual_seed(0)
    model = jepa3d.JEPA(cfg).train()
    opt = jepa3d.make_optimizer(model, tcfg)
    for s in range(steps):
        jepa3d.train_step(model, opt, None, torch.randn(4, 128, 3), torch.Generator().manual_seed(s),
                          lr=1e-3, momentum=0.99, grad_clip=1.0, amp_dtype=None)
    return model, opt


def test_round_trip_is_exact(tmp_path, configs):
    model, opt = trained_model(configs)
    path = tmp_path / "c.safetensors"
    jepa3d.save_checkpoint(path, model, opt, None, configs[1], step=2, seed=0)
    loaded, meta, tensors = jepa3d.load_jepa(path)
    assert loaded.cfg == model.cfg and json.loads(meta["step"]) == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    opt2 = jepa3d.make_optimizer(loaded, configs[1])
    jepa3d.load_optimizer(opt2, tensors)
    for p, q in zip(model.parameters(), loaded.parameters()):
        if p.requires_grad:
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(opt.state[p][key], opt2.state[q][key])
    assert {k.split(".")[0] for k in tensors} == {"encoder", "target_encoder", "predictor", "optimizer"}
    assert meta["format_version"] == str(jepa3d.FORMAT_VERSION)


def test_a_crash_while_saving_leaves_the_old_checkpoint_whole(tmp_path, configs, monkeypatch):
    import safetensors.torch

    model, opt = trained_model(configs)
    path = tmp_path / "c.safetensors"
    jepa3d.save_checkpoint(path, model, opt, step=1)
    before = path.read_bytes()

    def dying_save(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        jepa3d.save_checkpoint(path, model, opt, step=2)
    assert path.read_bytes() == before and not path.with_name(path.name + ".tmp").exists()
    jepa3d.load_jepa(path)


def test_bad_checkpoints_name_the_file(tmp_path, configs):
    with pytest.raises(jepa3d.CheckpointError, match="no such checkpoint"):
        jepa3d.load_jepa(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(jepa3d.CheckpointError, match="junk.safetensors: not a readable"):
        jepa3d.load_jepa(junk)
    model, _ = trained_model(configs, steps=0)
    good = tmp_path / "good.safetensors"
    jepa3d.save_checkpoint(good, model)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(jepa3d.CheckpointError, match="truncated.safetensors"):
        jepa3d.load_jepa(truncated)
    other = jepa3d.JEPA(jepa3d.make_configs("tiny", num_points=128, num_groups=16, group_size=8, dim=32, depth=3,
                                            heads=2, pred_dim=32, pred_heads=2)[0])
    tensors, _ = jepa3d.read_checkpoint(good)
    with pytest.raises(jepa3d.CheckpointError, match="missing"):
        jepa3d.load_state(other.encoder, tensors, "encoder.", good)


def test_interrupted_then_resumed_run_matches_uninterrupted_step_for_step(tmp_path, configs):
    cfg, tcfg = configs
    data = jepa3d_data.builtin_dataset("train", 160, per_class=3)  # 36 clouds -> 4 steps/epoch
    run = dict(device=torch.device("cpu"), seed=3, augment=jepa3d_data.augmentation("scale-translate+rotate"),
               log_every=2)
    jepa3d.pretrain(data, tmp_path / "full", cfg, tcfg, **run)
    jepa3d.pretrain(data, tmp_path / "cut", cfg, tcfg, max_steps=3, save_every=1, **run)
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as fh:  # a line written after the last save
        fh.write(json.dumps({"step": 3, "loss": 123.0}) + "\n")
    jepa3d.pretrain(data, tmp_path / "cut", cfg, tcfg, resume=True, **run)

    def losses(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"], r["target_std"]) for r in map(json.loads, lines)]

    assert len(losses("full")) == 8 and losses("full") == losses("cut")
    a, _, _ = jepa3d.load_jepa(tmp_path / "full" / "checkpoint.safetensors")
    b, _, _ = jepa3d.load_jepa(tmp_path / "cut" / "checkpoint.safetensors")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_subsample_chooses_how_pretraining_cuts_large_clouds(tmp_path, configs):
    cfg, tcfg = configs  # the model takes 128 points; these clouds have 256
    data = torch.utils.data.TensorDataset(torch.randn(16, 256, 3), torch.zeros(16, dtype=torch.long))
    run = dict(device=torch.device("cpu"), max_steps=2, log_every=1)
    losses = {}
    for how in ("fps", "random"):
        jepa3d.pretrain(data, tmp_path / how, cfg, jepa3d.dataclasses.replace(tcfg, subsample=how), **run)
        losses[how] = [json.loads(line)["loss"] for line in (tmp_path / how / "metrics.jsonl").read_text().splitlines()]
        assert json.loads((tmp_path / how / "run.json").read_text())["train_config"]["subsample"] == how
    assert losses["fps"] != losses["random"]  # the same seed, other points


def test_a_run_saved_before_subsample_existed_resumes_with_fps(tmp_path, configs):
    cfg, tcfg = configs
    data = torch.utils.data.TensorDataset(torch.randn(16, 256, 3), torch.zeros(16, dtype=torch.long))
    out = tmp_path / "run"
    jepa3d.pretrain(data, out, cfg, jepa3d.dataclasses.replace(tcfg, subsample="fps"), device=torch.device("cpu"),
                    max_steps=1, save_every=1)
    ckpt = out / "checkpoint.safetensors"
    old = json.loads(jepa3d.read_header(ckpt)[1]["train_config"])
    del old["subsample"]  # as jepa3d wrote it before the option existed
    rewrite_metadata(ckpt, ckpt, train_config=json.dumps(old))
    assert jepa3d.TrainConfig().subsample == "random"
    assert jepa3d.checkpoint_config(jepa3d.TrainConfig, jepa3d.read_header(ckpt)[1], ckpt).subsample == "fps"
