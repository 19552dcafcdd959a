"""jepa3d's SVC (fit_svc, torch) against scikit-learn's SVC(kernel="linear") on real features.

    python benchmarks/svc_check.py [--data ../shared/data/modelnet40] [--checkpoint none] [--C 0.012]

Embeds the train and test splits with the encoder of --checkpoint (a random-init `tiny` encoder
by default), fits both SVCs on the train features and reports both test accuracies, how many
test predictions agree, and the fit times. Needs scikit-learn (the test extra); writes
benchmarks/svc_check.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jepa3d  # noqa: E402
import jepa3d_data  # noqa: E402
from evidence import in_root  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="[default: ../shared/data/modelnet40, next to the project root]")
    ap.add_argument("--checkpoint", default="none")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--C", type=float, default=jepa3d.ProbeConfig.C)
    args = ap.parse_args()
    in_root(args, data="../shared/data/modelnet40")
    from sklearn.svm import SVC

    encoder, cfg, source = jepa3d.load_encoder(args.checkpoint, preset=args.preset)
    train, test = (jepa3d.embed(encoder, cfg, jepa3d_data.open_dataset(args.data, split, num_points=cfg.num_points))
                   for split in ("train", "test"))
    n = int(train["labels"].max()) + 1
    t = time.time()
    ours = jepa3d.fit_svc(train["features"], train["labels"], n, C=args.C)
    ours_s = time.time() - t
    t = time.time()
    ref = SVC(C=args.C, kernel="linear").fit(train["features"].numpy(), train["labels"].numpy())
    ref_s = time.time() - t
    mine, theirs = ours.predict(test["features"]), torch.as_tensor(ref.predict(test["features"].numpy()))
    result = {"data": args.data, "encoder": source, "C": args.C, "threads": torch.get_num_threads(),
              "jepa3d_accuracy": jepa3d.accuracy(mine, test["labels"], n)[0],
              "sklearn_accuracy": jepa3d.accuracy(theirs, test["labels"], n)[0],
              "same_prediction": float((mine == theirs).float().mean()), "test_clouds": len(mine),
              "jepa3d_fit_seconds": round(ours_s, 1), "sklearn_fit_seconds": round(ref_s, 1),
              "smo_iterations": ours.iterations}
    Path(__file__).with_name("svc_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
