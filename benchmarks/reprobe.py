"""Re-probe the frozen features a headline run left behind, without re-training:

    python benchmarks/reprobe.py F.npz [--classifier evidence] [--C 0.012] [--on validation|test]
    python benchmarks/reprobe.py F.npz --against G.npz        # paired: McNemar on the same items
    python benchmarks/reprobe.py F.npz --few-shot [--against G.npz]   # 5w10s 5w20s 10w10s 10w20s, 10 folds
    python benchmarks/reprobe.py --export R/checkpoint.safetensors --data DIR --out F.npz [--random-init]
    python benchmarks/reprobe.py --export-teacher efficientnet-lite0 --data DIR --up z --out T.npz  # MVCNN-style
    python benchmarks/reprobe.py F.npz --concat T.npz          # both files' features, each z-scored, side by side

A features file holds, per split (train, test), `<split>_features` (N, 2D) float16 (the
concat(max, mean) pooled tokens of an encoder, as `jepa3d linear-probe` fits) and
`<split>_labels` (N,), plus `classes` and `source` (the checkpoint and command). The validation
split is not stored: it is the train split's own seeded 10% (jepa3d.validation_indices), so
`--on validation` fits train-less-validation and scores validation, the split every choice is
made on; `--on test` fits all of train and scores test (read it once per reported run). The
probe is jepa3d's own (`fit_and_score`), so it gives `linear-probe`'s numbers on these features
up to their fp16 rounding. `--random-init` exports a random-init encoder of the checkpoint's
configuration (seed 0, what `linear-probe --against-random` compares with), `--encoder context`
the student instead of the EMA teacher. `--few-shot` draws the peers' four settings' episodes
(support from train, 20 queries per class from test; jepa3d.sample_episode, seed 0) on the
stored features and fits the SVC (C=0.012) and logreg per episode: frozen features, not the
peers' per-episode fine-tuning; with `--against` both files get the same episodes (paired).
`--export-teacher SPEC` writes the 2D teacher's own features of rendered views instead (the
cloud drawn as `jepa3d teacher-features` draws it, every view's map mean-pooled, then the mean
over views: MVCNN's descriptor, the ceiling of what distilling that teacher can pass on);
`--concat G.npz` probes F's and G's features side by side, each z-scored by the fitted split
(do two encoders know different things?).
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


def export(checkpoint: str, data: str, out: str, random_init: bool = False, which: str = "target") -> None:
    """Embed train and test of `data` with the checkpoint's teacher (which='context': its
    student; random_init: a random-init encoder of its configuration) into one fp16 npz."""
    import jepa3d_data

    encoder, cfg, source = jepa3d.load_encoder(checkpoint, which)
    if random_init:
        encoder, source = jepa3d.random_encoder(cfg, 0), f"random-init encoder (seed 0) of {checkpoint}'s config"
    arrays = {"source": np.array(f"{source}; jepa3d.embed, batch {jepa3d.ProbeConfig.batch_size}, seed 0")}
    for split in ("train", "test"):
        ds = jepa3d_data.open_dataset(data, split, num_points=cfg.num_points)
        feats = jepa3d.embed(encoder, cfg, ds)  # what linear-probe fits: same batches, seed, precision
        arrays[f"{split}_features"] = feats["features"].numpy().astype(np.float16)
        arrays[f"{split}_labels"] = feats["labels"].numpy().astype(np.int16)
        arrays["classes"] = np.array(list(ds.classes))
    np.savez_compressed(out, **arrays)
    print(f"{out}: {Path(out).stat().st_size / 1e6:.1f} MB", file=sys.stderr)


def export_teacher(spec: str, data: str, out: str, render: dict) -> None:
    """The teacher's own pooled features of rendered views of train and test of `data`
    (TeacherFeaturesConfig fields in `render`) into one fp16 npz, in the format above."""
    import jepa3d_data

    cfg = jepa3d_data.TeacherFeaturesConfig(teacher=spec, **render)
    teacher = jepa3d_data.load_teacher(spec)
    arrays = {"source": np.array(f"{spec} on {cfg.views} rendered views ({render}): maps mean-pooled, then the mean "
                                 "over views")}
    for split in ("train", "test"):
        ds = jepa3d_data.open_dataset(data, split)
        feats = []
        for i in range(0, len(ds), 32):
            points = torch.from_numpy(jepa3d_data.normalize_batch(np.stack(
                [ds[j][0].numpy() for j in range(i, min(i + 32, len(ds)))]))).float()
            grey = jepa3d_data.render_views(points, cfg)                          # (b, V, S, S)
            with torch.no_grad():
                fmap = teacher(grey.flatten(0, 1)[:, None].expand(-1, 3, -1, -1))  # (b*V, C, h, w)
            feats.append(fmap.mean((-2, -1)).view(len(points), cfg.views, -1).mean(1))
        arrays[f"{split}_features"] = torch.cat(feats).numpy().astype(np.float16)
        arrays[f"{split}_labels"] = ds.labels.numpy().astype(np.int16)
        arrays["classes"] = np.array(list(ds.classes))
    np.savez_compressed(out, **arrays)
    print(f"{out}: {Path(out).stat().st_size / 1e6:.1f} MB", file=sys.stderr)


def splits(path: str, on: str, concat: str | None = None) -> tuple[dict, dict, np.lib.npyio.NpzFile]:
    """(fit, scored) feature dicts of a features file: train -> test, or train less its
    validation part -> that part; with `concat` a second file's features beside them, both
    z-scored by the fitted split."""
    z = np.load(path)
    part = {s: {"features": torch.from_numpy(z[f"{s}_features"].astype(np.float32)),
                "labels": torch.from_numpy(z[f"{s}_labels"].astype(np.int64))} for s in ("train", "test")}
    if on == "test":
        fit, scored = part["train"], part["test"]
    else:
        rest, val = jepa3d.validation_split(part["train"]["labels"])
        fit, scored = ({k: v[rest] for k, v in part["train"].items()}, {k: v[val] for k, v in part["train"].items()})
    if concat:
        other_fit, other_scored, _ = splits(concat, on)
        if not (torch.equal(other_fit["labels"], fit["labels"]) and torch.equal(other_scored["labels"],
                                                                                 scored["labels"])):
            raise SystemExit(f"{concat}: not the same items as {path} (labels differ)")
        for a, b in ((fit, other_fit), (scored, other_scored)):
            a["features"] = torch.cat([a["features"], b["features"]], 1)
        mean, std = fit["features"].mean(0), fit["features"].std(0).clamp_min(1e-6)
        for d in (fit, scored):
            d["features"] = (d["features"] - mean) / std
    return fit, scored, z


def reprobe(path: str, classifier: str, C: float, on: str = "test", against: str | None = None,
            concat: str | None = None) -> dict:
    """The probes of `classifier` (a kind or a set of jepa3d.PROBE_SETS) on a features file; with
    `against` also on a second file of the same items, the difference and McNemar's test."""
    probe = jepa3d.ProbeConfig(C=C)
    result = {"file": path, "on": on, **({"concat": concat} if concat else {})}
    scored = {}
    for name, file in (("a", path), ("b", against)):
        if file is None:
            continue
        fit, test, z = splits(file, on, concat if name == "a" else None)
        result.update({f"source_{name}" if against else "source": str(z["source"]), "fit": len(fit["labels"]),
                       "scored": len(test["labels"])})
        if name == "b" and not torch.equal(test["labels"], scored["labels"]):
            raise SystemExit(f"{against}: not the same items as {path} (labels differ); a paired test needs both")
        scored = {"labels": test["labels"]}
        for kind in jepa3d.PROBE_SETS.get(classifier, (classifier,)):
            score = jepa3d.fit_and_score(kind, fit, test, len(z["classes"]), probe, keep_predictions=True)
            scored[kind] = score.pop("predictions") == test["labels"]
            keep = ("accuracy", "standard_error", "class_mean_accuracy", "train_accuracy", "C", "validation_curve")
            result.setdefault(kind, {})[name if against else "score"] = {k: score[k] for k in keep if k in score}
        if name == "a":
            first = scored
    if against:
        for kind in jepa3d.PROBE_SETS.get(classifier, (classifier,)):
            r = result[kind]
            r["difference"] = r["a"]["accuracy"] - r["b"]["accuracy"]
            r["mcnemar"] = jepa3d.mcnemar(first[kind], scored[kind])
    else:
        result = {**{k: v for k, v in result.items() if not isinstance(v, dict)},
                  **{k: v["score"] for k, v in result.items() if isinstance(v, dict)}}
    return result


