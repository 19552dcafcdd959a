"""Multi-block samplers: sizes, disjointness, per-sample variety, reproducibility."""
import numpy as np
import pytest
import torch

import jepa3d


def centres(B=16, G=64, seed=0):
    return torch.randn(B, G, 3, generator=torch.Generator().manual_seed(seed))


def draw(cfg, c, seed):
    return jepa3d.SAMPLERS[cfg.sampler](c, cfg, torch.Generator().manual_seed(seed))


def context_of(m, b):
    """Sample b's real context patches (padding dropped)."""
    return m.context[b] if m.context_keep is None else m.context[b][m.context_keep[b]]


@pytest.mark.parametrize("sampler", ["context-block", "knn-blocks"])
def test_context_and_targets_are_disjoint_and_differ_per_sample(sampler):
    cfg, _ = jepa3d.make_configs("paper", sampler=sampler)
    c = centres()
    m = draw(cfg, c, 0)
    B, M, T = m.targets.shape
    assert M == cfg.num_targets and m.context.shape[0] == B
    for b in range(B):
        ctx, tgt = set(context_of(m, b).tolist()), set(m.targets[b].flatten().tolist())
        assert len(ctx) == len(context_of(m, b))  # no repeated context patch
        assert not ctx & tgt
    # every sample gets its own mask (a shared mask is a known peer bug)
    assert len({tuple(m.targets[b].flatten().tolist()) for b in range(B)}) == B
    assert len({tuple(context_of(m, b).tolist()) for b in range(B)}) > 1


@pytest.mark.parametrize("sampler", ["context-block", "knn-blocks"])
def test_same_seed_same_masks(sampler):
    cfg, _ = jepa3d.make_configs("paper", sampler=sampler)
    c = centres()
    a, b, other = draw(cfg, c, 5), draw(cfg, c, 5), draw(cfg, c, 6)
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.targets, other.targets)


def test_knn_blocks_cover_the_ratio_exactly_and_are_contiguous():
    cfg, _ = jepa3d.make_configs("paper", sampler="knn-blocks", mask_ratio=0.5, num_targets=4)
    c = centres(G=64)
    m = draw(cfg, c, 1)
    assert m.targets.shape == (16, 4, 8) and m.context.shape == (16, 32)
    for b in range(16):
        everything = m.context[b].tolist() + m.targets[b].flatten().tolist()
        assert sorted(everything) == list(range(64))  # blocks disjoint, context = the rest
    # the first block is exactly the 8 nearest patches of one of its members, its seed
    d = torch.cdist(c, c)
    for b in range(16):
        block = set(m.targets[b, 0].tolist())
        assert any(block == set(d[b, s].argsort()[:8].tolist()) for s in block)


def test_context_block_honours_the_scales():
    cfg, _ = jepa3d.make_configs("paper", target_scale=(0.15, 0.2), context_scale=(0.85, 1.0))
    c = centres(G=64)
    for seed in range(10):
        m = draw(cfg, c, seed)
        T = m.targets.shape[2]
        assert round(0.15 * 64) <= T <= round(0.2 * 64)
        assert all(cfg.min_context <= len(context_of(m, b)) <= 64 - T for b in range(16))
        d = torch.cdist(c, c)
        for b in range(4):  # each target block is a seed patch and its T nearest
            block = m.targets[b, 0]
            radius = d[b, block[0], block].max()  # topk puts the seed (distance 0) first
            assert (d[b, block[0]] < radius).sum() <= T


def test_impossible_scales_are_refused_where_masks_are_drawn():
    cfg, _ = jepa3d.make_configs("paper", num_targets=8, target_scale=(0.2, 0.3), context_scale=(0.85, 1.0))
    with pytest.raises(ValueError, match="leaves no context"):
        cfg.check_masking()
    with pytest.raises(ValueError, match="leaves no context"):
        jepa3d.JEPA(cfg)
    with pytest.raises(ValueError, match="leaves no context"):
        jepa3d.mask_preview(torch.rand(2048, 3), cfg)
    cfg, _ = jepa3d.make_configs("paper", sampler="knn-blocks", mask_ratio=0.1, num_targets=16)
    with pytest.raises(ValueError, match="empty target block"):
        cfg.check_masking()


def test_geometry_that_never_masks_is_fine_downstream(tmp_path):
    # a downstream command may shrink the patches below what the paper's masking needs: it never masks
    from conftest import run_cli
    r = run_cli("pretrain", "--preset", "tiny", "--num-groups", "8", "--out", tmp_path / "p")
    assert r.returncode == 2 and "leaves no context" in r.stderr and not (tmp_path / "p").exists()
    r = run_cli("embed", "--checkpoint", "none", "--preset", "tiny", "--num-groups", "8", "--split", "test",
                "--out", tmp_path / "f.npz")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "f.npz")["features"].shape == (300, 192)


def test_block_sizes_come_from_the_host_off_the_cpu():
    # a CPU generator draws them itself; a GPU generator's seed seeds a host generator (no .item() sync),
    # so equal seeds give equal sizes and the step's new seed new ones
    cpu = torch.Generator().manual_seed(3)
    assert jepa3d.host_generator(cpu) is cpu

    class OnGPU:  # what host_generator reads of a torch.Generator(device="cuda")
        device = torch.device("cuda")

        def __init__(self, seed):
            self.seed = seed

        def initial_seed(self):
            return self.seed

    def draws(seed):
        return [jepa3d._uniform((0.15, 0.2), jepa3d.host_generator(OnGPU(seed))) for _ in range(2)]
    assert draws(7) == draws(7) != draws(8)
    assert all(0.15 <= u <= 0.2 for u in draws(7))


def test_contexts_keep_what_they_drew_padded_to_the_largest():
    cfg, _ = jepa3d.make_configs("paper")
    m = draw(cfg, centres(B=64), 0)
    sizes = m.context_keep.sum(1)
    assert m.context.shape[1] == sizes.max()  # padded to the largest context, no cut to the smallest
    assert sizes.float().std() > 0  # the sizes differ: each sample keeps its own
    for b in range(64):  # real patches first and ascending, padding after them
        real = m.context[b, : sizes[b]]
        assert torch.equal(real, real.sort().values) and m.context_keep[b, : sizes[b]].all()
    # what a sample keeps does not depend on how many others share its batch
    small = jepa3d.make_configs("paper")[0]
    means = [draw(small, centres(B=B, seed=1), 3).context_keep.sum(1).float().mean() for B in (8, 256)]
    assert abs(means[0] - means[1]) < 4


def test_short_contexts_are_drawn_again():
    # tiny: 32 patches, a context block of 85-100% minus 4 blocks of up to 6: it can leave 3
    loose = jepa3d.make_configs("tiny", min_context=1)[0]
    strict = jepa3d.make_configs("tiny", min_context=12)[0]
    c = centres(B=512, G=32)
    assert (draw(loose, c, 0).context_keep.sum(1) < 12).sum() > (draw(strict, c, 0).context_keep.sum(1) < 12).sum()
