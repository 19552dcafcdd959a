"""Does 3D-JEPA pretraining learn? Pretrain each variant at the same budget on ModelNet40's
train split, then evaluate the frozen encoder with a linear SVM and few-shot episodes.

    python benchmarks/evidence.py                      # CPU budget: tiny preset, 3 epochs, seeds 0 1
    python benchmarks/evidence.py --preset paper --epochs 30 --device cuda --name gpu
    python benchmarks/evidence.py --variants random-init "3d-jepa (paper)" --seeds 0 1 --table cpu_seeds

Every step is a `jepa3d` command (printed, and stored with each row) so any row can be re-run
by hand. Finished steps are skipped on a re-run (their JSON results are kept under --runs), so
an interrupted benchmark continues. Writes benchmarks/evidence_<name>.{md,json}.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "random-init": None,  # no pretraining: the baseline every table needs
    "3d-jepa (paper)": [],  # context-block sampler, cross decoder, cosine loss, M=4
    "i-jepa style": ["--sampler", "knn-blocks", "--predictor", "concat", "--loss", "l2"],
    "3d-jepa M=1": ["--num-targets", "1"],
    "reconstruction": ["--objective", "reconstruct"],
    # reconstruction has no target encoder to run, so its step costs about half a JEPA step: at equal
    # wall-clock it gets twice the epochs
    "reconstruction 2x epochs": ["--objective", "reconstruct"],
    # is the gap at equal wall-clock about the objective or about the schedule's length?
    "3d-jepa 2x epochs": [],
    # does the paper's sampler lose to knn-blocks because it leaves too little context? smaller targets
    "3d-jepa targets 10-15%": ["--target-scale", "0.1", "0.15"],
    # issue 13, one change at a time against jepa3d 0.1: the position added once, at a tiny init
    "3d-jepa position once": ["--position", "input", "--pos-init", "trunc-normal"],
}
EPOCH_FACTOR = {"reconstruction 2x epochs": 2, "3d-jepa 2x epochs": 2}


def jepa3d(args: list[str], log: Path) -> dict:
    """Run one jepa3d command; its stderr goes to `log`, its JSON result is returned."""
    cmd = [sys.executable, "-m", "jepa3d", *args]
    print("$ jepa3d " + " ".join(args), file=sys.stderr, flush=True)
    with open(log, "w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"command failed ({log}): jepa3d {' '.join(args)}\n{log.read_text()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cached(path: Path, args: list[str]) -> dict:
    """The stored result of a step, or run it now."""
    if path.exists():
        return json.loads(path.read_text())
    t = time.time()
    result = jepa3d(args, path.with_suffix(".log"))
    result["_seconds"] = round(time.time() - t, 1)
    result["_command"] = "jepa3d " + " ".join(args)
    path.write_text(json.dumps(result, indent=2))
    return result


def cached_pretrain(run: Path, common: list[str], cmd: list[str], log_every: str,
                    resume_options: tuple = ()) -> dict:
    """The stored result of a variant's pretraining (`cmd`, writing into run/pretrain), or run it
    now; a pretraining stopped part-way (a session ended) is finished with jepa3d's own --resume
    (plus `resume_options`: what the checkpoint does not keep, e.g. the probe's --eval-*), and
    the result keeps the full command, marked resumed."""
    if (run / "pretrain" / "checkpoint.safetensors").exists() and not (run / "pretrain.json").exists():
        pre = cached(run / "pretrain.json", common + ["pretrain", "--out", str(run / "pretrain"), "--resume",
                                                      "--log-every", log_every, *resume_options])
        pre["_command"] = "jepa3d " + " ".join(cmd) + "  (resumed)"
        # the wall-clock of the whole run, not of its resumed part
        pre["_seconds"] = step_seconds(run / "pretrain")
        (run / "pretrain.json").write_text(json.dumps(pre, indent=2))
        return pre
    return cached(run / "pretrain.json", cmd)


def step_seconds(folder: Path) -> float:
    """The summed time of every training step of a run folder, from its metrics.jsonl (without
    start-up, checkpoints or probes)."""
    batch = json.loads((folder / "run.json").read_text())["batch_size"]
    steps = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
    return round(sum(batch / r["clouds_per_s"] for r in steps if r.get("clouds_per_s")), 1)


def finish_table(args, lines: list[str], rows: list[dict], columns: tuple, first_commands: tuple = ()) -> None:
    """The clip and distillation tables' end: one row per variant (mean ± std of `columns`, the
    pretraining steps and wall-clock), the seed-0 commands, and benchmarks/evidence_<name>.{md,json}."""
    for variant in args.variants:
        rs = [r for r in rows if r["variant"] == variant]
        accs = " | ".join(mean_std([r[k] for r in rs]) if rs[0].get(k) is not None else "—" for k in columns)
        cost = f"{rs[0]['steps']} | {sum(r['pretrain_seconds'] for r in rs) / len(rs):.0f}" if "steps" in rs[0] \
            else "0 | 0"
        lines.append(f"| {variant} | {accs} | {cost} |")
    lines += ["", "Commands (seed 0):", "", *first_commands]
    for variant in args.variants:
        r = next(r for r in rows if r["variant"] == variant)
        lines += [f"- {variant}:"] + [f"  - `{c}`" for c in
                                      ([r["pretrain_command"]] if "pretrain_command" in r else []) + r["eval_commands"]]
    out = Path(__file__).with_name(f"evidence_{getattr(args, 'table', None) or args.name}")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"meta": {"machine": platform.processor() or platform.machine(),
                                                             "args": vars(args)}, "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))


def in_root(args, **defaults: str) -> None:
    """Move to the project root: every command runs there and is recorded with paths relative to
    it, so a reader can paste it. The path options named in `defaults` that were given relative to
    the caller's folder are rebased first; those not given take their default."""
    for name, default in defaults.items():
        given = getattr(args, name)
        setattr(args, name, os.path.relpath(os.path.abspath(given), ROOT) if given else default)
    os.chdir(ROOT)


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 \
        else f"{values[0]:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="[default: ../shared/data/modelnet40, next to the project root]")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS)[:6],  # the main table; the rest are ablations
                    choices=list(VARIANTS))
    ap.add_argument("--name", default="cpu", help="names the run cache (runs/evidence/<name>) and the result files")
    ap.add_argument("--table", default=None, help="suffix of the result files if not --name")
    ap.add_argument("--runs", default=None, help="[default: runs/evidence in the project root]")
    args = ap.parse_args()
    in_root(args, data="../shared/data/modelnet40", runs="runs/evidence")

    rows = []
    for variant in args.variants:
        for seed in args.seeds:
            tag = f"{variant.split(' (')[0].replace(' ', '-').replace('=', '')}-s{seed}"
            run = Path(args.runs) / args.name / tag
            run.mkdir(parents=True, exist_ok=True)
            common = ["--device", args.device, "--seed", str(seed)]
            row = {"variant": variant, "seed": seed}
            if VARIANTS[variant] is None:
                encoder = ["--checkpoint", "none", "--preset", args.preset]
            else:
                cmd = common + ["pretrain", "--data", args.data, "--preset", args.preset, "--epochs",
                                str(args.epochs * EPOCH_FACTOR.get(variant, 1)), "--out", str(run / "pretrain"),
                                "--log-every", "100", *VARIANTS[variant]]
                pre = cached_pretrain(run, common, cmd, "100")
                info = json.loads((run / "pretrain" / "run.json").read_text())
                row.update(pretrain_seconds=pre["_seconds"], steps=pre["step"], final_loss=pre["final_loss"],
                           device=info["device"], pretrain_command=pre["_command"])
                encoder = ["--checkpoint", str(run / "pretrain" / "checkpoint.safetensors")]
            probe = cached(run / "probe.json", common + ["linear-probe", *encoder, "--data", args.data,
                                                          "--classifier", "all", "--out", str(run / "probe")])
            row["svc"] = probe["svc"]["accuracy"]
            row["linear_svc"] = probe["linear_svc"]["accuracy"]
            row["logreg"] = probe["logreg"]["accuracy"]
            row["eval_commands"] = [probe["_command"]]
            for way in (5, 10):
                fs = cached(run / f"fewshot{way}.json",
                            common + ["few-shot", *encoder, "--data", args.data, "--way", str(way), "--shot", "10",
                                      "--folds", str(args.folds), "--out", str(run / f"fewshot{way}")])
                row[f"{way}w10s"] = fs["accuracy_mean"]
                row[f"{way}w10s_fold_std"] = fs["accuracy_std"]
                row["eval_commands"].append(fs["_command"])
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if "command" not in k}), file=sys.stderr, flush=True)

    lines = [f"# Evidence ({args.name}): ModelNet40, preset `{args.preset}`, {args.epochs} pretraining epochs, "
             f"seeds {args.seeds}",
             "",
             "Frozen encoder (EMA target where there is one). SVC: the peers' linear SVM (libsvm SVC, hinge, "
             "one-vs-one, C=0.012) on concat(max, mean) features, ModelNet40 train -> test accuracy; LinearSVC: "
             "squared hinge, one-vs-rest, C=0.012 (jepa3d <= 0.1's 'SVM'); logreg: logistic regression C=1 on the "
             "same features (less sensitive to the features' scale). Few-shot: W-way 10-shot, 20 queries per class, "
             f"{args.folds} episodes drawn with the seed (the same episodes for every variant). "
             "Mean ± std over seeds.",
             "",
             "| variant | SVC acc | LinearSVC acc | logreg acc | 5-way 10-shot | 10-way 10-shot | pretrain steps | "
             "pretrain wall (s) | device |",
             "|---|---|---|---|---|---|---|---|---|"]
    for variant in args.variants:
        rs = [r for r in rows if r["variant"] == variant]
        wall = [r["pretrain_seconds"] for r in rs if "pretrain_seconds" in r]
        accs = " | ".join(mean_std([r[k] for r in rs]) for k in ("svc", "linear_svc", "logreg", "5w10s", "10w10s"))
        cost = f"{rs[0]['steps']} | {statistics.mean(wall):.0f} | {rs[0]['device']}" if wall else "0 | 0 | -"
        lines.append(f"| {variant} | {accs} | {cost} |")
    lines += ["", "Commands of each row (seed 0; other seeds change `--seed`):", ""]
    for variant in args.variants:
        r = next(r for r in rows if r["variant"] == variant)
        lines += [f"- {variant}:"] + [f"  - `{c}`" for c in ([r["pretrain_command"]] if "pretrain_command" in r
                                                              else []) + r["eval_commands"]]
    meta = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "args": vars(args)}
    out = Path(__file__).with_name(f"evidence_{args.table or args.name}")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
