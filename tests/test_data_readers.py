"""Every reader on fixtures written in the official layouts, the real shared data, and
every bad-input case through the CLI (one line, exit 1, no traceback)."""
import json
import pickle
import struct

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import SHARED

import jepa3d
import jepa3d_data

RNG = np.random.default_rng(0)


def cloud(n=300):
    return RNG.normal(size=(n, 3)).astype(np.float32) * 5 + 2  # arbitrary units and offset


# ----------------------------------------------------------------------------- writers
def write_ply(path, pts, fmt="ascii"):
    head = (f"ply\nformat {fmt} 1.0\nelement vertex {len(pts)}\nproperty float x\nproperty float y\n"
            "property float z\nproperty uchar red\nelement face 0\nproperty list uchar int vertex_indices\n"
            "end_header\n")
    if fmt == "ascii":
        body = "".join(f"{x} {y} {z} 7\n" for x, y, z in pts).encode()
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        body = b"".join(struct.pack(order + "fffB", *p, 7) for p in pts)
    path.write_bytes(head.encode() + body)


def write_pcd(path, pts, data="ascii"):
    head = (f"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z intensity\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
            f"WIDTH {len(pts)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(pts)}\nDATA {data}\n")
    if data == "ascii":
        body = "".join(f"{x} {y} {z} 1.0\n" for x, y, z in pts).encode()
    else:
        body = np.concatenate([pts, np.ones((len(pts), 1), np.float32)], 1).astype("<f4").tobytes()
    path.write_bytes(head.encode() + body)


CUBE_V = np.array([[x, y, z] for x in (0, 2) for y in (0, 3) for z in (0, 4)], dtype=float)
CUBE_F = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]


def write_off(path, compact=False):
    head = f"OFF{len(CUBE_V)} {len(CUBE_F)} 0\n" if compact else f"OFF\n{len(CUBE_V)} {len(CUBE_F)} 0\n"
    body = "".join(f"{x} {y} {z}\n" for x, y, z in CUBE_V) + "".join(f"4 {' '.join(map(str, f))}\n" for f in CUBE_F)
    path.write_text(head + body)


def write_obj(path):
    path.write_text("# cube\n" + "".join(f"v {x} {y} {z}\n" for x, y, z in CUBE_V)
                    + "".join("f " + " ".join(f"{i + 1}/1" for i in f) + "\n" for f in CUBE_F))


def crlf(path, lines):
    path.write_bytes("".join(line + "\r\n" for line in lines).encode())


# ----------------------------------------------------------------------------- single files
@pytest.mark.parametrize("suffix,writer", [
    (".npy", lambda p, x: np.save(p, x)), (".npz", lambda p, x: np.savez(p, points=x)),
    (".ply", lambda p, x: write_ply(p, x, "ascii")),
    (".ply", lambda p, x: write_ply(p, x, "binary_little_endian")),
    (".ply", lambda p, x: write_ply(p, x, "binary_big_endian")),
    (".pcd", lambda p, x: write_pcd(p, x, "ascii")), (".pcd", lambda p, x: write_pcd(p, x, "binary")),
    (".xyz", lambda p, x: np.savetxt(p, x)), (".txt", lambda p, x: np.savetxt(p, x, delimiter=",")),
    (".pts", lambda p, x: p.write_text(f"{len(x)}\n" + "".join(f"{a} {b} {c}\n" for a, b, c in x))),
])
def test_cloud_files_read_back_exactly(tmp_path, suffix, writer):
    pts = cloud()
    path = tmp_path / f"c{suffix}"
    writer(path, pts)
    assert np.allclose(jepa3d_data.read_cloud(path), pts, atol=1e-5)


@pytest.mark.parametrize("writer", [write_off, lambda p: write_off(p, compact=True), write_obj])
def test_meshes_are_sampled_on_their_surface_by_area(tmp_path, writer):
    path = tmp_path / ("m.obj" if writer is write_obj else "m.off")
    writer(path)
    pts = jepa3d_data.read_cloud(path, num_points=6000)
    assert pts.shape == (6000, 3)
    on_face = np.isclose(pts, 0, atol=1e-6) | np.isclose(pts, [2, 3, 4], atol=1e-6)
    assert on_face.any(axis=1).all()  # every point lies on a face of the box
    # area-weighted: the 3x4 faces (x = 0 or 2) hold 12/52 of the area each pair-side
    share = (np.isclose(pts[:, 0], 0) | np.isclose(pts[:, 0], 2)).mean()
    assert abs(share - 24 / 52) < 0.03


