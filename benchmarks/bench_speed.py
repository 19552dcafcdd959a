"""How fast is jepa3d? Tokenization against fpsample and a naive implementation, pretraining
step throughput as a fraction of the device's measured matmul rate, peak memory, and whether
the data pipeline keeps up. One command, one table, one JSON:

    python benchmarks/bench_speed.py                    # CPU (or the GPU when there is one)
    python benchmarks/bench_speed.py --device cuda      # GPU: bf16 autocast, preset batch sizes

Writes benchmarks/speed_<device>.{md,json}. Every figure is from this one run on this one
machine, so the ratios hold even where the machine is shared and noisy; timings are the best
of --repeats runs. fpsample (pip install fpsample) is used here only, as the fast CPU FPS
library to beat; without it its rows are left out.
"""
import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import jepa3d  # noqa: E402
import jepa3d_data  # noqa: E402
from flops import step_flops  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"  # the default of --shared (a copy can be carried to a GPU machine)
SHAPENET_SIZE = 41_952  # clouds in ShapeNet-55's train split: the 300-epoch projection's epoch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device: torch.device, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls, after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


# ----------------------------------------------------------------------------- data
def real_clouds(points: int, n: int, shared: Path) -> tuple[np.ndarray, str]:
    """n real clouds (n, points, 3): ModelNet40 test (1024 pts) or the ShapeNet-55 sample (8192
    pts), repeated to n; the built-in shapes when the shared data is absent."""
    if points == 1024 and (shared / "modelnet40" / "modelnet40_1024_test.npz").exists():
        arr = np.load(shared / "modelnet40" / "modelnet40_1024_test.npz")["points"][:n].astype(np.float32)
        return arr, "ModelNet40 test"
    files = sorted((shared / "shapenet55_sample" / "shapenet_pc").glob("*.npy"))
    if points == 8192 and files:
        arr = np.stack([np.load(f) for f in files]).astype(np.float32)
        return np.resize(arr, (n, points, 3)), f"ShapeNet-55 sample ({len(files)} clouds, repeated)"
    ds = jepa3d_data.builtin_dataset("test", points)
    return np.stack([ds[i % len(ds)][0].numpy() for i in range(n)]), "built-in shapes"


# ----------------------------------------------------------------------------- naive baseline
def naive_fps(xyz: torch.Tensor, n: int) -> torch.Tensor:
    """The pure-torch FPS most repositories copy (Pointnet_Pointnet2_pytorch, Point-MAE's CPU
    fallback): (B, P, 3) -> (B, n)."""
    B, P, _ = xyz.shape
    centroids = torch.zeros(B, n, dtype=torch.long, device=xyz.device)
    distance = torch.ones(B, P, device=xyz.device) * 1e10
    farthest = torch.zeros(B, dtype=torch.long, device=xyz.device)
    batch = torch.arange(B, dtype=torch.long, device=xyz.device)
    for i in range(n):
        centroids[:, i] = farthest
        centroid = xyz[batch, farthest, :].view(B, 1, 3)
        dist = torch.sum((xyz - centroid) ** 2, -1)
        mask = dist < distance
        distance[mask] = dist[mask]
        farthest = torch.max(distance, -1)[1]
    return centroids


def naive_knn(query: torch.Tensor, xyz: torch.Tensor, k: int) -> torch.Tensor:
    """square_distance + topk, as in the same repositories."""
    dist = -2 * torch.matmul(query, xyz.transpose(1, 2))
    dist += torch.sum(query ** 2, -1)[:, :, None] + torch.sum(xyz ** 2, -1)[:, None, :]
    return dist.topk(k, dim=-1, largest=False, sorted=False).indices


def brute_knn(query: torch.Tensor, xyz: torch.Tensor, k: int) -> torch.Tensor:
    """Brute-force KNN, batched torch: cdist over all N points, then one top-k."""
    return torch.cdist(query, xyz).topk(k, dim=-1, largest=False, sorted=True).indices


def numpy_knn(query: np.ndarray, xyz: np.ndarray, k: int) -> np.ndarray:
    """Brute-force KNN of one cloud in numpy: (G, 3), (P, 3) -> (G, k)."""
    d = ((query[:, None] - xyz[None]) ** 2).sum(-1)
    return np.argpartition(d, k - 1, axis=1)[:, :k]


