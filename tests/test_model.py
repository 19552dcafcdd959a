"""Encoder, predictor layout, EMA teacher, gradients, schedules, configs."""
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import jepa3d
from conftest import rewrite_metadata

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from flops import step_flops  # noqa: E402  (the speed benchmark's FLOP count, checked here)


def test_predictor_stacks_blocks_block_major(configs):
    for kind in ("concat", "cross"):
        cfg = jepa3d.make_configs("tiny", predictor=kind, dim=32, heads=2, pred_dim=32, pred_heads=2)[0]
        torch.manual_seed(0)
        pred = jepa3d.Predictor(cfg).eval()
        B, Nc, M, T = 3, 5, 4, 2
        ctx, cc, tc = torch.randn(B, Nc, 32), torch.randn(B, Nc, 3), torch.randn(B, M, T, 3)
        out = pred(ctx, cc, tc)
        assert out.shape == (M * B, T, 32)
        moved = tc.clone()
        moved[1, 2] += 1.0  # move block m=2 of sample b=1 only
        changed = (pred(ctx, cc, moved) - out).abs().amax(dim=(1, 2)) > 1e-6
        assert changed.nonzero().flatten().tolist() == [2 * B + 1]
        other = ctx.clone()
        other[1] += 1.0  # sample b=1's context reaches its M blocks, rows m * B + 1, and nothing else
        changed = (pred(other, cc, tc) - out).abs().amax(dim=(1, 2)) > 1e-6
        assert changed.nonzero().flatten().tolist() == [m * B + 1 for m in range(M)]


def test_ema_momentum_one_is_a_no_op_and_zero_copies(configs):
    model = jepa3d.JEPA(configs[0])
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in model.target_encoder.state_dict().items()}
    jepa3d.ema_update(model.target_encoder, model.encoder, 1.0)
    assert all(torch.equal(before[k], v) for k, v in model.target_encoder.state_dict().items())
    jepa3d.ema_update(model.target_encoder, model.encoder, 0.0)
    student = model.encoder.state_dict()
    assert all(torch.equal(student[k], v) for k, v in model.target_encoder.state_dict().items())


@pytest.mark.parametrize("predictor,sampler,loss", [("cross", "context-block", "cosine"),
                                                    ("concat", "knn-blocks", "l2"),
                                                    ("concat", "context-block", "smooth-l1")])
def test_gradients_reach_student_and_predictor_never_the_teacher(predictor, sampler, loss):
    cfg = jepa3d.make_configs("tiny", num_points=128, num_groups=16, group_size=8, dim=32, depth=2, heads=2,
                              pred_dim=32, pred_heads=2, predictor=predictor, sampler=sampler, loss=loss)[0]
    model = jepa3d.JEPA(cfg).train()
    loss_value, stats = model(torch.randn(4, 128, 3), torch.Generator().manual_seed(0))
    loss_value.backward()
    assert torch.isfinite(loss_value) and stats["target_std"] > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.target_encoder.parameters())
    assert not model.target_encoder.training  # the teacher never drops paths


def test_train_step_moves_teacher_by_the_ema_and_lowers_the_loss(configs):
    cfg, tcfg = configs
    torch.manual_seed(0)
    model = jepa3d.JEPA(cfg).train()
    opt = jepa3d.make_optimizer(model, tcfg)
    points = torch.randn(8, 128, 3)
    losses = []
    for step in range(15):
        g = torch.Generator().manual_seed(0)  # same masks each step: the loss must fall
        teacher = [p.clone() for p in model.target_encoder.parameters()]
        out = jepa3d.train_step(model, opt, None, points, g, lr=1e-3, momentum=0.9, grad_clip=1.0, amp_dtype=None)
        student = list(model.encoder.parameters())
        for t_old, t_new, s in zip(teacher, model.target_encoder.parameters(), student):
            assert torch.allclose(t_new, 0.9 * t_old + 0.1 * s, atol=1e-6)
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0]


