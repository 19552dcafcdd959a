"""Mutation fuzzing of every single-file reader (issue 14): valid files of each format, mutated
by byte flips, truncation, header tokens replaced and junk inserted, through read_cloud. The
only acceptable outcomes are a valid cloud or a DataError naming the file; never another
exception, a warning on the user's terminal, or a hang. benchmarks/fuzz_readers.py runs the
same generator for many more cases."""
import warnings

import numpy as np
import pytest

import jepa3d_data

SEEDS_PER_FORMAT = 40  # 10 formats x 40 = 400 cases, a few seconds


def valid_files(tmp_path, rng) -> dict[str, bytes]:
    """One small valid file per format, as bytes."""
    pts = rng.normal(size=(24, 3)).astype(np.float32)
    out = {}
    np.save(tmp_path / "a.npy", pts)
    out[".npy"] = (tmp_path / "a.npy").read_bytes()
    np.savez(tmp_path / "a.npz", points=pts)
    out[".npz"] = (tmp_path / "a.npz").read_bytes()
    rows = "\n".join(" ".join(f"{v:.4f}" for v in p) for p in pts) + "\n"
    out[".xyz"] = rows.encode()
    out[".txt"] = rows.replace(" ", ",").encode()
    head = f"ply\nformat ascii 1.0\nelement vertex {len(pts)}\nproperty float x\nproperty float y\nproperty float z\n"
    out[".ply"] = (head + "end_header\n" + rows).encode()
    bhead = head.replace("ascii", "binary_little_endian")
    out[".ply-binary"] = (bhead + "end_header\n").encode() + pts.astype("<f4").tobytes()
    pcd = (f"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {len(pts)}\n"
           f"HEIGHT 1\nPOINTS {len(pts)}\nDATA ascii\n")
    out[".pcd"] = (pcd + rows).encode()
    out[".pcd-binary"] = pcd.replace("ascii", "binary").encode() + pts.astype("<f4").tobytes()
    faces = "3 0 1 2\n3 1 2 3\n4 0 2 3 4\n"
    out[".off"] = ("OFF\n8 3 0\n" + "\n".join(" ".join(f"{v:.3f}" for v in p) for p in pts[:8]) + "\n"
                   + faces).encode()
    out[".obj"] = ("".join(f"v {p[0]:.3f} {p[1]:.3f} {p[2]:.3f}\n" for p in pts[:8])
                   + "f 1 2 3\nf 2 3 4\nf 1/1 3/3 4/4 5/5\n").encode()
    return out


TOKENS = [b"-1", b"0", b"999999999", b"nan", b"1e40", b"-9e999", b"x", b"", b"3.5", b"\xff\xfe", b"2147483648",
          b"binary_big_endian", b"list uchar int", b"double", b"(1000000000, 3)", b"'<f8'", b"{"]


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One or a few random edits of a file's bytes."""
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.integers(5)
        if kind == 0 and data:                      # flip bytes
            for i in rng.integers(len(data), size=int(rng.integers(1, 8))):
                data[i] = int(rng.integers(256))
        elif kind == 1:                             # truncate
            data = data[:int(rng.integers(len(data) + 1))]
        elif kind == 2:                             # replace a whitespace-separated token (header fields)
            words = bytes(data).split(b" ")
            if words:
                i = int(rng.integers(min(len(words), 40)))
                words[i] = TOKENS[int(rng.integers(len(TOKENS)))]
                data = bytearray(b" ".join(words))
        elif kind == 3:                             # insert junk
            at = int(rng.integers(len(data) + 1))
            data[at:at] = bytes(rng.integers(256, size=int(rng.integers(1, 16))).astype(np.uint8))
        else:                                       # replace a line with a token
            lines = bytes(data).split(b"\n")
            lines[int(rng.integers(len(lines)))] = TOKENS[int(rng.integers(len(TOKENS)))]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


def run_case(path, data: bytes) -> str:
    """Write and read one case -> 'read' or 'refused'; anything else fails the test."""
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that would reach the user's terminal fails the case
        try:
            cloud = jepa3d_data.read_cloud(path, num_points=32)
        except jepa3d_data.DataError as err:
            assert str(path) in str(err) and "\n" not in str(err)
            return "refused"
    assert cloud.dtype == np.float32 and cloud.ndim == 2 and cloud.shape[1] == 3 and np.isfinite(cloud).all()
    return "read"


def test_mutated_files_are_read_or_refused_never_crash(tmp_path):
    rng = np.random.default_rng(0)
    outcomes = {"read": 0, "refused": 0}
    for fmt, data in valid_files(tmp_path, rng).items():
        suffix = fmt.split("-")[0]
        assert run_case(tmp_path / f"valid{suffix}", data) == "read", fmt  # the unmutated file reads
        for seed in range(SEEDS_PER_FORMAT):
            case = mutate(data, np.random.default_rng([seed, len(fmt)]))
            try:
                outcomes[run_case(tmp_path / f"case{suffix}", case)] += 1
            except Exception as err:  # report the reproducer
                raise AssertionError(f"{fmt} seed {seed}: {type(err).__name__}: {err}; bytes {case[:200]!r}") from err
    assert outcomes["refused"] > 50 and outcomes["read"] > 20  # the mutations exercise both outcomes


