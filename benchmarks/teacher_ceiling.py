"""How much of the body-part signal does a teacher's feature map hold at each point? The
ceiling of dense distillation on the built-in RGB-D videos: the per-point probe
(`jepa3d point-probe --features teacher`) on the cached features of three teachers:

- `rgb`: the image itself (a TorchScript identity, stride 1): the pixel's colour;
- `rgb-stride4`: the image averaged over 4x4 cells (stride 4, as the built-in teacher);
- `builtin`: the built-in fixed random conv net (stride 4, 32 channels).

    python benchmarks/teacher_ceiling.py        # ~5 min on 2 CPU cores

Every step is a `jepa3d` command, cached under runs/evidence/teacher-ceiling; writes
benchmarks/teacher_ceiling.md.
"""
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evidence import ROOT, cached  # noqa: E402


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class AvgPool4(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x, 4)


def main():
    os.chdir(ROOT)
    base = Path("runs/evidence/teacher-ceiling")
    base.mkdir(parents=True, exist_ok=True)
    teachers = {"rgb": f"torchscript:{base / 'rgb.pt'}", "rgb-stride4": f"torchscript:{base / 'rgb-stride4.pt'}",
                "builtin": "builtin"}
    torch.jit.script(Identity()).save(str(base / "rgb.pt"))
    torch.jit.script(AvgPool4()).save(str(base / "rgb-stride4.pt"))
    lines = ["# Teacher ceiling: the per-point part probe on each teacher's own cached features", "",
             "Built-in RGB-D videos (96x96 images, 8-frame videos of 256 points, 50 train / 20 test per action), "
             "7 body parts, logistic regression on 4 train / 16 test points per frame (the `point-probe` protocol), "
             "seed 0.", "", "| teacher | channels | part mIoU | part accuracy |", "|---|---|---|---|"]
    commands = []
    for name, spec in teachers.items():
        cache = base / name
        tf = cached(base / f"{name}-features.json", ["teacher-features", "--teacher", spec, "--out", str(cache),
                                                     "--frames", "8", "--num-points", "256"])
        probe = cached(base / f"{name}-probe.json", ["--seed", "0", "point-probe", "--features", "teacher",
                                                     "--checkpoint", "none", "--data", str(cache), "--frames", "4",
                                                     "--out", str(base / f"{name}-probe")])
        lines.append(f"| {name} | {tf['teacher_dim']} | {probe['miou']:.2f} | {probe['point_accuracy']:.2f} |")
        commands += [f"- `{tf['_command']}`", f"- `{probe['_command']}`"]
        print(json.dumps({"teacher": name, "miou": probe["miou"], "accuracy": probe["point_accuracy"]}),
              file=sys.stderr, flush=True)
    lines += ["", "Commands (the two TorchScript teachers are written by this script):", "", *commands]
    Path(__file__).with_name("teacher_ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
