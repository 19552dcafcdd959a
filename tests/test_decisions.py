"""The decisions a command makes, as the library functions that make them: what the data says
about the model, which data a fine-tuning task reads, what a resumed run continues with, which
labels a per-point probe names."""
import numpy as np
import pytest
import torch

import jepa3d
import jepa3d_data as D


def test_the_data_sets_the_clip_length_and_the_teachers_width(tmp_path):
    assert D.model_fields(None, None, "jepa", 8) == {}                           # built-in clouds: the preset's
    for split in ("train", "test"):                                           # single clouds: nothing to say
        (tmp_path / "clouds" / split / "a").mkdir(parents=True)
        np.save(tmp_path / "clouds" / split / "a" / "0.npy", np.random.default_rng(0).random((64, 3), np.float32))
    assert D.model_fields(tmp_path / "clouds", None, "jepa", 8) == {}
    assert D.model_fields(None, "builtin4d", "jepa", 8) == {}                    # no path: the preset decides
    clips = D.TeacherFeaturesConfig(frames=3, num_points=32, per_class=1)
    D.cache_teacher_features(tmp_path / "clips", cfg=clips)
    assert D.model_fields(tmp_path / "clips", None, "jepa", 8) == {"frames": 8}   # sequence data: a clip model
    assert D.model_fields(tmp_path / "clips", None, "distill", 8) == {"frames": 8, "teacher_dim": 32}
    D.cache_teacher_features(tmp_path / "frames", cfg=D.TeacherFeaturesConfig(frames=1, num_points=32, per_class=1))
    assert D.model_fields(tmp_path / "frames", None, "jepa+distill", 8) == {"frames": 1, "teacher_dim": 32}


def test_a_task_reads_its_own_data(tmp_path):
    assert D.task_data("builtin-parts", None, None) == (None, "builtin-parts")
    assert D.task_data(str(tmp_path), None, None) == (str(tmp_path), None)       # a folder is a task of its own
    with pytest.raises(ValueError, match="needs --data"):
        D.task_data("modelnet40", None, None)
    (tmp_path / "x_train.npz").write_bytes(b"")
    assert D.task_data("modelnet40", str(tmp_path), None) == (str(tmp_path), None)
    with pytest.raises(ValueError, match="reads scanobjectnn data"):
        D.task_data("scanobjectnn", str(tmp_path), None)
    parts = D.ArrayDataset(np.zeros((2, 8, 3)), [0, 1], ["a", "b"], "p", parts=np.zeros((2, 8)),
                           parts_of=[[0], [1]])
    clouds = D.ArrayDataset(np.zeros((2, 8, 3)), [0, 1], ["a", "b"], "c")
    D.check_task("builtin-parts", parts)
    D.check_task("modelnet40", clouds)
    for task, ds in (("shapenetpart", clouds), ("builtin", parts)):
        with pytest.raises(ValueError, match="does not fit"):
            D.check_task(task, ds)


def test_the_point_probe_names_its_labels():
    parts = D.ArrayDataset(np.zeros((2, 8, 3)), [0, 1], ["mug", "cup"], "p", parts=np.zeros((2, 8)),
                           parts_of=[[0, 1], [2]])
    assert D.point_label_names(parts) == ["mug/0", "mug/1", "cup/2"]
    assert parts[1][1].shape == (8,) and parts.category.tolist() == [0, 1] and parts.num_parts == 3
    with pytest.raises(D.DataError, match="no per-point labels"):
        D.point_label_names(D.ArrayDataset(np.zeros((2, 8, 3)), [0, 1], ["a", "b"], "c"))


def test_a_clip_model_reads_clips(capsys):
    data = {"data": None, "dataset": None}
    assert isinstance(D.open_split(data, "test", 32, 3, clip_model=True), D.SequenceDataset)  # built-in clips
    with pytest.raises(ValueError, match="holds single clouds"):
        D.open_split({**data, "dataset": "builtin"}, "test", 32, 3, clip_model=True)


def test_a_resumed_run_continues_as_it_started(tmp_path, configs):
    cfg, tcfg = configs
    data = torch.utils.data.TensorDataset(torch.randn(16, 128, 3), torch.zeros(16, dtype=torch.long))
    jepa3d.pretrain(data, tmp_path, cfg, tcfg, device=torch.device("cpu"), seed=3, max_steps=1, save_every=1,
                    data_options={"data": "somewhere"})
    with pytest.raises(jepa3d.RunFolderError, match="already exists"):          # never overwritten
        jepa3d.check_run_folder(tmp_path, resume=False)
    model_cfg, train_cfg, seed, info = jepa3d.resume_settings(tmp_path)
    assert (model_cfg, train_cfg, seed) == (cfg, tcfg, 3)
    assert info["data_options"] == {"data": "somewhere"} and info["save_every"] == 1
    with pytest.raises(ValueError, match="drop --dim"):
        jepa3d.resume_settings(tmp_path, {"dim": 64})
