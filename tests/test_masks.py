"""Multi-block samplers: sizes, disjointness, per-sample variety, reproducibility."""
import pytest
import torch

import jepa3d


def centres(B=16, G=64, seed=0):
    return torch.randn(B, G, 3, generator=torch.Generator().manual_seed(seed))


def draw(cfg, c, seed):
    return jepa3d.SAMPLERS[cfg.sampler](c, cfg, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sampler", ["context-block", "knn-blocks"])
def test_context_and_targets_are_disjoint_and_differ_per_sample(sampler):
    cfg, _ = jepa3d.make_configs("paper", sampler=sampler)
    c = centres()
    m = draw(cfg, c, 0)
    B, M, T = m.targets.shape
    assert M == cfg.num_targets and m.context.shape[0] == B
    for b in range(B):
        ctx, tgt = set(m.context[b].tolist()), set(m.targets[b].flatten().tolist())
        assert len(ctx) == m.context.shape[1]  # no repeated context patch
        assert not ctx & tgt
    # every sample gets its own mask (a shared mask is a known peer bug)
    assert len({tuple(m.targets[b].flatten().tolist()) for b in range(B)}) == B
    assert len({tuple(m.context[b].tolist()) for b in range(B)}) > 1


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
        assert 1 <= m.context.shape[1] <= 64 - T
        d = torch.cdist(c, c)
        for b in range(4):  # each target block is a seed patch and its T nearest
            block = m.targets[b, 0]
            radius = d[b, block[0], block].max()  # topk puts the seed (distance 0) first
            assert (d[b, block[0]] < radius).sum() <= T


def test_impossible_scales_are_refused():
    with pytest.raises(ValueError, match="leaves no context"):
        jepa3d.make_configs("paper", num_targets=8, target_scale=(0.2, 0.3), context_scale=(0.85, 1.0))
    with pytest.raises(ValueError, match="empty target block"):
        jepa3d.make_configs("paper", sampler="knn-blocks", mask_ratio=0.1, num_targets=16)


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