# ----------------------------------------------------------------------------- 1. tokenization
def bench_tokenization(batch: int, repeats: int, device: torch.device, shared: Path) -> list[dict]:
    try:
        import fpsample
    except ImportError:
        fpsample = None
    rows = []
    for points, groups, size in ((1024, 64, 32), (8192, 1024, 0)):
        arr, source = real_clouds(points, batch, shared)
        xyz = torch.from_numpy(arr).to(device)
        task = f"{points} -> {groups}x{size}" if size else f"{points} -> {groups} points (FPS)"
        g = torch.Generator(device=device)

        def ours():
            if size:
                return jepa3d.group_points(xyz, groups, size, g.manual_seed(0))
            return jepa3d.farthest_point_sample(xyz, groups, g.manual_seed(0))

        def naive():
            idx = naive_fps(xyz, groups)
            return naive_knn(jepa3d.gather(xyz, idx), xyz, size) if size else idx

        timings = {"jepa3d": best_time(ours, device, repeats), "naive torch": best_time(naive, device, repeats)}
        if not size:  # the FPS form this device does not use by default, to check the choice
            flat = device.type == "cpu"
            timings[f"jepa3d, {'flat' if flat else 'two-level'} argmax"] = best_time(
                lambda: jepa3d.farthest_point_sample(xyz, groups, g.manual_seed(0), flat=flat), device, repeats)
        if device.type == "cuda":  # without a generator (start at index 0): a graph would replay fixed draws
            fixed = (lambda: jepa3d.group_points(xyz, groups, size)) if size else (
                lambda: jepa3d.farthest_point_sample(xyz, groups))
            try:
                timings["jepa3d in a CUDA graph"] = graph_time(fixed, device, repeats)
            except RuntimeError as e:  # a row to learn from, not a reason to lose the rest of the run
                print(f"bench_speed: {task} could not be captured in a CUDA graph: {e}", file=sys.stderr)
        if fpsample is not None and device.type == "cpu":
            # QuickFPS tree height: the library suggests 3 for small and 5-7 for medium clouds; take its best
            fps_times = {h: best_time(lambda h=h: np.stack([fpsample.bucket_fps_kdline_sampling(c, groups, h=h)
                                                            for c in arr]), device, repeats) for h in (3, 5, 7)}
            h = min(fps_times, key=fps_times.get)
            if size:  # + brute-force KNN: numpy per cloud, and batched torch (cdist + one topk)
                idx = np.stack([fpsample.bucket_fps_kdline_sampling(c, groups, h=h) for c in arr])
                centres = np.take_along_axis(arr, idx[..., None], 1)
                t_np = best_time(lambda: [numpy_knn(q, c, size) for q, c in zip(centres, arr)], device, repeats)
                cq = torch.from_numpy(centres)
                t_torch = best_time(lambda: brute_knn(cq, xyz, size), device, repeats)
                timings[f"fpsample (h={h}) + numpy KNN"] = fps_times[h] + t_np
                timings[f"fpsample (h={h}) + torch KNN"] = fps_times[h] + t_torch
            else:
                timings[f"fpsample (h={h})"] = fps_times[h]
        for name, sec in timings.items():
            rows.append({"task": task, "data": source, "batch": batch, "method": name, "seconds": sec,
                         "clouds_per_s": batch / sec, "jepa3d_speedup": sec / timings["jepa3d"]})
    return rows


def graph_time(fn, device: torch.device, repeats: int) -> float:
    """best_time of fn captured once in a CUDA graph and replayed: what graphs would save of
    the per-kernel launch cost. fn draws no random numbers (a replay repeats the captured ones)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()  # warm-up outside the capture: allocator pools, kernels loaded
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return best_time(graph.replay, device, repeats)


# ----------------------------------------------------------------------------- 2. matmul peak
def bench_matmul(device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """Dense matmul FLOP/s of this device: the denominator of the utilisation figures."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 10 if device.type == "cuda" else 3
    sec = best_time(lambda: [torch.mm(a, b) for _ in range(reps)], device, repeats)
    return 2 * n ** 3 * reps / sec


