"""Points -> pixels for cross-modal distillation (issue 16): projection against hand-computed
pixels, points behind the camera or outside the image dropped, an occluded point dropped by the
z-buffer, the bilinear lookup exact at feature-cell centres, several cameras."""
import torch

import jepa3d
import jepa3d_data

K = torch.tensor([[[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]]])   # fx fy 100, cx 50, cy 40
EYE = torch.eye(4)[None]


def test_projection_by_hand():
    pts = torch.tensor([[[0.2, -0.1, 2.0], [0.0, 0.0, -1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]]])
    uv, depth, inside = jepa3d_data.project_points(pts, K, EYE, (80, 100))
    assert torch.allclose(uv[0, 0], torch.tensor([60.0, 35.0]))            # 100 * 0.2 / 2 + 50, 100 * -0.1 / 2 + 40
    assert torch.allclose(uv[0, 3], torch.tensor([50.0, 40.0])) and depth[0, 3] == 5
    assert inside.tolist() == [[True, False, False, True]]                 # behind the camera; u = 350 outside
    # the extrinsic moves the points into the camera's frame first: a camera 1 m to the right (x)
    to_cam = torch.eye(4)[None].clone()
    to_cam[0, 0, 3] = -1.0
    uv, _, _ = jepa3d_data.project_points(torch.tensor([[[1.2, -0.1, 2.0]]]), K, to_cam, (80, 100))
    assert torch.allclose(uv[0, 0], torch.tensor([60.0, 35.0]))
    # the image's outer edges: pixel centres are integers, so u in [-0.5, W - 0.5): u = -0.4 in, -0.6 out
    edge = torch.tensor([[[-1.008, 0.0, 2.0], [-1.012, 0.0, 2.0], [0.988, 0.0, 2.0], [0.992, 0.0, 2.0]]])
    uv, _, inside = jepa3d_data.project_points(edge, K, EYE, (80, 100))
    assert torch.allclose(uv[0, :, 0], torch.tensor([-0.4, -0.6, 99.4, 99.6]), atol=1e-4)
    assert inside.tolist() == [[True, False, True, False]]


def test_zbuffer_drops_the_occluded_point():
    # three points on the ray through pixel (60, 35), at depths 2, 2.1 and 4; one elsewhere at 9
    pts = torch.tensor([[[0.2, -0.1, 2.0], [0.21, -0.105, 2.1], [0.4, -0.2, 4.0], [-0.9, 0.0, 9.0]]])
    uv, depth, inside = jepa3d_data.project_points(pts, K, EYE, (80, 100))
    visible = jepa3d_data.zbuffer_visible(uv, depth, inside, (80, 100), tol=0.1, radius=0)
    assert visible.tolist() == [[True, True, False, True]]                  # 2.1 <= 2 * 1.1 < 4
    # the neighbourhood test: a point one pixel off the near surface is hidden too with radius 1
    side = torch.tensor([[[0.2, -0.1, 2.0], [0.44, -0.2, 4.0]]])            # pixel (60, 35) and (61, 35)
    uv, depth, inside = jepa3d_data.project_points(side, K, EYE, (80, 100))
    assert jepa3d_data.zbuffer_visible(uv, depth, inside, (80, 100), radius=0).tolist() == [[True, True]]
    assert jepa3d_data.zbuffer_visible(uv, depth, inside, (80, 100), radius=1).tolist() == [[True, False]]
    # points outside the image take part in nothing
    out = torch.tensor([[[0.2, -0.1, 2.0], [0.4, -0.2, -4.0]]])
    uv, depth, inside = jepa3d_data.project_points(out, K, EYE, (80, 100))
    assert jepa3d_data.zbuffer_visible(uv, depth, inside, (80, 100)).tolist() == [[True, False]]


def test_bilinear_lookup_is_exact_at_cell_centres():
    fmap = torch.randn(2, 5, 4, 6, generator=torch.Generator().manual_seed(0))   # (B, C, h, w), stride 8
    # cell (row 1, column 2) covers pixels [16, 24) x [8, 16): its centre is pixel (19.5, 11.5)
    uv = torch.tensor([[19.5, 11.5], [3.5, 3.5]]).expand(2, 2, 2)
    out = jepa3d_data.bilinear_lookup(fmap, uv, stride=8)
    assert torch.allclose(out[:, 0], fmap[:, :, 1, 2], atol=1e-6) and torch.allclose(out[:, 1], fmap[:, :, 0, 0])
    # half way between two centres: their mean; past the last centre: clamped to the border
    mid = jepa3d_data.bilinear_lookup(fmap, torch.tensor([[[23.5, 11.5], [100.0, 11.5]]]).expand(2, 2, 2), stride=8)
    assert torch.allclose(mid[:, 0], (fmap[:, :, 1, 2] + fmap[:, :, 1, 3]) / 2, atol=1e-6)
    assert torch.allclose(mid[:, 1], fmap[:, :, 1, 5], atol=1e-6)
    # per-pixel maps (stride 1): pixel centres are the integers
    px = jepa3d_data.bilinear_lookup(fmap, torch.tensor([[[5.0, 3.0]]]).expand(2, 1, 2))
    assert torch.allclose(px[:, 0], fmap[:, :, 3, 5], atol=1e-6)


def test_each_point_takes_a_camera_that_sees_it():
    pts = torch.tensor([[[0.0, 0.0, 2.0], [0.0, 0.0, -2.0], [0.0, 5.0, 0.0]]])   # ahead, behind, above
    back = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0]))[None]               # a camera looking backwards
    cams = [{"K": K, "to_camera": EYE, "image_size": (80, 100)},
            {"K": K, "to_camera": back, "image_size": (80, 100)}]
    maps = [torch.full((1, 3, 80, 100), 1.0), torch.full((1, 3, 80, 100), 2.0)]
    feats, visible, which = jepa3d_data.pixel_features(pts, cams, maps)
    assert which.tolist() == [[0, 1, -1]] and visible.tolist() == [[True, True, False]]
    assert feats[0, 0].tolist() == [1.0] * 3 and feats[0, 1].tolist() == [2.0] * 3 and feats[0, 2].abs().sum() == 0


def test_bilinear_lookup_matches_grid_sample_and_respects_the_mask():
    g = torch.Generator().manual_seed(1)
    fmap = torch.randn(2, 7, 5, 9, generator=g)
    uv = torch.rand(2, 50, 2, generator=g) * torch.tensor([9 * 14 + 20, 5 * 14 + 20]) - 10   # inside and beyond
    x = (uv[..., 0] - 6.5) / 14
    y = (uv[..., 1] - 6.5) / 14
    grid = torch.stack([2 * x / 8 - 1, 2 * y / 4 - 1], dim=-1)
    ref = torch.nn.functional.grid_sample(fmap, grid[:, None], mode="bilinear", padding_mode="border",
                                          align_corners=True)[:, :, 0].transpose(1, 2)
    assert torch.allclose(jepa3d_data.bilinear_lookup(fmap, uv, stride=14), ref, atol=1e-5)
    mask = torch.rand(2, 50, generator=g) > 0.5
    out = jepa3d_data.bilinear_lookup(fmap, uv, stride=14, mask=mask)
    assert torch.allclose(out[mask], ref[mask], atol=1e-5) and (out[~mask] == 0).all()
