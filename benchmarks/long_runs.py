"""Issue 13's long runs: each variant pretrains for about 2 h of this 2-core CPU on ModelNet40's
train split, with the learning curve's SVC probe at every quarter of the run, then the frozen
encoder gets the linear probes (the peers' SVC, LinearSVC, logreg) against a random-init encoder
of the same configuration.

    python benchmarks/long_runs.py                          # every variant, seeds 0 1 (hours each)
    python benchmarks/long_runs.py --variants "3d-jepa (paper)" --seeds 1
    python benchmarks/long_runs.py --speed-only             # measure the step-time ratios again (minutes)

The epochs of each variant are set for equal wall-clock: a reconstruction step runs no teacher
and a 192-wide encoder is slower, so each gets the epochs that fill the `tiny` JEPA run's time
(the 192-wide reconstruction: the 192-wide JEPA's; the ratios are measured in one process, on
one thread, by `--max-steps 40` runs: the speed table; a later invocation keeps the recorded
table unless `--speed-only` asks for a new one).
Every step is a `jepa3d` command, printed and stored with its row; finished steps are skipped on
a re-run and a pretraining stopped part-way (a session ended) is finished with jepa3d's own
`--resume`. The result file keeps its rows: a run whose cache is gone (an earlier machine) stays in
the table, and a later invocation adds its own. One thread per run (`--threads 1`), so two instances with different --variants or
--seeds can share a 2-core machine. Writes benchmarks/long_<name>.{md,json}.
"""
import argparse
import json
import platform
import re
import shutil
import statistics
import sys
from pathlib import Path

from evidence import cached, cached_pretrain, in_root, mean_std, step_seconds

WIDE = ["--preset", "tiny", "--dim", "192", "--pred-dim", "192"]  # = the tiny-wide preset, but its epochs
# (pretrain options, epochs): each variant's epochs fill about the wall-clock of the first's
VARIANTS = {
    "3d-jepa (paper)": (["--preset", "tiny"], 60),
    "reconstruction": (["--preset", "tiny", "--objective", "reconstruct"], 100),
    "3d-jepa, 192 wide": (WIDE, 40),
    # fills the 192-wide JEPA's 40: 1.50x and 1.54x its step speed in alternating 60-step pairs on one
    # thread (the README; the speed table's single 40-step pair read 1.31x)
    "reconstruction, 192 wide": ([*WIDE, "--objective", "reconstruct"], 60),
}
CURVE_POINTS = 4  # probes during the run (at every quarter), besides the one at step 0
PEERS_FEATURES = 768  # concat(max, mean) of the peers' 384-wide encoders
BATCH = 32  # the tiny preset's
STEPS_PER_EPOCH = 9843 // BATCH  # ModelNet40's train split (drop_last)


def jepa3d_cmd(args, seed: int) -> list[str]:
    return ["--threads", str(args.threads), "--seed", str(seed)]


