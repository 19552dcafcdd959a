"""FPS, KNN and grouping against brute-force references."""
import numpy as np
import pytest
import torch

import jepa3d


def fps_reference(xyz: np.ndarray, n: int, start: int) -> list[int]:
    chosen, dist = [start], np.full(len(xyz), np.inf)
    for _ in range(n - 1):
        dist = np.minimum(dist, ((xyz - xyz[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(dist.argmax()))
    return chosen


def test_fps_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    xyz = torch.randn(4, 300, 3, generator=g)
    idx = jepa3d.farthest_point_sample(xyz, 40, torch.Generator().manual_seed(1))
    assert idx.shape == (4, 40)
    for b in range(4):
        assert idx[b].tolist() == fps_reference(xyz[b].double().numpy(), 40, int(idx[b, 0]))


def test_fps_start_comes_from_the_generator():
    xyz = torch.randn(8, 100, 3)
    a = jepa3d.farthest_point_sample(xyz, 5, torch.Generator().manual_seed(3))
    b = jepa3d.farthest_point_sample(xyz, 5, torch.Generator().manual_seed(3))
    c = jepa3d.farthest_point_sample(xyz, 5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a[:, 0], c[:, 0])
    assert jepa3d.farthest_point_sample(xyz, 5)[:, 0].eq(0).all()


def test_knn_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    pts, query = torch.randn(3, 200, 3, generator=g), torch.randn(3, 10, 3, generator=g)
    idx = jepa3d.knn(query, pts, 7)
    assert idx.shape == (3, 10, 7)
    for b in range(3):
        for q in range(10):
            d = ((pts[b] - query[b, q]) ** 2).sum(1)
            assert sorted(idx[b, q].tolist()) == sorted(d.argsort()[:7].tolist())
            assert torch.all(d[idx[b, q]][1:] >= d[idx[b, q]][:-1])  # nearest first


def test_group_points_is_centre_relative_and_float32_under_autocast():
    pts = torch.randn(2, 256, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        patches, centres = jepa3d.group_points(pts.bfloat16(), 16, 8, torch.Generator().manual_seed(0))
    assert patches.shape == (2, 16, 8, 3) and centres.shape == (2, 16, 3)
    assert patches.dtype == centres.dtype == torch.float32
    # each patch holds its own centre (offset 0), and every point is a real point
    assert torch.all(patches.abs().amax(-1).amin(-1) == 0)
    absolute = (patches + centres[:, :, None]).reshape(2, -1, 3)
    nearest = torch.cdist(absolute, pts.bfloat16().float()).amin(-1)
    assert nearest.max() < 1e-6


def test_fit_points_subsamples_by_fps_and_pads_by_repeats():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(2, 50, 3)
    down = jepa3d.fit_points(pts, 20, g)
    up = jepa3d.fit_points(pts, 80, g)
    assert down.shape == (2, 20, 3) and up.shape == (2, 80, 3)
    assert torch.equal(up[:, :50], pts)  # originals kept, extras are repeats of real points
    def all_real(sub):  # every point of sub is exactly one of pts
        return (sub[:, :, None] == pts[:, None]).all(-1).any(-1).all()
    assert all_real(up[:, 50:]) and all_real(down)


@pytest.mark.parametrize("flat", [False, True])
def test_fps_both_argmax_forms_match_brute_force(flat):
    # two-level (the CPU's): 1000 and 5000 points are not multiples of the block widths (64, 128),
    # the padded tail must never win; flat (the GPU's) is checked here on the CPU
    g = torch.Generator().manual_seed(2)
    for P in (300, 1000, 5000):
        xyz = torch.rand(2, P, 3, generator=g)
        idx = jepa3d.farthest_point_sample(xyz, 24, torch.Generator().manual_seed(0), flat=flat)
        for b in range(2):
            assert idx[b].tolist() == fps_reference(xyz[b].double().numpy(), 24, int(idx[b, 0]))


def test_knn_block_selection_is_exact_at_many_sizes():
    g = torch.Generator().manual_seed(5)
    for n, k in ((1024, 32), (1000, 32), (500, 16), (97, 5), (64, 3), (40, 40)):
        pts, query = torch.rand(2, n, 3, generator=g), torch.rand(2, 7, 3, generator=g)
        idx = jepa3d.knn(query, pts, k)
        d = torch.cdist(query, pts)
        assert torch.equal(idx, d.topk(k, dim=-1, largest=False, sorted=True).indices), (n, k)
        unsorted = jepa3d.knn(query, pts, k, sorted=False)
        assert torch.equal(unsorted.sort(-1).values, idx.sort(-1).values), (n, k)


def test_knn_chunks_the_batch_without_changing_the_answer():
    # 40 clouds x 64 queries x 1024 points is over the 2M-distance chunk: two chunks, of 32 and 8
    g = torch.Generator().manual_seed(6)
    pts, query = torch.rand(40, 1024, 3, generator=g), torch.rand(40, 64, 3, generator=g)
    idx = jepa3d.knn(query, pts, 32)
    assert torch.equal(idx, torch.cat([jepa3d.knn(query[i:i + 1], pts[i:i + 1], 32) for i in range(40)]))
    assert torch.equal(idx.sort(-1).values, torch.cdist(query, pts).topk(32, largest=False).indices.sort(-1).values)


def test_random_subsampling_draws_distinct_points_per_cloud():
    pts = torch.randn(3, 200, 3)
    g = torch.Generator().manual_seed(0)
    out = jepa3d.fit_points(pts, 50, g, subsample="random")
    assert out.shape == (3, 50, 3)
    for b in range(3):  # 50 distinct points of this cloud
        rows = {tuple(p) for p in out[b].tolist()}
        assert len(rows) == 50 and rows <= {tuple(p) for p in pts[b].tolist()}
    assert not torch.equal(out[0], jepa3d.fit_points(pts, 50, torch.Generator().manual_seed(1), subsample="random")[0])