def test_huge_or_odd_coordinates_are_normalised_or_refused(tmp_path):
    for scale in (1e-30, 1e19, 1e30, 1e38):
        pts = np.random.default_rng(0).normal(size=(64, 3)) * scale
        out = jepa3d_data.normalize(pts)
        assert np.isfinite(out).all() and abs(np.linalg.norm(out, axis=1).max() - 1) < 1e-5, scale
        assert np.unique(out, axis=0).shape[0] == 64, scale  # not collapsed to one point
    big = tmp_path / "big.npy"
    np.save(big, np.full((8, 3), 1e300))
    with pytest.raises(jepa3d_data.DataError, match="big.npy: .*float32"):
        jepa3d_data.read_cloud(big)


# ----------------------------------------------------------------------------- sequences, calibration, caches
# The 4D and cross-modal surfaces (issue 29): an MSR-Action3D .bin, a 16-bit depth PNG, a TUM
# associations.txt, a LiDAR + cameras calib.json, a teacher-features cache's metadata and chunk.
# Each case mutates one file of a valid folder and reads the folder as a user's command would.
SEQUENCE_CASES = 40  # per surface: 6 x 40 = 240 cases in the suite; benchmarks/fuzz_readers.py --sequences runs more


def sequence_folders(tmp_path) -> dict:
    """surface -> (folder, the file in it that is mutated, how the folder is read)."""
    import json

    from PIL import Image

    rng = np.random.default_rng(0)
    made = {}
    msr = tmp_path / "msr"
    msr.mkdir()
    depth = np.zeros((2, 12, 16), "<u4")
    depth[:, 3:9, 4:12] = 2000
    np.concatenate([np.array([2, 16, 12], "<u4"), depth.ravel()]).tofile(msr / "a01_s01_e01_sdepth.bin")
    made["msr .bin"] = (msr, msr / "a01_s01_e01_sdepth.bin",
                        lambda: jepa3d_data.open_dataset(msr, "train", num_points=16, frames=2)[0][0])
    tum = tmp_path / "tum"
    (tum / "depth").mkdir(parents=True)
    (tum / "rgb").mkdir()
    for i in range(2):
        d = np.zeros((12, 16), np.uint16)
        d[3:9, 4:12] = 5000
        Image.fromarray(d).save(tum / "depth" / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(tum / "rgb" / f"{i}.png")
    (tum / "associations.txt").write_text("".join(f"{i}.0 rgb/{i}.png {i}.01 depth/{i}.png\n" for i in range(2)))
    read_tum = lambda: jepa3d_data.open_dataset(tum, "train", num_points=16, frames=2)[0][0]  # noqa: E731
    made["depth png"] = (tum, tum / "depth" / "0.png", read_tum)
    made["associations.txt"] = (tum, tum / "associations.txt", read_tum)
    lidar = tmp_path / "lidar"
    lidar.mkdir()
    rng.normal(size=(64, 4)).astype("<f4").tofile(lidar / "x.bin")
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(lidar / "cam.png")
    to_cam = np.eye(4)
    to_cam[2, 3] = 5.0
    (lidar / "calib.json").write_text(json.dumps({"lidar_file": "x.bin", "num_pts_feats": 4, "cameras": {"CAM": {
        "image": "cam.png", "cam2img": [[20, 0, 16], [0, 20, 12], [0, 0, 1]], "lidar2cam": to_cam.tolist()}}}))
    made["calib.json"] = (lidar, lidar / "calib.json",
                          lambda: jepa3d_data.open_paired(lidar, num_points=32).videos[0][0]().points)
    cache = tmp_path / "cache"
    jepa3d_data.write_teacher_features(cache, {"train": jepa3d_data.builtin_rgbd("train", 2, 16, 1)},
                                       jepa3d_data.load_teacher("builtin"), {"num_points": 16})

    def read_cache():
        ds = jepa3d_data.open_dataset(cache, "train", frames=2)
        return ds.teacher_targets(len(ds) - 1)
    made["cache metadata"] = (cache, cache / jepa3d_data.CACHE_META, read_cache)
    made["cache chunk"] = (cache, cache / "train" / "chunk_00000.npz", read_cache)
    return made


def run_sequence_case(folder, path, read, data: bytes) -> str:
    """Mutate one file of a folder and read the folder -> 'read' or 'refused' (one line naming a file)."""
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            out = read()
        except jepa3d_data.DataError as err:
            assert str(folder) in str(err) and "\n" not in str(err), str(err)
            return "refused"
    out = out.numpy() if hasattr(out, "numpy") else out
    assert np.isfinite(out).all() and out.size
    return "read"


def test_mutated_sequences_calibrations_and_caches_are_read_or_refused(tmp_path):
    outcomes = {"read": 0, "refused": 0}
    for surface, (folder, path, read) in sequence_folders(tmp_path).items():
        original = path.read_bytes()
        assert run_sequence_case(folder, path, read, original) == "read", surface
        for seed in range(SEQUENCE_CASES):
            case = mutate(original, np.random.default_rng([seed, len(surface), 2]))
            try:
                outcomes[run_sequence_case(folder, path, read, case)] += 1
            except Exception as err:  # report the reproducer
                raise AssertionError(f"{surface} seed {seed}: {type(err).__name__}: {err}; bytes {case[:200]!r}") \
                    from err
        path.write_bytes(original)
    assert outcomes["refused"] > 40 and outcomes["read"] >= 5  # the mutations exercise both outcomes