def speed(args, variant: str, recorded: dict) -> dict:
    """Clouds per second of the variant's pretraining step on one thread: the median over steps
    10-39 of a 40-step run (the first steps warm up). The result file's figure when this machine
    has no measurement of its own and none is asked for (`--speed-only`), so the ratios stay ones
    measured together, in one process."""
    options, _ = VARIANTS[variant]
    run = Path(args.runs) / args.name / f"{tag(variant)}-speed"
    measured = (run / "pretrain.json").exists()
    if not args.speed_only and not measured and variant in recorded:
        return recorded[variant]
    if args.speed_only or not measured:
        shutil.rmtree(run, ignore_errors=True)  # measured again, or an interrupted measurement starts over
    run.mkdir(parents=True, exist_ok=True)
    out = cached(run / "pretrain.json", ["--threads", "1", "--seed", "0",
        "pretrain", "--data", args.data, *options, "--max-steps", "40", "--log-every", "10",
        "--out", str(run / "pretrain")])
    rows = [json.loads(line) for line in (run / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    return {"clouds_per_s": statistics.median(r["clouds_per_s"] for r in rows[10:40]),
            "command": out["_command"]}


def tag(variant: str) -> str:
    return variant.split(" (")[0].replace(", ", "-").replace(" ", "-")


def pretrain(args, variant: str, seed: int, run: Path) -> dict:
    """The finished pretraining of one variant and seed (run or resumed now), with its probe curve."""
    options, epochs = VARIANTS[variant]
    eval_options = ["--eval-every", str(epochs * STEPS_PER_EPOCH // CURVE_POINTS), "--eval-data", args.data]
    cmd = jepa3d_cmd(args, seed) + ["pretrain", "--data", args.data, *options, "--epochs", str(epochs),
                                    "--out", str(run / "pretrain"), *eval_options, "--log-every", "100"]
    # a resumed run takes its configuration from its checkpoint; the data and the probe are given again
    pre = cached_pretrain(run, jepa3d_cmd(args, seed), cmd, "100", ("--data", args.data, *eval_options))
    if not pre.get("finished"):
        sys.exit(f"{run / 'pretrain'}: the run stopped at step {pre['step']} of {pre['total_steps']}; "
                 "run this script again to resume it")
    curve = [json.loads(line) for line in (run / "pretrain" / "probe.jsonl").read_text().splitlines() if line]
    # the steps' own time: a run resumed across sessions, its probes and start-ups left out
    return {"steps": pre["step"], "epochs": epochs, "pretrain_seconds": step_seconds(run / "pretrain"),
            "pretrain_command": pre["_command"],
            "curve": [{"step": c["step"], "svc": c["probe_accuracy"], "svc_train": c["probe_train_accuracy"]}
                      for c in curve]}


def run_row(args, variant: str, seed: int) -> dict:
    """One variant and seed: its pretraining (run, resumed or cached), the probes of its frozen
    encoder against random init, at the peers' C and at the peers' C carried to its feature size."""
    run = Path(args.runs) / args.name / f"{tag(variant)}-s{seed}"
    run.mkdir(parents=True, exist_ok=True)
    row = {"variant": variant, "seed": seed, **pretrain(args, variant, seed, run)}
    ckpt = str(run / "pretrain" / "checkpoint.safetensors")
    probe = cached(run / "probe.json", jepa3d_cmd(args, seed) + [
        "linear-probe", "--checkpoint", ckpt, "--data", args.data, "--classifier", "all",
        "--against-random", "--out", str(run / "probe")])
    dim = json.loads((run / "pretrain" / "run.json").read_text())["model_config"]["dim"]
    # the peers' C on the peers' feature size: scaling features by s is the SVM with C * s^2, so
    # C=0.012 on 768 values is C=0.012 * 768 / (2 dim) on 2 dim values of the same per-value scale
    c_scaled = round(0.012 * PEERS_FEATURES / (2 * dim), 4)
    scaled = cached(run / "probe_scaled_c.json", jepa3d_cmd(args, seed) + [
        "linear-probe", "--checkpoint", ckpt, "--data", args.data, "--classifier", "svc",
        "--C", str(c_scaled), "--against-random", "--out", str(run / "probe_scaled_c")])
    rand = probe["random_init"]
    row.update(svc=probe["svc"]["accuracy"], svc_train=probe["svc"]["train_accuracy"],
               linear_svc=probe["linear_svc"]["accuracy"], logreg=probe["logreg"]["accuracy"],
               random_svc=rand["svc"]["accuracy"], random_linear_svc=rand["linear_svc"]["accuracy"],
               random_logreg=rand["logreg"]["accuracy"], c_scaled=c_scaled,
               svc_c_scaled=scaled["svc"]["accuracy"],
               random_svc_c_scaled=scaled["random_init"]["svc"]["accuracy"],
               eval_commands=[probe["_command"], scaled["_command"]])
    return row


def finished(run: Path) -> bool:
    """Whether every step of a run is in the cache (the table shows every finished run)."""
    return all((run / f).exists() for f in ("pretrain.json", "probe.json", "probe_scaled_c.json")) and \
        json.loads((run / "pretrain.json").read_text()).get("finished", False)


def plot(rows: list[dict], speeds: dict, path: Path) -> bool:
    """The SVC probe of every run against the hours its steps take at the variant's measured speed
    (the speed table's), so the variants compare at equal wall-clock. Needs matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print("no picture: it needs matplotlib (pip install 'jepa3d[plot]')", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, variant in enumerate(VARIANTS):
        for r in (r for r in rows if r["variant"] == variant):
            hours = [c["step"] * BATCH / speeds[variant]["clouds_per_s"] / 3600 for c in r["curve"]]
            ax.plot(hours, [c["svc"] for c in r["curve"]], "o" + ("-", "--", ":")[r["seed"] % 3], color=f"C{i}", alpha=0.8,
                    label=f"{variant}, seed {r['seed']}")
    ax.axhline(85, color="gray", ls="--", lw=1)
    ax.set_xlabel("pretraining hours at the measured one-thread speed")
    ax.set_ylabel("SVC test accuracy (C=0.012), %")
    ax.set_title("ModelNet40, frozen features during pretraining")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="[default: ../shared/data/modelnet40, next to the project root]")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads per jepa3d command")
    ap.add_argument("--speed-only", action="store_true", help="measure the step times again, train nothing")
    ap.add_argument("--name", default="cpu", help="names the run cache (runs/long/<name>) and the result files")
    ap.add_argument("--runs", default=None, help="[default: runs/long in the project root]")
    args = ap.parse_args()
    in_root(args, data="../shared/data/modelnet40", runs="runs/long")

    out = Path(__file__).with_name(f"long_{args.name}")
    result = out.with_suffix(".json")
    recorded = json.loads(result.read_text()) if result.exists() else {"speed": {}, "rows": []}
    speeds = {variant: speed(args, variant, recorded["speed"]) for variant in VARIANTS}
    base = speeds[next(iter(VARIANTS))]["clouds_per_s"]
    lines = [f"# Long runs ({args.name}): ModelNet40 train split, about 2 h of CPU each", "",
             "Step speed (one thread, batch 32, median of steps 10-39 of a 40-step run, measured one after the "
             "other in one process), and the wall-clock the variant's epochs take at that speed:", "",
             "| variant | clouds/s | relative | epochs | steps | wall at this speed (h) |", "|---|---|---|---|---|---|"]
    for variant, s in speeds.items():
        steps = VARIANTS[variant][1] * STEPS_PER_EPOCH
        lines.append(f"| {variant} | {s['clouds_per_s']:.1f} | {s['clouds_per_s'] / base:.2f}x | {VARIANTS[variant][1]} "
                     f"| {steps} | {steps * BATCH / s['clouds_per_s'] / 3600:.2f} |")
    if not args.speed_only:
        for variant in args.variants:
            for seed in args.seeds:
                row = run_row(args, variant, seed)
                print(json.dumps({k: v for k, v in row.items() if "command" not in k and k != "curve"}),
                      file=sys.stderr, flush=True)
    # the table: every finished run in the cache, whichever invocation ran it, and the rows the
    # result file already holds for runs whose cache is gone (a run on an earlier machine)
    cached_rows = [run_row(args, variant, int(m.group(1))) for variant in VARIANTS
                   for run in sorted(Path(args.runs, args.name).glob(f"{tag(variant)}-s*"))
                   if (m := re.fullmatch(re.escape(tag(variant)) + r"-s(\d+)", run.name)) and finished(run)]
    ran = {(r["variant"], r["seed"]) for r in cached_rows}
    rows = sorted(cached_rows + [r for r in recorded["rows"] if (r["variant"], r["seed"]) not in ran and r["variant"] in VARIANTS],
                  key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))
    if rows:
        lines += ["", "Frozen target encoder, ModelNet40 train -> test, mean ± std over the seeds listed. SVC: the "
                  "peers' protocol (libsvm SVC, linear kernel, C=0.012, concat(max, mean) features); LinearSVC "
                  "C=0.012; logreg C=1; 'random' is a random-init encoder of the same configuration and seed "
                  "(`--against-random`). 'SVC, peers' scale': C=0.012 x 768 / (2 dim), the peers' C carried to "
                  "this encoder's feature size (a diagnostic, not the protocol).", "",
                  "| variant | seeds | SVC | SVC random | LinearSVC | LinearSVC random | logreg | logreg random | "
                  "SVC, peers' scale (C) | the same, random | epochs | steps | pretrain wall (h) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {v} | {' '.join(str(r['seed']) for r in rs)} | " + " | ".join(mean_std([r[k] for r in rs]) for k in (
            "svc", "random_svc", "linear_svc", "random_linear_svc", "logreg", "random_logreg")) +
            f" | {mean_std([r['svc_c_scaled'] for r in rs])} ({rs[0]['c_scaled']}) | "
            f"{mean_std([r['random_svc_c_scaled'] for r in rs])} | {rs[0]['epochs']} | {rs[0]['steps']} | "
            f"{statistics.mean(r['pretrain_seconds'] for r in rs) / 3600:.2f} |"
            for v in VARIANTS if (rs := [r for r in rows if r["variant"] == v])]
        lines += ["", "The learning curve: the SVC probe (C=0.012, test) at each quarter of the run, so the columns "
                  "are equal wall-clock across variants:", "",
                  "| variant | start | 1/4 | 1/2 | 3/4 | end |", "|---|---|---|---|---|---|"]
        for v in VARIANTS:
            rs = [r for r in rows if r["variant"] == v]
            if rs:
                lines.append(f"| {v} | " + " | ".join(mean_std([r["curve"][i]["svc"] for r in rs])
                                                      for i in range(CURVE_POINTS + 1)) + " |")
        lines += ["", "The pretraining walls were taken with other jobs on the machine, resumed across sessions, "
                  "on more than one machine and thread count (the commands say which); the speed table above, "
                  "measured in one process on the machine of the latest invocation, is the like-for-like cost.", "",
                  "Commands (each variant's first seed; the others change `--seed`):", ""]
        for v in VARIANTS:
            r = next((r for r in rows if r["variant"] == v), None)
            if r:
                lines += [f"- {v}:"] + [f"  - `{c}`" for c in [r["pretrain_command"], *r["eval_commands"]]]
    picture = Path(__file__).with_name(f"curves_long_{args.name}.png")
    if rows and plot(rows, speeds, picture):
        lines += ["", f"![the probe curves at equal wall-clock]({picture.name})"]
    lines += ["", "Speed commands:", ""] + [f"- {v}: `{s['command']}`" for v, s in speeds.items()]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    result.write_text(json.dumps({"meta": {"machine": platform.processor() or platform.machine(), "args": vars(args)},
                                  "speed": speeds, "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
