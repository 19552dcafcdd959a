"""Does loading keep the training step fed? Clouds/s of the data path (read + collate, and
the on-device FPS/augmentation the step does) against clouds/s of a CPU training step.

    python benchmarks/bench_data.py [--shared ../shared/data] [--out benchmarks/data_results.json]

Ratios matter, not absolutes: run it on an idle machine, all rows in one run.
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jepa3d  # noqa: E402
import jepa3d_data  # noqa: E402


def loader_rate(ds, batch, workers, steps=20):
    it = jepa3d._batches(ds, batch, seed=0, first_step=0, num_workers=workers)
    next(it)  # start-up (worker spawn) is not throughput
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    return batch * steps / (time.perf_counter() - t)


def step_rate(preset, num_points, batch, steps=5):
    mc, tc = jepa3d.make_configs(preset, num_points=num_points)
    model = jepa3d.JEPA(mc).train()
    opt = jepa3d.make_optimizer(model, tc)
    pts = torch.randn(batch, num_points, 3)
    g = torch.Generator()
    jepa3d.train_step(model, opt, None, pts, g, lr=1e-4, momentum=0.99, grad_clip=1.0, amp_dtype=None)
    t = time.perf_counter()
    for _ in range(steps):
        jepa3d.train_step(model, opt, None, pts, g, lr=1e-4, momentum=0.99, grad_clip=1.0, amp_dtype=None)
    return batch * steps / (time.perf_counter() - t)


def prep_rate(P, n, batch, steps=5):
    """fit_points (FPS P -> n) + augmentation, as the loop does per batch."""
    pts, g = torch.randn(batch, P, 3), torch.Generator()
    aug = jepa3d_data.augmentation("scale-translate")
    t = time.perf_counter()
    for _ in range(steps):
        aug(jepa3d.fit_points(pts, n, g), g)
    return batch * steps / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default=str(Path(__file__).with_name("data_results.json")))
    args = ap.parse_args()
    shared = Path(args.shared)
    rows = []
    datasets = [("built-in (1024 pts, in memory)", lambda: jepa3d_data.builtin_dataset("train", 1024))]
    if (shared / "modelnet40").is_dir():
        datasets.append(("ModelNet40 .npz (1024 pts, in memory)",
                         lambda: jepa3d_data.open_dataset(shared / "modelnet40", "train")))
    if (shared / "shapenet55_sample").is_dir():
        datasets.append(("ShapeNet-55 .npy (8192 pts, read per item)",
                         lambda: jepa3d_data.open_dataset(shared / "shapenet55_sample", "train")))
    for name, make in datasets:
        t = time.perf_counter()
        ds = make()
        opened = time.perf_counter() - t
        for workers in (0, 2):
            rows.append({"what": f"load {name}", "workers": workers, "open_s": round(opened, 2),
                         "clouds_per_s": round(loader_rate(ds, 32 if len(ds) < 200 else 128, workers), 1)})
    rows.append({"what": "FPS 8192->1024 + augment (CPU, per batch)", "clouds_per_s": round(prep_rate(8192, 1024, 32), 1)})
    for preset, n in (("tiny", 512), ("small", 1024), ("paper", 1024)):
        rows.append({"what": f"train step, {preset} preset, CPU fp32", "clouds_per_s": round(step_rate(preset, n, 32), 1)})
    meta = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}
    for r in rows:
        print(f"{r['what']:<58} {r.get('workers', ''):>3} {r['clouds_per_s']:>10.1f} clouds/s", file=sys.stderr)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(json.dumps({"meta": meta, "rows": rows}))


if __name__ == "__main__":
    main()
