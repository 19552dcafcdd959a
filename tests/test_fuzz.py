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