# ----------------------------------------------------------------------------- layouts
def make_shapenet55(root, names=("02691156-a", "02691156-b", "03001627-c", "03001627-d")):
    (root / "shapenet_pc").mkdir(parents=True)
    (root / "ShapeNet-55").mkdir()
    for n in names:
        np.save(root / "shapenet_pc" / f"{n}.npy", cloud(512))
    crlf(root / "ShapeNet-55" / "train.txt", [f"{n}.npy" for n in names[:3]])
    crlf(root / "ShapeNet-55" / "test.txt", [f"{n}.npy" for n in names[3:]])
    return root


def make_modelnet_h5(root, n=6, label_max=3):
    root.mkdir(parents=True)
    for split, count in (("train", 2), ("test", 1)):
        for i in range(count):
            with h5py.File(root / f"ply_data_{split}{i}.h5", "w") as fh:
                fh["data"] = RNG.normal(size=(n, 256, 3)).astype(np.float32)
                fh["label"] = RNG.integers(0, label_max + 1, size=(n, 1)).astype(np.uint8)
    (root / "shape_names.txt").write_text("\n".join(f"class{i}" for i in range(4)) + "\n")
    return root


def make_resampled(root):
    base = root / "modelnet40_normal_resampled"
    for cls in ("airplane", "night_stand"):
        (base / cls).mkdir(parents=True)
        for i in range(1, 4):
            x = np.concatenate([cloud(500), RNG.normal(size=(500, 3))], 1)
            np.savetxt(base / cls / f"{cls}_{i:04d}.txt", x, delimiter=",", fmt="%.6f")
    crlf(base / "modelnet40_shape_names.txt", ["airplane", "night_stand"])
    crlf(base / "modelnet40_train.txt", ["airplane_0001", "airplane_0002", "night_stand_0001", "night_stand_0002"])
    crlf(base / "modelnet40_test.txt", ["airplane_0003", "night_stand_0003"])
    return root


