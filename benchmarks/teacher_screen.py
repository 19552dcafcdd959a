"""Screen the rendering for a 2D teacher on ModelNet40's validation split (issue 32): for each
setting, every cloud of a per-class subset of train-less-validation and all of validation is
rendered (jepa3d_data.render_views, as `jepa3d teacher-features` draws it), EfficientNet-Lite0
(bf16 autocast) maps each view, the map is mean-pooled, then averaged (and max-pooled) over the
views, and jepa3d's own probes fit the subset and score validation. The test split is not read.

    python benchmarks/teacher_screen.py --data DIR --per-class 25 '{"up": "z"}' '{"up": "y"}' ...

Each setting is a JSON object of TeacherFeaturesConfig's render fields, plus "layer" (the
teacher's, default head). One JSON line per setting and view pooling.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jepa3d  # noqa: E402
import jepa3d_data  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("settings", nargs="+", help="JSON objects of render fields (and layer)")
    ap.add_argument("--data", required=True, help="ModelNet40 (any layout jepa3d reads)")
    ap.add_argument("--per-class", type=int, default=25, help="train clouds per class fitted (0: all)")
    args = ap.parse_args()
    ds = jepa3d_data.open_dataset(args.data, "train")
    y = ds.labels
    rest, val = jepa3d.validation_split(y)
    g = torch.Generator().manual_seed(0)
    sub = torch.cat([rest[y[rest] == c][torch.randperm(int((y[rest] == c).sum()), generator=g)[:args.per_class or None]]
                     for c in range(len(ds.classes))])
    idx = torch.cat([sub, val])
    for setting in map(json.loads, args.settings):
        layer = setting.pop("layer", "head")
        cfg = jepa3d_data.TeacherFeaturesConfig(**setting)
        teacher = jepa3d_data.load_teacher(f"efficientnet-lite0:{layer}")
        t, feats = time.time(), []
        for i in range(0, len(idx), 32):
            points = torch.from_numpy(jepa3d_data.normalize_batch(ds.points[idx[i:i + 32]].numpy()))
            grey = jepa3d_data.render_views(points, cfg)                       # (b, V, S, S)
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
                fmap = teacher(grey.flatten(0, 1)[:, None].expand(-1, 3, -1, -1)).float()
            views = fmap.mean((-2, -1)).view(len(points), cfg.views, -1)
            feats.append(torch.stack([views.mean(1), views.amax(1)]))
        feats = torch.cat(feats, 1)
        for pool, f in zip(("mean", "max"), feats):
            fit, scored = {"features": f[:len(sub)], "labels": y[sub]}, {"features": f[len(sub):], "labels": y[val]}
            res = {k: round(jepa3d.fit_and_score(k, fit, scored, len(ds.classes))["accuracy"], 2)
                   for k in ("svc", "svc-val", "logreg")}
            print(json.dumps({"layer": layer, **setting, "views_pool": pool, "fit": len(sub), "scored": len(val),
                              "seconds": round(time.time() - t), **res}), flush=True)


if __name__ == "__main__":
    main()