def test_bf16_autocast_step_runs_on_cpu(configs):
    cfg, tcfg = configs
    model = jepa3d.JEPA(cfg).train()
    opt = jepa3d.make_optimizer(model, tcfg)
    out = jepa3d.train_step(model, opt, None, torch.randn(4, 128, 3), torch.Generator().manual_seed(0),
                            lr=1e-3, momentum=0.99, grad_clip=1.0, amp_dtype=torch.bfloat16)
    assert torch.isfinite(out["loss"])


def test_weight_decay_skips_biases_norms_and_tokens(configs):
    model = jepa3d.JEPA(configs[0])
    opt = jepa3d.make_optimizer(model, configs[1])
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0
    assert any(p is model.predictor.mask_token for p in no_decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"])


def test_schedules():
    tcfg = jepa3d.TrainConfig(lr=1e-3, min_lr=1e-6, ema_start=0.996, ema_end=1.0)
    assert jepa3d.momentum_at(0, 100, tcfg) == pytest.approx(0.996)
    assert jepa3d.momentum_at(100, 100, tcfg) == pytest.approx(1.0)
    assert jepa3d.lr_at(4, 100, 10, tcfg) == pytest.approx(5e-4)
    assert jepa3d.lr_at(10, 100, 10, tcfg) == pytest.approx(1e-3)
    assert jepa3d.lr_at(99, 100, 10, tcfg) < 2e-6
    lrs = [jepa3d.lr_at(s, 100, 10, tcfg) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_configs_reject_unknown_and_inconsistent_options():
    with pytest.raises(ValueError, match="unknown config option"):
        jepa3d.make_configs("paper", widht=3)
    with pytest.raises(ValueError, match="unknown preset"):
        jepa3d.make_configs("huge")
    with pytest.raises(ValueError, match="divide"):
        jepa3d.make_configs("paper", heads=5)
    cfg, tcfg = jepa3d.make_configs("paper")
    assert (cfg.num_points, cfg.num_groups, cfg.group_size, cfg.dim, cfg.depth, cfg.heads, cfg.num_targets) == \
        (1024, 64, 32, 384, 12, 6, 4)
    assert (cfg.sampler, cfg.predictor, cfg.loss, tcfg.epochs) == ("context-block", "cross", "cosine", 150)


def test_tiny_wide_is_tiny_at_twice_the_width():
    """The README's CPU recipe for ModelNet40 (issue 13's long runs) is measured as `tiny --dim 192
    --pred-dim 192 --epochs 40`: the preset must stay exactly that."""
    assert jepa3d.make_configs("tiny-wide") == jepa3d.make_configs("tiny", dim=192, pred_dim=192, epochs=40,
                                                                                  ema_end=0.999)
    assert jepa3d.make_configs("tiny")[0].dim == 96


def test_encoder_returns_requested_layers(configs):
    enc = jepa3d.Encoder(configs[0]).eval()
    patches, centres = jepa3d.group_points(torch.randn(2, 128, 3), 16, 8)
    outs = enc.layer_outputs(patches, centres, (0, 1))
    assert len(outs) == 2 and outs[1].shape == (2, 16, 32)
    assert torch.allclose(outs[1], enc(patches, centres))


def test_fp16_step_uses_a_grad_scaler(configs):
    cfg, tcfg = configs
    model = jepa3d.JEPA(cfg).train()
    opt = jepa3d.make_optimizer(model, tcfg)
    scaler = torch.amp.GradScaler("cpu")
    out = jepa3d.train_step(model, opt, scaler, torch.randn(4, 128, 3), torch.Generator().manual_seed(0),
                            lr=1e-3, momentum=0.99, grad_clip=1.0, amp_dtype=torch.float16)
    assert torch.isfinite(out["loss"]) and scaler.get_scale() > 0
    assert jepa3d.resolve_precision("fp16", torch.device("cpu")) == torch.float16


def test_auto_precision_on_a_cpu_is_bf16_where_it_is_native(monkeypatch):
    cpu = torch.device("cpu")
    native = torch.bfloat16 if jepa3d.cpu_has_bf16() else None
    assert jepa3d.resolve_precision("auto", cpu) == native
    for forced, dtype in (("0", None), ("1", torch.bfloat16)):
        monkeypatch.setenv("JEPA3D_CPU_BF16", forced)
        assert jepa3d.resolve_precision("auto", cpu) == dtype
    assert jepa3d.resolve_precision("fp32", cpu) is None


def test_chamfer_l2_hand_cases():
    a = torch.randn(3, 8, 3)
    assert jepa3d.chamfer_l2(a, a[:, torch.randperm(8)]).item() == pytest.approx(0, abs=1e-5)
    shift = torch.tensor([0.1, 0.0, 0.0])  # a tiny shift: every nearest neighbour is the shifted twin
    assert jepa3d.chamfer_l2(a, a + shift).item() == pytest.approx(2 * 0.01, rel=1e-3)


def test_reconstruct_objective_has_no_teacher_and_trains_the_encoder(tmp_path, configs):
    cfg = jepa3d.make_configs("tiny", num_points=128, num_groups=16, group_size=8, dim=32, depth=2, heads=2,
                              pred_dim=32, pred_heads=2, objective="reconstruct")[0]
    model = jepa3d.JEPA(cfg).train()
    assert model.target_encoder is None
    opt = jepa3d.make_optimizer(model, configs[1])
    out = jepa3d.train_step(model, opt, None, torch.randn(4, 128, 3), torch.Generator().manual_seed(0),
                            lr=1e-3, momentum=0.99, grad_clip=1.0, amp_dtype=None)
    assert torch.isfinite(out["loss"]) and out["feature_std"] > 0
    assert all(p.grad is not None for p in model.encoder.parameters())
    jepa3d.save_checkpoint(tmp_path / "r.safetensors", model, opt)
    loaded, _, tensors = jepa3d.load_jepa(tmp_path / "r.safetensors")
    assert not any(k.startswith("target_encoder.") for k in tensors)
    encoder, _, source = jepa3d.load_encoder(str(tmp_path / "r.safetensors"), "target")
    assert "(encoder" in source  # no teacher: the one encoder serves


def test_step_flops_match_torch_flop_counter(configs):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model_cfg, train_cfg = configs
    for over in ({}, {"predictor": "concat", "sampler": "knn-blocks"}, {"objective": "reconstruct"},
                 {"frames": 3, "sampler": "tube", "num_targets": 2},  # clips: 3 frames of patches at (x, y, z, t)
                 {"frames": 4, "sampler": "tube", "num_targets": 2, "tokens": "tube"}):  # point tubes
        cfg = dataclasses.replace(model_cfg, **over)
        model = jepa3d.JEPA(cfg)
        opt = jepa3d.make_optimizer(model, train_cfg)
        points = torch.randn(4, *(cfg.frames,) * (cfg.frames > 1), cfg.num_points, 3)
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):  # math SDPA: counted matmuls
            stats = jepa3d.train_step(model, opt, None, points, torch.Generator().manual_seed(0), lr=1e-3,
                                      momentum=0.99, grad_clip=1.0, amp_dtype=None)
        counted = counter.get_total_flops()
        flops = step_flops(cfg, 4, stats["context_padded"].item(),
                                  int(stats["target_patches"].item()) // cfg.num_targets)
        # only the input gradients of the 3-wide first layers (never needed) separate the two
        assert counted <= flops <= 1.002 * counted, over


def test_mini_pointnet_equals_point_maes_concat_form():
    net = jepa3d.MiniPointNet(48)
    patches = torch.randn(2, 5, 16, 3)
    h = net.first(patches)
    glob = h.amax(dim=-2, keepdim=True).expand_as(h)
    reference = net.second(torch.cat([glob, h], dim=-1)).amax(dim=-2)  # Point-MAE's formulation
    assert torch.allclose(net(patches), reference, atol=1e-5)


def test_a_new_objective_is_one_table_entry(configs, monkeypatch):
    cfg, _ = configs
    choices = next(jepa3d.choices_of(f) for f in jepa3d.dataclasses.fields(cfg) if f.name == "objective")
    assert set(choices) == set(jepa3d.OBJECTIVES)

    def add_head(model):
        model.centre_head = torch.nn.Linear(model.cfg.dim, 3)

    def centre_loss(model, batch):  # predict each target patch's centre
        masks, _, pred = jepa3d.predict_targets(model, batch)
        B, M, T = masks.targets.shape
        truth = jepa3d.gather(batch.centres, masks.targets).transpose(0, 1).reshape(M * B, T, 3)
        return (torch.nn.functional.mse_loss(model.centre_head(pred), truth),
                {"centre_err": torch.tensor(0.0), **jepa3d.mask_stats(masks)})

    monkeypatch.setitem(jepa3d.OBJECTIVES, "centres", jepa3d.Objective(add_head, centre_loss, "centre_err"))
    model = jepa3d.JEPA(jepa3d.dataclasses.replace(cfg, objective="centres"))
    loss, stats = model(torch.randn(4, 128, 3), torch.Generator().manual_seed(0))
    loss.backward()
    assert model.centre_head.weight.grad is not None and model.target_encoder is None
    assert {"centre_err", "context_patches", "target_patches"} <= set(stats)


@pytest.mark.parametrize("predictor", ["cross", "concat"])
def test_a_padded_context_predicts_what_the_unpadded_one_does(configs, predictor):
    cfg = jepa3d.dataclasses.replace(configs[0], predictor=predictor)
    model = jepa3d.JEPA(cfg).eval()
    g = torch.Generator().manual_seed(0)
    patches, centres = jepa3d.group_points(torch.randn(6, 128, 3, generator=g), 16, 8, g)
    masks = jepa3d.sample_context_block(centres, cfg, g)
    keep, B = masks.context_keep, 6
    assert not keep.all()  # some contexts are padded
    ctx = model.encoder(jepa3d.gather(patches, masks.context), jepa3d.gather(centres, masks.context), keep)
    pred = model.predictor(ctx, jepa3d.gather(centres, masks.context), jepa3d.gather(centres, masks.targets), keep)
    for b in range(B):  # each cloud alone, with its real context only
        idx = masks.context[b][keep[b]][None]
        alone = model.encoder(jepa3d.gather(patches[b:b + 1], idx), jepa3d.gather(centres[b:b + 1], idx))
        assert torch.allclose(alone[0], ctx[b][keep[b]], atol=1e-5)
        alone_pred = model.predictor(alone, jepa3d.gather(centres[b:b + 1], idx),
                                     jepa3d.gather(centres[b:b + 1], masks.targets[b:b + 1]))
        assert torch.allclose(alone_pred, pred[b::B], atol=1e-5)  # block-major rows m * B + b


def test_position_enters_every_block_and_legacy_checkpoints_keep_theirs(configs, tmp_path):
    cfg = configs[0]
    assert cfg.position == "every-block" and cfg.pos_init == "torch"
    enc = jepa3d.Encoder(cfg).eval()
    patches, centres = jepa3d.group_points(torch.randn(2, 128, 3), 16, 8)
    # at init the position signal is as large as the patch tokens' (ViT's 0.02 init made it ~200x smaller)
    ratio = enc.pos_embed(centres).std() / enc.patch_embed(patches).std()
    assert 0.1 < ratio < 10
    legacy = jepa3d.dataclasses.replace(cfg, position="input", pos_init="trunc-normal")
    assert jepa3d.Encoder(legacy).pos_embed(centres).std() / enc.patch_embed(patches).std() < 0.05
    # moving a centre changes the tokens of the other patches after a block only through attention
    # in 'input' mode; in 'every-block' mode the position is re-added, so both modes differ
    enc_input = jepa3d.Encoder(jepa3d.dataclasses.replace(cfg, position="input"))
    enc_input.load_state_dict(enc.state_dict())
    assert not torch.allclose(enc_input.eval()(patches, centres), enc(patches, centres))
    # a format-1 checkpoint (no position field) loads as the model it was: position added once
    model = jepa3d.JEPA(legacy)
    jepa3d.save_checkpoint(tmp_path / "old.safetensors", model)
    old_cfg = json.loads(jepa3d.read_header(tmp_path / "old.safetensors")[1]["model_config"])
    for name in ("position", "pos_init", "min_context"):
        del old_cfg[name]
    rewrite_metadata(tmp_path / "old.safetensors", tmp_path / "v1.safetensors", format_version="1",
                     model_config=json.dumps(old_cfg))
    loaded, _, _ = jepa3d.load_jepa(tmp_path / "v1.safetensors")
    assert loaded.cfg.position == "input" and loaded.cfg.pos_init == "trunc-normal"


def test_monitors_score_the_trivial_prediction_and_see_a_collapse(configs):
    cfg = configs[0]
    model = jepa3d.JEPA(cfg).train()
    points = torch.randn(4, 128, 3)
    _, stats = model(points, torch.Generator().manual_seed(0))
    assert 0 < stats["mean_loss"] < 1 and 0 < stats["target_spread"] < 2 and 0 < stats["pred_spread"] < 2
    with torch.no_grad():  # a collapsed teacher: every token the same vector
        model.target_encoder.norm.weight.zero_()
        model.target_encoder.norm.bias.normal_()
    _, stats = model(points, torch.Generator().manual_seed(0))
    assert stats["target_std"] < 1e-3 and stats["target_spread"] < 1e-3 and stats["mean_loss"] < 1e-4


def test_target_layers_average_the_teachers_last_blocks_each_layer_normed(configs):
    cfg = jepa3d.dataclasses.replace(configs[0], target_layers=2)
    torch.manual_seed(0)
    teacher = jepa3d.Encoder(cfg).eval()
    patches, centres = jepa3d.group_points(torch.randn(2, 128, 3), cfg.num_groups, cfg.group_size)
    final = jepa3d._teacher_targets(teacher, patches, centres, 1)
    out = teacher(patches, centres)
    assert torch.allclose(final, torch.nn.functional.layer_norm(out, out.shape[-1:]))
    # by hand: run the blocks, layer-norm the outputs of the last two, average
    x, pos = teacher.patch_embed(patches), teacher.pos_embed(centres)
    outs = []
    for blk in teacher.blocks:
        x = blk(x + pos)
        outs.append(torch.nn.functional.layer_norm(x, x.shape[-1:]))
    mean = (outs[-2] + outs[-1]) / 2
    assert torch.allclose(jepa3d._teacher_targets(teacher, patches, centres, 2), mean, atol=1e-6)
    assert not torch.allclose(mean, final, atol=1e-3)


def test_the_sliced_cpu_embedding_gives_the_same_numbers():
    # on a CPU the mini-PointNet runs in slices that stay in cache: forward values bit for bit
    torch.manual_seed(0)
    embed = jepa3d.MiniPointNet(96)
    patches = torch.randn(5, 40, 16, 3)                                       # 3,200 points: two slices
    with torch.no_grad():
        assert torch.equal(embed(patches), embed._embed(patches))
    sliced = embed(patches)
    sliced.square().sum().backward()
    grads = [p.grad.clone() for p in embed.parameters()]
    embed.zero_grad()
    embed._embed(patches).square().sum().backward()                          # the gradients: within rounding
    for a, p in zip(grads, embed.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_cpu_bf16_attention_matches_the_fused_kernel():
    torch.manual_seed(0)
    attn = jepa3d.Attention(96, 3)
    x = torch.randn(4, 20, 96)
    keep = torch.ones(4, 20, dtype=torch.bool)
    keep[:, 15:] = False                                                      # padding keys
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = attn(x, keep=keep).float()                                     # the CPU bf16 path: two matmuls
    q, k, v = attn.qkv(x).view(4, 20, 3, 3, 32).permute(2, 0, 3, 1, 4)
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
    ref = attn.proj(fused.transpose(1, 2).reshape(4, 20, 96))
    torch.testing.assert_close(ours, ref, rtol=0.05, atol=0.02)               # bf16's precision


def test_cpu_training_uses_the_fused_optimizer_where_torch_has_it(configs):
    cfg, tcfg = configs
    opt = jepa3d.make_optimizer(jepa3d.JEPA(cfg), tcfg)
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    assert opt.defaults.get("fused") is ((major, minor) >= (2, 4) or None)