FEW_SHOT = ((5, 10), (5, 20), (10, 10), (10, 20))  # (way, shot): the peers' table


def few_shot(path: str, against: str | None = None, folds: int = 10, query: int = 20, seed: int = 0) -> dict:
    """Mean and std over `folds` episodes of each FEW_SHOT setting; with `against` the same
    episodes on a second file, and the paired difference (mean and its standard error over folds)."""
    files = {"a": path, **({"b": against} if against else {})}
    data = {k: splits(f, "test")[:2] for k, f in files.items()}
    result = {"file": path, "against": against, "protocol": "frozen features; per episode the SVC (C=0.012) and "
              "logreg fit on the support, scored on the queries; episodes by jepa3d.sample_episode, seed 0"}
    for way, shot in FEW_SHOT:
        g = torch.Generator().manual_seed(seed)
        train, test = data["a"]
        eps = [jepa3d.sample_episode(train["labels"], test["labels"], way, shot, query, g) for _ in range(folds)]
        row = {}
        for name, (tr, te) in data.items():
            for kind in ("svc", "logreg"):
                accs = torch.tensor([jepa3d.fit_and_score(
                    kind, {"features": tr["features"][e["support"]], "labels": e["support_y"]},
                    {"features": te["features"][e["query"]], "labels": e["query_y"]}, way)["accuracy"] for e in eps])
                row.setdefault(kind, {})[name] = {"mean": accs.mean().item(), "std": accs.std().item(),
                                                  "per_fold": [round(a, 2) for a in accs.tolist()]}
                if name == "b":
                    d = torch.tensor(row[kind]["a"]["per_fold"]) - accs
                    row[kind]["difference"] = {"mean": d.mean().item(), "se": (d.std() / folds ** 0.5).item()}
        result[f"{way}w{shot}s"] = row
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("features", nargs="?", help="a features .npz to probe")
    ap.add_argument("--classifier", default="all", choices=tuple(jepa3d.ProbeConfig.__dataclass_fields__[
        "classifier"].metadata["choices"]))
    ap.add_argument("--C", type=float, default=jepa3d.ProbeConfig.C, help="the fixed C of svc and linear-svc")
    ap.add_argument("--on", default="test", choices=("validation", "test"),
                    help="validation: fit train less the validation split, score it (for choices); test: fit "
                         "train, score test (once per reported run)")
    ap.add_argument("--against", metavar="NPZ", help="a second features file of the same items: paired test")
    ap.add_argument("--few-shot", action="store_true", help="the peers' four few-shot settings on the features")
    ap.add_argument("--export", metavar="CHECKPOINT", help="write a features file from a checkpoint instead")
    ap.add_argument("--random-init", action="store_true", help="with --export: a random-init encoder of its config")
    ap.add_argument("--encoder", default="target", choices=("target", "context"),
                    help="with --export: the EMA teacher or the student (context encoder)")
    ap.add_argument("--data", help="with --export: the labelled data (train and test splits)")
    ap.add_argument("--out", help="with --export: the .npz to write")
    ap.add_argument("--export-teacher", metavar="SPEC", help="write the 2D teacher's pooled features of rendered views")
    ap.add_argument("--views", type=int, default=6, help="with --export-teacher: views per cloud")
    ap.add_argument("--image-size", type=int, default=128, help="with --export-teacher: image side")
    ap.add_argument("--up", default="y", choices=("x", "y", "z"), help="with --export-teacher: the clouds' up axis")
    ap.add_argument("--concat", metavar="NPZ", help="probe these features beside the file's, each z-scored")
    args = ap.parse_args()
    if args.few_shot:
        print(json.dumps(few_shot(args.features, args.against)))
    elif args.export:
        export(args.export, args.data, args.out, args.random_init, args.encoder)
    elif args.export_teacher:
        export_teacher(args.export_teacher, args.data, args.out,
                       {"views": args.views, "image_size": args.image_size, "up": args.up})
    else:
        print(json.dumps(reprobe(args.features, args.classifier, args.C, args.on, args.against, args.concat)))


if __name__ == "__main__":
    main()
