"""Re-probe the frozen features a headline run left behind, without re-training:

    python benchmarks/reprobe.py benchmarks/features_tw40_bf16_s0.npz [--classifier all] [--C 0.012]
    python benchmarks/reprobe.py --export R/checkpoint.safetensors --data DIR --out F.npz   # make one

A features file holds, per split (train, test), `<split>_features` (N, 2D) float16 (the
concat(max, mean) pooled tokens of the EMA teacher, as `jepa3d linear-probe` fits) and
`<split>_labels` (N,), plus `classes` and `source` (the checkpoint and command). The probe is
jepa3d's own (`fit_and_score`), so it gives `linear-probe`'s numbers on these features up to
their fp16 rounding.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import jepa3d  # noqa: E402


def export(checkpoint: str, data: str, out: str) -> None:
    """Embed train and test of `data` with the checkpoint's teacher into one fp16 npz."""
    import jepa3d_data

    encoder, cfg, source = jepa3d.load_encoder(checkpoint)
    arrays = {"source": np.array(f"{source}; jepa3d.embed, batch {jepa3d.ProbeConfig.batch_size}, seed 0")}
    for split in ("train", "test"):
        ds = jepa3d_data.open_dataset(data, split, num_points=cfg.num_points)
        feats = jepa3d.embed(encoder, cfg, ds)  # what linear-probe fits: same batches, seed, precision
        arrays[f"{split}_features"] = feats["features"].numpy().astype(np.float16)
        arrays[f"{split}_labels"] = feats["labels"].numpy().astype(np.int16)
        arrays["classes"] = np.array(list(ds.classes))
    np.savez_compressed(out, **arrays)
    print(f"{out}: {Path(out).stat().st_size / 1e6:.1f} MB", file=sys.stderr)


def reprobe(path: str, classifier: str, C: float) -> dict:
    z = np.load(path)
    split = {s: {"features": torch.from_numpy(z[f"{s}_features"].astype(np.float32)),
                 "labels": torch.from_numpy(z[f"{s}_labels"].astype(np.int64))} for s in ("train", "test")}
    probe = jepa3d.ProbeConfig(classifier=classifier, C=C)
    kinds = {"both": ("svc", "logreg"), "all": ("svc", "linear-svc", "logreg")}.get(classifier, (classifier,))
    result = {"file": path, "source": str(z["source"]), "train": len(split["train"]["labels"]),
              "test": len(split["test"]["labels"])}
    for kind in kinds:
        score = jepa3d.fit_and_score(kind, split["train"], split["test"], len(z["classes"]), probe)
        result[kind] = {k: score[k] for k in ("accuracy", "class_mean_accuracy", "train_accuracy")}
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("features", nargs="?", help="a features .npz to probe")
    ap.add_argument("--classifier", default="all", choices=("svc", "linear-svc", "logreg", "both", "all"))
    ap.add_argument("--C", type=float, default=jepa3d.ProbeConfig.C)
    ap.add_argument("--export", metavar="CHECKPOINT", help="write a features file from a checkpoint instead")
    ap.add_argument("--data", help="with --export: the labelled data (train and test splits)")
    ap.add_argument("--out", help="with --export: the .npz to write")
    args = ap.parse_args()
    if args.export:
        export(args.export, args.data, args.out)
    else:
        print(json.dumps(reprobe(args.features, args.classifier, args.C)))


if __name__ == "__main__":
    main()
