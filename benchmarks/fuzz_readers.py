"""The readers' mutation fuzz, longer than the test suite's (tests/test_fuzz.py, whose file
generator and mutations this reuses): every case must read as a valid cloud or be refused with
a DataError naming the file; any other exception, a warning or a case taking over --timeout
seconds (a hang) is a failure, printed with its reproducer. Writes benchmarks/fuzz_readers.json.
With --sequences N it also mutates the 4D and cross-modal surfaces N times each (an MSR .bin, a
depth PNG, a TUM associations.txt, a calib.json, a teacher cache's metadata and chunk).

    python benchmarks/fuzz_readers.py --cases 500 --sequences 500   # per format / per surface
"""
import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from test_fuzz import mutate, run_case, run_sequence_case, sequence_folders, valid_files  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=500, help="mutated files per format")
    ap.add_argument("--sequences", type=int, default=0, help="mutated files per sequence/calibration/cache surface")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before a case counts as a hang")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "fuzz_readers.json"))
    args = ap.parse_args()

    def hang(*_):
        raise TimeoutError
    signal.signal(signal.SIGALRM, hang)
    t0, report = time.time(), {"cases_per_format": args.cases, "cases_per_sequence_surface": args.sequences,
                               "formats": {}, "failures": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for fmt, data in valid_files(tmp, np.random.default_rng(0)).items():
            suffix, counts = fmt.split("-")[0], {"read": 0, "refused": 0, "failed": 0}
            for seed in range(args.cases):
                case = mutate(data, np.random.default_rng([seed, len(fmt), 1]))
                signal.setitimer(signal.ITIMER_REAL, args.timeout)
                try:
                    counts[run_case(tmp / f"case{suffix}", case)] += 1
                except BaseException as err:  # noqa: B036 - a hang (TimeoutError) included
                    counts["failed"] += 1
                    report["failures"].append({"format": fmt, "seed": seed, "error": f"{type(err).__name__}: {err}",
                                               "bytes": case[:300].hex()})
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            report["formats"][fmt] = counts
            print(fmt, counts, flush=True)
        for surface, (folder, path, read) in (sequence_folders(tmp) if args.sequences else {}).items():
            original, counts = path.read_bytes(), {"read": 0, "refused": 0, "failed": 0}
            for seed in range(args.sequences):
                case = mutate(original, np.random.default_rng([seed, len(surface), 3]))
                signal.setitimer(signal.ITIMER_REAL, args.timeout)
                try:
                    counts[run_sequence_case(folder, path, read, case)] += 1
                except BaseException as err:  # noqa: B036 - a hang (TimeoutError) included
                    counts["failed"] += 1
                    report["failures"].append({"format": surface, "seed": seed, "error": f"{type(err).__name__}: "
                                               f"{err}", "bytes": case[:300].hex()})
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            path.write_bytes(original)
            report["formats"][surface] = counts
            print(surface, counts, flush=True)
    report["seconds"] = round(time.time() - t0, 1)
    report["total"] = {k: sum(c[k] for c in report["formats"].values()) for k in ("read", "refused", "failed")}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["total"]), f"{report['seconds']} s")
    sys.exit(1 if report["failures"] else 0)


if __name__ == "__main__":
    main()