def make_scanobjectnn(root):
    for folder, name in (("main_split", "objectdataset_augmentedrot_scale75"), ("main_split", "objectdataset"),
                         ("main_split_nobg", "objectdataset")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for split, n in (("training", 8), ("test", 4)):
            with h5py.File(root / folder / f"{split}_{name}.h5", "w") as fh:
                fh["data"] = RNG.normal(size=(n, 2048, 3)).astype(np.float32)
                fh["label"] = RNG.integers(0, 15, size=n)
    return root


def make_shapenetpart(root):
    base = root / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    (base / "train_test_split").mkdir(parents=True)
    (base / "synsetoffset2category.txt").write_text("Airplane\t02691156\nBag\t02773838\n")
    entries = {"train": ["shape_data/02691156/p1"], "val": ["shape_data/02773838/p2"],
               "test": ["shape_data/02691156/p3"]}
    for split, items in entries.items():
        (base / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(items))
        for item in items:
            _, synset, shape = item.split("/")
            (base / synset).mkdir(exist_ok=True)
            rows = np.concatenate([cloud(400), RNG.normal(size=(400, 3)), RNG.integers(0, 4, (400, 1))], 1)
            np.savetxt(base / synset / f"{shape}.txt", rows, fmt="%.5f")
    return root


def make_folder(root, nesting="split-first"):
    writers = {".npy": lambda p: np.save(p, cloud()), ".ply": lambda p: write_ply(p, cloud(), "binary_little_endian"),
               ".pcd": lambda p: write_pcd(p, cloud(), "binary"), ".xyz": lambda p: np.savetxt(p, cloud()),
               ".off": write_off, ".obj": write_obj}
    for split in ("train", "test"):
        for cls in ("mug", "chair"):
            folder = root / split / cls if nesting == "split-first" else root / cls / split
            folder.mkdir(parents=True)
            for i, (suffix, write) in enumerate(writers.items()):
                write(folder / f"s{i}{suffix}")
    return root


def test_every_layout_is_detected_and_read(tmp_path):
    cases = {
        "shapenet55": (make_shapenet55(tmp_path / "sn"), 3, 1),
        "modelnet40-h5": (make_modelnet_h5(tmp_path / "h5"), 12, 6),
        "modelnet40-resampled": (make_resampled(tmp_path / "rs"), 4, 2),
        "scanobjectnn": (make_scanobjectnn(tmp_path / "so"), 8, 4),
        "shapenetpart": (make_shapenetpart(tmp_path / "sp"), 2, 1),
        "folder": (make_folder(tmp_path / "f1"), 12, 12),
    }
    for layout, (root, n_train, n_test) in cases.items():
        assert jepa3d_data.detect_layout(root) == layout
        train = jepa3d_data.open_dataset(root, "train", num_points=128)
        test = jepa3d_data.open_dataset(root, "test", num_points=128)
        assert (len(train), len(test)) == (n_train, n_test), layout
        points, label = train[0]
        assert points.dtype == torch.float32 and points.shape[1] == 3 and points.shape[0] >= 128
        assert abs(points.norm(dim=1).max().item() - 1) < 1e-4  # centred, unit sphere
        assert torch.allclose(points.mean(0), torch.zeros(3), atol=1e-4)
        assert label.dtype == torch.int64
        report = run("inspect", root)  # and the same through the CLI, as --data reads it
        assert report.exit_code == 0, report.output
        counts = json.loads(report.stdout)["splits"]
        assert (counts["train"]["samples"], counts["test"]["samples"]) == (n_train, n_test)
    # split-second nesting reads the same
    nested = jepa3d_data.open_dataset(make_folder(tmp_path / "f2", "class-first"), "test", num_points=128)
    assert len(nested) == 12 and nested.classes == ["chair", "mug"]
    # ShapeNetPart items are per-point part labels
    part = jepa3d_data.open_dataset(tmp_path / "sp", "train", num_points=256)
    pts, parts = part[0]
    assert pts.shape == (256, 3) and parts.shape == (256,) and parts.max() < 50
    # ScanObjectNN variants pick their files
    for variant in ("obj_bg", "obj_only", "pb_t50_rs"):
        ds = jepa3d_data.open_dataset(tmp_path / "so", "test", variant=variant)
        assert variant in ds.name and len(ds.classes) == 15


def test_npz_and_pickle_caches(tmp_path):
    np.savez(tmp_path / "modelnet40_1024_train.npz", points=cloud(1024 * 5).reshape(5, 1024, 3).astype(np.float16),
             labels=np.arange(5))
    ds = jepa3d_data.open_dataset(tmp_path, "train")
    assert len(ds) == 5 and ds.points.dtype == torch.float32
    cache = tmp_path / "pk"
    cache.mkdir()
    with open(cache / "modelnet40_train_8192pts_fps.dat", "wb") as fh:
        pickle.dump(([np.concatenate([cloud(64), cloud(64)], 1) for _ in range(3)], [[0], [1], [2]]), fh)
    with pytest.raises(jepa3d_data.DataError, match="--trust-pickle"):
        jepa3d_data.open_dataset(cache, "train")
    assert len(jepa3d_data.open_dataset(cache, "train", trust_pickle=True)) == 3
    fold = tmp_path / "ModelNetFewshot" / "5way10shot"
    fold.mkdir(parents=True)
    with open(fold / "0.pkl", "wb") as fh:
        pickle.dump({"train": [(cloud(64), i % 5, "x") for i in range(50)],
                     "test": [(cloud(64), i % 5, "y") for i in range(100)]}, fh)
    with pytest.raises(jepa3d_data.DataError, match="arbitrary code"):
        jepa3d_data.read_fewshot_fold(tmp_path, 5, 10, 0, trust_pickle=False)
    train, test = jepa3d_data.read_fewshot_fold(tmp_path, 5, 10, 0, trust_pickle=True)
    assert (len(train), len(test)) == (50, 100)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not present on this machine")
def test_real_shared_datasets():
    mn = jepa3d_data.open_dataset(SHARED / "modelnet40", "test")
    assert len(mn) == 2468 and len(mn.classes) == 40 and mn.classes[0] == "airplane"
    sn = jepa3d_data.open_dataset(SHARED / "shapenet55_sample", "train")
    sn_test = jepa3d_data.open_dataset(SHARED / "shapenet55_sample", "test")
    assert len(sn) == 85 and sn[0][0].shape == (8192, 3) and sn.classes == sn_test.classes
    rs = jepa3d_data.open_dataset(SHARED / "modelnet40_normal_resampled_sample", "train")
    assert len(rs) == 10 and set(rs.labels.tolist()) == {0}


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not present on this machine")
def test_real_data_through_the_cli(tmp_path):
    from conftest import SMALL_FLAGS
    result = run("pretrain", "--data", SHARED / "shapenet55_sample", "--preset", "tiny", *SMALL_FLAGS,
                 "--max-steps", "2", "--out", tmp_path / "sn")
    assert result.exit_code == 0, result.output
    assert "85 clouds" in result.stderr
    report = json.loads(run("inspect", SHARED / "modelnet40").stdout)
    assert report["layout"] == "npz" and report["splits"]["train"]["samples"] == 9843
    assert report["splits"]["test"]["per_class"]["airplane"] == 100


# ----------------------------------------------------------------------------- the CLI on files
def run(*args):
    return CliRunner().invoke(jepa3d.make_cli(), [str(a) for a in args])


def test_pretrain_and_inspect_read_a_user_folder_through_the_cli(tmp_path):
    root = make_folder(tmp_path / "mine")
    result = run("inspect", root)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["layout"] == "folder" and report["splits"]["test"]["samples"] == 12
    from conftest import SMALL_FLAGS
    result = run("pretrain", "--data", root, "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "2",
                 "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 2


def bad_cases(tmp_path):
    """(name, data path, expected message) for every bad input the issue lists."""
    cases = []

    def folder_with(name, writer):
        root = tmp_path / name / "cls"
        root.mkdir(parents=True)
        path = root / writer[0]
        writer[1](path)
        return tmp_path / name, path

    def trunc(data: bytes, keep=0.6):
        return data[: int(len(data) * keep)]

    good_npy = tmp_path / "good.npy"
    np.save(good_npy, cloud())
    good_ply, good_pcd = tmp_path / "good.ply", tmp_path / "good.pcd"
    write_ply(good_ply, cloud(), "binary_little_endian")
    write_pcd(good_pcd, cloud(), "binary")
    files = {
        "truncated npy": ("x.npy", lambda p: p.write_bytes(trunc(good_npy.read_bytes())), "truncated or corrupt"),
        "corrupt npz": ("x.npz", lambda p: p.write_bytes(b"PK\x03\x04garbage"), "not a readable .npz"),
        "truncated ply": ("x.ply", lambda p: p.write_bytes(trunc(good_ply.read_bytes())), "truncated"),
        "truncated pcd": ("x.pcd", lambda p: p.write_bytes(trunc(good_pcd.read_bytes())), "truncated"),
        "bad off": ("x.off", lambda p: p.write_text("OFF\n8 6 0\n0 0 0\n"), "truncated or malformed"),
        "nan coords": ("x.npy", lambda p: np.save(p, np.array([[0, 0, np.nan]] + [[1, 2, 3]] * 5, np.float32)),
                       "NaN or Inf"),
        "wrong shape": ("x.npy", lambda p: np.save(p, np.zeros((10, 2), np.float32)), "shape (points, 3+)"),
        "zero points": ("x.npy", lambda p: np.save(p, np.zeros((0, 3), np.float32)), "zero points"),
    }
    for name, (fname, writer, message) in files.items():
        root, path = folder_with(name.replace(" ", "_"), (fname, writer))
        cases.append((name, root, f"{path}: ", message))
    (tmp_path / "empty").mkdir()
    cases.append(("empty folder", tmp_path / "empty", "empty", "the folder is empty"))
    cases.append(("missing folder", tmp_path / "nowhere", "nowhere", "no such file or folder"))
    (tmp_path / "nofiles" / "cls").mkdir(parents=True)
    (tmp_path / "nofiles" / "cls" / "readme.doc").write_text("hi")
    cases.append(("no recognised files", tmp_path / "nofiles", "nofiles", "no point-cloud or mesh files"))
    h5 = make_modelnet_h5(tmp_path / "h5_labels", label_max=9)
    cases.append(("labels out of range", h5, "ply_data_train", "out of range 0..3"))
    h5t = make_modelnet_h5(tmp_path / "h5_trunc")
    data = (h5t / "ply_data_train0.h5").read_bytes()
    (h5t / "ply_data_train0.h5").write_bytes(data[:2000])
    cases.append(("truncated h5", h5t, "ply_data_train0.h5", "HDF5"))
    sn = make_shapenet55(tmp_path / "sn_missing")
    (sn / "shapenet_pc" / "02691156-a.npy").unlink()
    cases.append(("split list names missing file", sn, "train.txt", "missing"))
    pk = tmp_path / "pickled"
    pk.mkdir()
    (pk / "modelnet40_train_8192pts_fps.dat").write_bytes(pickle.dumps(([], [])))
    cases.append(("pickle without opt-in", pk, "fps.dat", "--trust-pickle"))
    return cases


def test_bad_input_gives_one_clear_line_and_exit_1(tmp_path):
    for name, root, where, message in bad_cases(tmp_path):
        result = run("pretrain", "--data", root, "--preset", "tiny", "--out", tmp_path / f"run_{name}")
        assert result.exit_code == 1, (name, result.output)
        assert isinstance(result.exception, SystemExit), (name, result.exception)
        line = result.stderr.strip()
        assert line.startswith("Error: ") and len(line.splitlines()) == 1, (name, line)
        assert where in line and message in line, (name, line)
        assert not (tmp_path / f"run_{name}").exists()  # nothing written for a failed run


def test_a_failed_run_leaves_the_existing_run_untouched(tmp_path):
    from conftest import SMALL_FLAGS
    out = tmp_path / "run"
    assert run("pretrain", "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "2", "--out", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "empty").mkdir()
    result = run("pretrain", "--resume", "--out", out, "--data", tmp_path / "empty")
    assert result.exit_code == 1 and "empty" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_skip_bad_reports_how_many_files_it_skipped(tmp_path):
    root = make_folder(tmp_path / "mine")
    np.save(root / "train" / "mug" / "broken.npy", np.zeros((0, 3), np.float32))
    (root / "train" / "chair" / "broken.ply").write_bytes(b"ply\nformat ascii 1.0\n")
    from conftest import SMALL_FLAGS
    result = run("pretrain", "--data", root, "--skip-bad", "--preset", "tiny", *SMALL_FLAGS, "--max-steps", "1",
                 "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "skipped 2 bad file(s) of 14" in result.stderr
    report = json.loads(run("inspect", root).stdout)
    assert len(report["splits"]["train"]["problems"]) == 2


def test_a_new_layout_is_one_table_entry(tmp_path, monkeypatch):
    (tmp_path / "clouds.bin").write_bytes(np.random.default_rng(0).random((4, 16, 3), dtype=np.float32).tobytes())

    def read(root, split, options):
        points = np.fromfile(root / "clouds.bin", dtype=np.float32).reshape(-1, 16, 3)
        return jepa3d_data.ArrayDataset(points, [0, 1, 0, 1], ["a", "b"], f"bin-{split}")

    table = {"bin": jepa3d_data.Layout(lambda p: (p / "clouds.bin").is_file(), read), **jepa3d_data.LAYOUT_TABLE}
    monkeypatch.setattr(jepa3d_data, "LAYOUT_TABLE", table)
    assert jepa3d_data.detect_layout(tmp_path) == "bin"
    assert len(jepa3d_data.open_dataset(tmp_path, "test")) == 4
    report = jepa3d_data.inspect_data(tmp_path)
    assert report["layout"] == "bin" and report["splits"]["train"]["samples"] == 4


def test_inspect_lists_a_bad_first_file_and_goes_on(tmp_path):
    make_shapenet55(tmp_path)
    bad = np.load(tmp_path / "shapenet_pc" / "02691156-a.npy")
    bad[0, 0] = np.nan
    np.save(tmp_path / "shapenet_pc" / "02691156-a.npy", bad)
    report = jepa3d_data.inspect_data(tmp_path)
    train = report["splits"]["train"]
    assert any("02691156-a.npy" in p and "NaN" in p for p in train["problems"]) and train["samples"] > 0