# ----------------------------------------------------------------------------- 3. step
def _step_child(preset: str, batch: int, steps: int, device: str, precision: str, threads: int, points: int,
                shared: str, queue, frames: int = 24) -> None:
    """One preset's step throughput and peak memory, in a fresh process (a clean memory high-water mark).
    A step is what `jepa3d pretrain`'s loop does to a batch on the device: fit_points (the FPS
    down to the preset's num_points when the clouds have more, as ShapeNet-55's 8192),
    augmentation, train_step."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    clip = jepa3d.PRESETS[preset].get("frames", 1) > 1  # a clip preset: T = `frames` (the 4D row)
    over = {"frames": frames} if clip else {}
    model_cfg, train_cfg = jepa3d.make_configs(preset, batch_size=batch, **over)
    torch.manual_seed(0)
    model = jepa3d.JEPA(model_cfg).to(dev).train()
    opt = jepa3d.make_optimizer(model, train_cfg)
    amp = jepa3d.resolve_precision(precision, dev)
    if clip:  # the built-in figures in motion: (batch, T, points per frame, 3)
        ds = jepa3d_data.builtin4d_dataset("train", model_cfg.num_points, frames, per_class=-(-batch // 10))
        clouds = torch.stack([ds[i][0] for i in range(batch)]).to(dev)
        source, points = f"built-in 4D clips, {frames} frames", model_cfg.num_points
    else:
        arr, source = real_clouds(points, batch, Path(shared))
        clouds = torch.from_numpy(arr).to(dev)                               # (batch, points, 3)
    g = torch.Generator(device=dev)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    contexts, targets = [], []
    augment = jepa3d_data.augmentation(train_cfg.augment)

    def step(i):
        g.manual_seed(i)
        x = jepa3d.fit_points(clouds, model_cfg.num_points, g)              # (batch, [T,] num_points, 3)
        x = augment(x.flatten(1, -2), g).view_as(x)                          # one draw per cloud or clip
        stats = jepa3d.train_step(model, opt, None, x, g, lr=1e-4, momentum=0.996, grad_clip=10.0, amp_dtype=amp)
        contexts.append(stats["context_padded"].item())  # the length computed on
        targets.append(int(stats["target_patches"].item()) // model_cfg.num_targets)

    step(0)  # warm-up: allocator, autotuning
    sync(dev)
    times = []
    for i in range(1, steps + 1):
        t = time.perf_counter()
        step(i)
        sync(dev)
        times.append(time.perf_counter() - t)
    flops = sum(step_flops(model_cfg, batch, c, t) for c, t in zip(contexts[1:], targets[1:])) / steps
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024)
    queue.put({"preset": preset, "batch": batch, "precision": str(amp or "fp32"), "steps": steps,
               "step_s": sum(times) / steps, "step_s_best": min(times), "clouds_per_s": batch * steps / sum(times),
               "gflop_per_step": flops / 1e9, "tflops": flops / (sum(times) / steps) / 1e12,
               "peak_memory_gb": peak / 1e9, "memory_kind": "cuda max allocated" if dev.type == "cuda"
               else "growth of process peak RSS over the step", "encoder_params_m":
               sum(p.numel() for p in model.encoder.parameters()) / 1e6, "data": source,
               "mean_context": sum(contexts[1:]) / steps, "input_points": points,
               "tokens_per_sample": model_cfg.num_groups * model_cfg.token_frames()})


def bench_step(preset: str, batch: int, steps: int, device: torch.device, precision: str, points: int,
               shared: Path, frames: int = 24) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_step_child, args=(preset, batch, steps, str(device), precision,
                                                 torch.get_num_threads(), points, str(shared), queue, frames))
    proc.start()
    result = queue.get()
    proc.join()
    return result


# ----------------------------------------------------------------------------- 4. data pipeline
def bench_data(device: torch.device, shared: Path, batch: int = 32, batches: int = 10) -> list[dict]:
    """The loader of the pretraining loop (read + collate + to device; worker processes do the
    first two in parallel with the step), in clouds/s: ModelNet40 (in memory, 1024 points) and
    the ShapeNet-55 sample (one .npy per cloud read lazily, 8192 points; their FPS to 1024 is
    part of the step)."""
    sources = [(path, split, name) for path, split, name in  # ModelNet40's test split: its file alone is carried
               ((shared / "modelnet40", "test", "ModelNet40 npz (1024 pts)"),
                (shared / "shapenet55_sample", "train", "ShapeNet-55 .npy files (8192 pts)")) if path.exists()]
    rows = []
    for path, split, name in sources or [(None, "train", "built-in")]:
        ds = jepa3d_data.open_dataset(path, split, num_points=1024)
        size = min(batch, len(ds))
        it = jepa3d._batches(ds, size, 0, 0, 0)

        def run():
            for _ in range(batches):
                next(it)[0].to(device)

        rows.append({"data": name, "batch": size, "clouds_per_s": size * batches / best_time(run, device, 2)})
    return rows


# ----------------------------------------------------------------------------- report
# ----------------------------------------------------------------------------- 5. shared CPU
def bench_threads(shared: Path, repeats: int = 7) -> list[dict]:
    """The tiny-preset step (B=32, ModelNet40's 1024 points FPS'd to 512 in the step) and
    FPS+KNN grouping (B=128, 1024 -> 64 x 32) at 1 thread, at every CPU, and at what jepa3d's
    default (`--threads auto`) picks; quiet, then beside one competing CPU-bound process (a
    busy loop, as a data loader, a notebook or another job would be). Median of `repeats`."""
    import subprocess

    arr, _ = real_clouds(1024, 128, shared)
    clouds = torch.from_numpy(arr)
    cfg, tcfg = jepa3d.make_configs("tiny")
    torch.manual_seed(0)
    model = jepa3d.JEPA(cfg).train()
    opt = jepa3d.make_optimizer(model, tcfg)
    g = torch.Generator()

    def step():
        x = jepa3d.fit_points(clouds[:32], cfg.num_points, g)
        jepa3d.train_step(model, opt, None, x, g, lr=1e-4, momentum=0.996, grad_clip=10.0, amp_dtype=None)

    def group(threads=None):
        jepa3d.group_points(clouds, 64, 32, g, threads=threads)

    def median(fn):
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows, before = [], torch.get_num_threads()
    for load in ("quiet", "one competing process"):
        rival = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load != "quiet" else None
        try:
            time.sleep(1.0)
            auto = jepa3d.auto_threads()
            timed = {}
            for threads in sorted({1, cpus, auto}):
                torch.set_num_threads(threads)
                timed[threads] = {"step_s": median(step), "group_s": median(group)}
            for what in ("step_s", "group_s"):
                best = min(t[what] for t in timed.values())
                for threads, t in timed.items():
                    rows.append({"load": load, "what": what[:-2], "threads": threads, "auto": threads == auto,
                                 "seconds": t[what], "vs_best": t[what] / best})
        finally:
            if rival is not None:
                rival.kill()
                rival.wait()
    # what pinning the FPS loop to one thread costs on a quiet CPU, at every CPU's threads
    torch.set_num_threads(cpus)
    x8 = torch.from_numpy(np.concatenate([arr[:32]] * 8, 1))                 # (32, 8192, 3)
    for label, fn in (("group B=128 x 1024", lambda threads=None: group(threads)),
                      ("fps 8192 -> 1024, B=32",
                       lambda threads=None: jepa3d.farthest_point_sample(x8, 1024, g, threads=threads))):
        timed = {"pinned as shipped": median(fn), "never pinned": median(lambda: fn(cpus))}
        for how, seconds in timed.items():
            rows.append({"load": "quiet", "what": f"{label}: FPS {how}", "threads": cpus, "auto": False,
                         "seconds": seconds, "vs_best": seconds / min(timed.values())})
    torch.set_num_threads(before)
    return rows


def bench_subsample(shared: Path, repeats: int = 7) -> list[dict]:
    """--subsample fps against random: fit_points alone (ShapeNet-55's 8192 -> 1024, B=32, and
    ModelNet40's 1024 -> 512 as the tiny preset does, B=32) and the whole tiny step, the two
    ways timed alternately in one process, median of `repeats`."""
    arr8, _ = real_clouds(8192, 32, shared)
    arr1, _ = real_clouds(1024, 32, shared)
    cfg, tcfg = jepa3d.make_configs("tiny")
    torch.manual_seed(0)
    model = jepa3d.JEPA(cfg).train()
    opt = jepa3d.make_optimizer(model, tcfg)
    g = torch.Generator().manual_seed(0)
    cases = {"fit_points 8192 -> 1024": (torch.from_numpy(arr8), 1024, False),
             "fit_points 1024 -> 512": (torch.from_numpy(arr1), 512, False),
             "tiny step, 1024 -> 512 in the step": (torch.from_numpy(arr1), 512, True)}
    rows = []
    for name, (clouds, n, step) in cases.items():
        times = {"fps": [], "random": []}
        for _ in range(repeats + 1):
            for how in times:
                t = time.perf_counter()
                x = jepa3d.fit_points(clouds, n, g, how)
                if step:
                    jepa3d.train_step(model, opt, None, x, g, lr=1e-4, momentum=0.996, grad_clip=10.0, amp_dtype=None)
                times[how].append(time.perf_counter() - t)
        med = {how: sorted(ts[1:])[repeats // 2] for how, ts in times.items()}  # the first is a warm-up
        for how, seconds in med.items():
            rows.append({"what": name, "subsample": how, "seconds": seconds, "vs_fps": seconds / med["fps"]})
    return rows


# ----------------------------------------------------------------------------- 6. CPU steps, before vs after
def load_jepa3d_at(rev: str):
    """jepa3d.py as it was at git revision `rev`, imported as its own module (jepa3d_<rev>),
    so the same process can time the old and the new step side by side."""
    import importlib.util
    import subprocess
    import tempfile

    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:jepa3d.py"], check=True,
                          capture_output=True, text=True).stdout
    name = f"jepa3d_{rev}".replace("-", "_").replace("~", "_").replace("^", "_")
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _step_runner(code, preset: str, precision: str, clouds: torch.Tensor, batch: int):
    """A pretraining step of `preset` with module `code` (jepa3d, or an older one), as `jepa3d
    pretrain` takes it on a CPU: fit_points (--subsample random) + scale-translate + train_step."""
    model_cfg, train_cfg = code.make_configs(preset, batch_size=batch)
    torch.manual_seed(0)
    model = code.JEPA(model_cfg).train()
    opt = code.make_optimizer(model, train_cfg)
    amp = code.resolve_precision(precision, torch.device("cpu"))
    augment = jepa3d_data.augmentation("scale-translate")
    g = torch.Generator()
    state = {"i": 0}

    def step():
        state["i"] += 1
        g.manual_seed(state["i"])
        x = code.fit_points(clouds[torch.randint(len(clouds), (batch,), generator=g)], model_cfg.num_points, g,
                            "random")
        x = augment(x, g)
        stats = code.train_step(model, opt, None, x, g, lr=1e-4, momentum=0.996, grad_clip=10.0, amp_dtype=amp)
        return stats
    return step, model_cfg, amp


def bench_cpu_steps(before: str, presets: list[str], shared: Path, batch: int = 32, rounds: int = 12) -> dict:
    """The pretraining step of each preset, the code at `before` (at its default precision,
    fp32 on a CPU) against this code at its default (--precision auto) and at fp32, timed in
    turns in one process (one step of each per round, median over rounds after a warm-up round),
    on ModelNet40's real 1024-point clouds. With the matmul rate of fp32 and bf16 measured in
    the same run."""
    old = load_jepa3d_at(before)
    arr, source = real_clouds(1024, 512, shared)
    clouds = torch.from_numpy(arr)
    runs = {}
    for preset in presets:
        for label, code, precision in ((f"before ({before})", old, "auto"), ("after", jepa3d, "auto"),
                                       ("after, fp32", jepa3d, "fp32")):
            step, cfg, amp = _step_runner(code, preset, precision, clouds, batch)
            runs[(preset, label)] = {"step": step, "cfg": cfg, "amp": amp, "times": [], "shape": []}
    for r in range(rounds + 1):
        for run in runs.values():
            t = time.perf_counter()
            stats = run["step"]()
            seconds = time.perf_counter() - t
            if r:  # the first round warms up
                run["times"].append(seconds)
                run["shape"].append((stats["context_padded"].item(), stats["target_patches"].item()))
    peak = {"fp32": bench_matmul(torch.device("cpu"), torch.float32, 3),
            "bf16": bench_matmul(torch.device("cpu"), torch.bfloat16, 3)}
    rows = []
    for (preset, label), run in runs.items():
        median = sorted(run["times"])[len(run["times"]) // 2]
        cfg = run["cfg"]
        flops = sum(step_flops(cfg, batch, c, t // cfg.num_targets) for c, t in run["shape"]) / len(run["shape"])
        precision = "bf16" if run["amp"] == torch.bfloat16 else "fp32"
        rows.append({"preset": preset, "code": label, "precision": precision, "step_s": median,
                     "clouds_per_s": batch / median, "gflop_per_step": flops / 1e9,
                     "matmul_fraction": flops / median / peak[precision]})
    for row in rows:
        base = next(r for r in rows if r["preset"] == row["preset"] and r["code"].startswith("before"))
        row["speedup"] = row["clouds_per_s"] / base["clouds_per_s"]
    return {"rows": rows, "matmul_flops": peak, "data": source, "batch": batch, "rounds": rounds, "before": before}


def profile_step(preset: str, shared: Path, precision: str = "auto", batch: int = 32, steps: int = 5) -> dict:
    """Where a step's time goes (torch.profiler, this code): the self time of the ops, summed by
    kind; what no op accounts for is Python and dispatch."""
    from torch.profiler import profile

    arr, _ = real_clouds(1024, 512, shared)
    step, _, amp = _step_runner(jepa3d, preset, precision, torch.from_numpy(arr), batch)
    for _ in range(3):
        step()
    kinds = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"),
             "attention": ("scaled_dot_product", "aten::_softmax", "aten::softmax", "aten::masked_fill"),
             "norms": ("layer_norm",), "activations": ("gelu",),
             "optimizer and EMA": ("Optimizer.", "_foreach", "aten::lerp", "aten::addcdiv", "aten::addcmul",
                                   "linalg_vector_norm", "aten::sqrt", "aten::mul_", "aten::add_", "aten::div_"),
             "grouping (FPS, KNN, masks)": ("aten::topk", "aten::sort", "aten::argmax", "aten::cdist",
                                            "aten::gather", "aten::randperm"),
             "copies and casts": ("aten::copy_", "aten::_to_copy", "aten::cat", "aten::clone")}
    t = time.perf_counter()
    with profile() as prof:
        for _ in range(steps):
            step()
    wall = (time.perf_counter() - t) / steps
    spent = {k: 0.0 for k in [*kinds, "other ops"]}
    for e in prof.key_averages():
        kind = next((k for k, names in kinds.items() if any(n in e.key for n in names)), "other ops")
        if e.key.startswith("Optimizer.") and "step" not in e.key and "zero_grad" not in e.key:
            continue
        spent[kind] += e.self_cpu_time_total / 1e6 / steps
    spent["Python and dispatch"] = max(0.0, wall - sum(spent.values()))
    return {"preset": preset, "precision": "bf16" if amp == torch.bfloat16 else "fp32", "step_s": wall,
            "shares": {k: v / wall for k, v in spent.items()}}


def cpu_steps_section(before: str, presets: list[str], shared: Path) -> dict:
    """Section 4 of the report: bench_cpu_steps' table and profile_step's shares -> lines, payload."""
    result = bench_cpu_steps(before, presets, shared)
    profiles = [profile_step(p, shared) for p in presets]
    peak = result["matmul_flops"]
    lines = [f"## 4. CPU presets: the step before ({before}) and after", "",
             f"`python benchmarks/bench_speed.py --before {before}`: {result['data']}, batch {result['batch']}, "
             "the step of `jepa3d pretrain` (fit_points --subsample random, scale-translate, train_step), each "
             f"variant one step per round in turns, median of {result['rounds']} rounds. Matmul rate measured in "
             f"the same run: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s.", "",
             "| preset | code | precision | clouds/s | step (s) | vs before | GFLOP/step | of the matmul rate "
             "(its precision) |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['preset']} | {r['code']} | {r['precision']} | {r['clouds_per_s']:.1f} | "
                     f"{r['step_s']:.3f} | {r['speedup']:.2f}x | {r['gflop_per_step']:.1f} | "
                     f"{100 * r['matmul_fraction']:.0f}% |")
    kinds = list(profiles[0]["shares"])
    lines += ["", "Where this code's step spends its time (torch.profiler, self time of the ops by kind; Python "
              "and dispatch = the wall time no op accounts for):", "",
              "| preset | precision | step (s) | " + " | ".join(kinds) + " |", "|---|---|---|" + "---|" * len(kinds)]
    for p in profiles:
        lines.append(f"| {p['preset']} | {p['precision']} | {p['step_s']:.3f} | "
                     + " | ".join(f"{100 * p['shares'][k]:.0f}%" for k in kinds) + " |")
    return {"lines": lines, "payload": {**result, "profiles": profiles}}


def threads_table(rows: list[dict]) -> list[str]:
    lines = ["| load | what | threads | seconds | vs the best thread count |", "|---|---|---|---|---|"]
    for r in rows:
        mark = " (default: auto)" if r["auto"] else ""
        lines.append(f"| {r['load']} | {r['what']} | {r['threads']}{mark} | {r['seconds']:.3f} | {r['vs_best']:.2f}x |")
    return lines


def write_result(name: str, payload: dict, lines: list[str]) -> None:
    """benchmarks/speed_<name>.json (the figures) and .md (the table), and the table on stdout."""
    out = ROOT / "benchmarks" / f"speed_{name}"
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="autocast for the step: auto = bf16 on GPU, fp32 on CPU")
    ap.add_argument("--batch", type=int, default=128, help="clouds per tokenization batch")
    ap.add_argument("--step-batch", type=int, default=None,
                    help="clouds per pretraining step (default: the preset's on GPU, 32 on CPU)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per preset (after one warm-up; CPU steps vary with the mask sizes)")
    ap.add_argument("--presets", nargs="+", default=["paper", "small"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-points", type=int, default=8192,
                    help="points per input cloud of the step: 8192 (ShapeNet-55's, FPS'd to 1024 inside the "
                         "step as in pretraining) or 1024 (ModelNet40's, no FPS)")
    ap.add_argument("--shared", default=str(SHARED), help="the shared data folder (real clouds; built-in shapes "
                                                          "where absent)")
    ap.add_argument("--name", default=None, help="result files benchmarks/speed_<name>.{md,json} (default: device)")
    ap.add_argument("--threads-only", action="store_true",
                    help="only the shared-CPU table (quiet vs one competing process, by thread count) into "
                         "benchmarks/speed_threads.{md,json}")
    ap.add_argument("--subsample-only", action="store_true",
                    help="only --subsample fps vs random (fit_points and the tiny step) into "
                         "benchmarks/speed_subsample.{md,json}")
    ap.add_argument("--clips-only", action="store_true",
                    help="only the 4D step: the tiny4d preset on built-in clips of --frames frames, clips/s and the "
                         "share of matmul peak, into benchmarks/speed_clips.{md,json}")
    ap.add_argument("--frames", type=int, default=24, help="frames per clip of the 4D step (MSR-Action3D uses 24)")
    ap.add_argument("--before", default=None, metavar="REV",
                    help="also time the CPU presets' step with jepa3d.py of git revision REV against this code, in "
                         "turns in one process, and profile this code's steps (section 4)")
    ap.add_argument("--cpu-presets", nargs="+", default=["tiny", "tiny-wide", "small"],
                    help="the presets of --before's table")
    ap.add_argument("--before-only", action="store_true",
                    help="only --before's table and profiles, into benchmarks/speed_cpu_steps.{md,json}")
    args = ap.parse_args()
    shared = Path(args.shared)
    if args.before_only:
        section = cpu_steps_section(args.before, args.cpu_presets, shared)
        write_result("cpu_steps", section["payload"], [
            f"# CPU steps before and after ({platform.processor() or 'cpu'}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__})", "", *section["lines"]])
        return
    if args.clips_only:
        device = jepa3d.resolve_device(args.device)
        amp = jepa3d.resolve_precision(args.precision, device)
        peak = bench_matmul(device, amp or torch.float32, args.repeats)
        rows = []
        for preset in ("tiny4d", "tiny"):  # the clip step, and the single-cloud step beside it for scale
            r = bench_step(preset, args.step_batch or 32, args.steps, device, args.precision, 1024, shared,
                           args.frames)
            r["matmul_fraction"] = r["tflops"] * 1e12 / peak
            rows.append(r)
            print(json.dumps(r), file=sys.stderr)
        lines = [f"# 4D step ({device}: {platform.processor() or 'cpu'}, {torch.get_num_threads()} threads, torch "
                 f"{torch.__version__})", "", f"`python benchmarks/bench_speed.py --clips-only --frames {args.frames}`"
                 f": one run; matmul peak measured {peak / 1e12:.3f} TFLOP/s. A clip is tokenised in one batched "
                 "FPS+KNN call over all B*T frames (jepa3d.tokenize), no loop over frames.", "",
                 "| preset | input | batch | tokens per sample | samples/s | step (s) | GFLOP/step | achieved TFLOP/s "
                 "| of matmul peak |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['preset']} | {r['data']} | {r['batch']} | {r['tokens_per_sample']} | "
                         f"{r['clouds_per_s']:.1f} | {r['step_s']:.3f} | {r['gflop_per_step']:.0f} | "
                         f"{r['tflops']:.3f} | {100 * r['matmul_fraction']:.0f}% |")
        write_result("clips", {"rows": rows, "matmul_tflops": peak / 1e12, "torch": torch.__version__}, lines)
        return
    if args.subsample_only:
        rows = bench_subsample(shared)
        lines = [f"# --subsample fps vs random ({platform.processor() or 'cpu'}, {torch.get_num_threads()} threads, "
                 f"torch {torch.__version__})", "", "`python benchmarks/bench_speed.py --subsample-only`: B=32, "
                 "real clouds (ShapeNet-55 sample, ModelNet40), median of 7, the two ways alternated in one run.",
                 "", "| what | subsample | seconds | vs fps |", "|---|---|---|---|"]
        lines += [f"| {r['what']} | {r['subsample']} | {r['seconds']:.4f} | {r['vs_fps']:.2f}x |" for r in rows]
        write_result("subsample", {"rows": rows, "torch": torch.__version__, "threads": torch.get_num_threads()},
                     lines)
        return
    if args.threads_only:
        rows = bench_threads(shared)
        lines = [f"# Threads on a shared CPU ({platform.processor() or 'cpu'}, {os.cpu_count()} CPUs, torch "
                 f"{torch.__version__})", "", "`python benchmarks/bench_speed.py --threads-only`: the tiny step "
                 "(B=32) and FPS+KNN grouping (B=128, 1024 -> 64 x 32) on ModelNet40, median of 7, quiet and "
                 "beside one busy-loop process, at each thread count and at `--threads auto` (jepa3d's default). "
                 "FPS always runs its loop on one thread.", "", *threads_table(rows)]
        write_result("threads", {"rows": rows, "torch": torch.__version__}, lines)
        return
    device = jepa3d.resolve_device(args.device)
    kind = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    threads = torch.get_num_threads()
    print(f"bench_speed on {device} ({kind}), {threads} threads, torch {torch.__version__}", file=sys.stderr)

    tok = bench_tokenization(args.batch, args.repeats, device, shared)
    amp = jepa3d.resolve_precision(args.precision, device)
    peak = bench_matmul(device, amp or torch.float32, args.repeats)
    steps = []
    for preset in args.presets:
        batch = args.step_batch or (jepa3d.PRESETS[preset].get("batch_size", 128) if device.type == "cuda" else 32)
        r = bench_step(preset, batch, args.steps, device, args.precision, args.step_points, shared)
        r["matmul_fraction"] = r["tflops"] * 1e12 / peak
        r["hours_300_epochs_shapenet55"] = SHAPENET_SIZE * 300 / r["clouds_per_s"] / 3600
        steps.append(r)
        print(json.dumps(r), file=sys.stderr)
    data = bench_data(device, shared)

    lines = [f"# Speed ({device}: {kind}, {threads} threads, torch {torch.__version__})", "",
             "`python benchmarks/bench_speed.py" + (f" --device {args.device}" if args.device != "auto" else "")
             + (f" --before {args.before}" if args.before else "") + "`; every figure from one run, best of "
             f"{args.repeats} where timed repeatedly.", "",
             f"## 1. Tokenization, B={args.batch}", "",
             "| task | method | clouds/s | jepa3d is faster by |", "|---|---|---|---|"]
    for r in tok:
        lines.append(f"| {r['task']} | {r['method']} | {r['clouds_per_s']:.0f} | {r['jepa3d_speedup']:.2f}x |")
    lines += ["", f"Data: {', '.join(sorted({r['data'] for r in tok}))}.", "",
              f"## 2. Pretraining step (matmul peak measured: {peak / 1e12:.3f} TFLOP/s "
              f"{str(amp or torch.float32).replace('torch.', '')})", "",
              f"Input: {steps[0]['data']}, {args.step_points} points per cloud"
              + (", FPS'd to the preset's points inside the step (`fit_points`, as `jepa3d pretrain` does with "
                 "ShapeNet-55)." if args.step_points > 1024 else "."), "",
              "| preset | batch | precision | clouds/s | step (s) | GFLOP/step | achieved TFLOP/s | of matmul peak "
              "| peak memory (GB) | 300 epochs x 41,952 clouds (h) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in steps:
        lines.append(f"| {r['preset']} | {r['batch']} | {r['precision'].replace('torch.', '')} | "
                     f"{r['clouds_per_s']:.1f} | {r['step_s']:.3f} | {r['gflop_per_step']:.0f} | {r['tflops']:.3f} | "
                     f"{100 * r['matmul_fraction']:.0f}% | {r['peak_memory_gb']:.2f} | "
                     f"{r['hours_300_epochs_shapenet55']:.1f} |")
    fastest = max(r["clouds_per_s"] for r in steps)
    lines += ["", f"Memory: {steps[0]['memory_kind']}. FLOPs: `benchmarks/flops.py` (analytic, matmuls only, "
              "checked against torch's FlopCounterMode in the tests). The 300-epoch column projects this "
              "step rate over ShapeNet-55's 41,952 training clouds.", "",
              "## 3. Data pipeline", "",
              "The loader alone (read + collate + to device; `--workers` processes do the first two in parallel "
              f"with the step), one process, against the fastest step above ({fastest:.1f} clouds/s):", "",
              "| data | batch | clouds/s | keeps up? |", "|---|---|---|---|"]
    for r in data:
        lines.append(f"| {r['data']} | {r['batch']} | {r['clouds_per_s']:.0f} | "
                     f"{'yes' if r['clouds_per_s'] >= fastest else 'NO'} ({r['clouds_per_s'] / fastest:.1f}x) |")
    payload_steps = None
    if args.before and device.type == "cpu":
        section = cpu_steps_section(args.before, args.cpu_presets, shared)
        lines += ["", *section["lines"]]
        payload_steps = section["payload"]
    meta = {"device": str(device), "device_name": kind, "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "matmul_flops": peak,
            "args": {**vars(args), "shared": os.path.relpath(os.path.abspath(shared), ROOT)}}  # portable: relative to the root
    write_result(args.name or device.type, {"meta": meta, "tokenization": tok, "steps": steps, "data": data,
                                            "cpu_steps": payload_steps}, lines)


if __name__ == "__main__":
    main()
