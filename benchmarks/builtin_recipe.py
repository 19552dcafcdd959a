"""Why did the old demo's pretraining lose to a random encoder on the built-in shapes, and what
makes it win? Each variant pretrains the `tiny` preset on built-in clouds (1024 points, cut to
512 at random as `jepa3d pretrain` does) with the linear probe (the peers' SVC, teacher
features, built-in train -> test) every --every steps: the learning curve.

    python benchmarks/builtin_recipe.py OUT_DIR NAME PER_CLASS '{"epochs": 40, "warmup_epochs": 8}'

PER_CLASS is the number of pretraining clouds per class (100 = the built-in train split; more
are fresh procedural clouds drawn with another seed: unlabelled data the probe never sees).
The JSON holds TrainConfig/ModelConfig overrides and "every" (probe cadence, default 250).
Appends {name, per_class, overrides, curve: [[step, svc], ...]} to benchmarks/builtin_recipe.json.
"""
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jepa3d  # noqa: E402
import jepa3d_data as D  # noqa: E402


def main():
    out, name, per_class = sys.argv[1], sys.argv[2], int(sys.argv[3])
    extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    every = int(extra.pop("every", 250))
    torch.set_num_threads(1)
    mc, tc = jepa3d.make_configs("tiny", **extra)
    train = D.builtin_dataset("train", 1024, per_class=per_class, seed=7 if per_class != 100 else 0)
    evals = (D.builtin_dataset("train", 1024), D.builtin_dataset("test", 1024))
    t = time.time()
    jepa3d.pretrain(train, out, mc, tc, device=torch.device("cpu"), augment=D.augmentation(tc.augment),
                    eval_sets=evals, eval_every=every, log_every=50)
    curve = [[r["step"], round(r["probe_accuracy"], 2)] for r in map(json.loads, open(Path(out) / "probe.jsonl"))]
    record = {"name": name, "per_class": per_class, "overrides": extra, "every": every, "curve": curve,
              "seconds": round(time.time() - t)}
    path = Path(__file__).with_name("builtin_recipe.json")
    rows = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(rows + [record], indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
