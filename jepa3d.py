"""jepa3d: 3D-JEPA self-supervised learning on point clouds, in one file of pure torch.

Implements "3D-JEPA: A Joint Embedding Predictive Architecture for 3D Self-Supervised
Representation Learning" (Hu, Cheng, Xie, Li, Zhu; arXiv 2409.15803). A cloud is cut into
patches (FPS centres + KNN groups), each embedded by a mini-PointNet; a Transformer context
encoder sees a context block; an EMA target encoder sees the whole cloud; a predictor (the
paper's context-aware decoder, or I-JEPA's concatenating predictor) predicts the target
encoder's features for M spatially contiguous target blocks. The loss lives in feature space.
The same encoder takes point-cloud sequences (clips): every frame is cut into patches in one
batched call (or into P4Transformer's point tubes), tokens carry (x, y, z, t), and clips are
masked as tubes or future frames (the 4D half of Cross4D-JEPA, arXiv 2607.00514); the
cross-modal correspondence (in jepa3d_data) maps points to the pixels of calibrated cameras,
so a frozen 2D teacher's features can be distilled into every point (the distill objectives,
its other half).

`import jepa3d` needs torch alone; click, numpy and safetensors are imported where used,
so this file can be copied into another repository. The file reads top to bottom: configs,
runtime, geometry (with the clip tokenizers), tokenizer, blocks, encoder, predictor, masking,
objectives (with the distillation loss), training, checkpoints, the dataset contract,
pretraining, downstream protocols (fine-tune, linear probe, few-shot, embed, the per-point
probe), mask preview, and last the command-line layer, the only part that imports jepa3d_data
(which holds the readers and the cross-modal data pipeline: correspondence, teachers, cache).

Tensor dimension legend, used in every shape comment:
    B batch            P points per cloud      G groups (patches) per cloud
    K neighbours/group D encoder width         Dp predictor width
    M target blocks    T patches per target block   Nc context patches
    N tokens           C token coordinates (3; 4 for clips: x, y, z, t)
In the clip code (tokenize, tube_tokens, the tube and future samplers, SequenceDataset), T is
the frames per clip instead, and a tube target holds k patches per frame.
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m jepa3d`: run the importable module, so one copy of each class exists
    import jepa3d

    jepa3d.main()
    raise SystemExit(0)

import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

__version__ = "0.1.0"
FORMAT_VERSION = 2  # checkpoint format; bump when tensor names or metadata change meaning
# ModelConfig fields a checkpoint of an older format lacks, with the value that reproduces its model
_LEGACY_MODEL_FIELDS = {1: {"position": "input", "pos_init": "trunc-normal", "min_context": 1}}
# TrainConfig fields added after runs had been saved, with the value those runs trained with (a
# resumed run keeps its own behaviour when a default changes)
_LEGACY_TRAIN_FIELDS = {"subsample": "fps"}

__all__ = [
    # configs
    "ModelConfig", "TrainConfig", "FinetuneConfig", "FinetuneRun", "ProbeConfig", "FewShotConfig", "PointProbeConfig",
    "EmbedConfig", "PRESETS",
    "TASK_GEOMETRY", "FORMAT_VERSION", "make_configs", "config_from_json", "choices_of",
    # runtime
    "RuntimeConfig", "set_threads", "auto_threads", "cpu_threads", "resolve_device", "resolve_precision",
    "cpu_has_bf16", "autocast",
    "grad_scaler", "Progress", "progress_callback",
    # geometry
    "gather", "farthest_point_sample", "knn", "group_points", "fit_index", "take_points", "fit_points", "interpolate",
    "tokenize", "tube_tokens",
    # model
    "MiniPointNet", "coords", "Attention", "Block", "Encoder", "Predictor",
    "Masks", "host_generator", "sample_context_block", "sample_tube", "sample_future", "sample_knn_blocks", "SAMPLERS",
    "Batch", "predict_targets", "mask_stats", "jepa_loss", "chamfer_l2", "spread", "cosine_distance",
    "tokens_to_points", "Objective", "OBJECTIVES",
    "JEPA", "ema_update",
    # training
    "lr_at", "momentum_at", "make_optimizer", "train_step",
    # checkpoints
    "CheckpointError", "save_checkpoint", "read_header", "read_tensors", "read_checkpoint", "check_fit", "load_state",
    "load_optimizer", "checkpoint_config", "load_jepa", "random_encoder", "EncoderSpec", "load_encoder",
    # datasets
    "DataError", "check_classes", "PointDataset", "optional",
    # pretraining
    "RunConfig", "pretrain", "lock_folder", "check_run_folder", "resume_settings", "RunFolderError", "DivergedError",
    "epoch_batches", "shard", "distributed_env", "params_digest",
    # downstream
    "pool", "encode", "extract_features", "OneVsOne", "fit_svc", "fit_linear", "fit_classifier", "fit_and_score",
    "VALIDATION_FRACTION", "VALIDATION_SEED", "validation_indices", "validation_split", "PROBE_C_GRID", "choose_C",
    "mcnemar", "PROBE_SETS",
    "accuracy", "video_accuracy", "sample_episode", "Relabelled", "draw_episodes",
    "ClassificationHead", "Classifier", "seg_layers", "part_miou", "restrict_to_category", "Segmenter", "make_head",
    "evaluate", "embed", "linear_probe", "point_features", "point_probe", "few_shot", "finetune",
    # tools
    "mask_preview", "make_cli", "main",
]


# ----------------------------------------------------------------------------- configs
# Frozen dataclasses are the only home of defaults. Each field's help text is also its
# --help line in the CLI, so the paper's value and its reason live in exactly one place.

def _opt(default, help: str, **check):
    """A config field with its CLI help; `check` holds its bounds (choices, min, max, min_open),
    which the CLI's option types and _check_fields both enforce."""
    return field(default=default, metadata={"help": help, **check})


def choices_of(f) -> tuple[str, ...]:
    """A config field's choices; a callable stands for a table defined further down (OBJECTIVES)."""
    choices = f.metadata["choices"]
    return tuple(choices() if callable(choices) else choices)


def _check_fields(cfg) -> None:
    """Every field of a config dataclass has its default's type and lies within its declared
    bounds: a config read from a checkpoint or JSON gets the checks the CLI applies, and the
    upper bounds keep a hostile file from asking for terabytes. Raises ValueError."""
    for f in fields(cfg):
        value, meta, name = getattr(cfg, f.name), f.metadata, f.name
        kind = type(f.default)
        items = value if kind is tuple else (value,)
        if kind is tuple and not (isinstance(value, tuple) and len(value) == len(f.default)):
            raise ValueError(f"{name} must be {len(f.default)} numbers, got {value!r}")
        for v in items:
            if v is None and f.default is None:  # an optional field left unset
                continue
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if kind is str and not isinstance(v, str) or kind is int and not (number and isinstance(v, int)) \
                    or kind in (float, tuple) and not (number and math.isfinite(v)):
                raise ValueError(f"{name} must be {'a finite number' if kind is not str else 'a string'}"
                                 f"{' (an integer)' if kind is int else ''}, got {v!r}")
            if "choices" in meta and v not in choices_of(f):
                raise ValueError(f"{name} must be one of {', '.join(choices_of(f))}, got {v!r}")
            low, high = meta.get("min"), meta.get("max")
            if low is not None and (v < low or v == low and meta.get("min_open")) or high is not None and v > high:
                raise ValueError(f"{name} must lie in [{low}, {high}], got {v!r}")


def _config_options(cls, with_presets: bool = False, only: tuple | None = None) -> list:
    """Click options generated from a config dataclass: one --flag per field (of `only`), default
    None (= the preset's or the dataclass's value), with the default (and each preset's value) in
    the help; the field's metadata gives its help, bounds, choices, and for a None default its kind."""
    import click

    options = []
    for f in (f for f in fields(cls) if only is None or f.name in only):
        meta = dict(f.metadata)
        shown = f"{'paper' if with_presets else 'default'}: {f.default}" + "".join(
            f", {p}: {PRESETS[p][f.name]}" for p in PRESETS if with_presets and f.name in PRESETS[p])
        kw = {"default": None, "show_default": False, "required": meta.get("required", False), "help": meta["help"]
              + (f"  [{shown}]" if f.default is not None and not meta.get("required") else "")}
        kind = meta.get("kind", type(f.default[0] if isinstance(f.default, tuple) else f.default))
        bounded = {"min": meta.get("min"), "max": meta.get("max")} if "min" in meta or "max" in meta else None
        if kind is bool:
            kw.update(is_flag=True, default=False, help=meta["help"])
        elif "choices" in meta:
            kw["type"] = click.Choice(choices_of(f))
        elif kind in ("file", "folder"):
            kw["type"] = click.Path(exists=kind == "folder", dir_okay=kind == "folder", file_okay=kind == "file")
        elif kind in (int, float):
            kw["type"] = kind if bounded is None else click.IntRange(**bounded) if kind is int else \
                click.FloatRange(**bounded, min_open=meta.get("min_open", False))
        if isinstance(f.default, tuple) or "nargs" in meta:
            kw["nargs"] = meta.get("nargs", len(f.default or ()))
        options.append(click.option(meta.get("flag", "--" + f.name.replace("_", "-")), f.name, **kw))
    return options


# What one sample may cost, whatever a file or a flag asks for: a clip of 64 frames of 16,384
# points, 8,192 tokens (attention grows with their square).
_MAX_SAMPLE_POINTS, _MAX_TOKENS = 1 << 20, 1 << 13

# jepa3d_data.AUGMENTATIONS applies them; a test checks every choice here is one it knows
_AUGMENT_CHOICES = ("scale-translate", "rotate", "jitter", "scale-translate+rotate", "scale-translate+jitter",
                    "scale-translate+rotate+jitter", "none")


@dataclass(frozen=True)
class ModelConfig:
    num_points: int = _opt(1024, "points per cloud fed to the model (larger clouds are FPS-subsampled)", min=16,
                           max=1 << 20)
    num_groups: int = _opt(64, "patches per cloud (FPS centres)", min=4, max=1 << 16)
    group_size: int = _opt(32, "points per patch (KNN neighbours of each centre)", min=2, max=4096)
    dim: int = _opt(384, "encoder width D", min=8, max=8192)
    depth: int = _opt(12, "encoder Transformer blocks", min=1, max=256)
    heads: int = _opt(6, "encoder attention heads", min=1, max=256)
    mlp_ratio: float = _opt(4.0, "MLP hidden width as a multiple of the block width", min=0.5, max=64.0)
    drop_path: float = _opt(0.1, "stochastic depth of the encoder (Point-MAE's value)", min=0.0, max=0.9)
    predictor: str = _opt("cross", "cross: the paper's context-aware decoder (cross-attends to the context in every "
                          "block); concat: I-JEPA's predictor (context tokens + mask tokens, one sequence)",
                          choices=("cross", "concat"))
    pred_dim: int = _opt(384, "predictor width Dp (I-JEPA allows a narrower predictor)", min=8, max=8192)
    pred_depth: int = _opt(6, "predictor blocks (6 as in the I-JEPA-style 3D-JEPA recipe)", min=1, max=256)
    pred_heads: int = _opt(6, "predictor attention heads", min=1, max=256)
    sampler: str = _opt("context-block", "context-block: the paper's M small target blocks + one large context "
                        "block minus the targets; knn-blocks: M disjoint seed+nearest-patch blocks covering "
                        "--mask-ratio, context = the rest; clips (--frames > 1) also: tube: M spatial blocks that span "
                        "every frame (V-JEPA), context = the rest; future: context = the first frames, targets M "
                        "tubes through the last --future-frames (predict what comes next)",
                        choices=("context-block", "knn-blocks", "tube", "future"))
    num_targets: int = _opt(4, "M, target blocks per cloud (the paper's ablation: M=4 is best)", min=1,
                           max=1024)
    target_scale: tuple = _opt((0.15, 0.2), "context-block: fraction of patches in each target block, "
                               "drawn once per batch (I-JEPA's range)", min=0.0, max=1.0)
    context_scale: tuple = _opt((0.85, 1.0), "context-block: fraction of patches in the context block "
                                "before the targets are removed (I-JEPA's range)", min=0.0, max=1.0)
    mask_ratio: float = _opt(0.6, "knn-blocks: fraction of patches covered by the target blocks "
                             "(flat in [0.5, 0.7] in the paper's ablation)", min=0.01, max=0.99)
    loss: str = _opt("cosine", "cosine (the paper), l2 or smooth-l1 (I-JEPA) between prediction and "
                     "layer-normed teacher features", choices=("cosine", "l2", "smooth-l1"))
    objective: str = _opt("jepa", "jepa: predict the teacher's features of the target patches; reconstruct: "
                          "predict their points (Chamfer-L2, the Point-MAE-style baseline of the paper's "
                          "ablation), same masking and predictor, no teacher; distill: match a frozen 2D model's "
                          "feature at every point's pixel (Cross4D-JEPA; data from `jepa3d teacher-features`, no "
                          "masking); jepa+distill: both losses", choices=lambda: tuple(OBJECTIVES))
    position: str = _opt("every-block", "where the patch-centre embedding enters: every-block (added before every "
                         "encoder and predictor block, as Point-MAE, point2vec and Point-JEPA do) or input (once, "
                         "jepa3d <= 0.1's checkpoints)", choices=("every-block", "input"))
    pos_init: str = _opt("torch", "initialisation of the position MLPs: torch (PyTorch's default, so the position "
                         "signal is as large as the patch tokens') or trunc-normal (ViT's 0.02, which makes it "
                         "~200x smaller; jepa3d <= 0.1)", choices=("torch", "trunc-normal"))
    target_layers: int = _opt(1, "the teacher's target: the mean of its last N blocks' outputs, each layer-normed "
                              "(data2vec, point2vec); 1 = its final output, layer-normed (I-JEPA, the paper)",
                              min=1, max=256)
    min_context: int = _opt(4, "context-block: a sample whose context keeps fewer patches than this once the "
                            "targets are removed draws its blocks again (I-JEPA's min_keep)", min=1, max=1 << 16)
    frames: int = _opt(1, "frames per clip (T): 1 = single clouds; > 1 = point-cloud sequences, tokenised frame by "
                       "frame (num-groups patches per frame), each token's position (x, y, z, t)", min=1, max=4096)
    future_frames: int = _opt(4, "future sampler: the last frames of a clip whose patches are predicted (with tube "
                              "tokens: the last anchor frames)", min=1, max=4096)
    tokens: str = _opt("frame", "clips: frame: every frame's own patches (FPS + KNN per frame); tube: P4Transformer's "
                       "point tubes, FPS anchors in every --tube-stride-th frame, each grouped with its K nearest "
                       "points in the frames within --tube-radius, one token of (dx, dy, dz, dt) points",
                       choices=("frame", "tube"))
    tube_radius: int = _opt(1, "tube tokens: neighbouring frames on each side of an anchor frame", min=0, max=64)
    tube_stride: int = _opt(2, "tube tokens: an anchor frame every this many frames", min=1, max=64)
    distill: str = _opt("dense", "distill objectives: dense (Cross4D-JEPA: every visible point predicts the 2D "
                        "teacher's feature at its pixel, from the encoder's tokens carried back to the points) or "
                        "global (one pooled teacher embedding per cloud or clip, the coarse baseline)",
                        choices=("dense", "global"))
    distill_points: int = _opt(0, "dense: predict at n random points per cloud or frame (0: all)", min=0, max=1 << 20)
    distill_weight: float = _opt(1.0, "jepa+distill: weight of the distillation term next to the latent "
                                 "prediction's", min=0.0, max=1e6)
    teacher_dim: int = _opt(0, "width C of the 2D teacher's features the distill head predicts; set from the "
                            "teacher-features cache (0 = no distill head)", min=0, max=1 << 16)

    def __post_init__(self):
        _check_fields(self)
        if self.dim % self.heads or self.pred_dim % self.pred_heads:
            raise ValueError(f"dim {self.dim} must divide by heads {self.heads} and pred_dim {self.pred_dim} "
                             f"by pred_heads {self.pred_heads}")
        if self.group_size > self.num_points or self.num_groups > self.num_points:
            raise ValueError(f"num_groups {self.num_groups} and group_size {self.group_size} must not exceed "
                             f"num_points {self.num_points}")
        # each bound alone admits a clip of 4096 frames x 2^20 points: bound what one sample costs
        if self.frames * self.num_points > _MAX_SAMPLE_POINTS or self.num_groups * self.frames > _MAX_TOKENS:
            raise ValueError(f"{self.frames} frames x {self.num_points} points ({self.num_groups} patches each) is "
                             f"{self.frames * self.num_points:,} points and {self.num_groups * self.frames:,} tokens a "
                             f"sample, beyond {_MAX_SAMPLE_POINTS:,} and {_MAX_TOKENS:,} (about "
                             f"{self.frames * self.num_points * 12 / 2 ** 30:.1f} GiB of coordinates per sample); use "
                             "fewer frames or points")
        for name in ("target_scale", "context_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must be two fractions 0 < lo <= hi <= 1, got {(lo, hi)}")

    def uses_tubes(self) -> bool:
        """Tube tokens are on: clips with --tokens tube."""
        return self.tokens == "tube" and self.frames > 1

    def token_frames(self) -> int:
        """Frames that carry tokens: every frame, or the anchor frames of tube tokens."""
        return -(-self.frames // self.tube_stride) if self.uses_tubes() else self.frames

    def check_masking(self) -> "ModelConfig":
        """Refuse masking that cannot be drawn (no context left, an empty target block). Called
        where masks are drawn (pretraining, mask-preview), not on every config: downstream
        commands that only change the geometry (e.g. --num-groups 8) never mask. -> self"""
        tokens = self.num_groups * self.token_frames()  # patches a cloud or clip is cut into
        if self.tokens == "tube" and (self.frames < 2 or self.objective == "reconstruct"):
            raise ValueError("tube tokens need clips (--frames > 1) and a latent objective, not reconstruct (a "
                             "tube's points have no single frame to reconstruct)")
        if "distill" in self.objective and self.teacher_dim < 1:
            raise ValueError(f"--objective {self.objective} needs the teacher's feature width (teacher_dim): "
                             "pretrain on a `jepa3d teacher-features` cache, which sets it")
        if not OBJECTIVES[self.objective].masked:
            return self  # nothing is masked
        if self.sampler in ("tube", "future"):
            if self.frames < 2:
                raise ValueError(f"the {self.sampler} sampler masks over time: it needs clips (--frames > 1)")
            if self.sampler == "future" and self.future_frames >= self.token_frames():
                raise ValueError(f"--future-frames {self.future_frames} leaves no context frame of the "
                                 f"{self.token_frames()} frames that carry tokens")
            per_frame = self.num_targets * max(1, round(self.target_scale[1] * self.num_groups))
            if self.sampler == "tube" and per_frame >= self.num_groups:
                raise ValueError(f"{self.num_targets} tubes of scale {self.target_scale} cover all {self.num_groups} "
                                 "patches of a frame: no context; lower --num-targets or --target-scale")
        elif self.sampler == "context-block":
            largest_targets = self.num_targets * max(1, round(self.target_scale[1] * tokens))
            if round(self.context_scale[0] * tokens) - largest_targets < 1:
                raise ValueError(f"context_scale {self.context_scale} leaves no context once {self.num_targets} "
                                 f"target blocks of scale {self.target_scale} are removed; lower "
                                 "--num-targets or --target-scale")
        else:
            per_block = round(self.mask_ratio * tokens / self.num_targets)
            if per_block < 1 or per_block * self.num_targets >= tokens:
                raise ValueError(f"mask_ratio {self.mask_ratio} with {self.num_targets} blocks of "
                                 f"{tokens} patches leaves an empty target block or no context")
        return self


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _opt(150, "pretraining epochs (the paper's headline: 150)", min=1, max=1_000_000)
    batch_size: int = _opt(128, "clouds per step (Point-MAE's value; the paper is silent)", min=1, max=1 << 20)
    lr: float = _opt(1e-3, "peak AdamW learning rate (Point-MAE's value)", min=0.0)
    min_lr: float = _opt(1e-6, "final learning rate of the cosine schedule", min=0.0)
    warmup_epochs: float = _opt(10.0, "linear learning-rate warm-up (Point-MAE's value)", min=0.0)
    weight_decay: float = _opt(0.05, "AdamW weight decay; never applied to biases, norms or tokens", min=0.0)
    grad_clip: float = _opt(10.0, "clip the gradient norm to this (0 = off)", min=0.0)
    ema_start: float = _opt(0.996, "EMA momentum of the target encoder at step 0 (I-JEPA)", min=0.0, max=1.0)
    ema_end: float = _opt(1.0, "EMA momentum at the last step (cosine schedule)", min=0.0, max=1.0)
    augment: str = _opt("scale-translate", "train-time augmentation on the device: scale-translate (Point-MAE), "
                        "rotate (about the up axis), jitter (Gaussian per point), joined by '+', or none",
                        choices=_AUGMENT_CHOICES)
    subsample: str = _opt("random", "how clouds larger than --num-points are cut down each step: random "
                          "(Point-MAE's ShapeNet-55 pretraining, a density augmentation; measured: the same probe "
                          "accuracy as fps, a 1.25x faster tiny step on ModelNet40) or fps (evenly spread, as the "
                          "peers' fine-tuning and caches)", choices=("random", "fps"))
    collapse_below: float = _opt(0.1, "warn on stderr when the collapse monitor (target_std: the per-channel "
                                 "spread of the teacher's features, ~1 when diverse) falls below this", min=0.0)
    __post_init__ = _check_fields  # types and bounds, also for configs read from files


# Named presets: field overrides on top of the paper's configuration. `tiny` trains in minutes
# on 2 CPU cores; `tiny-wide` is the CPU recipe for ModelNet40 (51 min on 2 bf16 cores); `small` is the
# usual laptop-GPU size; `paper` is the paper; `tiny4d` is tiny for clips.
_TINY = dict(num_points=512, num_groups=32, group_size=16, dim=96, depth=4, heads=3, pred_dim=96, pred_depth=2,
             pred_heads=3, drop_path=0.0, batch_size=32, epochs=10, warmup_epochs=1.0, lr=5e-4, ema_start=0.99)
PRESETS: dict[str, dict] = {
    "paper": {},
    "small": dict(dim=192, depth=6, heads=3, pred_dim=192, pred_depth=4, pred_heads=3, batch_size=64),
    "tiny": _TINY,
    # tiny at twice the width (heads of 64): its 40 epochs take the wall-clock of tiny's 60 (0.73x the step
    # speed); the EMA ends at 0.999, not 1.0 (its window never exceeds the last ~8% of the run; ahead on 3 of 4
    # probes of the validation split, within noise: benchmarks/README.md, "The EMA's end")
    "tiny-wide": {**_TINY, "dim": 192, "pred_dim": 192, "epochs": 40, "ema_end": 0.999},
    # clips on a CPU: 8 frames of 256 points, 16 patches each (128 tokens), V-JEPA's tube masking; 30 epochs
    # of the 1,000 built-in clips with ~300 warm-up steps (a warm-up of a few dozen steps collapses for good);
    # a slow teacher (EMA from 0.999): from 0.99 it nearly collapses early and ends below random init (README)
    "tiny4d": dict(frames=8, num_points=256, num_groups=16, group_size=16, dim=96, depth=4, heads=3, pred_dim=96,
                   pred_depth=2, pred_heads=3, drop_path=0.0, sampler="tube", future_frames=2, batch_size=32,
                   epochs=30, warmup_epochs=10.0, lr=5e-4, ema_start=0.999),
}


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = _opt(300, "fine-tuning epochs (Point-MAE: 300 on ModelNet40 and ScanObjectNN)", min=1)
    batch_size: int = _opt(32, "clouds per step (Point-MAE; at least 2 for the head's BatchNorm)", min=2)
    lr: float = _opt(5e-4, "peak AdamW learning rate (Point-MAE)", min=0.0)
    min_lr: float = _opt(1e-6, "final learning rate of the cosine schedule", min=0.0)
    warmup_epochs: float = _opt(10.0, "linear warm-up epochs (Point-MAE)", min=0.0)
    weight_decay: float = _opt(0.05, "AdamW weight decay (Point-MAE)", min=0.0)
    grad_clip: float = _opt(10.0, "gradient-norm clip (Point-MAE)", min=0.0)
    label_smoothing: float = _opt(0.2, "label smoothing of the classification loss (Point-MAE's smooth loss)",
                                  min=0.0, max=0.9)
    drop_path: float = _opt(0.1, "stochastic depth of the encoder while fine-tuning", min=0.0, max=0.9)
    dropout: float = _opt(0.5, "dropout in the head (Point-MAE)", min=0.0, max=0.9)
    augment: str = _opt("scale-translate", "train-time augmentation (see pretrain --augment)",
                        choices=_AUGMENT_CHOICES)
    __post_init__ = _check_fields  # types and bounds, also for configs read from files


@dataclass(frozen=True)
class FinetuneRun:
    """What a fine-tuning run is for and how it reports (FinetuneConfig is its recipe)."""
    task: str | None = _opt(None, "modelnet40 | scanobjectnn | shapenetpart | msr-action3d (these need --data), "
                            "builtin | builtin-parts | builtin4d (the built-in shapes, parts, figures in motion), or "
                            "a folder of your own (one subfolder per class, train/ and test/)", required=True, kind=str)
    vote: int = _opt(0, "also report test-time voting over this many scaled views at the end (peers: 10)", min=0)
    eval_every: int = _opt(0, "evaluate on the test split every N epochs (0 = at the end only); logged, never "
                           "selected", min=0)
    select_best_on_test: bool = _opt(False, "also report the best test epoch, labelled as selected on the test set "
                                     "(optimistic)")
    max_steps: int | None = _opt(None, "stop after this many steps", min=1, kind=int)
    __post_init__ = _check_fields  # types and bounds, also for configs read from files


@dataclass(frozen=True)
class ProbeConfig:
    classifier: str = _opt("svc", "svc: the peers' linear SVM at --C (scikit-learn's SVC(kernel='linear'): hinge, "
                           "one-vs-one, unpenalised intercept); svc-val: the same SVM, its C chosen on the "
                           "validation part of the train split; svc-val-z: so on z-scored features; linear-svc: "
                           "LinearSVC's objective (squared hinge, one-vs-rest); logreg: logistic regression; both: "
                           "svc and logreg; evidence: svc, svc-val, svc-val-z and logreg (a fixed C under-fits small "
                           "features: report it beside the scale-free probes); all: the five",
                           choices=("svc", "svc-val", "svc-val-z", "linear-svc", "logreg", "both", "evidence", "all"))
    C: float = _opt(0.012, "SVM regularisation: larger C fits the train split harder (JEPA lineage: 0.012, "
                    "from Point-M2AE)", min=0.0, min_open=True)
    logreg_C: float = _opt(1.0, "logistic-regression regularisation (scikit-learn's default)", min=0.0, min_open=True)
    batch_size: int = _opt(64, "clouds per forward pass of the frozen encoder (FPS starts are seeded per batch: "
                           "keep it to reproduce a result)", min=1)
    against_random: bool = _opt(False, "also probe a random-init encoder of the same configuration and seed, and "
                                "report the gain: did pretraining help?")
    __post_init__ = _check_fields  # types and bounds, also for configs read from files


@dataclass(frozen=True)
class FewShotConfig:
    way: int = _opt(5, "classes per episode", min=2)
    shot: int = _opt(10, "train clouds per class", min=1)
    query: int = _opt(20, "test clouds per class (peers: 20)", min=1)
    folds: int = _opt(10, "episodes; mean and std are over these (peers: 10)", min=1)
    protocol: str = _opt("svm", "svm: linear SVM on frozen features (fast); finetune: the peers' per-episode "
                         "fine-tuning", choices=("svm", "finetune"))
    episode_epochs: int = _opt(150, "--protocol finetune: epochs per episode (peers: 150)", min=1)
    C: float = _opt(ProbeConfig.C, "SVM regularisation (the linear probe's)", min=0.0, min_open=True)
    batch_size: int = _opt(ProbeConfig.batch_size, "clouds per forward pass", min=1)
    fold_files: str | None = _opt(None, "the peers' ModelNetFewshot folder: use its pickled folds (needs "
                                  "--trust-pickle) instead of drawing episodes", kind="folder")
    __post_init__ = _check_fields  # types and bounds, also for configs read from files


@dataclass(frozen=True)
class EmbedConfig:
    split: str = _opt("train", "which split to embed", choices=("train", "test"))
    per_patch: bool = _opt(False, "also store per-patch tokens (N, G, D) and centres (N, G, 3)")
    batch_size: int = _opt(ProbeConfig.batch_size, "clouds per forward pass (FPS starts are drawn per batch)", min=1)
    __post_init__ = _check_fields  # types and bounds, also for configs read from files


@dataclass(frozen=True)
class PointProbeConfig:
    train_points: int = _opt(4, "points drawn per cloud or frame of the train split to fit the probe", min=1)
    test_points: int = _opt(16, "points drawn per cloud or frame of the test split to score it", min=1)
    features: str = _opt("encoder", "probe the encoder's per-point features, or the teacher's own features in a "
                         "teacher-features cache (the most that distilling that teacher can pass on; the encoder "
                         "options are ignored)", choices=("encoder", "teacher"))
    __post_init__ = _check_fields  # types and bounds, also for configs read from files


# Point counts and patching per task, as the peers run them; the encoder's weights do not
# depend on them, so a checkpoint pretrained at 1024 x 64 serves ScanObjectNN at 2048 x 128.
TASK_GEOMETRY = {
    "modelnet40": dict(num_points=1024, num_groups=64, group_size=32),
    "scanobjectnn": dict(num_points=2048, num_groups=128, group_size=32),
    "shapenetpart": dict(num_points=2048, num_groups=128, group_size=32),
}


def make_configs(preset: str = "paper", **overrides) -> tuple[ModelConfig, TrainConfig]:
    """Preset + overrides -> (ModelConfig, TrainConfig). Unknown names are an error."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    model_keys = {f.name for f in fields(ModelConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - model_keys - train_keys
    if unknown:
        raise ValueError(f"unknown config option(s): {', '.join(sorted(unknown))}")
    mc = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in model_keys})
    tc = TrainConfig(**{k: v for k, v in values.items() if k in train_keys})
    return mc, tc


def config_from_json(cls, text: str):
    """Rebuild a config dataclass from its JSON; unknown keys are an error (no silent drift)."""
    data = json.loads(text)
    known = {f.name for f in fields(cls)}
    if set(data) - known:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(sorted(set(data) - known))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})




# ----------------------------------------------------------------------------- runtime
@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how every command runs: the command line's shared options, given first."""
    device: str = _opt("auto", "where to run; auto = cuda, then mps, then cpu", choices=("auto", "cpu", "cuda", "mps"))
    seed: int = _opt(0, "seed for initialisation, data order, masks, augmentation")
    precision: str = _opt("auto", "autocast precision; auto = bf16 where the hardware has it (GPUs; CPUs with "
                          "AVX512-BF16 or AMX), fp16+GradScaler on older GPUs, else fp32",
                          choices=("auto", "fp32", "bf16", "fp16"))
    threads: str = _opt("auto", "torch CPU threads (N or auto); auto: OMP_NUM_THREADS if set, else the CPUs this "
                        "process may use less those other processes keep busy at start (a thread on a busy core "
                        "stalls every op)")
    debug: bool = _opt(False, "show the Python traceback of an error (also: JEPA3D_DEBUG=1)")


def set_threads(threads: str) -> None:
    """torch's CPU threads from --threads: a count, or 'auto' (OMP_NUM_THREADS when the user set
    it, else auto_threads()). ValueError for anything else."""
    if threads != "auto" and not (threads.isdigit() and int(threads) >= 1):
        raise ValueError(f"--threads {threads!r} is not a thread count >= 1 or auto")
    if threads != "auto":
        torch.set_num_threads(int(threads))
    elif not os.environ.get("OMP_NUM_THREADS"):  # the user's own setting stands
        torch.set_num_threads(auto_threads())


def auto_threads() -> int:
    """torch's CPU threads for this machine as it is now: the CPUs this process may use, less
    those other processes keep busy (sampled from /proc/stat over 0.2 s, Linux), at least one.
    An op split over a core that another process holds waits for it at every barrier: on the
    2-core CI machine beside one busy process, 2 threads made a step 2x slower than 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
    try:
        def sample() -> tuple[int, int]:
            with open("/proc/stat") as fh:
                ticks = [int(v) for v in fh.readline().split()[1:]]
            return sum(ticks), ticks[3] + ticks[4]                           # all, idle + iowait
        total0, idle0 = sample()
        time.sleep(0.2)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return cpus
    busy = (1 - (idle1 - idle0) / max(1, total1 - total0)) * (os.cpu_count() or cpus)  # in CPUs
    return max(1, min(cpus, round(cpus - busy)))


@contextlib.contextmanager
def cpu_threads(n: int):
    """Run the block with at most n torch CPU threads (restored after)."""
    before = torch.get_num_threads()
    if n >= before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps was asked for but this torch build has no MPS; use --device cpu or auto")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for a precision name; None means plain fp32. 'auto': bf16 where the
    hardware computes it natively (GPUs that have it; CPUs with AVX512-BF16 or AMX, where bf16
    matmuls run at 2-3x the fp32 rate), fp16 (with a GradScaler) on older GPUs, else fp32."""
    if name == "auto":
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_bf16() else None
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def cpu_has_bf16() -> bool:
    """Does this CPU compute bf16 natively (AVX512-BF16 or AMX)? Elsewhere torch emulates bf16
    and it runs slower than fp32. JEPA3D_CPU_BF16=0 or 1 overrides the answer."""
    forced = os.environ.get("JEPA3D_CPU_BF16", "")
    if forced in ("0", "1"):
        return forced == "1"
    return any(getattr(torch.cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    """The autocast context of a resolved precision; amp_dtype None runs plain fp32."""
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def grad_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A GradScaler for float16 only: bf16 and fp32 have fp32's range and need none."""
    return torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (schedules are pure functions of the step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


class Progress:
    """A dependency-free progress line on stderr: redrawn in place on a terminal, one plain
    line per update otherwise (log files stay readable). The caller decides the cadence."""

    def __init__(self, total: int, start: int = 0):
        self.total, self.start, self.t0 = total, start, time.time()
        self.tty = sys.stderr.isatty()

    def update(self, done: int, text: str = "") -> None:
        rate = (done - self.start) / max(1e-9, time.time() - self.t0)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        bar = "#" * int(20 * done / max(1, self.total))
        line = f"[{bar:<20}] {done}/{self.total} {text} eta {eta / 60:.1f} min"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def progress_callback(unit: str) -> Callable[[int, int], None]:
    """A progress(done, total) callback that draws a Progress line on stderr (closed at the end)."""
    bar: list[Progress] = []

    def update(done: int, total: int) -> None:
        if not bar:
            bar.append(Progress(total))
        bar[0].update(done, unit)
        if done == total:
            bar[0].close()
    return update


def _one_line(err: BaseException) -> str:
    """What went wrong, as one line: an OS error names its file; an error re-raised from a
    DataLoader worker (whose message carries the worker's traceback) keeps its own last line."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    text = str(err).strip()
    if "Original Traceback" in text:  # torch.utils.data's ExceptionWrapper
        text = text.splitlines()[-1]
        text = text.split(": ", 1)[1] if text.split(": ", 1)[0].endswith("Error") else text
    return " ".join(text.split()) or type(err).__name__


# ----------------------------------------------------------------------------- geometry
# Pure torch, batched, always float32 (autocast is switched off: fp16 distances lose the
# ordering FPS and KNN depend on). No compiled extensions.

def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-sample indexing: x (B, N, *F), idx (B, *I) long -> (B, *I, *F). One index_select
    over the flattened batch: faster on a CPU than x[batch, idx]."""
    B, N = x.shape[:2]
    flat = idx + torch.arange(B, device=x.device).view(-1, *([1] * (idx.dim() - 1))) * N   # (B, *I)
    return x.reshape(B * N, *x.shape[2:]).index_select(0, flat.reshape(-1)).view(*idx.shape, *x.shape[2:])


def farthest_point_sample(xyz: torch.Tensor, n: int, generator: torch.Generator | None = None, *,
                          flat: bool | None = None, threads: int | None = None) -> torch.Tensor:
    """Farthest point sampling. xyz (B, P, 3) -> indices (B, n); the first point is drawn from
    `generator` (index 0 without one). Loops over n (inherent), vectorised over B; both forms
    below return the textbook loop's indices (first maximum on ties).

    flat=False (the default on a CPU): coordinates held as (B, 3, P) rows updated in place, and
    the argmax taken in two levels (over blocks of w distances, then inside the winning block),
    because a flat argmax over P is a scalar loop in torch's CPU kernels. flat=True (the default
    elsewhere): the six kernels the algorithm needs per iteration (gather, difference, square,
    sum, minimum, argmax), since on a GPU every kernel is a launch. Measurements behind both
    choices: benchmarks/README.md. `threads` caps the CPU loop's threads; None: one for small
    batches (B * P <= 2^17), where a second thread only adds barriers, else torch's."""
    B, P, _ = xyz.shape
    dev = xyz.device
    flat = dev.type != "cpu" if flat is None else flat
    with torch.autocast(dev.type, enabled=False):
        cols = xyz.float().transpose(1, 2).contiguous()                     # (B, 3, P)
        if generator is None:
            far = torch.zeros(B, 1, dtype=torch.long, device=dev)
        else:
            far = torch.randint(P, (B, 1), generator=generator, device=dev)  # (B, 1)
        if flat:
            nearest = torch.full((B, P), float("inf"), device=dev)           # (B, P) distance to the chosen set
            diff, d = torch.empty(B, 3, P, device=dev), torch.empty(B, P, device=dev)
            chosen = []
            for _ in range(n):
                chosen.append(far)
                torch.sub(cols, torch.gather(cols, 2, far[:, None].expand(B, 3, 1)), out=diff)  # (B, 3, P)
                torch.sum(diff.square_(), 1, out=d)
                torch.minimum(nearest, d, out=nearest)
                far = nearest.argmax(-1, keepdim=True)                       # (B, 1)
            return torch.cat(chosen, 1)
        # ~15 small ops per iteration: on B*P <= 2^17 distances a second thread gains ~10% on a quiet
        # CPU and, at every barrier, waits for a core another process holds (measured: benchmarks/README.md)
        with cpu_threads(threads or (1 if B * P <= 1 << 17 else torch.get_num_threads())):
            return _fps_blocks(cols, far, n)


def _fps_blocks(cols: torch.Tensor, far: torch.Tensor, n: int) -> torch.Tensor:
    """farthest_point_sample's CPU loop: cols (B, 3, P), first indices far (B, 1) -> (B, n)."""
    B, _, P = cols.shape
    dev = cols.device
    w = 128 if P >= 4096 else 64 if P >= 512 else P                      # block width
    nb = -(-P // w)                                                      # blocks, the last one padded
    x, y, z = cols.unbind(1)                                             # 3x (B, P) views
    idx = torch.empty(B, n, dtype=torch.long, device=dev)                # (B, n)
    blocks = torch.full((B, nb, w), -1.0, device=dev)                    # (B, nb, w); padding never wins
    nearest = blocks.view(B, nb * w)[:, :P].fill_(float("inf"))          # (B, P) distance to the chosen set
    d, t = torch.empty(B, P, device=dev), torch.empty(B, P, device=dev)
    for i in range(n):
        idx[:, i:i + 1] = far
        c = torch.gather(cols, 2, far[:, None].expand(B, 3, 1))          # (B, 3, 1)
        torch.sub(x, c[:, 0], out=t)
        torch.mul(t, t, out=d)
        d.addcmul_(torch.sub(y, c[:, 1], out=t), t)
        d.addcmul_(torch.sub(z, c[:, 2], out=t), t)
        torch.minimum(nearest, d, out=nearest)
        block = blocks.amax(-1).argmax(-1, keepdim=True)                 # (B, 1)
        far = block * w + torch.gather(blocks, 1, block[:, :, None].expand(B, 1, w)).argmax(-1)  # (B, 1)
    return idx


def knn(query: torch.Tensor, xyz: torch.Tensor, k: int, sorted: bool = True) -> torch.Tensor:
    """The k nearest points of xyz (B, N, 3) to each query (B, G, 3) -> indices (B, G, k),
    nearest first (in no set order with sorted=False). Exact, in two selections: the N
    distances of a query are cut into nb blocks of w points (block j holds points j, j + nb,
    j + 2nb, ...); the k blocks with the smallest minimum hold every one of the k nearest points
    (a point closer than the k-th smallest block minimum lies in a block whose minimum is
    smaller still), so the final top-k runs over k * w candidates, not N. Strided blocks make a
    block's minimum an elementwise minimum of w rows, and the batch goes through in chunks of
    about 2M distances so the distance matrix stays small (benchmarks/README.md has the why)."""
    with torch.autocast(query.device.type, enabled=False):
        B, G, _ = query.shape
        N = xyz.shape[1]
        query, xyz = query.float(), xyz.float()
        w = next(w for w in range(max(1, N // (4 * k)), 0, -1) if N % w == 0)  # block width, N = nb * w
        nb = N // w
        step = max(1, (1 << 21) // (G * N))                                  # clouds per chunk
        out = []
        for s in range(0, B, step):
            q, p = query[s:s + step], xyz[s:s + step]                        # (b, G, 3), (b, N, 3)
            # |p|^2 - 2 q.p: the squared distance less |q|^2, the same order along N (as cdist, by matmul)
            dist = torch.baddbmm(p.square().sum(-1)[:, None], q, p.transpose(1, 2), alpha=-2)  # (b, G, N)
            if w == 1:
                out.append(dist.topk(k, dim=-1, largest=False, sorted=sorted).indices)
                continue
            b = dist.shape[0]
            blocks = dist.view(b, G, w, nb)                                  # block j: column j
            best = blocks.amin(2).topk(k, dim=-1, largest=False, sorted=False).indices   # (b, G, k) block ids
            cand = torch.gather(blocks, 3, best[:, :, None].expand(b, G, w, k))        # (b, G, w, k)
            top = cand.view(b, G, w * k).topk(k, dim=-1, largest=False, sorted=sorted).indices  # (b, G, k)
            out.append(torch.gather(best, 2, top % k) + top // k * nb)      # point = block id + row * nb
        return torch.cat(out) if len(out) > 1 else out[0]


def group_points(points: torch.Tensor, num_groups: int, group_size: int, generator: torch.Generator | None = None,
                 *, threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut clouds into patches. points (B, P, 3) -> patches (B, G, K, 3) relative to their
    centre, centres (B, G, 3). A patch's K points are its centre's K nearest, in no set order
    (the mini-PointNet max-pools them). Float32 whatever the autocast state. `threads`: FPS's."""
    with torch.autocast(points.device.type, enabled=False):
        points = points.float()
        centres = gather(points, farthest_point_sample(points, num_groups, generator, threads=threads))  # (B, G, 3)
        patches = gather(points, knn(centres, points, group_size, sorted=False))        # (B, G, K, 3)
        return patches - centres[:, :, None], centres


def fit_index(points: torch.Tensor, n: int, generator: torch.Generator | None = None,
              subsample: str = "fps") -> torch.Tensor | None:
    """Which points bring clouds (B, P, 3) to exactly n: when P > n, FPS (Point-MAE's protocol:
    evenly spread) or with subsample='random' n points drawn without replacement per cloud
    (Point-MAE's pretraining on ShapeNet-55 does this: cheaper, and a density augmentation);
    all of them plus random repeats when P < n. -> indices (B, n), or None when P == n. Clips
    (B, T, P, 3) are fitted frame by frame -> (B, T, n)."""
    if points.ndim == 4:
        idx = fit_index(points.flatten(0, 1), n, generator, subsample)
        return None if idx is None else idx.unflatten(0, points.shape[:2])
    B, P, _ = points.shape
    if P > n and subsample == "random":
        keys = torch.rand(B, P, generator=generator, device=points.device)  # (B, P)
        return keys.argsort(dim=1)[:, :n]
    if P > n:
        return farthest_point_sample(points, n, generator)
    if P < n:
        extra = torch.randint(P, (B, n - P), generator=generator, device=points.device)
        return torch.cat([torch.arange(P, device=points.device).expand(B, P), extra], dim=1)
    return None


def take_points(x: torch.Tensor | None, idx: torch.Tensor | None) -> torch.Tensor | None:
    """The rows fit_index chose of per-point data: x (B, [T,] P, E), idx (B, [T,] n) -> (B, [T,] n, E).
    Anything that follows the points (a 2D teacher's targets) is taken with the same indices."""
    if x is None or idx is None:
        return x
    return gather(x.flatten(0, -3), idx.flatten(0, -2)).view(*idx.shape, x.shape[-1])


def fit_points(points: torch.Tensor, n: int, generator: torch.Generator | None = None,
               subsample: str = "fps") -> torch.Tensor:
    """Clouds (B, P, 3) brought to exactly n points (fit_index) -> (B, n, 3); clips frame by
    frame (B, T, P, 3) -> (B, T, n, 3)."""
    return take_points(points, fit_index(points, n, generator, subsample))


def interpolate(points: torch.Tensor, centres: torch.Tensor, features: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Inverse-distance interpolation of patch features to points (PointNet++ feature
    propagation). points (B, P, 3), centres (B, G, 3), features (B, G, C) -> (B, P, C)."""
    idx = knn(points, centres, k)                                           # (B, P, k)
    d = (gather(centres, idx) - points[:, :, None]).norm(dim=-1)             # (B, P, k)
    w = 1.0 / (d + 1e-8)
    w = w / w.sum(dim=-1, keepdim=True)
    return (gather(features, idx) * w[..., None].to(features.dtype)).sum(dim=2)


def tokenize(points: torch.Tensor, cfg: "ModelConfig",
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's patches. Clouds (B, P, 3) -> patches (B, G, K, 3), centres (B, G, 3).
    Clips (B, T, P, 3) are cut frame by frame, in one batched call over B*T frames: with
    cfg.frames > 1 -> patches (B, T*G, K, 3) and centres (B, T*G, 4) whose 4th coordinate is the
    frame's time, (2i - (T-1)) / cfg.frames for frame i (about [-1, 1] at the trained length,
    the same step per frame at any other length); a single-cloud model (cfg.frames == 1) gets
    each frame as its own cloud -> (B*T, G, K, 3), (B*T, G, 3) (the per-frame baseline)."""
    G, K = cfg.num_groups, cfg.group_size
    if points.ndim == 3:
        return group_points(points, G, K, generator)
    if cfg.uses_tubes():
        return tube_tokens(points, cfg, generator)
    B, T = points.shape[:2]
    patches, centres = group_points(points.flatten(0, 1), G, K, generator)   # (B*T, G, K, 3), (B*T, G, 3)
    if cfg.frames == 1:
        return patches, centres
    t = _clip_time(torch.arange(T, device=points.device), T, cfg).to(centres.dtype)[None, :, None, None]
    t = t.expand(B, T, G, 1)
    return patches.view(B, T * G, K, 3), torch.cat([centres.view(B, T, G, 3), t], dim=-1).view(B, T * G, 4)


def _clip_time(frame: torch.Tensor, T: int, cfg: "ModelConfig") -> torch.Tensor:
    """The time coordinate of frame indices in a clip of T frames: (2 i - (T - 1)) / cfg.frames,
    about [-1, 1] at the trained length and the same step per frame at any other."""
    return (2 * frame - (T - 1)) / cfg.frames


def tube_tokens(points: torch.Tensor, cfg: "ModelConfig",
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """P4Transformer's point tubes. Clips (B, T, P, 3): G FPS anchors in every cfg.tube_stride-th
    frame, each grouped with its K nearest points in each frame within cfg.tube_radius of it
    (clamped at the clip's ends), as displacements (dx, dy, dz, dt) from the anchor; one batched
    FPS and one batched KNN call. -> patches (B, T'*G, (2r+1)*K, 4), centres (B, T'*G, 4) with
    T' = ceil(T / stride) anchor frames, dt and t on the time scale of tokenize."""
    B, T, P, _ = points.shape
    G, K, r, s = cfg.num_groups, cfg.group_size, cfg.tube_radius, cfg.tube_stride
    with torch.autocast(points.device.type, enabled=False):
        points = points.float()
        frame = torch.arange(0, T, s, device=points.device)                   # (T',) anchor frames
        Ta = len(frame)
        anchors = points[:, frame].flatten(0, 1)                              # (B*T', P, 3)
        centres = gather(anchors, farthest_point_sample(anchors, G, generator)).view(B, Ta, G, 3)
        near = (frame[:, None] + torch.arange(-r, r + 1, device=points.device)).clamp(0, T - 1)  # (T', 2r+1)
        frames = points[:, near].flatten(0, 2)                                # (B*T'*(2r+1), P, 3)
        query = centres[:, :, None].expand(B, Ta, 2 * r + 1, G, 3).flatten(0, 2)  # (B*T'*(2r+1), G, 3)
        group = gather(frames, knn(query, frames, K, sorted=False))           # (.., G, K, 3)
        group = group.view(B, Ta, 2 * r + 1, G, K, 3) - centres[:, :, None, :, None]
        dt = (_clip_time(near, T, cfg) - _clip_time(frame, T, cfg)[:, None]).to(points.dtype)  # (T', 2r+1)
        dt = dt[None, :, :, None, None, None].expand(B, Ta, 2 * r + 1, G, K, 1)
        patches = torch.cat([group, dt], dim=-1).permute(0, 1, 3, 2, 4, 5)    # (B, T', G, 2r+1, K, 4)
        t = _clip_time(frame, T, cfg).to(points.dtype)                         # (T',)
        centres = torch.cat([centres, t[None, :, None, None].expand(B, Ta, G, 1)], dim=-1)
        return patches.reshape(B, Ta * G, (2 * r + 1) * K, 4), centres.view(B, Ta * G, 4)


# ----------------------------------------------------------------------------- tokenizer
class MiniPointNet(nn.Module):
    """Patch embedding (Point-MAE's mini-PointNet): shared MLP, max-pool, concat the global
    feature to each point, second MLP, max-pool. patches (..., K, 3) -> tokens (..., D).
    LayerNorm replaces Point-MAE's BatchNorm: the EMA teacher, small fine-tuning batches and
    DDP ranks then compute the same function, with no running statistics to copy or sync."""

    def __init__(self, dim: int, coords: int = 3):
        super().__init__()
        self.first = nn.Sequential(nn.Linear(coords, 128), nn.LayerNorm(128), nn.GELU(), nn.Linear(128, 256))
        self.second = nn.Sequential(nn.Linear(512, 512), nn.LayerNorm(512), nn.GELU(), nn.Linear(512, dim))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches (..., K, c) -> (..., D). On a CPU in slices of ~_EMBED_SLICE points, whose
        (points, 512) activations stay in cache: the same forward values (each patch is its own
        rows), gradients summed slice by slice (equal up to rounding); the teacher's embedding
        1.4x faster, the `small` step 2x in fp32 (benchmarks/speed_cpu.md, section 4)."""
        K = patches.shape[-2]
        if patches.device.type != "cpu" or patches.shape[:-1].numel() <= _EMBED_SLICE:           # points
            return self._embed(patches)
        flat, step = patches.flatten(0, -3), max(1, _EMBED_SLICE // K)      # (n, K, c), patches per slice
        return torch.cat([self._embed(flat[i:i + step]) for i in range(0, len(flat), step)]).view(
            *patches.shape[:-2], -1)

    def _embed(self, patches: torch.Tensor) -> torch.Tensor:
        h = self.first(patches)                                               # (..., K, 256)
        glob = h.amax(dim=-2, keepdim=True)                                   # (..., 1, 256)
        # second[0] is Linear(512) of concat(glob, h); its global half is the same for all K
        # points, so it runs once per patch: 27% fewer FLOPs, and no (..., K, 512) concat
        first, rest = self.second[0], self.second[1:]
        h = F.linear(h, first.weight[:, 256:]) + F.linear(glob, first.weight[:, :256], first.bias)  # (..., K, 512)
        return rest(h).amax(dim=-2)                                           # (..., D)


_EMBED_SLICE = 2048  # points per slice of the mini-PointNet on a CPU (2048 x 512 fp32 = 4 MB)


def _position_mlp(dim: int, coords: int = 3) -> nn.Module:
    """Position embedding of patch centres: MLP(coords -> 128 -> dim); coords 3 (x, y, z) for
    clouds, 4 (x, y, z, t) for clips. (..., coords) -> (..., dim)."""
    return nn.Sequential(nn.Linear(coords, 128), nn.GELU(), nn.Linear(128, dim))


def coords(cfg: "ModelConfig") -> int:
    """Coordinates of a token's position: 3 for clouds, 4 (with time) for clips."""
    return 4 if cfg.frames > 1 else 3


# ----------------------------------------------------------------------------- blocks
def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the residual branch for a whole sample with probability p."""
    if p == 0.0 or not training:
        return x
    keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= p
    return x * keep.to(x.dtype) / (1 - p)


class Attention(nn.Module):
    """Multi-head attention via scaled_dot_product_attention (flash/memory-efficient kernels
    where available). Self-attention by default; `cross=True` takes keys/values from `context`."""

    def __init__(self, dim: int, heads: int, cross: bool = False):
        super().__init__()
        self.heads = heads
        self.cross = cross
        if cross:
            self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D); context (B / r, Nc, D) for cross-attention: with r > 1, row i of x
        attends to context row i % (B / r) (the predictor's block-major stacking), and keys and
        values are computed once per context row instead of r times. keep (B or B / r, keys)
        bool: False marks a padding key that no query attends to (None: every key counts)."""
        B, N, D = x.shape                                                     # x (B, N, D)
        H = self.heads
        if self.cross:
            q = self.q(x).view(B, N, H, D // H).transpose(1, 2)               # (B, H, N, D/H)
            kv = self.kv(context)                                             # (B / r, Nc, 2D)
            kv = kv.repeat(B // kv.shape[0], 1, 1) if kv.shape[0] != B else kv  # (B, Nc, 2D)
            k, v = kv.view(B, -1, 2, H, D // H).permute(2, 0, 3, 1, 4)        # 2x (B, H, Nc, D/H)
        else:
            q, k, v = self.qkv(x).view(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)    # 3x (B, H, N, D/H)
        if keep is not None:
            keep = keep.repeat(B // keep.shape[0], 1) if keep.shape[0] != B else keep
            keep = keep[:, None, None, :]                                     # (B, 1, 1, keys)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # the fused CPU kernel's bf16 backward is ~4x slower than two matmuls at these lengths
            scores = (q @ k.transpose(-2, -1)) * (D // H) ** -0.5                # (B, H, N, keys)
            scores = scores if keep is None else scores.masked_fill(~keep, float("-inf"))
            out = scores.softmax(-1).to(v.dtype) @ v                            # (B, H, N, D/H)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)     # (B, H, N, D/H)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm Transformer block: self-attention, [cross-attention to `context`], MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop: float = 0.0, cross: bool = False):
        super().__init__()
        self.drop = drop
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.cross = cross
        if cross:
            self.norm_cross, self.cross_attn = nn.LayerNorm(dim), Attention(dim, heads, cross=True)
        hidden = int(dim * mlp_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, keep: torch.Tensor | None = None,
                context_keep: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D); keep (B, N) marks x's real tokens, context_keep (B / r, Nc) the context's."""
        x = x + _drop_path(self.attn(self.norm1(x), keep=keep), self.drop, self.training)
        if self.cross:
            x = x + _drop_path(self.cross_attn(self.norm_cross(x), context, context_keep), self.drop, self.training)
        return x + _drop_path(self.mlp(self.norm2(x)), self.drop, self.training)


def _init_weights(module: nn.Module, pos_init: str = "trunc-normal") -> None:
    """ViT initialisation: truncated normal(0.02) linears, zero biases, unit norms; with
    pos_init 'torch' the position MLPs (attribute pos_embed) keep PyTorch's default instead,
    so at init the position signal is as large as the tokens' (0.02 makes it ~200x smaller)."""
    keep = {id(m) for m in getattr(module, "pos_embed", nn.Identity()).modules()} if pos_init == "torch" else set()
    for m in module.modules():
        if id(m) in keep:
            continue
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- encoder
class Encoder(nn.Module):
    """Patch tokens + centre positions -> Transformer -> LayerNorm. Serves as the context
    encoder, the EMA target encoder and every downstream task."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.patch_embed = MiniPointNet(cfg.dim, 4 if cfg.uses_tubes() else 3)  # tube points carry dt
        self.pos_embed = _position_mlp(cfg.dim, coords(cfg))
        rates = torch.linspace(0, cfg.drop_path, cfg.depth, device="cpu").tolist()  # a plain list, even on "meta"
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.dim)
        self.every_block = cfg.position == "every-block"
        _init_weights(self, cfg.pos_init)

    def forward(self, patches: torch.Tensor, centres: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """patches (B, N, K, 3), centres (B, N, C) -> tokens (B, N, D) (C = 3, or 4 for clips: see
        tokenize). keep (B, N) bool marks
        the real patches of a padded batch (padding is attended by no one; its tokens are junk)."""
        return self.norm(self._run(patches, centres, keep, (len(self.blocks) - 1,))[0])

    def layer_outputs(self, patches: torch.Tensor, centres: torch.Tensor,
                      layers: tuple[int, ...]) -> list[torch.Tensor]:
        """The normed outputs of blocks `layers` (0-based, ascending): a list of (B, N, D), for
        heads that read several depths (part segmentation)."""
        return [self.norm(x) for x in self._run(patches, centres, None, layers)]

    def _run(self, patches: torch.Tensor, centres: torch.Tensor, keep: torch.Tensor | None,
             layers: tuple[int, ...]) -> list[torch.Tensor]:
        """The outputs of blocks `layers` (0-based, ascending), each (B, N, D), running no block
        past the last of them; the centres' embedding is added before the first block, or
        before every block (cfg.position)."""
        x, pos = self.patch_embed(patches), self.pos_embed(centres)          # 2x (B, N, D)
        outs = []
        for i, blk in enumerate(self.blocks[:max(layers) + 1]):
            x = blk(x + pos if i == 0 or self.every_block else x, keep=keep)
            if i in layers:
                outs.append(x)
        return outs


# ----------------------------------------------------------------------------- predictor
class Predictor(nn.Module):
    """Predicts teacher features at target patches from the encoded context.

    All M target blocks go through in one call, stacked on the batch axis block-major:
    row m * B + b holds block m of sample b (I-JEPA's layout). `cross` (the paper's
    context-aware decoder): the target queries self-attend, then cross-attend to the context
    in every block. `concat` (I-JEPA): context tokens and mask tokens form one sequence."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.predictor
        self.embed = nn.Linear(cfg.dim, cfg.pred_dim)
        self.pos_embed = _position_mlp(cfg.pred_dim, coords(cfg))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.pred_dim))
        cross = cfg.predictor == "cross"
        self.blocks = nn.ModuleList(Block(cfg.pred_dim, cfg.pred_heads, cfg.mlp_ratio, cross=cross)
                                    for _ in range(cfg.pred_depth))
        self.norm = nn.LayerNorm(cfg.pred_dim)
        self.out = nn.Linear(cfg.pred_dim, cfg.dim)
        self.every_block = cfg.position == "every-block"
        _init_weights(self, cfg.pos_init)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, context: torch.Tensor, context_centres: torch.Tensor, target_centres: torch.Tensor,
                context_keep: torch.Tensor | None = None) -> torch.Tensor:
        """context (B, Nc, D), context_centres (B, Nc, C), target_centres (B, M, T, C) (C = 3, or 4 for clips),
        context_keep (B, Nc) bool, False for padding -> predictions (M*B, T, D), block-major.
        The context (keys/values of the cross predictor) carries its positions once; the target
        queries get theirs before the first block, or before every block (cfg.position)."""
        B, M, T, _ = target_centres.shape
        ctx_embed, ctx_pos = self.embed(context), self.pos_embed(context_centres)  # 2x (B, Nc, Dp)
        ctx = ctx_embed + ctx_pos                                             # (B, Nc, Dp)
        pos = self.pos_embed(target_centres.transpose(0, 1).reshape(M * B, T, -1))  # (M*B, T, Dp)
        x, keep = self.mask_token.expand(M * B, T, -1), None                  # (M*B, T, Dp)
        if self.kind == "concat":  # one sequence: context tokens, then the target queries
            pos = torch.cat([ctx_pos.repeat(M, 1, 1), pos], dim=1)            # (M*B, Nc+T, Dp)
            x = torch.cat([ctx_embed.repeat(M, 1, 1), x], dim=1)              # (M*B, Nc+T, Dp)
            if context_keep is not None:
                keep = torch.cat([context_keep.repeat(M, 1), context_keep.new_ones(M * B, T)], dim=1)
        for i, blk in enumerate(self.blocks):
            x = x + pos if i == 0 or self.every_block else x
            # cross: keys/values of the B contexts, shared by their M target blocks
            x = blk(x, ctx, keep=keep, context_keep=context_keep) if self.kind == "cross" else blk(x, keep=keep)
        return self.out(self.norm(x[:, -T:]))                                 # (M*B, T, D)


# ----------------------------------------------------------------------------- masking
@dataclass
class Masks:
    """Per-sample patch indices: context (B, Nc), targets (B, M, T). Contexts of different
    sizes are padded to the batch's largest: context_keep (B, Nc) bool is False at padding
    (None when every context has the same size); padding indexes patch 0 and is never attended."""
    context: torch.Tensor
    targets: torch.Tensor
    context_keep: torch.Tensor | None = None


def host_generator(generator: torch.Generator) -> torch.Generator:
    """A generator on the host for the draws whose values shape tensors (block sizes). On a
    GPU, a draw from the device generator read with .item() would stall the host until the GPU
    catches up; instead a host generator is seeded with the device generator's seed, which
    pretrain sets every step (so the draws change every step). A CPU generator is used as is."""
    if generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(generator.initial_seed())


def _uniform(lo_hi: tuple, generator: torch.Generator) -> float:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand((), generator=generator).item()       # a host generator: no sync


def sample_context_block(centres: torch.Tensor, cfg: ModelConfig, generator: torch.Generator) -> Masks:
    """The paper's multi-block sampling, in four steps. centres (B, G, 3) -> Masks (clips:
    centres (B, T*G, 4), blocks of nearest patches in space-time, G read as T*G).
    1. Block sizes, once per batch (I-JEPA): T = s_t * G patches per target block, C = s_c * G
       for the context block, s_t and s_c uniform in cfg.target_scale and cfg.context_scale.
    2. Per sample, M + 1 random seed patches: target block m is seed m's T nearest patches, the
       context block the last seed's C nearest; every target patch leaves the context.
    3. A sample whose context keeps fewer than cfg.min_context patches draws its seeds again
       (I-JEPA's min_keep), a fixed number of rounds, vectorised (no host sync). The config
       check guarantees at least one context patch whatever is drawn.
    4. Every context keeps what it drew: padded to the batch's largest, with context_keep, so
       the task does not depend on the batch size or the number of GPUs."""
    B, G, _ = centres.shape
    dev = centres.device
    host = host_generator(generator)
    T = max(1, round(_uniform(cfg.target_scale, host) * G))
    C = max(1, round(_uniform(cfg.context_scale, host) * G))
    dist = torch.cdist(centres.float(), centres.float())                      # (B, G, G)
    # an empty context is short of min_context (>= 1), so the first round fills every sample
    targets = torch.zeros(B, cfg.num_targets, T, dtype=torch.long, device=dev)  # (B, M, T)
    in_context = torch.zeros(B, G, dtype=torch.bool, device=dev)              # (B, G)
    for _ in range(_REDRAWS + 1):
        seeds = torch.randint(G, (B, cfg.num_targets + 1), generator=generator, device=dev)  # (B, M+1)
        from_seed = gather(dist, seeds)                                       # (B, M+1, G)
        drawn_targets = from_seed[:, :-1].topk(T, dim=-1, largest=False).indices   # (B, M, T)
        drawn = torch.zeros(B, G, dtype=torch.bool, device=dev)
        drawn.scatter_(1, from_seed[:, -1].topk(C, dim=-1, largest=False).indices, True)
        drawn.scatter_(1, drawn_targets.flatten(1), False)                    # (B, G) context members
        short = in_context.sum(1) < cfg.min_context                           # (B,) samples to replace
        targets = torch.where(short[:, None, None], drawn_targets, targets)
        in_context = torch.where(short[:, None], drawn, in_context)
    return _padded(in_context, targets)


_REDRAWS = 3  # step 3 of sample_context_block: rounds of redrawing short contexts


def _padded(in_context: torch.Tensor, targets: torch.Tensor) -> Masks:
    """Masks from context membership (B, N) bool: each context's patches in ascending order,
    padded to the batch's largest context with context_keep."""
    count = in_context.sum(1)                                                 # (B,) context sizes
    Nc = int(count.max())  # one host sync per step: the shapes depend on it
    members = (~in_context).float().argsort(dim=1, stable=True)[:, :Nc]      # (B, Nc) members ascending, then others
    keep = torch.arange(Nc, device=in_context.device) < count[:, None]        # (B, Nc)
    return Masks(members.masked_fill(~keep, 0), targets, keep)


def _tubes(centres: torch.Tensor, cfg: ModelConfig, generator: torch.Generator, first: int) -> torch.Tensor:
    """M tubes through frames first..T-1 of clips: a random seed patch among those frames, and in
    each of them the k patches nearest the seed in space (k = target_scale * G, drawn once per
    batch). centres (B, T*G, 4) -> token ids (B, M, (T-first)*k), frame after frame."""
    B, N, _ = centres.shape
    G = cfg.num_groups
    T, M, dev = N // G, cfg.num_targets, centres.device
    k = max(1, round(_uniform(cfg.target_scale, host_generator(generator)) * G))
    xyz = centres[:, first * G:, :3].float()                                  # (B, F*G, 3) the frames drawn from
    seeds = torch.randint(xyz.shape[1], (B, M), generator=generator, device=dev)     # (B, M)
    d = torch.cdist(gather(xyz, seeds), xyz).view(B, M, T - first, G)         # (B, M, F, G)
    near = d.topk(k, dim=-1, largest=False).indices                           # (B, M, F, k) per-frame patch
    frame = torch.arange(first, T, device=dev)[:, None] * G                   # (F, 1) first token of each frame
    return (near + frame).flatten(2)                                          # (B, M, F*k)


def sample_tube(centres: torch.Tensor, cfg: ModelConfig, generator: torch.Generator) -> Masks:
    """V-JEPA's tube masking for clips: M spatial blocks spanning every frame are the targets,
    every other patch the context (padded: overlapping tubes leave contexts of different sizes).
    centres (B, T*G, 4) -> Masks."""
    targets = _tubes(centres, cfg, generator, 0)                              # (B, M, T*k)
    in_context = torch.ones(centres.shape[:2], dtype=torch.bool, device=centres.device)
    in_context.scatter_(1, targets.flatten(1), False)
    return _padded(in_context, targets)


def sample_future(centres: torch.Tensor, cfg: ModelConfig, generator: torch.Generator) -> Masks:
    """Predict what comes next: the context is every patch of the first T - F frames, the
    targets M tubes through the last F = cfg.future_frames frames. centres (B, T*G, 4) -> Masks."""
    B, N, _ = centres.shape
    first = N // cfg.num_groups - cfg.future_frames
    context = torch.arange(first * cfg.num_groups, device=centres.device).expand(B, -1)   # (B, (T-F)*G)
    return Masks(context, _tubes(centres, cfg, generator, first))


def sample_knn_blocks(centres: torch.Tensor, cfg: ModelConfig, generator: torch.Generator) -> Masks:
    """I-JEPA-style 3D recipe: M disjoint blocks, each a random untaken seed patch grown to its
    T nearest untaken patches, together covering mask_ratio of the patches; the context is
    every other patch. centres (B, G, 3) -> Masks with T = round(r*G/M), Nc = G - M*T (clips:
    centres (B, T*G, 4), blocks in space-time, G read as T*G)."""
    B, G, _ = centres.shape
    M = cfg.num_targets
    T = round(cfg.mask_ratio * G / M)
    dist = torch.cdist(centres.float(), centres.float())                      # (B, G, G)
    taken = torch.zeros(B, G, dtype=torch.bool, device=centres.device)
    blocks = []
    for _ in range(M):  # M is small and fixed; each step is vectorised over the batch
        keys = torch.rand(B, G, generator=generator, device=centres.device).masked_fill(taken, -1.0)
        seed = keys.argmax(dim=1, keepdim=True)                               # (B, 1)
        d = gather(dist, seed)[:, 0].masked_fill(taken, float("inf"))         # (B, G)
        block = d.topk(T, dim=1, largest=False).indices                       # (B, T)
        taken.scatter_(1, block, True)
        blocks.append(block)
    context = (~taken).float().argsort(dim=1, descending=True, stable=True)[:, : G - M * T]  # (B, Nc)
    return Masks(context.sort(dim=1).values, torch.stack(blocks, dim=1))


SAMPLERS: dict[str, Callable[[torch.Tensor, ModelConfig, torch.Generator], Masks]] = {
    "context-block": sample_context_block,
    "knn-blocks": sample_knn_blocks,
    "tube": sample_tube,
    "future": sample_future,
}


# ----------------------------------------------------------------------------- objectives
# What the predictor's output is trained to match. An objective adds its own modules to the
# model (at stable checkpoint names) and turns one batch's prediction into a loss; a new
# objective is one entry in OBJECTIVES, not a branch in JEPA.forward.

def jepa_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Feature-space loss, averaged over target patches. pred, target (M*B, T, D)."""
    pred, target = pred.float(), target.float()
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(pred, target, dim=-1).mean()
    if kind == "l2":
        return F.mse_loss(pred, target)
    return F.smooth_l1_loss(pred, target)


def chamfer_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric Chamfer distance with squared L2 (Point-MAE's ChamferDistanceL2), averaged.
    a, b (N, K, 3) point sets."""
    d = torch.cdist(a.float(), b.float()).square()                           # (N, K, K)
    return d.amin(dim=2).mean() + d.amin(dim=1).mean()


@dataclass
class Batch:
    """One step's inputs, tokenised once; each objective reads what it needs (the masked ones
    draw the step's masks from `generator`)."""
    points: torch.Tensor                  # (B, P, 3) clouds or (B, T, P, 3) clips
    patches: torch.Tensor                 # (B, N, K, 3 or 4) the tokenizer's patches
    centres: torch.Tensor                 # (B, N, C) their centres
    generator: torch.Generator            # the step's draws
    teacher: torch.Tensor | None = None   # (B, [T,] P, 1 + C): visible (0/1), the 2D teacher's feature per point


def _add_teacher(model: JEPA) -> None:
    """The EMA target encoder: a frozen copy of the encoder, updated by ema_update."""
    model.target_encoder = copy.deepcopy(model.encoder).requires_grad_(False)


def predict_targets(model: JEPA, batch: Batch) -> tuple[Masks, torch.Tensor, torch.Tensor]:
    """The masked objectives' shared work: the step's masks, the context encoder on the context
    patches, the predictor at the target places -> masks, context (B, Nc, D), pred (M*B, T, D)."""
    patches, centres = batch.patches, batch.centres
    masks = SAMPLERS[model.cfg.sampler](centres, model.cfg, batch.generator)
    keep = masks.context_keep                                                 # (B, Nc) or None
    context = model.encoder(gather(patches, masks.context), gather(centres, masks.context), keep)  # (B, Nc, D)
    pred = model.predictor(context, gather(centres, masks.context), gather(centres, masks.targets), keep)
    return masks, context, pred                                               # pred (M*B, T, D)


def mask_stats(masks: Masks) -> dict:
    """How much of a cloud the step's masks used: context patches (real and padded), target patches."""
    B, M, T = masks.targets.shape
    padded = torch.tensor(float(masks.context.shape[1]))  # the context length computed on
    keep = masks.context_keep
    return {"context_patches": keep.float().sum(1).mean() if keep is not None else padded,
            "context_padded": padded, "target_patches": torch.tensor(float(M * T))}


def _jepa_objective(model: JEPA, batch: Batch) -> tuple[torch.Tensor, dict]:
    """Predict the teacher's layer-normed features of the target patches. The teacher sees
    the whole cloud."""
    masks, _, pred = predict_targets(model, batch)
    B, M, T = masks.targets.shape
    with torch.no_grad():
        teacher = _teacher_targets(model.target_encoder, batch.patches, batch.centres,
                                   model.cfg.target_layers)                   # (B, G, D)
        target = gather(teacher, masks.targets).transpose(0, 1).reshape(M * B, T, -1)  # (M*B, T, D)
    loss = jepa_loss(pred, target, model.cfg.loss)
    with torch.no_grad():
        tokens = target.flatten(0, 1)                                         # (M*B*T, D)
        stats = {
            # per-channel std of the layer-normed targets: ~1 for diverse features, 0 on collapse
            "target_std": tokens.std(0).mean(),
            # the loss of the trivial prediction, the batch's mean target: a run that learns
            # stays below it (at init the teacher's tokens share a direction, so it is small)
            "mean_loss": jepa_loss(tokens.mean(0).expand_as(target), target, model.cfg.loss),
            # spreads of the L2-normalised tokens (the cosine loss sees only directions), scaled
            # so that isotropic unit vectors give about 1 and identical ones 0
            "target_spread": spread(tokens), "pred_spread": spread(pred.detach().float().flatten(0, 1))}
    return loss, {**stats, **mask_stats(masks)}


def _teacher_targets(teacher: Encoder, patches: torch.Tensor, centres: torch.Tensor, layers: int) -> torch.Tensor:
    """The teacher's targets for every patch (B, G, D): its final output layer-normed, or with
    layers > 1 the mean of its last `layers` block outputs, each layer-normed (data2vec)."""
    if layers == 1:
        out = teacher(patches, centres)
        return F.layer_norm(out.float(), out.shape[-1:])
    depth = len(teacher.blocks)
    outs = teacher._run(patches, centres, None, tuple(range(max(0, depth - layers), depth)))
    return torch.stack([F.layer_norm(o.float(), o.shape[-1:]) for o in outs]).mean(0)


def spread(tokens: torch.Tensor) -> torch.Tensor:
    """How much L2-normalised tokens (N, D) vary: sqrt(D) x the mean per-channel std. 0 when
    every token points the same way, about 1 for random directions."""
    return F.normalize(tokens, dim=-1).std(0).mean() * tokens.shape[-1] ** 0.5


def _add_point_head(model: JEPA) -> None:
    """A linear head that turns each predicted target token into its patch's K points."""
    model.point_head = nn.Linear(model.cfg.dim, model.cfg.group_size * 3)


def _reconstruct_objective(model: JEPA, batch: Batch) -> tuple[torch.Tensor, dict]:
    """Predict the target patches' points (Chamfer-L2): the Point-MAE-style baseline of the
    paper's ablation, with the same masking and predictor and no teacher."""
    masks, context, pred = predict_targets(model, batch)
    B, M, T = masks.targets.shape
    K = model.cfg.group_size
    points_pred = model.point_head(pred).view(M * B, T, K, 3)                 # (M*B, T, K, 3)
    truth = gather(batch.patches, masks.targets).transpose(0, 1).reshape(M * B, T, K, 3)
    loss = chamfer_l2(points_pred.flatten(0, 1), truth.flatten(0, 1))
    with torch.no_grad():  # collapse monitor on the (real) context features instead
        real = context.float().flatten(0, 1) if masks.context_keep is None else context.float()[masks.context_keep]
        stats = {"feature_std": real.std(0).mean()}
    return loss, {**stats, **mask_stats(masks)}


# Cross-modal distillation (Cross4D-JEPA): a frozen 2D teacher's features, looked up for every
# point by `jepa3d teacher-features` (jepa3d_data's correspondence), come with the points as
# their own tensor: teacher (..., 1 + C) = visible (0/1), the teacher's feature (C).

def tokens_to_points(tokens: torch.Tensor, centres: torch.Tensor, points: torch.Tensor,
                     num_groups: int) -> torch.Tensor:
    """The encoder's tokens carried back to the points by inverse-distance interpolation from
    the 3 nearest patch centres (PointNet++'s feature propagation, as the segmentation head
    does). Clouds: tokens (B, G, D), centres (B, G, 3), points (B, P, 3) -> (B, P, D). Clips:
    tokens (B, T'*G, D), centres (B, T'*G, 4), points (B, T, P, 3): each frame takes the
    tokens of its own frame (T' = T), or with tube tokens of its nearest anchor frame -> (B, T, P, D)."""
    if points.ndim == 3:
        return interpolate(points, centres[..., :3], tokens)
    B, T, P, _ = points.shape
    Ta = tokens.shape[1] // num_groups                                       # frames that carry tokens
    stride = -(-T // Ta) if Ta < T else 1                                     # tube tokens' anchor spacing
    anchor = torch.div(torch.arange(T, device=points.device) + stride // 2, stride,
                       rounding_mode="floor").clamp(max=Ta - 1)               # (T,) each frame's token frame
    tok = tokens.view(B, Ta, num_groups, -1)[:, anchor].flatten(0, 1)        # (B*T, G, D)
    cen = centres.view(B, Ta, num_groups, -1)[:, anchor, :, :3].flatten(0, 1)  # (B*T, G, 3)
    return interpolate(points.flatten(0, 1), cen, tok).view(B, T, P, -1)


def _add_distill_head(model: JEPA) -> None:
    """The projection from the encoder's width to the teacher's: MLP(D -> D -> C)."""
    D = model.cfg.dim
    model.distill_head = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, model.cfg.teacher_dim))


def cosine_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - cos(pred, target) averaged over rows (N, C); 0 (with a gradient path) for no rows."""
    if len(pred) == 0:
        return pred.sum() * 0.0
    return 1.0 - F.cosine_similarity(pred.float(), target.float(), dim=-1).mean()


def _distill_objective(model: JEPA, batch: Batch) -> tuple[torch.Tensor, dict]:
    """Match the 2D teacher's features (cosine, on L2-normalised features: ScaLR's loss). The
    student encoder sees the whole cloud or clip. dense: every visible point's prediction, from
    the tokens carried back to it, against the feature at its pixel; global: the pooled tokens
    against the mean of the visible points' normalised features (one embedding per cloud or
    clip). batch.teacher (B, [T,] P, 1 + C)."""
    cfg, teacher = model.cfg, batch.teacher
    if teacher is None or teacher.shape[-1] != cfg.teacher_dim + 1:
        have = "no teacher features" if teacher is None else f"{teacher.shape[-1] - 1}-wide teacher features"
        raise ValueError(f"--objective {cfg.objective} needs {cfg.teacher_dim}-wide teacher features with "
                         f"every point, got {have}: pretrain on a `jepa3d teacher-features` cache")
    tokens = model.encoder(batch.patches, batch.centres)                      # (B, N, D)
    points, n = batch.points, cfg.distill_points
    if cfg.distill == "dense" and 0 < n < points.shape[-2]:                   # a random n of each cloud's points
        idx = fit_index(points, n, batch.generator, "random")
        points, teacher = take_points(points, idx), take_points(teacher, idx)
    visible, target = teacher[..., 0] > 0.5, F.normalize(teacher[..., 1:].float(), dim=-1)
    if cfg.distill == "global":
        w = visible.flatten(1).float()                                        # (B, [T*]P)
        target = (target.flatten(1, -2) * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1)  # (B, C)
        seen = w.sum(1) > 0
        pred, target = model.distill_head(tokens.mean(1))[seen], target[seen]  # (B', C)
    else:
        per_point = tokens_to_points(tokens, batch.centres, points, cfg.num_groups)  # (B, [T,] P, D)
        pred, target = model.distill_head(per_point[visible]), target[visible]  # (V, C)
    loss = cosine_distance(pred, target)
    with torch.no_grad():
        stats = {"distill_loss": loss.detach(),
                 # predicting the batch's mean teacher feature everywhere: a student that learns stays below
                 "distill_mean_loss": cosine_distance(target.mean(0).expand_as(target), target)
                 if len(target) else loss.detach(),
                 "visible_share": visible.float().mean(),
                 "feature_std": tokens.float().flatten(0, 1).std(0).mean()}
    return loss, stats


def _jepa_distill_objective(model: JEPA, batch: Batch) -> tuple[torch.Tensor, dict]:
    """The latent prediction of 3D/4D-JEPA plus the distillation term (weight cfg.distill_weight)."""
    loss, stats = _jepa_objective(model, batch)
    term, more = _distill_objective(model, batch)
    return loss + model.cfg.distill_weight * term, {**stats, **more}


@dataclass(frozen=True)
class Objective:
    """build(model) adds the objective's modules (at stable checkpoint names); loss(model,
    batch) -> (loss, detached stats); `monitor` names the stat that shows collapse; `masked`:
    the objective draws masks, so the model has a predictor."""
    build: Callable[[JEPA], None]
    loss: Callable[[JEPA, Batch], tuple[torch.Tensor, dict]]
    monitor: str
    masked: bool = True


OBJECTIVES: dict[str, Objective] = {
    "jepa": Objective(_add_teacher, _jepa_objective, "target_std"),
    "reconstruct": Objective(_add_point_head, _reconstruct_objective, "feature_std"),
    "distill": Objective(_add_distill_head, _distill_objective, "feature_std", masked=False),
    "jepa+distill": Objective(lambda m: [_add_teacher(m), _add_distill_head(m)], _jepa_distill_objective, "target_std"),
}


# ----------------------------------------------------------------------------- JEPA
class JEPA(nn.Module):
    """Context encoder + predictor + the objective's parts (the EMA target encoder for 'jepa',
    a point head for 'reconstruct', a distillation head for 'distill').
    forward(points, generator, teacher=None) -> (loss, stats)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.predictor = Predictor(cfg) if OBJECTIVES[cfg.objective].masked else None
        self.target_encoder: Encoder | None = None  # set by the objectives that have a teacher
        OBJECTIVES[cfg.objective].build(self)
        cfg.check_masking()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.target_encoder is not None:
            self.target_encoder.eval()  # the teacher never drops paths
        return self

    def forward(self, points: torch.Tensor, generator: torch.Generator,
                teacher: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """points (B, P=num_points, 3), or clips (B, T, P, 3); teacher (B, [T,] P, 1 + C), the
        distill objectives' targets -> scalar loss and detached monitoring stats."""
        patches, centres = tokenize(points, self.cfg, generator)             # (B, N, K, 3), (B, N, C)
        return OBJECTIVES[self.cfg.objective].loss(self, Batch(points, patches, centres, generator, teacher))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, in place (foreach kernels)."""
    t = list(teacher.parameters())
    s = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1.0 - momentum)


# ----------------------------------------------------------------------------- schedules
def lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.min_lr; a pure function of the step."""
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def momentum_at(step: int, total: int, cfg: TrainConfig) -> float:
    """EMA momentum, cosine from ema_start to ema_end; a pure function of the step, so a
    resumed run needs no replay."""
    t = min(1.0, step / max(1, total))
    return cfg.ema_end - (cfg.ema_end - cfg.ema_start) * 0.5 * (1 + math.cos(math.pi * t))


def _step_seed(seed: int, step: int) -> int:
    """Every random draw of a step (masks, FPS start, augmentation, drop path) comes from
    this seed, so a step is reproducible without saving RNG states."""
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1)


# ----------------------------------------------------------------------------- training
def make_optimizer(model: nn.Module, cfg: TrainConfig | FinetuneConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (torch's default betas, as Point-MAE and I-JEPA);
    no weight decay on biases, norms and tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "token" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    on_cpu = all(p.device.type == "cpu" for p in decay + no_decay)  # fused: one kernel, not ~10 ops a parameter
    fused = on_cpu and tuple(map(int, torch.__version__.split(".")[:2])) >= (2, 4)  # 3x on a CPU (torch >= 2.4)
    return torch.optim.AdamW(groups, lr=cfg.lr, **({"fused": True} if fused else {}))


def _optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                    grad_clip: float) -> torch.Tensor:
    """Backward (scaled for fp16), clip the gradient norm (0 = no clip), step. -> the norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"),
                                               foreach=True if params[0].device.type == "cpu" else None)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return grad_norm


def train_step(model: JEPA, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
               points: torch.Tensor, generator: torch.Generator, *, lr: float, momentum: float,
               grad_clip: float, amp_dtype: torch.dtype | None, ddp: nn.Module | None = None,
               teacher: torch.Tensor | None = None) -> dict:
    """One optimisation step on points (B, num_points, 3) (and the distill objectives' teacher
    targets (B, [T,] P, 1 + C)): forward, backward, clip, AdamW, EMA update. `ddp`, the model
    wrapped in DistributedDataParallel, averages the gradients over ranks during backward; every
    rank then takes the same step and the same EMA update.
    Returns detached tensors (no host sync)."""
    _set_lr(optimizer, lr)
    with autocast(points.device, amp_dtype):
        loss, stats = (ddp or model)(points, generator, teacher)
    grad_norm = _optimizer_step(loss, optimizer, scaler, grad_clip)
    if model.target_encoder is not None:
        ema_update(model.target_encoder, model.encoder, momentum)
    return {"loss": loss.detach(), "grad_norm": grad_norm.detach(), **stats}


# ----------------------------------------------------------------------------- checkpoints
class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


def save_checkpoint(path: str | Path, model: JEPA, optimizer: torch.optim.Optimizer | None = None,
                    scaler: torch.amp.GradScaler | None = None, train_cfg: TrainConfig | None = None,
                    **meta) -> None:
    """Safetensors checkpoint with stable prefixes (encoder., target_encoder., predictor.,
    optimizer.<i>.), the configs as JSON metadata and a format version. Written to a temp
    file, fsynced, then renamed: a kill at any moment leaves the old or the new file whole."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if optimizer is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"optimizer.{i}.{key}"] = value.detach().contiguous().cpu().clone()
    metadata = {"format": "jepa3d", "format_version": str(FORMAT_VERSION), "jepa3d_version": __version__,
                "model_config": json.dumps(dataclasses.asdict(model.cfg))}
    if train_cfg is not None:
        metadata["train_config"] = json.dumps(dataclasses.asdict(train_cfg))
    if scaler is not None:
        metadata["grad_scaler"] = json.dumps(scaler.state_dict())
    metadata.update({k: json.dumps(v) for k, v in meta.items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except Exception as err:  # safetensors reports a full disk as its own error type: say it as an OS error
            kept = f"the previous checkpoint {path} is intact" if path.exists() else "nothing was saved"
            raise OSError(f"could not write {tmp} ({' '.join(str(err).split())}); {kept}") from None
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a kill signal: the old checkpoint stays, the half-written one goes
        tmp.unlink(missing_ok=True)
        raise


def read_header(path: str | Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """-> ({tensor name: shape}, metadata) from the file's header alone: no tensor is read, so
    a hostile or broken file is judged before anything it asks for is allocated. Checks that it
    is a jepa3d checkpoint of a format this version reads, with integer step and version.
    Raises CheckpointError naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file (its checkpoint.safetensors?)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as err:  # safetensors raises several types for truncated/corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({err})") from None
    if metadata.get("format") != "jepa3d":
        raise CheckpointError(f"{path}: not a jepa3d checkpoint (no 'format: jepa3d' in its metadata)")
    for key in ("format_version", "step", "seed"):
        try:
            value = json.loads(metadata.get(key, "0"))
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError
        except ValueError:
            raise CheckpointError(f"{path}: bad {key} {metadata[key]!r} in its metadata (want an integer >= 0)") \
                from None
    if int(metadata.get("format_version", 1)) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {metadata['format_version']} is newer than this "
                              f"jepa3d reads ({FORMAT_VERSION}); upgrade jepa3d")
    return shapes, metadata


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint whose header read_header accepted."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({err})") from None


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (tensors, metadata), the header checked first. Raises CheckpointError naming the file."""
    _, metadata = read_header(path)
    return read_tensors(path), metadata


def check_fit(want: dict[str, tuple[int, ...]], have: dict[str, tuple[int, ...]], prefix: str,
              path: str | Path) -> None:
    """The tensors a model needs (name -> shape) against those under `prefix` in a checkpoint;
    fail naming what is missing, unexpected or of another shape."""
    have = {k[len(prefix):]: tuple(v) for k, v in have.items() if k.startswith(prefix)}
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        raise CheckpointError(f"{path}: checkpoint does not fit the model: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}")
    wrong = [k for k in want if tuple(want[k]) != have[k]]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{path}: checkpoint does not fit its own configuration: {prefix}{k} has shape "
                              f"{list(have[k])}, the model needs {list(want[k])} ({len(wrong)} such tensor(s))")


def _build_checked(build: Callable[[], nn.Module], shapes: dict[str, tuple[int, ...]], prefix: str,
                   path: str | Path) -> nn.Module:
    """build() once on the meta device (no memory) to check its tensor shapes against the
    checkpoint header's, then for real: a config that does not match its file never allocates."""
    with torch.device("meta"):
        skeleton = build()
    check_fit({k: tuple(v.shape) for k, v in skeleton.state_dict().items()}, shapes, prefix, path)
    return build()


def load_state(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path: str | Path) -> None:
    """Strictly load the tensors under `prefix` into module; fail naming what is missing, of
    another shape or not finite (a diverged run's weights are refused, not evaluated)."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    check_fit({k: tuple(v.shape) for k, v in module.state_dict().items()},
              {k: tuple(v.shape) for k, v in state.items()}, "", path)
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(f"{path}: {prefix}{bad} holds NaN or infinite values (a diverged run); use an "
                              "earlier checkpoint")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: {str(err).splitlines()[-1].strip()}") from None


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], path: str | Path = "") -> None:
    """Restore AdamW moments saved by save_checkpoint into a freshly built optimizer."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        state = {k.split(".", 2)[2]: v.to(p.device) for k, v in tensors.items() if k.startswith(f"optimizer.{i}.")}
        if any(k != "step" and v.shape != p.shape for k, v in state.items()):
            raise CheckpointError(f"{path}: the optimizer state of parameter {i} does not fit the model")
        if state:
            state["step"] = state["step"].cpu()  # AdamW keeps its step count on the CPU
            optimizer.state[p] = state


def checkpoint_config(cls, meta: dict[str, str], path: str | Path, **overrides):
    """The ModelConfig or TrainConfig stored in a checkpoint's metadata, with `overrides`
    replaced; anything missing or inconsistent is a CheckpointError naming the file."""
    key = {ModelConfig: "model_config", TrainConfig: "train_config"}[cls]
    try:
        text = meta[key]
        if cls is ModelConfig:  # fields an older format lacks take the values its model was built with
            legacy = _LEGACY_MODEL_FIELDS.get(int(meta.get("format_version", 1)), {})
            text = json.dumps({**legacy, **json.loads(text)})
        else:
            text = json.dumps({**_LEGACY_TRAIN_FIELDS, **json.loads(text)})
        return dataclasses.replace(config_from_json(cls, text), **overrides)
    except KeyError:
        raise CheckpointError(f"{path}: has no {key} in its metadata (not a pretraining checkpoint?)") from None
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: bad {key} in metadata ({err})") from None


def load_jepa(path: str | Path) -> tuple[JEPA, dict[str, str], dict[str, torch.Tensor]]:
    """Rebuild the JEPA model stored in a checkpoint -> (model, metadata, tensors)."""
    shapes, metadata = read_header(path)
    model = _checked_jepa(checkpoint_config(ModelConfig, metadata, path), shapes, path)
    tensors = read_tensors(path)
    _load_model(model, tensors, path)
    return model, metadata, tensors


def _checked_jepa(cfg: ModelConfig, shapes: dict[str, tuple[int, ...]], path: str | Path) -> JEPA:
    """JEPA(cfg), built only once its tensor shapes match the checkpoint header's model tensors
    (all but optimizer.*, as _load_model loads them)."""
    return _build_checked(lambda: JEPA(cfg), {k: v for k, v in shapes.items() if not k.startswith("optimizer.")},
                          "", path)


def random_encoder(cfg: ModelConfig, seed: int) -> Encoder:
    """The random-init encoder of `cfg` that seed gives: the baseline every probe compares with."""
    torch.manual_seed(seed)
    return Encoder(cfg)


def _load_model(model: JEPA, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Strictly load every model tensor of a pretraining checkpoint (all but optimizer.*)."""
    load_state(model, {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}, "", path)


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder a downstream command uses: a checkpoint's, or a random-init one of a preset
    (the baseline every table needs), and the geometry it runs at (no weight depends on it)."""
    checkpoint: str = _opt("none", "a jepa3d checkpoint, or 'none' for a random-init encoder of --preset (the "
                           "baseline)", required=True)
    which: str = _opt("target", "which encoder of a pretraining checkpoint: the EMA target (I-JEPA evaluates it) or "
                      "the context encoder", choices=("target", "context"), flag="--encoder")
    preset: str = _opt("paper", "configuration of the random-init encoder with --checkpoint none",
                       choices=lambda: tuple(PRESETS))
    num_points: int | None = _opt(None, "points per cloud  [default: the task's protocol, else the checkpoint's]",
                                  min=16, kind=int)
    num_groups: int | None = _opt(None, "patches per cloud  [default: as --num-points]", min=4, kind=int)
    group_size: int | None = _opt(None, "points per patch  [default: as --num-points]", min=2, kind=int)
    frames: int | None = _opt(None, "sequence data: frames per clip  [default: a clip model's own, else the data "
                              "options' clip length]; with --checkpoint none, > 1 makes a random clip encoder",
                              min=1, max=4096, kind=int)
    tokens: str | None = _opt(None, "with --checkpoint none and --frames > 1: the random clip encoder's tokens, "
                              "per-frame patches or point tubes  [default: the preset's] (a checkpoint keeps its own)",
                              choices=("frame", "tube"))


def load_encoder(checkpoint: str, which: str = "target", preset: str = "paper",
                 seed: int = 0, **geometry) -> tuple[Encoder, ModelConfig, str]:
    """The encoder of a checkpoint ('target' = EMA teacher, 'context' = student; a fine-tuned
    checkpoint has one encoder), or with checkpoint 'none' a random-init encoder of `preset`.
    `geometry` overrides num_points / num_groups / group_size / drop_path (no weight depends on
    them); with 'none' also frames and tokens (a random clip encoder). -> (encoder, its config, a
    description for the JSON result)."""
    geometry = {k: v for k, v in geometry.items() if v is not None}
    if checkpoint != "none" and "tokens" in geometry:  # the mini-PointNet's weights depend on them
        raise ValueError("--tokens sets a random encoder's tokens (--checkpoint none); a checkpoint's "
                         "encoder keeps the tokens it was trained with")
    if checkpoint == "none":
        cfg, _ = make_configs(preset, **geometry)
        clip = f", clips of {cfg.frames} frames, {cfg.tokens} tokens" if cfg.frames > 1 else ""
        return random_encoder(cfg, seed), cfg, f"none (random init, preset {preset}{clip}, seed {seed})"
    shapes, meta = read_header(checkpoint)
    cfg = checkpoint_config(ModelConfig, meta, checkpoint, **geometry)
    prefix = "target_encoder." if which == "target" and any(k.startswith("target_encoder.") for k in shapes) \
        else "encoder."
    encoder = _build_checked(lambda: Encoder(cfg), shapes, prefix, checkpoint)
    load_state(encoder, read_tensors(checkpoint), prefix, checkpoint)
    return encoder, cfg, f"{checkpoint} ({prefix[:-1]}, step {meta.get('step', '?')})"


# ----------------------------------------------------------------------------- the dataset contract
class DataError(ValueError):
    """A dataset problem the user can fix; the message names the file (or data) and the problem."""


def check_classes(labels: torch.Tensor, name: str, split: str = "train") -> None:
    """A classifier is fit on two classes or more: DataError naming the data otherwise."""
    present = torch.unique(labels)
    if len(present) < 2:
        raise DataError(f"{name or 'the data'}: the {split} split holds {len(labels)} samples of "
                        f"{'one class' if len(present) else 'no class'}; a probe needs two classes or more")


class PointDataset(torch.utils.data.Dataset):
    """What jepa3d reads of a dataset. Required: len() and items (points, label): points float32
    (P, 3), or clips (T, P, 3); label int64, or per-point labels (P,) for part datasets. Any torch
    dataset of such items serves (a TensorDataset will do). Everything else is optional, declared
    here once with the value a dataset without it has, and read through `optional`; jepa3d_data's
    datasets inherit this class."""
    name: str = ""                              # shown in logs and results
    classes: tuple = ()                         # class names: label i is classes[i]
    labels: torch.Tensor | None = None          # (N,) every item's class, known without reading the items
    videos_of: torch.Tensor | None = None       # clips: (N,) the video each clip is cut from (video accuracy)
    video_labels: torch.Tensor | None = None    # clips: (videos,) each video's class
    category: torch.Tensor | None = None        # part datasets: (N,) each cloud's object category
    parts_of: list | None = None                # part datasets: the part ids each category uses
    num_parts: int | None = None                # part datasets: part ids lie in 0..num_parts - 1
    point_labels: torch.Tensor | None = None    # clips with per-point labels: see clip_point_labels
    part_names: list | None = None              # names of the per-point labels
    teacher: torch.Tensor | None = None         # a teacher-features cache's targets: see teacher_targets
    skipped: tuple = ()                         # files a folder dataset left out (--skip-bad)
    files_read: int | None = None               # files a folder dataset looked at
    fingerprint: str | None = None              # a digest of the contents: a resumed run must read the same data
    validation: bool = False                    # a train split's held-out part (--validation), scored as test is

    def clip_point_labels(self, i: int) -> torch.Tensor:
        """Item i's per-point labels, (T, P), aligned with its points (datasets with point_labels)."""
        raise NotImplementedError(f"{self.name}: no per-point labels")

    def teacher_targets(self, i: int) -> torch.Tensor:
        """Item i's 2D teacher targets (T, P, 1 + C) float32: visible (0/1), the teacher's feature
        at each point's pixel (datasets with a teacher)."""
        raise NotImplementedError(f"{self.name}: no teacher targets")


def optional(dataset, name: str):
    """A declared optional attribute of any dataset: its own value, or PointDataset's default
    (an undeclared name is an AttributeError)."""
    return getattr(dataset, name, getattr(PointDataset, name))


def _scored_split(dataset) -> str:
    """What a probe scored on: the validation part of a train split, or the test split."""
    return "validation" if optional(dataset, "validation") else "test"


# ----------------------------------------------------------------------------- pretraining loop
def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's shuffled batches (drop_last); a pure function of (seed, epoch) so a resumed
    run reads the same data in the same order."""
    g = torch.Generator().manual_seed(seed * 7_777 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


class _StepItems(torch.utils.data.Dataset):
    """What pretraining reads of a dataset: (points, teacher targets or None) per item; the
    targets come from a dataset that has them (PointDataset.teacher_targets)."""

    def __init__(self, dataset):
        self.dataset, self.targets = dataset, optional(dataset, "teacher") is not None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.dataset[i][0], self.dataset.teacher_targets(i) if self.targets else None


def _stack_points(items: list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Collate (points, teacher or None) items into points (B, [T,] P, 3) and teacher (B, [T,] P,
    1 + C) or None; module level so spawned workers can pickle it."""
    teacher = None if items[0][1] is None else torch.stack([t for _, t in items])
    return torch.stack([points for points, _ in items]), teacher


def shard(batch: list[int], rank: int, world: int) -> list[int]:
    """This rank's contiguous share of a global batch (whose size divides by world)."""
    per = len(batch) // world
    return batch[rank * per:(rank + 1) * per]


def _batches(dataset, batch_size: int, seed: int, first_step: int, num_workers: int,
             rank: int = 0, world: int = 1, pin: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield this rank's batches forever, starting at global step first_step: points
    (batch_size / world, [T,] P, 3) and the teacher's targets or None. Every rank draws the same
    global order; each reads its own shard."""
    per_epoch = max(1, len(dataset) // batch_size)
    epoch, skip = divmod(first_step, per_epoch)
    while True:
        batches = [shard(b, rank, world) for b in epoch_batches(len(dataset), batch_size, seed, epoch)[skip:]]
        loader = torch.utils.data.DataLoader(_StepItems(dataset), batch_sampler=batches, num_workers=num_workers,
                                             collate_fn=_stack_points, pin_memory=pin)
        yield from loader
        epoch, skip = epoch + 1, 0


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as torchrun sets them; (0, 1, 0) in a plain process."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs) -> (rank, world, this rank's device)."""
    rank, world, local = distributed_env()
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _rank_seed(seed: int, step: int, rank: int) -> int:
    """The step's seed, different on each rank (their masks, FPS starts and drop paths differ
    like the samples do); rank 0's equals a single-process run's."""
    return (_step_seed(seed, step) + rank * 104_729) % (2**63 - 1)


def params_digest(model: nn.Module) -> torch.Tensor:
    """Three float64 numbers that differ when any parameter does: sum, sum of squares and a
    position-weighted sum of all parameters. Used to check DDP ranks stay identical."""
    digest = 0
    for i, p in enumerate(model.parameters(), 1):  # one tensor at a time: no copy of the whole model
        v = p.detach().double().flatten()
        ramp = torch.linspace(-1, 1, v.numel(), dtype=torch.float64, device=v.device) * i
        digest = digest + torch.stack([v.sum(), v.square().sum(), (v * ramp).sum()])
    return digest


@dataclass
class _Run:
    """What a pretraining run holds while it trains (built by _start_run)."""
    model: JEPA
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    device: torch.device
    step: int                         # the next global step
    ddp: nn.Module | None = None      # the model wrapped in DDP under torchrun


def _start_run(model_cfg: ModelConfig, train_cfg: TrainConfig, ckpt_path: Path, *, device: torch.device,
               seed: int, precision: str, resume: bool) -> _Run:
    """A fresh model, optimizer and scaler, or with `resume` all three (and the step) as the
    checkpoint left them."""
    torch.manual_seed(seed)
    if resume:
        shapes, meta = read_header(ckpt_path)
        if json.loads(meta.get("kind", '"pretrain"')) != "pretrain":
            raise CheckpointError(f"{ckpt_path}: a {json.loads(meta['kind'])} checkpoint, not a pretraining "
                                  "run's; --resume continues pretraining runs only")
        model = _checked_jepa(model_cfg, shapes, ckpt_path)
    else:
        model = JEPA(model_cfg)
    model = model.to(device)
    optimizer = make_optimizer(model, train_cfg)
    amp_dtype = resolve_precision(precision, device)
    scaler = grad_scaler(device, amp_dtype)
    step = 0
    if resume:
        tensors = read_tensors(ckpt_path)
        _load_model(model, tensors, ckpt_path)
        load_optimizer(optimizer, tensors, ckpt_path)
        if scaler is not None and "grad_scaler" in meta:
            try:
                scaler.load_state_dict(json.loads(meta["grad_scaler"]))
            except (ValueError, TypeError, KeyError, AttributeError):
                raise CheckpointError(f"{ckpt_path}: bad grad_scaler state in its metadata") from None
        step = json.loads(meta.get("step", "0"))
    return _Run(model, optimizer, scaler, amp_dtype, device, step)


def _wrap(run: _Run, compile: bool, world: int) -> None:
    """torch.compile the Transformers in place (state-dict keys stay; the FPS loop is not
    unrolled), and wrap the model in DDP under torchrun (it wraps, not copies: the model's
    parameters are the ones DDP synchronises)."""
    model = run.model
    if compile:
        for module in (model.encoder, model.target_encoder, model.predictor):
            if module is not None:
                module.compile(dynamic=None)
    if world > 1:
        device = run.device
        run.ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                      else None)


@dataclass(frozen=True)
class RunConfig:
    """How a pretraining run goes (not what it trains): where it stops, how often it saves,
    logs and probes, whether it resumes. `pretrain`'s keyword defaults and its options."""
    resume: bool = _opt(False, "continue the run in --out from its last checkpoint, exactly")
    new_data: bool = _opt(False, "with --resume: continue on other data than the run started with (on purpose)")
    max_steps: int | None = _opt(None, "stop after this many steps in total (the schedule still spans --epochs; "
                                 "--resume goes on)", min=1, kind=int)
    save_every: int = _opt(0, "checkpoint every N steps (0 = every epoch; --resume keeps the run's)", min=0)
    num_workers: int = _opt(0, "data-loading worker processes", min=0, flag="--workers")
    compile: bool = _opt(False, "torch.compile the model (GPU; slow to start)")
    log_every: int = _opt(10, "steps between progress lines", min=1)
    eval_every: int = _opt(0, "fit the linear probe on frozen features every N steps and at the end (probe.jsonl, "
                           "curves.png): the learning curve; 0 = off", min=0)
    __post_init__ = _check_fields  # types and bounds, also for configs read from files


def pretrain(dataset, out_dir: str | Path, model_cfg: ModelConfig, train_cfg: TrainConfig, *,
             device: torch.device, seed: int = 0, precision: str = "auto", resume: bool = RunConfig.resume,
             max_steps: int | None = RunConfig.max_steps, save_every: int = RunConfig.save_every,
             num_workers: int = RunConfig.num_workers,
             augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
             compile: bool = RunConfig.compile, log_every: int = RunConfig.log_every, eval_sets: tuple | None = None,
             eval_every: int = RunConfig.eval_every, data_options: dict | None = None,
             new_data: bool = RunConfig.new_data) -> dict:
    """Pretrain 3D-JEPA on `dataset` (items (points (P, 3), label)) into out_dir:
    checkpoint.safetensors (atomic, resumable), metrics.jsonl (one line per step) and
    run.json. `max_steps` stops early (resume continues); `save_every` (steps, 0 = once per
    epoch). With eval_sets (train, test) and eval_every N, the linear probe (ProbeConfig's) is
    fit on frozen features every N steps and at the end, into probe.jsonl: the learning curve.
    Returns a summary dict.

    Under torchrun (WORLD_SIZE > 1) each rank trains on its shard of every global batch of
    train_cfg.batch_size clouds inside DistributedDataParallel; rank 0 alone writes the run
    folder. The global batch, the schedule and the checkpoint are those of one process, so a
    run can resume on a different number of GPUs.

    One process owns out_dir at a time (a lock the kernel drops when the process dies). A
    resumed run must read the data it started with (run.json's dataset name and size; the
    command line also keeps its `data_options` there) unless `new_data`; run.json is written
    when a run starts and left alone by a resume."""
    created = distributed_env()[1] > 1 and not dist.is_initialized()
    rank, world, device = _init_distributed(device)
    out = Path(out_dir)
    ckpt_path, metrics_path = out / "checkpoint.safetensors", out / "metrics.jsonl"
    batch_size = min(train_cfg.batch_size, len(dataset))
    if batch_size % world:
        raise ValueError(f"--batch-size {batch_size} must divide by the {world} torchrun processes "
                         "(it is the global batch; each rank takes an equal share)")
    per_epoch = max(1, len(dataset) // batch_size)
    total = train_cfg.epochs * per_epoch
    identity = {"dataset": optional(dataset, "name") or type(dataset).__name__, "clouds": len(dataset),
                "fingerprint": optional(dataset, "fingerprint")}
    check_run_folder(out, resume)
    lock = lock_folder(out) if rank == 0 else None
    try:
        if resume and not new_data:
            _check_same_data(out, identity)
        run = _start_run(model_cfg, train_cfg, ckpt_path, device=device, seed=seed, precision=precision, resume=resume)
        end = total if max_steps is None else min(total, max_steps)
        if rank == 0:
            _prepare_folder(out, run.step if resume else None, keep_info=resume and not new_data, info={
                "model_config": dataclasses.asdict(model_cfg), "train_config": dataclasses.asdict(train_cfg),
                "seed": seed, "device": str(device), "precision": str(run.amp_dtype or "fp32"), **identity,
                "data_options": data_options, "save_every": save_every,
                "batch_size": batch_size, "world_size": world, "steps_per_epoch": per_epoch, "total_steps": total,
                "jepa3d_version": __version__, "torch_version": torch.__version__})
            _announce(run, len(dataset), per_epoch, end, total, world)
        _wrap(run, compile, world)
        batches = _batches(dataset, batch_size, seed, run.step, num_workers, rank, world, pin=device.type == "cuda")
        probe = None  # the learning curve's point at a step: probe(step)
        if rank == 0 and eval_sets is not None and eval_every:
            probe = functools.partial(_probe_step, run, eval_sets, path=out / "probe.jsonl", seed=seed)
            if run.step == 0:
                probe(0)  # the curve starts at the random-init encoder
        last = _pretrain_steps(run, batches, train_cfg, end=end, total=total, per_epoch=per_epoch, seed=seed,
                               batch_size=batch_size, rank=rank, world=world, save_every=save_every or per_epoch,
                               augment=augment, log_every=log_every, ckpt_path=ckpt_path, metrics_path=metrics_path,
                               probe=probe, eval_every=eval_every)
        monitor = OBJECTIVES[model_cfg.objective].monitor
        result = {"checkpoint": str(ckpt_path), "metrics": str(metrics_path), "step": run.step, "total_steps": total,
                  "finished": run.step >= total, "final_loss": last.get("loss"),
                  **({f"final_{monitor}": last[monitor]} if monitor in last else {})}
        if world > 1:
            result.update(world_size=world, ranks_in_sync=_ranks_in_sync(run.model, device, world))
            if created:
                dist.destroy_process_group()
        return result
    finally:
        if lock is not None:
            lock.close()


def _announce(run: _Run, clouds: int, per_epoch: int, end: int, total: int, world: int) -> None:
    """The run's first line on stderr: data, schedule, model size, device."""
    nparams = sum(p.numel() for p in run.model.encoder.parameters())
    unit = f"clips of {run.model.cfg.frames} frames" if run.model.cfg.frames > 1 else "clouds"
    print(f"jepa3d pretrain: {clouds} {unit}, {per_epoch} steps/epoch, steps {run.step}->{end} of {total}, encoder "
          f"{nparams / 1e6:.2f}M params, {run.device}{f' x {world} ranks' if world > 1 else ''}, "
          f"{run.amp_dtype or 'fp32'}", file=sys.stderr)


class RunFolderError(RuntimeError):
    """A run folder that is in use, or holds another run than the one asked for."""


def lock_folder(out: Path, who: str = "jepa3d run", option: str = "--out"):
    """Own a folder: an exclusive, non-blocking lock on out/.lock, held by the returned open file
    (close it to release). The kernel drops it when the process dies, so a killed run never
    leaves the folder stuck. Where fcntl is missing (Windows) nothing is locked. RunFolderError
    when another process holds it (`who` names that process's kind, `option` the way out)."""
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / ".lock", "a")
    try:
        import fcntl
    except ImportError:
        return fh
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise RunFolderError(f"{out}: in use by another {who} (it holds {out / '.lock'}); wait for it to end or "
                             f"choose another {option}") from None
    return fh


def check_run_folder(out_dir: str | Path, resume: bool) -> None:
    """A new run never overwrites a run folder's checkpoint: RunFolderError unless `resume`."""
    ckpt = Path(out_dir) / "checkpoint.safetensors"
    if not resume and ckpt.exists():
        raise RunFolderError(f"{ckpt} already exists; pass --resume to continue that run or --out NEW_FOLDER to "
                             "start another (nothing was overwritten)")


def resume_settings(out_dir: str | Path, overrides: dict | None = None) -> tuple[ModelConfig, TrainConfig, int, dict]:
    """What `pretrain --resume` continues with: its checkpoint's configs and seed, and its
    run.json (the data options and --save-every it started with) -> (model config, train config,
    seed, run info). A resumed run takes no configuration: `overrides` given are a ValueError."""
    ckpt = Path(out_dir) / "checkpoint.safetensors"
    if overrides:
        raise ValueError(f"--resume takes the configuration from {ckpt}; drop "
                         + ", ".join("--" + g.replace("_", "-") for g in sorted(overrides)))
    _, meta = read_header(ckpt)
    return (checkpoint_config(ModelConfig, meta, ckpt), checkpoint_config(TrainConfig, meta, ckpt),
            json.loads(meta.get("seed", "0")), _run_info(Path(out_dir)))


def _run_info(out: Path) -> dict:
    """A run folder's run.json, or {} when it has none (or an unreadable one)."""
    try:
        info = json.loads((out / "run.json").read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _check_same_data(out: Path, identity: dict) -> None:
    """A resumed run reads the data it started with (dataset name and size, as in run.json;
    a folder without one, e.g. a checkpoint copied on its own, has nothing to compare with)."""
    before = _run_info(out)
    was = {k: before[k] for k in identity if k in before}  # a run saved before fingerprints compares the rest
    if before and was != {k: identity[k] for k in was}:
        other = " with other contents (fingerprint)" if was.get("dataset") == identity["dataset"] else ""
        raise RunFolderError(f"{out}: --resume would train on {identity['dataset']} ({identity['clouds']} clouds"
                             f"{other}) but the run started on {was.get('dataset')} ({was.get('clouds')} clouds); "
                             "pass the run's --data, or --new-data to change the data on purpose")


def _prepare_folder(out: Path, resumed_step: int | None, info: dict, keep_info: bool) -> None:
    """The run folder before the first step. A new run: the logs of an attempt that died before
    its first checkpoint are emptied and run.json is written. A resumed run: the logs are
    trimmed to the resumed step (what was written after the last checkpoint goes) and run.json
    is kept as the run's start wrote it (`keep_info`; --new-data rewrites it)."""
    out.mkdir(parents=True, exist_ok=True)
    step = resumed_step or 0
    _truncate_metrics(out / "metrics.jsonl", step)
    _truncate_metrics(out / "probe.jsonl", step + (resumed_step is not None))  # a probe line follows its step
    if not keep_info or not (out / "run.json").exists():
        tmp = out / "run.json.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, out / "run.json")


def _ranks_in_sync(model: nn.Module, device: torch.device, world: int) -> bool:
    """Whether every rank holds bit-identical parameters (their digests); returns once rank
    0's checkpoint is on disk."""
    digests = [torch.empty(3, dtype=torch.float64, device=device) for _ in range(world)]
    dist.all_gather(digests, params_digest(model))
    dist.barrier()
    return all(torch.equal(d, digests[0]) for d in digests)


def _pretrain_steps(run: _Run, batches: Iterator[torch.Tensor], cfg: TrainConfig, *, end: int, total: int,
                    per_epoch: int, seed: int, batch_size: int, rank: int, world: int, save_every: int,
                    augment: Callable | None,
                    log_every: int, ckpt_path: Path, metrics_path: Path, probe: Callable | None = None,
                    eval_every: int = 0) -> dict:
    """The training loop from run.step to `end`: metrics buffered and flushed every log_every
    steps (one host sync), a checkpoint every save_every steps and at the end (rank 0), the
    probe every eval_every steps and at the end. -> the last flushed metrics line."""
    model, lead = run.model, rank == 0
    warmup = round(cfg.warmup_epochs * per_epoch)
    generator = torch.Generator(device=run.device)
    monitor = OBJECTIVES[model.cfg.objective].monitor
    progress = Progress(end, run.step)
    pending: list[dict] = []
    last: dict = {}
    t_flush, warned, saved = time.time(), False, run.step
    model.train()
    with open(metrics_path, "a") if lead else open(os.devnull, "w") as metrics:
        while run.step < end:
            step = run.step
            # the step's draws (drop path, masks, FPS starts, augmentation) come from its seed
            points, teacher = (x if x is None else x.to(run.device, non_blocking=True) for x in next(batches))
            s = _rank_seed(seed, step, rank)
            torch.manual_seed(s)
            generator.manual_seed(s)
            points, teacher = _step_inputs(points, teacher, model.cfg, cfg, generator, augment)  # (B/world, [T,] n, 3)
            # forward, backward, update, EMA
            lr, momentum = lr_at(step, total, warmup, cfg), momentum_at(step, total, cfg)
            stats = train_step(model, run.optimizer, run.scaler, points, generator, lr=lr, momentum=momentum,
                               grad_clip=cfg.grad_clip, amp_dtype=run.amp_dtype, ddp=run.ddp, teacher=teacher)
            pending.append({"step": step, "epoch": step // per_epoch, "lr": lr, "momentum": momentum, **stats})
            run.step = step = step + 1
            # log and checkpoint
            if len(pending) >= log_every or step == end or step % save_every == 0:
                records = _flush_metrics(pending, metrics, batch_size, time.time() - t_flush, world)
                t_flush, pending, last = time.time(), [], records[-1]
                _check_finite(records, run.scaler is not None, ckpt_path, saved)
                if lead:
                    progress.update(step, _progress_text(last, monitor))
                    warned = _warn_collapse(last, monitor, cfg.collapse_below, warned)
            if step % save_every == 0 or step == end:
                if lead:
                    save_checkpoint(ckpt_path, model, run.optimizer, run.scaler, cfg, step=step, seed=seed,
                                    epoch=step // per_epoch, kind="pretrain")
                saved = step
            if probe is not None and (step % eval_every == 0 or step == end):
                probe(step)
    if lead:
        progress.close()
    return last


def _progress_text(last: dict, monitor: str) -> str:
    """The progress line's figures: the loss beside the trivial solution's (the batch mean), the
    distillation term's when there is one, and the collapse monitor."""
    def beside(value, trivial) -> str:
        return f"{value:.4f}" + (f" (batch mean {trivial:.4f})" if trivial is not None else "")

    if last.get("mean_loss") is None and last.get("distill_mean_loss") is not None:  # distill alone
        text = f"loss {beside(last['loss'], last['distill_mean_loss'])}"
    else:
        text = f"loss {beside(last['loss'], last.get('mean_loss'))}"
        if last.get("distill_loss") is not None:
            text += f" distill {beside(last['distill_loss'], last.get('distill_mean_loss'))}"
    shown = float("nan") if last[monitor] is None else last[monitor]
    return f"{text} {monitor} {shown:.3f}"


class DivergedError(RuntimeError):
    """Pretraining produced a non-finite loss or gradient; the run stopped before saving it."""


def _step_inputs(points: torch.Tensor, teacher: torch.Tensor | None, cfg: ModelConfig, train_cfg: TrainConfig,
                 generator: torch.Generator, augment: Callable | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the model sees at a step, drawn from the step's generator:
    1. clouds (B, P, 3) and a clip model's clips (B, T, P, 3) as they are; a single-cloud model
       (cfg.frames == 1) given clips takes one random frame of each (the per-frame baseline);
    2. num_points per cloud or frame (fit_index, by --subsample);
    3. augmented: a clip moves as a whole (one draw per clip, for all its frames).
    The teacher's targets (B, [T,] P, 1 + C) follow their points through 1 and 2."""
    if points.ndim == 4 and cfg.frames == 1:
        pick = torch.randint(points.shape[1], (points.shape[0],), generator=generator, device=points.device)
        rows = torch.arange(points.shape[0], device=points.device)
        points, teacher = points[rows, pick], (None if teacher is None else teacher[rows, pick])
    idx = fit_index(points, cfg.num_points, generator, train_cfg.subsample)
    points, teacher = take_points(points, idx), take_points(teacher, idx)
    if augment is not None:
        points = augment(points.flatten(1, -2), generator).view_as(points)
    return points, teacher


def _check_finite(records: list[dict], scaled: bool, ckpt_path: Path, saved: int) -> None:
    """Stop the run at the first non-finite loss (or gradient norm: under fp16's GradScaler an
    infinite one is a skipped step, not a divergence), before anything is saved from it."""
    bad = next((r for r in records if r["loss"] is None or not scaled and r.get("grad_norm", 0.0) is None), None)
    if bad is not None:
        kept = f"{ckpt_path} (step {saved}) is kept unchanged" if saved else "no checkpoint was written"
        raise DivergedError(f"step {bad['step'] + 1}: the loss or its gradient is not finite: training "
                            f"diverged and stopped; {kept}. Start again with a lower --lr or a longer "
                            "--warmup-epochs")


def _probe_step(run: _Run, eval_sets: tuple, step: int, path: Path, seed: int) -> dict:
    """The learning curve's point at `step`: the peers' linear SVC (fit_svc) on frozen
    features of the teacher (of the encoder when there is none), appended to `path`."""
    model, t = run.model, time.time()
    encoder = model.target_encoder if model.target_encoder is not None else model.encoder
    train, test = (extract_features(encoder, model.cfg, ds, run.device, seed=seed, amp_dtype=run.amp_dtype)
                   for ds in eval_sets)
    model.train()  # extract_features put the encoder in eval mode
    score = fit_and_score("svc", train, test, len(eval_sets[0].classes))
    split = _scored_split(eval_sets[1])
    record = {"step": step, "probe_accuracy": score["accuracy"], "probe_train_accuracy": score["train_accuracy"],
              "probe_split": split,
              "probe": _PROBE_PROTOCOLS["svc"].format(C=ProbeConfig.C) + f" on {optional(eval_sets[0], 'name')} -> "
                       f"{optional(eval_sets[1], 'name')}", "seconds": round(time.time() - t, 1)}
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(f"probe at step {step}: {split} accuracy {record['probe_accuracy']:.2f} ({record['seconds']} s)",
          file=sys.stderr)
    return record


def _warn_collapse(last: dict, monitor: str, below: float, warned: bool) -> bool:
    """One warning on stderr when the monitor falls below `below` (again after it recovers)."""
    collapsing = last[monitor] is not None and last[monitor] < below
    if collapsing and not warned:
        print(f"jepa3d: warning: step {last['step'] + 1}: {monitor} {last[monitor]:.3f} < {below}: the encoder's "
              "features are collapsing (every patch alike); a lower --lr or a higher --ema-start usually helps",
              file=sys.stderr)
    return collapsing


def _flush_metrics(pending: list[dict], fh, batch_size: int, seconds: float, world: int = 1) -> list[dict]:
    """Write buffered step metrics as JSON lines, averaged over DDP ranks (non-finite values as
    null); one host sync (and one all-reduce) for the whole buffer. -> the lines written."""
    keys = [k for k, v in pending[0].items() if isinstance(v, torch.Tensor)]
    dev = pending[0]["loss"].device
    stacked = torch.stack([torch.stack([p[k].float().to(dev) for k in keys]) for p in pending])  # (steps, keys)
    if world > 1:
        dist.all_reduce(stacked)
        stacked /= world
    values = stacked.cpu().tolist()
    rate = batch_size * len(pending) / max(seconds, 1e-9)
    records = []
    for p, row in zip(pending, values):
        finite = {k: v if math.isfinite(v) else None for k, v in zip(keys, row)}  # NaN is not JSON: null
        records.append({**{k: v for k, v in p.items() if k not in keys}, **finite, "clouds_per_s": rate})
        fh.write(json.dumps(records[-1]) + "\n")
    fh.flush()
    return records


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the resumed step (written after the last checkpoint), atomically."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if _line_step(ln) < step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(ln + "\n" for ln in keep))
    os.replace(tmp, path)


def _line_step(line: str) -> float:
    """The step of a metrics line; a torn line (a kill mid-write) or junk sorts after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf



# ----------------------------------------------------------------------------- downstream
# One encoder serves every task: features for the linear probe, few-shot and embed come from
# one extractor; fine-tuning puts a small head on top, and the head owns its loss, its
# prediction and its metric, so the loops never branch on the task. Each protocol is a
# library function (linear_probe, few_shot, embed, finetune) returning the dict the CLI prints.

def pool(tokens: torch.Tensor) -> torch.Tensor:
    """Cloud feature of the JEPA lineage: concat(max, mean) over patches. (B, G, D) -> (B, 2D)."""
    return torch.cat([tokens.amax(dim=1), tokens.mean(dim=1)], dim=-1)


def encode(encoder: Encoder, cfg: ModelConfig, points: torch.Tensor,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens of clouds (B, P, 3) or clips (B, T, P, 3) -> tokens (B, N, D), centres (B, N, C).
    A clip model sees a clip's T*G tokens together; a single-cloud model encodes each frame on
    its own and its T*G tokens are laid side by side (the per-frame baseline)."""
    patches, centres = tokenize(points, cfg, generator)
    B = points.shape[0]
    tokens = encoder(patches, centres)
    return tokens.view(B, -1, tokens.shape[-1]), centres.view(B, -1, centres.shape[-1])


@torch.no_grad()
def extract_features(encoder: Encoder, cfg: ModelConfig, dataset, device: torch.device,
                     batch_size: int = ProbeConfig.batch_size, seed: int = 0, per_patch: bool = False,
                     amp_dtype: torch.dtype | None = None) -> dict:
    """Frozen features of every cloud (or clip), in dataset order: {'features' (N, 2D), 'labels'
    (N,)} and with per_patch {'tokens' (N, G, D), 'centres' (N, G, C)} (clips: T*G tokens). FPS starts are drawn from
    `seed` per batch, so the same call (same batch size) gives the same features."""
    encoder = encoder.to(device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    g = torch.Generator(device=device)
    out: dict[str, list] = {"features": [], "labels": [], "tokens": [], "centres": []}
    for i, (points, labels) in enumerate(loader):
        g.manual_seed(_step_seed(seed, i))
        points = fit_points(points.to(device), cfg.num_points, g)          # (B, [T,] num_points, 3)
        with autocast(device, amp_dtype):
            tokens, centres = encode(encoder, cfg, points, g)               # (B, N, D), (B, N, C)
            tokens = tokens.float()
        out["features"].append(pool(tokens).cpu())
        out["labels"].append(labels)
        if per_patch:
            out["tokens"].append(tokens.cpu())
            out["centres"].append(centres.cpu())
    if optional(dataset, "labels") is not None:  # per-cloud labels; a part dataset's items carry parts instead
        out["labels"] = [torch.as_tensor(dataset.labels)]
    if optional(dataset, "videos_of") is not None:  # clips: which video each came from, for the video vote
        out["videos"], out["video_labels"] = [dataset.videos_of], [dataset.video_labels]
    return {k: torch.cat(v) for k, v in out.items() if v}


VALIDATION_FRACTION = 0.1  # of each class of a train split, held out for every choice
VALIDATION_SEED = 0


def validation_indices(labels: torch.Tensor, groups: torch.Tensor | None = None,
                       fraction: float = VALIDATION_FRACTION, seed: int = VALIDATION_SEED) -> torch.Tensor:
    """The validation part of a train split: per class a seeded ~`fraction` of its units (its
    items, or with `groups` the videos its clips are cut from, so no video sits on both sides),
    at least one unit of every class that has two. labels (N,), groups (N,) -> sorted indices."""
    labels = torch.as_tensor(labels).long()
    units = torch.arange(len(labels)) if groups is None else torch.as_tensor(groups).long()
    g = torch.Generator().manual_seed(seed)
    chosen = [torch.empty(0, dtype=torch.long)]
    for c in torch.unique(labels).tolist():
        members = torch.unique(units[labels == c])                            # sorted: the draw is reproducible
        if len(members) >= 2:
            chosen.append(members[torch.randperm(len(members), generator=g)[:max(1, round(fraction * len(members)))]])
    return torch.isin(units, torch.cat(chosen)).nonzero().flatten()


def validation_split(labels: torch.Tensor, groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A train split cut in two: (the rest, the validation part; validation_indices), sorted indices each."""
    val = validation_indices(labels, groups)
    return torch.isin(torch.arange(len(labels)), val, invert=True).nonzero().flatten(), val


@dataclass
class OneVsOne:
    """A linear SVC of libsvm's kind: one binary SVM per pair of classes, decision
    x . W[p] - rho[p] > 0 votes for pairs[p, 0], else for pairs[p, 1]."""
    W: torch.Tensor        # (P, F) float64
    rho: torch.Tensor      # (P,)
    pairs: torch.Tensor    # (P, 2) class ids, the first the smaller
    num_classes: int
    iterations: int        # SMO iterations until every pair met the tolerance

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, F) -> labels (N,): the class with the most pairwise votes, the smaller id on ties (libsvm)."""
        decision = x.double() @ self.W.T - self.rho                          # (N, P)
        winner = torch.where(decision > 0, self.pairs[:, 0], self.pairs[:, 1])  # (N, P)
        votes = torch.zeros(len(x), self.num_classes, dtype=torch.long).scatter_add_(1, winner, torch.ones_like(winner))
        return votes.argmax(1)


def fit_svc(x: torch.Tensor, y: torch.Tensor, num_classes: int, C: float = ProbeConfig.C, tol: float = 1e-3,
            max_iter: int = 100_000) -> OneVsOne:
    """The peers' linear SVM: scikit-learn's SVC(kernel="linear", C) (libsvm), in torch. Hinge
    loss, an unpenalised intercept, one-vs-one voting; features x (N, F), labels y (N,). Steps:
    1. One dual problem per pair of classes (a < c; a is +1), all pairs batched and padded:
       min 0.5 a'Qa - 1'a, 0 <= a <= C, y'a = 0, Q = yy' * xx' (the Gram matrix, once).
    2. SMO as libsvm runs it: the maximal violating index i, the partner j by second-order
       gain, the two-variable step in closed form; a pair stops when its violation m - M < tol
       (libsvm's eps, scikit-learn's tol), the others go on.
    3. rho from the free multipliers (the middle of the bounds when none is free), as libsvm's
       calculate_rho; W[p] = sum a y x. The tests check the predictions against scikit-learn's."""
    x = x.double()
    N = len(x)
    K = x.float() @ x.float().T                                               # (N, N) Gram, float32
    members = [(y == c).nonzero().flatten() for c in range(num_classes)]
    pairs = [(a, c) for a in range(num_classes) for c in range(a + 1, num_classes)
             if len(members[a]) and len(members[c])]
    n = max(len(members[a]) + len(members[c]) for a, c in pairs)
    idx = torch.zeros(len(pairs), n, dtype=torch.long)                        # (P, n) samples of each pair
    sign = torch.zeros(len(pairs), n, dtype=torch.float64)                    # (P, n) +1 / -1, 0 = padding
    for p, (a, c) in enumerate(pairs):
        both = torch.cat([members[a], members[c]])
        idx[p, :len(both)] = both
        sign[p, :len(members[a])], sign[p, len(members[a]):len(both)] = 1.0, -1.0
    real, diag = sign != 0, K.diagonal().double()[idx]                        # (P, n) each
    alpha, G = torch.zeros_like(sign), -real.double()                         # multipliers, gradient Qa - 1
    act, it = torch.arange(len(pairs)), 0                                     # the pairs still going
    while len(act) and it < max_iter:
        it += 1
        ys, al, g, ix, kd, rl = sign[act], alpha[act], G[act], idx[act], diag[act], real[act]
        r = torch.arange(len(act))
        score = -ys * g                                                       # (p, n) -y G
        up = rl & (((ys > 0) & (al < C)) | ((ys < 0) & (al > 0)))             # may move up
        low = rl & (((ys > 0) & (al > 0)) | ((ys < 0) & (al < C)))            # may move down
        m, i = score.masked_fill(~up, -math.inf).max(1)                       # (p,)
        going = m - score.masked_fill(~low, math.inf).min(1).values > tol
        if not going.all():
            act = act[going]
            continue
        Ki = K[ix[r, i][:, None], ix].double()                                # (p, n) K(x_i, x_t)
        gain = m[:, None] - score                                             # (p, n)
        curv = (kd[r, i][:, None] + kd - 2 * Ki).clamp_min(1e-12)
        j = (-(gain * gain) / curv).masked_fill(~(low & (gain > 0)), math.inf).argmin(1)  # (p,)
        Kj = K[ix[r, j][:, None], ix].double()
        yi, yj, ai, aj = ys[r, i], ys[r, j], al[r, i], al[r, j]
        t = gain[r, j] / curv[r, j]                                           # the unconstrained step
        t = torch.minimum(t, torch.minimum(torch.where(yi > 0, C - ai, ai), torch.where(yj > 0, aj, C - aj)))
        alpha[act, i], alpha[act, j] = ai + yi * t, aj - yj * t
        G[act] = g + t[:, None] * ys * (Ki - Kj)
    yG, upper, lower = sign * G, alpha >= C, alpha <= 0
    free = real & ~upper & ~lower
    ub = yG.masked_fill(~(real & ((upper & (sign < 0)) | (lower & (sign > 0)))), math.inf).min(1).values
    lb = yG.masked_fill(~(real & ((upper & (sign > 0)) | (lower & (sign < 0)))), -math.inf).max(1).values
    rho = torch.where(free.any(1), (yG * free).sum(1) / free.sum(1).clamp_min(1), (ub + lb) / 2)
    W = torch.zeros(len(pairs), N, dtype=torch.float64).scatter_add_(1, idx, alpha * sign) @ x  # (P, F)
    return OneVsOne(W, rho, torch.tensor(pairs), num_classes, it)


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, C: float = ProbeConfig.C, kind: str = "svm",
               max_iter: int = 5000) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear classifier on features x (N, F), labels y (N,), by full-batch L-BFGS.
    'svm': one-vs-rest squared hinge (the peers' SVC is fit_svc), min 0.5|w|^2 + C sum
    max(0, 1 - y w.x)^2 per class, the objective of liblinear's LinearSVC (its default), the
    bias penalised like a weight as liblinear does. 'logreg': multinomial logistic regression, min 0.5|W|^2 + C sum CE.
    -> W (F, classes), b (classes,)."""
    x, y = x.double(), y.long()
    w = torch.zeros(x.shape[1] + 1, num_classes, dtype=torch.float64, requires_grad=True)
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)          # (N, F+1)
    sign = F.one_hot(y, num_classes).double() * 2 - 1                       # (N, classes) +-1
    opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        scores = xb @ w                                                     # (N, classes)
        if kind == "svm":
            data = F.relu(1 - sign * scores).square().sum()
        else:
            data = F.cross_entropy(scores, y, reduction="sum")
        loss = 0.5 * w.square().sum() + C * data
        loss.backward()
        return loss

    opt.step(objective)
    w = w.detach().float()
    return w[:-1], w[-1]


def fit_classifier(kind: str, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                   probe: ProbeConfig = ProbeConfig()) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fit a probe classifier (svc | linear-svc | logreg) -> its predict: features (N, F) -> labels (N,)."""
    if kind == "svc":
        return fit_svc(x, y, num_classes, C=probe.C).predict
    W, b = fit_linear(x, y, num_classes, C=probe.C if kind == "linear-svc" else probe.logreg_C,
                      kind="svm" if kind == "linear-svc" else "logreg")
    return lambda features: (features @ W + b).argmax(-1)


PROBE_C_GRID = tuple(float(f"{10 ** (e / 2):.2g}") for e in range(-8, 5))  # 1e-4, 3.2e-4, ..., 100: half decades


def choose_C(train: dict, num_classes: int, grid: tuple = PROBE_C_GRID, patience: int = 2) -> tuple[float, dict]:
    """The SVC's C chosen on the train split alone: fit on it less its validation part
    (validation_indices; clips grouped by video), scored on that part, walking `grid` upwards
    until the accuracy has been below its best `patience` steps in a row (a plateau of tiny C,
    where every multiplier sits at its bound, walks on) or is 100; the best C, the smaller on ties.
    train {'features' (N, F), 'labels' (N,)} -> (C, {C: validation accuracy in %})."""
    x, y = train["features"], train["labels"]
    fit, val = validation_split(y, train.get("videos"))
    curve, best, below = {}, grid[0], 0
    for C in grid:
        curve[C] = 100 * (fit_svc(x[fit], y[fit], num_classes, C=C).predict(x[val]) == y[val]).float().mean().item()
        best = C if curve[C] > curve[best] else best
        below = below + 1 if curve[C] < curve[best] else 0
        if below >= patience or curve[best] == 100:
            break
    return best, curve


def mcnemar(correct_a: torch.Tensor, correct_b: torch.Tensor) -> dict:
    """The exact McNemar test of two classifiers scored on the same items, correct_a/b (N,) bool:
    of the items only one gets right, is A's share different from one half? -> {'a_only',
    'b_only', 'p_value' (two-sided, the binomial's exact tail)}."""
    b, c = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    n = b + c
    tail = sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2))
               for i in range(min(b, c) + 1))
    return {"a_only": b, "b_only": c, "p_value": min(1.0, 2 * tail) if n else 1.0}


def fit_and_score(kind: str, train: dict, test: dict, num_classes: int, probe: ProbeConfig = ProbeConfig(),
                  keep_predictions: bool = False) -> dict:
    """Fit classifier `kind` on train features {'features', 'labels'} and score it -> {'accuracy',
    'standard_error' (of the accuracy over the test items), 'class_mean_accuracy',
    'per_class_accuracy' (by class index; None where the test split has none) on test,
    'train_accuracy', 'fit_seconds'} (in %), with 'C' and its 'validation_curve' for svc-val[-z]
    and the test 'predictions' (N,) with keep_predictions. Every probe uses it."""
    t, chosen = time.time(), {}
    if kind.endswith("-z"):  # z-scored by the train split's mean and deviation: no feature's scale counts
        mean, std = train["features"].mean(0), train["features"].std(0).clamp_min(1e-6)
        train, test = ({**d, "features": (d["features"] - mean) / std} for d in (train, test))
    if kind.startswith("svc-val"):
        C, curve = choose_C(train, num_classes)
        kind, probe, chosen = "svc", dataclasses.replace(probe, C=C), {"C": C, "validation_curve": curve}
    predict = fit_classifier(kind, train["features"], train["labels"], num_classes, probe)
    pred = predict(test["features"])
    oa, macc = accuracy(pred, test["labels"], num_classes)
    train_oa, _ = accuracy(predict(train["features"]), train["labels"], num_classes)
    y = test["labels"]
    result = {"accuracy": oa, "standard_error": math.sqrt(oa * (100 - oa) / len(y)), "class_mean_accuracy": macc,
              "train_accuracy": train_oa, **chosen,
              "per_class_accuracy": [round(100 * (pred[y == c] == c).float().mean().item(), 2) if (y == c).any()
                                     else None for c in range(num_classes)]}
    if "videos" in test:  # clips of videos: also the vote of each video's clips
        result["video_accuracy"], result["video_class_mean_accuracy"] = video_accuracy(
            F.one_hot(pred, num_classes), test["videos"], test["video_labels"], num_classes)
    return {**result, "fit_seconds": round(time.time() - t, 2), **({"predictions": pred} if keep_predictions else {})}


PROBE_SETS = {"both": ("svc", "logreg"), "evidence": ("svc", "svc-val", "svc-val-z", "logreg"),
              "all": ("svc", "svc-val", "svc-val-z", "linear-svc", "logreg")}
_PROBE_PROTOCOLS = {  # what each classifier of the probe is, as the results record it
    "svc": "libsvm SVC(kernel='linear', C={C}): hinge loss, one-vs-one voting, unpenalised intercept, tol 1e-3",
    "svc-val": "the same SVC, C from {grid} chosen on the train split's own validation part (10%, seeded), then "
               "refit on all of it",
    "svc-val-z": "svc-val on features z-scored by the train split's mean and deviation",
    "linear-svc": "LinearSVC's objective (C={C}): squared hinge, one-vs-rest, penalised intercept",
    "logreg": "multinomial logistic regression (C={logreg_C})",
}


def accuracy(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """(overall accuracy, mean per-class accuracy over classes present), in %."""
    correct = (pred == y).float()
    per_class = [correct[y == c].mean() for c in range(num_classes) if (y == c).any()]
    return 100 * correct.mean().item(), 100 * torch.stack(per_class).mean().item()


def video_accuracy(scores: torch.Tensor, videos: torch.Tensor, video_labels: torch.Tensor,
                   num_classes: int) -> tuple[float, float]:
    """The MSR-Action3D protocol: a video's class is the argmax of its clips' summed scores
    (softmax probabilities, or one-hot predictions: a vote). scores (clips, classes), videos
    (clips,) each clip's video, video_labels (videos,) -> (accuracy, class-mean accuracy) in %."""
    total = torch.zeros(len(video_labels), num_classes).index_add_(0, videos.long().cpu(), scores.float().cpu())
    seen = torch.zeros(len(video_labels), dtype=torch.bool)
    seen[videos.long().cpu()] = True  # a video with no clip in this set is not scored
    return accuracy(total.argmax(1)[seen], video_labels.cpu()[seen], num_classes)


def sample_episode(train_labels: torch.Tensor, test_labels: torch.Tensor, way: int, shot: int, query: int,
                   generator: torch.Generator) -> dict:
    """A W-way S-shot episode: W random classes that have >= S train and >= query test clouds;
    S support clouds per class from the train split, `query` per class from the test split.
    -> indices and episode labels 0..W-1 {'support', 'support_y', 'query', 'query_y', 'classes'}."""
    classes = [c for c in range(int(max(train_labels.max(), test_labels.max())) + 1)
               if (train_labels == c).sum() >= shot and (test_labels == c).sum() >= query]
    if len(classes) < way:
        counts = sorted(((test_labels == c).sum().item() for c in range(int(test_labels.max()) + 1)
                         if (train_labels == c).sum() >= shot), reverse=True)
        fix = f"pass --query {counts[way - 1]} (the test clouds the {way}th class has)" \
            if len(counts) >= way and counts[way - 1] > 0 else "pass a smaller --way or --shot"
        raise ValueError(f"only {len(classes)} classes have {shot} train and {query} test clouds and a {way}-way "
                         f"episode needs {way}: {fix}")
    chosen = torch.tensor(classes)[torch.randperm(len(classes), generator=generator)[:way]]
    episode = {"support": [], "support_y": [], "query": [], "query_y": [], "classes": chosen.tolist()}
    for new, c in enumerate(chosen.tolist()):
        for split, labels, n in (("support", train_labels, shot), ("query", test_labels, query)):
            members = (labels == c).nonzero().flatten()
            episode[split].append(members[torch.randperm(len(members), generator=generator)[:n]])
            episode[split + "_y"].append(torch.full((n,), new))
    return {k: torch.cat(v) if k != "classes" else v for k, v in episode.items()}


class Relabelled(torch.utils.data.Dataset):
    """The clouds of `base` at `indices`, with new labels (a few-shot episode)."""

    def __init__(self, base, indices: torch.Tensor, labels: torch.Tensor, num_classes: int):
        self.base, self.indices, self.labels = base, indices.tolist(), labels
        self.classes = [str(c) for c in range(num_classes)]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base[self.indices[i]][0], self.labels[i]


def draw_episodes(train_set, test_set, cfg: FewShotConfig, seed: int = 0) -> list[tuple[Relabelled, Relabelled]]:
    """cfg.folds episodes drawn with `seed` from two labelled datasets -> [(support, query)].
    ValueError when too few classes have enough clouds (the message says how many do)."""
    g = torch.Generator().manual_seed(seed)
    train_labels, test_labels = torch.as_tensor(train_set.labels), torch.as_tensor(test_set.labels)
    episodes = []
    for _ in range(cfg.folds):
        ep = sample_episode(train_labels, test_labels, cfg.way, cfg.shot, cfg.query, g)
        episodes.append((Relabelled(train_set, ep["support"], ep["support_y"], cfg.way),
                         Relabelled(test_set, ep["query"], ep["query_y"], cfg.way)))
    return episodes


# ----------------------------------------------------------------------------- heads
def _vote_views(points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A test-time voting view: isotropic scale in [0.85, 1.15] (Point-MAE's voting), one per
    cloud or clip. (B, [T,] P, 3)."""
    shape = (points.shape[0],) + (1,) * (points.ndim - 1)
    s = torch.empty(shape, device=points.device).uniform_(0.85, 1.15, generator=generator)
    return points * s


class ClassificationHead(nn.Module):
    """Point-MAE's head on the pooled feature: 2D -> 256 -> 256 -> classes, with BatchNorm and
    dropout. (B, 2D) -> logits (B, classes)."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * dim, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(256, num_classes))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled)


class Classifier(nn.Module):
    """Encoder + classification head. points (B, num_points, 3) -> logits (B, classes).
    Batches are dicts: points (B, P, 3), labels (B,)."""

    metric = "accuracy"  # what fine-tuning tracks as "best"

    def __init__(self, encoder: Encoder, cfg: ModelConfig, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.cfg, self.encoder, self.head = cfg, encoder, ClassificationHead(cfg.dim, num_classes, dropout)

    def forward(self, points: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.head(pool(encode(self.encoder, self.cfg, points, generator)[0]))

    def loss(self, batch: dict, generator: torch.Generator, augment: Callable | None = None,
             label_smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy on clouds FPS'd to num_points and augmented (Point-MAE's recipe)."""
        points = fit_points(batch["points"], self.cfg.num_points, generator)
        if augment is not None:  # clips: one draw per clip
            points = augment(points.flatten(1, -2), generator).view_as(points)
        return F.cross_entropy(self(points, generator).float(), batch["labels"], label_smoothing=label_smoothing)

    def predict(self, batch: dict, generator: torch.Generator, votes: int = 0) -> dict:
        """{'pred' (B,)} and with votes > 0 {'voted' (B,)}: the argmax of the softmax averaged
        over that many voting views."""
        points = fit_points(batch["points"], self.cfg.num_points, generator)
        probs = self(points, generator).float().softmax(-1)                   # (B, classes)
        out = {"pred": probs.argmax(-1), "probs": probs}
        if votes:
            probs = sum(self(_vote_views(points, generator), generator).float().softmax(-1) for _ in range(votes))
            out["voted"] = probs.argmax(-1)
        return out

    def score(self, outputs: dict, target: torch.Tensor, dataset) -> dict:
        """Overall and class-mean accuracy (and the voted ones), in %."""
        n = len(dataset.classes)
        oa, macc = accuracy(outputs["pred"], target, n)
        result = {"accuracy": oa, "class_mean_accuracy": macc}
        if "voted" in outputs:
            result["voted_accuracy"], result["voted_class_mean_accuracy"] = accuracy(outputs["voted"], target, n)
        if optional(dataset, "videos_of") is not None:  # clips: the MSR protocol's video accuracy (summed softmax)
            result["video_accuracy"], result["video_class_mean_accuracy"] = video_accuracy(
                outputs["probs"], dataset.videos_of, dataset.video_labels, n)
        return result


def seg_layers(depth: int) -> tuple[int, ...]:
    """The blocks whose outputs feed the segmentation head: 4/8/12 of 12 (Point-MAE), the
    same thirds of a shallower encoder. 0-based."""
    return tuple(sorted({max(0, round(depth * f) - 1) for f in (1 / 3, 2 / 3, 1.0)}))


def part_miou(pred: torch.Tensor, target: torch.Tensor, category: torch.Tensor,
              parts_of: list[list[int]], names: list[str] | None = None) -> dict:
    """ShapeNetPart mIoU. pred, target (S, P) part ids, category (S,). Per shape, the IoU of
    each part of its category (1 when the part is in neither prediction nor truth), averaged;
    instance mIoU = mean over shapes, class mIoU = mean over categories of their shapes' mean. In %."""
    shape_iou = []
    for s in range(len(pred)):
        ious = []
        for part in parts_of[int(category[s])]:
            p, t = pred[s] == part, target[s] == part
            union = (p | t).sum().item()
            ious.append(1.0 if union == 0 else (p & t).sum().item() / union)
        shape_iou.append(sum(ious) / len(ious))
    shape_iou = torch.tensor(shape_iou)
    per_cat = {int(c): shape_iou[category == c].mean().item() for c in category.unique()}
    return {"instance_miou": 100 * shape_iou.mean().item(), "class_miou": 100 * sum(per_cat.values()) / len(per_cat),
            "per_category_iou": {(names[c] if names else c): 100 * v for c, v in per_cat.items()}}


def restrict_to_category(logits: torch.Tensor, category: torch.Tensor, parts_of: list[list[int]]) -> torch.Tensor:
    """Argmax over the parts of each cloud's own category (the standard evaluation).
    logits (B, P, parts), category (B,) -> (B, P)."""
    allowed = torch.zeros(len(parts_of), logits.shape[-1], dtype=torch.bool, device=logits.device)
    for c, parts in enumerate(parts_of):
        allowed[c, parts] = True
    return logits.masked_fill(~allowed[category][:, None], float("-inf")).argmax(-1)


class Segmenter(nn.Module):
    """Encoder + part-segmentation head (Point-MAE's, LayerNorm for BatchNorm): features of
    three encoder depths are propagated from patch centres to every point, joined with the
    cloud's global max/mean feature and a category embedding, and classified per point.
    points (B, P, 3), category (B,) -> part logits (B, P, parts). Batches are dicts: points
    (B, P, 3), labels (B, P) part ids, category (B,). `parts_of[c]` lists the parts category c
    may take (every part when not given)."""

    metric = "instance_miou"

    def __init__(self, encoder: Encoder, cfg: ModelConfig, num_parts: int, num_categories: int,
                 dropout: float = 0.5, parts_of: list[list[int]] | None = None):
        super().__init__()
        self.cfg, self.encoder, self.layers = cfg, encoder, seg_layers(cfg.depth)
        self.parts_of = parts_of or [list(range(num_parts))] * num_categories
        width = len(self.layers) * cfg.dim
        self.category = nn.Sequential(nn.Embedding(num_categories, 64), nn.LayerNorm(64), nn.GELU())
        self.propagate = nn.Sequential(nn.Linear(width + 3, 4 * cfg.dim), nn.LayerNorm(4 * cfg.dim), nn.GELU(),
                                       nn.Linear(4 * cfg.dim, 1024), nn.LayerNorm(1024), nn.GELU())
        self.head = nn.Sequential(nn.Linear(1024 + 2 * width + 64, 512), nn.LayerNorm(512), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(512, 256), nn.LayerNorm(256), nn.GELU(),
                                  nn.Linear(256, num_parts))

    def forward(self, points: torch.Tensor, category: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        B, P, _ = points.shape
        patches, centres = group_points(points, self.cfg.num_groups, self.cfg.group_size, generator)
        feats = torch.cat(self.encoder.layer_outputs(patches, centres, self.layers), dim=-1)  # (B, G, 3D)
        glob = torch.cat([pool(feats), self.category(category)], dim=-1)     # (B, 6D + 64)
        per_point = self.propagate(torch.cat([interpolate(points, centres, feats), points], dim=-1))  # (B, P, 1024)
        return self.head(torch.cat([per_point, glob[:, None].expand(B, P, -1)], dim=-1))

    def loss(self, batch: dict, generator: torch.Generator, augment: Callable | None = None,
             label_smoothing: float = 0.0) -> torch.Tensor:
        """Per-point cross-entropy on the points as read: Point-MAE's part-segmentation recipe
        uses no augmentation and no label smoothing, so both are ignored here."""
        logits = self(batch["points"], batch["category"], generator)        # (B, P, parts)
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten())

    def predict(self, batch: dict, generator: torch.Generator, votes: int = 0) -> dict:
        """{'pred' (B, P)} restricted to each cloud's category's parts, and the 'category' (B,)."""
        logits = self(batch["points"], batch["category"], generator).float()
        return {"pred": restrict_to_category(logits, batch["category"], self.parts_of), "category": batch["category"]}

    def score(self, outputs: dict, target: torch.Tensor, dataset) -> dict:
        """Instance and class mIoU, and the IoU per category, in %."""
        return part_miou(outputs["pred"], target, outputs["category"], self.parts_of, dataset.classes)


def _stack_items(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """[(points (P, 3), label or part labels)] -> points (B, P, 3), labels (B,) or (B, P)."""
    return torch.stack([p for p, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items])


def _batch(dataset, indices: list[int], device: torch.device) -> dict:
    """The items at `indices` as a head's batch: points (B, P, 3), labels (B,) or part labels
    (B, P), and for part datasets the object category (B,)."""
    points, labels = _stack_items([dataset[i] for i in indices])
    batch = {"points": points.to(device), "labels": labels.to(device)}
    if optional(dataset, "category") is not None:
        batch["category"] = torch.as_tensor(dataset.category)[indices].to(device)
    return batch


def make_head(encoder: Encoder, cfg: ModelConfig, train_set, dropout: float = 0.5) -> Classifier | Segmenter:
    """The head a dataset calls for: a Segmenter for part datasets (they have `parts_of`), else
    a Classifier over the dataset's classes."""
    if optional(train_set, "parts_of") is not None:
        return Segmenter(encoder, cfg, train_set.num_parts, len(train_set.classes), dropout, train_set.parts_of)
    return Classifier(encoder, cfg, len(train_set.classes), dropout)


@torch.no_grad()
def evaluate(model: Classifier | Segmenter, dataset, device: torch.device, batch_size: int = ProbeConfig.batch_size,
             seed: int = 0, votes: int = 0, amp_dtype: torch.dtype | None = None) -> dict:
    """The head's metrics on `dataset`: accuracy (with votes > 0 also over that many voting
    views) for a Classifier, mIoU for a Segmenter. FPS starts are seeded per batch."""
    model.eval()
    g = torch.Generator(device=device)
    outputs: dict[str, list] = {}
    targets = []
    for i, start in enumerate(range(0, len(dataset), batch_size)):
        g.manual_seed(_step_seed(seed, i))
        batch = _batch(dataset, list(range(start, min(start + batch_size, len(dataset)))), device)
        with autocast(device, amp_dtype):
            for key, value in model.predict(batch, g, votes).items():
                outputs.setdefault(key, []).append(value.cpu())
        targets.append(batch["labels"].cpu())
    return model.score({k: torch.cat(v) for k, v in outputs.items()}, torch.cat(targets), dataset)


# ----------------------------------------------------------------------------- protocols
def embed(encoder: Encoder, cfg: ModelConfig, dataset, *, device: torch.device = torch.device("cpu"),
          seed: int = 0, precision: str = "auto", batch_size: int = ProbeConfig.batch_size,
          per_patch: bool = False) -> dict[str, torch.Tensor]:
    """The frozen features `jepa3d embed` writes: {'features' (N, 2D) concat(max, mean) of the
    last-layer tokens, 'labels' (N,)}, with per_patch also {'tokens' (N, G, D), 'centres' (N, G, 3)}."""
    return extract_features(encoder, cfg, dataset, device, batch_size, seed=seed, per_patch=per_patch,
                            amp_dtype=resolve_precision(precision, device))


def linear_probe(encoder: Encoder, cfg: ModelConfig, train_set, test_set, probe: ProbeConfig = ProbeConfig(), *,
                 device: torch.device = torch.device("cpu"), seed: int = 0, precision: str = "auto") -> dict:
    """Frozen encoder, concat(max, mean) features of both splits, a linear classifier fit on
    the train split (probe.classifier: one kind or a set of PROBE_SETS) -> the result `jepa3d
    linear-probe` prints: per classifier the test accuracy, its standard error and the class-mean
    accuracy, and the protocol. probe.against_random: also the same probes of a random-init
    encoder of the same configuration and seed, the gain, and McNemar's paired test of the two
    on the same test items (did pretraining help?)."""
    n, split = len(train_set.classes), _scored_split(test_set)
    kinds = PROBE_SETS.get(probe.classifier, (probe.classifier,))
    encoders = {"pretrained": encoder, **({"random_init": random_encoder(cfg, seed)} if probe.against_random else {})}
    scores: dict[str, dict] = {}
    for name, enc in encoders.items():
        if name == "random_init":
            print(f"random-init encoder (seed {seed}), same configuration:", file=sys.stderr)
        feats = {}
        for part, ds in (("train", train_set), ("test", test_set)):
            print(f"features of {len(ds)} {part} clouds ({optional(ds, 'name')})", file=sys.stderr)
            feats[part] = embed(enc, cfg, ds, device=device, seed=seed, precision=precision,
                                batch_size=probe.batch_size)
        check_classes(feats["train"]["labels"], optional(train_set, "name"))
        scores[name] = {}
        for kind in kinds:
            score = scores[name][kind.replace("-", "_")] = fit_and_score(kind, feats["train"], feats["test"], n,
                                                                         probe, keep_predictions=True)
            chosen = f" (C={score['C']:g} chosen on validation)" if "C" in score else ""
            print(f"{kind}{chosen}: {split} accuracy {score['accuracy']:.2f} +- {score['standard_error']:.2f} "
                  f"(class mean {score['class_mean_accuracy']:.2f}), train {score['train_accuracy']:.2f}",
                  file=sys.stderr)
    y = feats["test"]["labels"]
    right = {name: {k: v.pop("predictions") == y for k, v in by_kind.items()} for name, by_kind in scores.items()}
    result = {"data": optional(train_set, "name"), "scored_on": optional(test_set, "name"),
              "train_clouds": len(feats["train"]["labels"]), "test_clouds": len(y),
              "protocol": {"features": "concat(max, mean) of the last-layer tokens, frozen",
                           "num_points": cfg.num_points, "num_groups": cfg.num_groups,
                           "group_size": cfg.group_size, "seed": seed,
                           **{k: _PROBE_PROTOCOLS[k].format(C=probe.C, logreg_C=probe.logreg_C, grid=PROBE_C_GRID)
                              for k in kinds}},
              **scores["pretrained"], "classes": list(optional(train_set, "classes"))}
    if probe.against_random:
        pre = scores["pretrained"]
        rand = result["random_init"] = scores["random_init"]
        result["gain_over_random_init"] = {k: pre[k]["accuracy"] - rand[k]["accuracy"] for k in pre}
        result["mcnemar_vs_random_init"] = {  # a_only: the items only the pretrained encoder's probe gets right
            k: mcnemar(right["pretrained"][k], right["random_init"][k]) for k in pre}
        print("pretrained vs random init: " + ", ".join(
            f"{k} {pre[k]['accuracy']:.2f} vs {rand[k]['accuracy']:.2f} ({result['gain_over_random_init'][k]:+.2f}, "
            f"McNemar p={result['mcnemar_vs_random_init'][k]['p_value']:.2g})" for k in pre), file=sys.stderr)
    return result


_POINT_PROBE_ITERATIONS = 300  # tens of thousands of points: the probe's accuracy settles long before 1e-9


@torch.no_grad()
def point_features(encoder: Encoder | None, cfg: ModelConfig, dataset, per_item: int | None, *,
                   device: torch.device = torch.device("cpu"), seed: int = 0, batch_size: int = 32) -> dict:
    """Frozen per-point features of a dataset with per-point labels (a teacher-features cache
    with parts, or a part dataset): the encoder's last-layer tokens carried back to the points
    (tokens_to_points) -> {'features' (n, D), 'labels' (n,)}: `per_item` points drawn from every
    cloud or clip frame (all of them when None). Points are used as stored (no resampling), so
    their labels stay aligned. encoder None: the cache's own teacher features of the same points
    (zeros where no camera sees one): what distillation through that teacher can reach at best."""
    if encoder is not None:
        encoder = encoder.to(device).eval()
    g, pick = torch.Generator(device=device), torch.Generator().manual_seed(seed)
    feats, labels = [], []
    for start in range(0, len(dataset), batch_size):
        idx = range(start, min(start + batch_size, len(dataset)))
        points = torch.stack([dataset[i][0] for i in idx]).to(device)                 # (B, [T,] P, 3)
        y = torch.stack([dataset.clip_point_labels(i) if optional(dataset, "point_labels") is not None
                         else dataset[i][1] for i in idx])                             # (B, [T,] P)
        if encoder is None:
            if optional(dataset, "teacher") is None:
                raise ValueError(f"{optional(dataset, 'name')}: no teacher features to probe (make them with "
                                 "`jepa3d teacher-features`)")
            per_point = torch.stack([dataset.teacher_targets(i)[..., 1:] for i in idx])  # (B, [T,] P, C)
        else:
            g.manual_seed(_step_seed(seed, start))
            tokens, centres = encode(encoder, cfg, points, g)
            per_point = tokens_to_points(tokens.float(), centres, points, cfg.num_groups).cpu()  # (B, [T,] P, D)
        per_point, y = per_point.flatten(0, -3), y.flatten(0, -2)                      # (items, P, D), (items, P)
        if per_item is not None and per_item < y.shape[1]:
            keep = torch.rand(y.shape, generator=pick).argsort(1)[:, :per_item]       # (items, per_item)
            per_point, y = per_point.gather(1, keep[..., None].expand(-1, -1, per_point.shape[-1])), y.gather(1, keep)
        feats.append(per_point.flatten(0, 1))
        labels.append(y.flatten())
    return {"features": torch.cat(feats), "labels": torch.cat(labels)}


def point_probe(encoder: Encoder | None, cfg: ModelConfig, train_set, test_set, num_labels: int, *,
                train_points: int = PointProbeConfig.train_points, test_points: int = PointProbeConfig.test_points,
                device: torch.device = torch.device("cpu"), seed: int = 0,
                names: list[str] | None = None) -> dict:
    """The per-point linear probe: logistic regression (ProbeConfig.logreg_C) on frozen
    per-point features (point_features) of `train_points` points per cloud or frame of the train
    split, scored on `test_points` per cloud or frame of the test split -> point accuracy and
    mIoU (mean over labels of IoU over all scored points), in %."""
    train = point_features(encoder, cfg, train_set, train_points, device=device, seed=seed)
    test = point_features(encoder, cfg, test_set, test_points, device=device, seed=seed + 1)
    check_classes(train["labels"], optional(train_set, "name"))
    t = time.time()
    W, b = fit_linear(train["features"], train["labels"], num_labels, C=ProbeConfig.logreg_C, kind="logreg",
                      max_iter=_POINT_PROBE_ITERATIONS)

    def predict(x: torch.Tensor) -> torch.Tensor:
        return (x @ W + b).argmax(-1)

    pred, y = predict(test["features"]), test["labels"]
    ious = {}
    for c in range(num_labels):
        union = ((pred == c) | (y == c)).sum().item()
        if (y == c).any():
            ious[names[c] if names else c] = 100 * ((pred == c) & (y == c)).sum().item() / union
    return {"point_accuracy": 100 * (pred == y).float().mean().item(), "miou": sum(ious.values()) / len(ious),
            "iou": ious, "train_points": len(train["labels"]), "test_points": len(y),
            "train_accuracy": 100 * (predict(train["features"]) == train["labels"]).float().mean().item(),
            "fit_seconds": round(time.time() - t, 2),
            "protocol": f"logistic regression (C=1, {_POINT_PROBE_ITERATIONS} L-BFGS iterations) on " + (
                "the frozen last-layer tokens interpolated to each point (3 nearest patch centres, inverse distance)"
                if encoder is not None else "the teacher's own feature of each point (the cache's)")}


def few_shot(encoder: Encoder, cfg: ModelConfig, train_set=None, test_set=None, fs: FewShotConfig = FewShotConfig(),
             *, episodes: list | None = None, device: torch.device = torch.device("cpu"), seed: int = 0,
             precision: str = "auto", augment: Callable | None = None, out_dir: str | Path | None = None) -> dict:
    """W-way S-shot episodes -> the result `jepa3d few-shot` prints: mean +- std of the query
    accuracy over the folds. Episodes are drawn from train_set/test_set with `seed`
    (draw_episodes), or given as [(support, query)] datasets (the peers' fold files).
    fs.protocol 'svm' fits the peers' linear SVC (fit_svc) on frozen features; 'finetune' fine-tunes a copy of
    the encoder with a head per episode (checkpoints under out_dir/fold<i>)."""
    episodes = draw_episodes(train_set, test_set, fs, seed) if episodes is None else episodes
    accs = []
    progress = Progress(len(episodes))
    for i, (support, queries) in enumerate(episodes):
        if fs.protocol == "svm":
            fsup, fq = (embed(encoder, cfg, ds, device=device, seed=seed, precision=precision, batch_size=fs.batch_size)
                        for ds in (support, queries))
            accs.append(fit_and_score("svc", fsup, fq, fs.way, ProbeConfig(C=fs.C))["accuracy"])
        else:
            ft = FinetuneConfig(epochs=fs.episode_epochs, warmup_epochs=min(10.0, fs.episode_epochs / 10))
            res = finetune(copy.deepcopy(encoder), cfg, support, queries, ft, device=device, seed=seed + i,
                           precision=precision, augment=augment,
                           out_dir=None if out_dir is None else Path(out_dir) / f"fold{i}")
            accs.append(res["accuracy"])
        progress.update(i + 1, f"fold {i} accuracy {accs[-1]:.1f}")
    progress.close()
    t = torch.tensor(accs)
    result = {"way": fs.way, "shot": fs.shot, "folds": len(accs), "accuracy_mean": t.mean().item(),
              "accuracy_std": t.std().item() if len(accs) > 1 else 0.0, "per_fold": accs,
              "protocol": {"episodes": f"drawn with seed {seed}: {fs.way} classes, {fs.shot} train + {fs.query} "
                                       "test clouds each" if train_set is not None else "peers' fold files",
                           "classifier": f"linear SVC (libsvm's, one-vs-one) C={fs.C} on frozen concat(max, mean) "
                                         "features"
                           if fs.protocol == "svm" else f"fine-tune encoder + head, {fs.episode_epochs} epochs "
                                                        "per episode",
                           "num_points": cfg.num_points, "num_groups": cfg.num_groups}}
    print(f"{fs.way}-way {fs.shot}-shot: {result['accuracy_mean']:.2f} +- {result['accuracy_std']:.2f} "
          f"over {len(accs)} folds", file=sys.stderr)
    return result


def finetune(encoder: Encoder, cfg: ModelConfig, train_set, test_set, ft: FinetuneConfig = FinetuneConfig(), *,
             device: torch.device = torch.device("cpu"), out_dir: str | Path | None = None, seed: int = 0,
             precision: str = "auto", votes: int = 0, eval_every: int = 0, select_best_on_test: bool = False,
             augment: Callable | None = None, max_steps: int | None = None, meta: dict | None = None) -> dict:
    """Fine-tune the encoder end to end with the head the data calls for (make_head: part
    segmentation for part datasets, else classification), Point-MAE's recipe in `ft`. The
    reported metric is the last epoch's; with select_best_on_test, the best test epoch is also
    reported, labelled as selected on the test set. With out_dir, writes out_dir/metrics.jsonl
    (one line per epoch) and out_dir/finetuned.safetensors (encoder., head. ...)."""
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    if meta is not None:
        print(f"jepa3d finetune: {meta.get('task')}, {len(train_set)} train / {len(test_set)} test "
              f"{'clips' if optional(train_set, 'videos_of') is not None else 'clouds'}, encoder "
              f"{meta.get('encoder_source')}", file=sys.stderr)
    torch.manual_seed(seed)
    model = make_head(encoder, cfg, train_set, ft.dropout).to(device)
    amp_dtype = resolve_precision(precision, device)
    batch_size = min(ft.batch_size, len(train_set))
    per_epoch = max(1, len(train_set) // batch_size)
    total = ft.epochs * per_epoch
    end = total if max_steps is None else min(total, max_steps)
    train = _HeadTraining(model, make_optimizer(model, ft), grad_scaler(device, amp_dtype), amp_dtype, device,
                          total, round(ft.warmup_epochs * per_epoch), end)
    progress = Progress(end)
    history, best = [], None
    with open(Path(out_dir) / "metrics.jsonl" if out_dir is not None else os.devnull, "w") as log:
        for epoch in range(ft.epochs):
            losses = train.epoch(train_set, epoch_batches(len(train_set), batch_size, seed, epoch), ft, seed, augment)
            last_epoch = epoch == ft.epochs - 1 or train.step >= end
            record = {"epoch": epoch, "step": train.step,
                      "train_loss": torch.stack(losses).mean().item() if losses else None}
            if last_epoch or select_best_on_test or (epoch + 1) % (eval_every or ft.epochs) == 0:
                record.update(evaluate(model, test_set, device, seed=seed, amp_dtype=amp_dtype,
                                       votes=votes if last_epoch else 0))
                if best is None or record[model.metric] > best[model.metric]:
                    best = {model.metric: record[model.metric], "epoch": epoch}
            history.append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            shown = f" test {record[model.metric]:.2f}" if model.metric in record else ""
            progress.update(train.step, f"epoch {epoch} loss {record['train_loss'] or 0:.4f}{shown}")
            if train.step >= end:
                break
    progress.close()
    if out_dir is not None:
        save_checkpoint(Path(out_dir) / "finetuned.safetensors", model,
                        kind="finetune-seg" if isinstance(model, Segmenter) else "finetune-cls",
                        finetune_config=dataclasses.asdict(ft), classes=train_set.classes, **(meta or {}))
    result = {k: v for k, v in history[-1].items() if k != "step"}
    result.update({"epochs_run": len(history), "steps": train.step, "reported": "last epoch"})
    result["protocol"] = {**dataclasses.asdict(ft), "seed": seed, "selection": "last epoch" + (
        " (+ best test epoch, labelled)" if select_best_on_test else ""),
        "voting": f"{votes} views, isotropic scale 0.85-1.15, softmax average" if votes else "none"}
    if select_best_on_test:
        result["best_epoch_on_test"] = {**best, "note": "selected on the test set: optimistic, not comparable "
                                                        "to last-epoch numbers"}
    return result


@dataclass
class _HeadTraining:
    """The state of a fine-tuning run between epochs; epoch() runs one epoch's steps."""
    model: Classifier | Segmenter
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    device: torch.device
    total: int           # steps of the whole schedule
    warmup: int          # warm-up steps
    end: int             # stop after this step (max_steps)
    step: int = 0

    def epoch(self, dataset, batches: list[list[int]], cfg: FinetuneConfig, seed: int,
              augment: Callable | None) -> list[torch.Tensor]:
        """Train on `batches` (index lists) until self.end -> the detached losses."""
        self.model.train()
        g = torch.Generator(device=self.device)
        losses = []
        for indices in batches:
            if self.step >= self.end:
                break
            s = _step_seed(seed, self.step)  # drop path, dropout, FPS, augmentation
            torch.manual_seed(s)
            g.manual_seed(s)
            batch = _batch(dataset, indices, self.device)
            _set_lr(self.optimizer, lr_at(self.step, self.total, self.warmup, cfg))
            with autocast(self.device, self.amp_dtype):
                loss = self.model.loss(batch, g, augment, cfg.label_smoothing)
            _optimizer_step(loss, self.optimizer, self.scaler, cfg.grad_clip)
            losses.append(loss.detach())
            self.step += 1
        return losses


# ----------------------------------------------------------------------------- mask preview
def mask_preview(points: torch.Tensor, cfg: ModelConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour one cloud (P, 3) by the role of its nearest patch under cfg's sampler.
    -> points (num_points, 3), roles (num_points,) long: 0 unused, 1 context, 2+m target block m
    (a patch in two overlapping target blocks shows the later one). A clip (T, P, 3) comes back
    as a film strip: frame i shifted by 2.5 i along x, (T * num_points, 3), so tubes and future
    targets can be followed across frames; a single-cloud model given a clip previews its first
    frame (it pretrains on one frame of each clip)."""
    cfg.check_masking()
    if points.ndim == 3 and cfg.frames == 1:
        points = points[0]
    g = torch.Generator().manual_seed(seed)
    pts = fit_points(points[None].float(), cfg.num_points, g)                # (1, [T,] P, 3)
    _, centres = tokenize(pts, cfg, g)                                        # (1, N, C)
    masks = SAMPLERS[cfg.sampler](centres, cfg, g)
    role = torch.zeros(centres.shape[1], dtype=torch.long)
    role[masks.context[0] if masks.context_keep is None else masks.context[0][masks.context_keep[0]]] = 1
    for m in range(masks.targets.shape[1]):
        role[masks.targets[0, m]] = 2 + m
    if pts.ndim == 3:
        nearest = knn(pts, centres, 1)[0, :, 0]                               # (P,)
        return pts[0], role[nearest]
    T, G, Tt = pts.shape[1], cfg.num_groups, centres.shape[1] // cfg.num_groups
    # each frame's tokens: its own (frame tokens), or the nearest anchor frame's (tube tokens)
    owner = torch.arange(T)                                                   # (T,) the token frame of each frame
    if cfg.uses_tubes():
        owner = (owner / cfg.tube_stride).round().long().clamp(max=Tt - 1)  # anchors sit at frames 0, s, 2s, ...
    frames = pts[0]                                                           # (T, P, 3)
    nearest = knn(frames, centres[0, :, :3].view(Tt, G, 3)[owner], 1)[..., 0]  # (T, P) patch of its frame's tokens
    roles = role.view(Tt, G)[owner].gather(1, nearest)                        # (T, P)
    shift = torch.zeros(T, 1, 3)
    shift[:, 0, 0] = 2.5 * torch.arange(T)
    return (frames + shift).flatten(0, 1), roles.flatten()


# ----------------------------------------------------------------------------- command line
# A thin layer: each command parses its options, opens the data and the encoder, calls the
# library function of the same name and reports (progress on stderr, one JSON result on
# stdout). Options are generated from the config dataclasses, their only home. click and
# jepa3d_data are imported only in here, so `import jepa3d` needs torch alone.

_COMMANDS: dict[str, tuple] = {}  # name -> (groups, --out default, options(click, jepa3d_data), fn)


def _command(name: str, *groups, out: str | None = None, options: Callable = lambda click, jd: ()):
    """Register `fn` as the command `name`: --out (a folder for metrics.json, default `out`),
    options(click, jepa3d_data), then per group a config dataclass, whose fields become options
    and whose instance fn gets, or "data", the data options as a dict: fn(ctx, *a value per
    group, **the others). make_cli builds the click commands."""
    def register(fn):
        _COMMANDS[name] = (groups, out, options, fn)
        return fn
    return register


def _click_command(click, jd, name: str, groups: tuple, out: str | None, options: Callable, fn):
    """A registered command as a click command, with its one error boundary: bad input ends in
    one line and exit 1 (_one_line_errors)."""
    @functools.wraps(fn)
    def run(ctx, **kw):
        values = [_data_values(kw) if group == "data" else
                  _usage(group, **_given({f.name: kw.pop(f.name) for f in fields(group)})) for group in groups]
        with _one_line_errors(click, ctx):
            return fn(ctx, *values, **kw)

    out = () if out is None else (click.option("--out", type=click.Path(file_okay=False), default=out,
                                               help="folder for metrics.json"),)
    made = click.pass_context(run)
    for option in reversed([*out, *options(click, jd), *(o for g in groups for o in (
            _data_options(click, jd) if g == "data" else _config_options(g)))]):
        made = option(made)
    return click.command(name)(made)


_READ_KEYS = ("variant", "trust_pickle", "skip_bad", "frame_stride", "intrinsics", "min_depth", "max_depth",
              "validation")


def _data_options(click, jd) -> list:
    """The options every command that reads data shares: --data, --dataset and jepa3d_data.ReadOptions'."""
    return [click.option("--data", type=click.Path(), default=None,
                         help="dataset folder or .npz file; the built-in procedural shapes when not given"),
            click.option("--dataset", type=click.Choice(jd.LAYOUTS), default=None,
                         help="force a layout instead of detecting it (`jepa3d inspect PATH` shows the detected one)"),
            *_config_options(jd.ReadOptions, only=_READ_KEYS)]


def _data_values(kw: dict) -> dict:
    """The data options as a dict (recorded in run.json): ReadOptions' defaults for those not
    given, but --variant, which only ScanObjectNN data takes."""
    from jepa3d_data import ReadOptions

    data = {k: kw.pop(k) for k in ("data", "dataset", *_READ_KEYS)}
    return {**data, **{k: getattr(ReadOptions, k) for k in _READ_KEYS if data[k] is None and k != "variant"}}


def _given(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None and v is not False}


def _usage(build: Callable, *args, **kwargs):
    """build(*args, **kwargs), with a ValueError (an inconsistent option) as a usage error (exit
    2); a bad file stays a data or checkpoint error (exit 1, see _one_line_errors)."""
    import click

    from jepa3d_data import DataError

    try:
        return build(*args, **kwargs)
    except (CheckpointError, DataError):
        raise
    except ValueError as err:
        raise click.UsageError(str(err)) from None


def _load_data(data: dict, split: str, cfg: ModelConfig, frames: int | None = None):
    """jepa3d_data.open_split for a model of config `cfg` (clips of `frames`, default its own)."""
    from jepa3d_data import ReadOptions, open_split

    frames = frames or (cfg.frames if cfg.frames > 1 else ReadOptions.frames)
    return _usage(open_split, data, split, cfg.num_points, frames, cfg.frames > 1)


def _open(ctx, spec: EncoderSpec, data: dict, splits: tuple = ("train", "test"), drop_path: float | None = None):
    """The downstream commands' one preamble: the encoder `spec` names (a random clip encoder
    takes --frames; a checkpoint keeps its own) and the splits of `data` -> (encoder, cfg, source,
    *datasets)."""
    shape = {k: getattr(spec, k) for k in ("num_points", "num_groups", "group_size", "tokens")}
    encoder, cfg, source = _usage(load_encoder, spec.checkpoint, spec.which, spec.preset, seed=ctx.obj["seed"],
                                  drop_path=drop_path, **shape, **({"frames": spec.frames} if spec.checkpoint == "none"
                                                                    else {}))
    return (encoder, cfg, source, *(_load_data(data, s, cfg, spec.frames) for s in splits))


def _report(result: dict, path: str | Path) -> None:
    """The JSON result: on stdout, and into `path` (jepa3d_data.write_result)."""
    from jepa3d_data import write_result

    write_result(result, path)
    print(json.dumps(result))


@contextlib.contextmanager
def _one_line_errors(click, ctx):
    """Whatever goes wrong ends in one line on stderr and exit 1, never a traceback (`jepa3d
    --debug` or JEPA3D_DEBUG=1 re-raise, for bug reports): bad input (data, checkpoints, files, a
    diverged run) named as such, anything else as an internal error to report."""
    from jepa3d_data import DataError, TeacherError

    if ctx.find_root().params.get("debug") or os.environ.get("JEPA3D_DEBUG", "") not in ("", "0"):
        yield
        return
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except KeyboardInterrupt:
        raise click.ClickException("interrupted; the last checkpoint written is intact (continue with --resume)") \
            from None
    except (DataError, CheckpointError, DivergedError, RunFolderError, TeacherError, OSError) as err:
        raise click.ClickException(_one_line(err)) from None
    except MemoryError:
        raise click.ClickException("out of memory: this machine cannot hold what the options ask for; use fewer "
                                   "points, frames, clips or a smaller --batch-size") from None
    except Exception as err:  # a bug: still one line, and how to get the traceback
        raise click.ClickException(f"internal error ({type(err).__name__}: {_one_line(err)}); run "
                                   "`jepa3d --debug ...` for the traceback and report it") from None


def _pretrain_configs(ctx, out: str, preset: str, data: dict, run: RunConfig,
                      overrides: dict) -> tuple[ModelConfig, TrainConfig, dict, RunConfig]:
    """pretrain's configs: a resumed run's own (resume_settings: its checkpoint's, and its data
    and --save-every unless given), or the preset's with the overrides and what the data says
    (jepa3d_data.model_fields); the distill objectives' built-in cache is made first without --data."""
    import jepa3d_data

    if run.resume:
        model_cfg, train_cfg, ctx.obj["seed"], info = resume_settings(out, _given(overrides))
        if data["data"] is None and data["dataset"] is None and info.get("data_options"):
            data = {**data, **info["data_options"]}  # the run's own data, unless --data says otherwise
        return model_cfg, train_cfg, data, run if run.save_every else dataclasses.replace(
            run, save_every=info.get("save_every", 0))
    check_run_folder(out, resume=False)
    objective = overrides.get("objective") or PRESETS[preset].get("objective", "jepa")
    if "distill" in objective and data["data"] is None and data["dataset"] is None:
        data["data"] = jepa3d_data.builtin_distill_data(out, objective, progress_callback("chunks"), ctx.obj["device"])
    says = jepa3d_data.model_fields(data["data"], data["dataset"], objective,
                                    PRESETS[preset].get("frames", jepa3d_data.ReadOptions.frames))
    model_cfg, train_cfg = make_configs(preset, **{**says, **_given(overrides)})
    if train_cfg.batch_size % distributed_env()[1]:
        raise ValueError(f"--batch-size {train_cfg.batch_size} is the global batch and must divide by the "
                         f"{distributed_env()[1]} torchrun processes")
    return model_cfg, train_cfg, data, run


def _preset_option(click, help: str):
    return click.option("--preset", type=click.Choice(list(PRESETS)), default="paper", help=help)


@_command("pretrain", "data", RunConfig, options=lambda click, jd: (
    click.option("--out", type=click.Path(file_okay=False), default="runs/pretrain",
                 help="run folder: checkpoint.safetensors, metrics.jsonl, run.json"),
    _preset_option(click, "named configuration; the options below override it"),
    click.option("--eval-data", type=click.Path(), default=None, help="labelled data (train and test splits) "
                 "for --eval-every; the built-in shapes (scans if the run reads them) when not given"),
    *_config_options(ModelConfig, True), *_config_options(TrainConfig, True)))
def _pretrain(ctx, data, run, out, preset, eval_data, **overrides):
    """Pretrain a 3D-JEPA encoder (self-supervised; labels are ignored).

    Several GPUs or nodes: torchrun --nproc-per-node N -m jepa3d pretrain ... (DDP; the
    --batch-size is global; rank 0 writes --out)."""
    import jepa3d_data

    model_cfg, train_cfg, data, run = _usage(_pretrain_configs, ctx, out, preset, data, run, overrides)
    ds = _load_data(data, "train", _usage(model_cfg.check_masking), model_cfg.frames)
    own = data["dataset"] if eval_data is None and data["dataset"] in ("builtin", "builtin-scan") else None
    evals = tuple(_load_data({**data, "data": eval_data, "dataset": own, "validation": True}, split, model_cfg)
                  for split in ("train", "test")) if run.eval_every else None  # the curve: train less val -> val
    recorded = {**data, "data": None if data["data"] is None else str(Path(data["data"]).resolve())}
    result = pretrain(ds, out, model_cfg, train_cfg, **dataclasses.asdict(run), eval_sets=evals,
                      data_options=recorded, augment=jepa3d_data.augmentation(train_cfg.augment), **ctx.obj)
    if distributed_env()[0] == 0:  # under torchrun, one result line, from rank 0
        print(jepa3d_data.plot_or_say(Path(out)), file=sys.stderr)
        print(json.dumps(result))


@_command("mask-preview", "data", options=lambda click, jd: (
    click.option("--index", type=click.IntRange(0), default=0, help="which cloud of the train split"),
    click.option("--checkpoint", type=click.Path(), default=None, help="the masking configuration of a checkpoint"),
    _preset_option(click, "named configuration"),
    click.option("--out", type=click.Path(dir_okay=False), default="mask_preview.ply", help="PLY file to write"),
    *_config_options(ModelConfig, True)))
def _mask_preview(ctx, data, index, checkpoint, preset, out, **overrides):
    """Write a coloured PLY of one cloud: grey unused, blue context, one colour per target block."""
    import click

    import jepa3d_data

    cfg = _usage(checkpoint_config, ModelConfig, read_header(checkpoint)[1], checkpoint, **_given(overrides)) \
        if checkpoint else _usage(make_configs, preset, **overrides)[0]
    ds = _load_data(data, "train", _usage(cfg.check_masking))
    if index >= len(ds):
        raise click.BadParameter(f"{index} is past the last cloud ({len(ds) - 1})", param_hint="--index")
    points, roles = mask_preview(ds[index][0], cfg, ctx.obj["seed"])
    print(json.dumps(jepa3d_data.write_mask_ply(out, points, roles, cfg.sampler)))


@_command("finetune", FinetuneRun, EncoderSpec, "data", FinetuneConfig, options=lambda click, jd: (
    click.option("--out", type=click.Path(file_okay=False), default="runs/finetune",
                 help="folder for metrics.json and finetuned.safetensors"),))
def _finetune(ctx, how, spec, data, ft, out):
    """Fine-tune the encoder with a classification or part-segmentation head (Point-MAE's recipe).
    Reports the last epoch's test accuracy (or mIoU)."""
    import jepa3d_data

    data["data"], data["dataset"] = _usage(jepa3d_data.task_data, how.task, data["data"], data["dataset"])
    geometry = {**TASK_GEOMETRY.get(how.task, {}), **_given({k: getattr(spec, k) for k in TASK_GEOMETRY["modelnet40"]})}
    encoder, cfg, source, train_set, test_set = _open(ctx, dataclasses.replace(spec, **geometry), data,
                                                      drop_path=ft.drop_path)
    _usage(jepa3d_data.check_task, how.task, train_set)
    result = finetune(encoder, cfg, train_set, test_set, ft, out_dir=out, votes=how.vote, eval_every=how.eval_every,
                      select_best_on_test=how.select_best_on_test, max_steps=how.max_steps, augment=jepa3d_data
                      .augmentation(ft.augment), meta={"task": how.task, "encoder_source": source}, **ctx.obj)
    _report({"command": "finetune", "task": how.task, "encoder": source, "data": optional(test_set, "name"), **result,
             "checkpoint": str(Path(out) / "finetuned.safetensors"),
             "protocol": {**result.pop("protocol"), **geometry}}, out)


@_command("linear-probe", EncoderSpec, "data", ProbeConfig, out="runs/linear-probe")
def _linear_probe(ctx, spec, data, probe, out):
    """Frozen encoder, concat(max, mean) features, linear classifier on the train split, test accuracy."""
    encoder, cfg, source, train_set, test_set = _open(ctx, spec, data)
    _report({"command": "linear-probe", "encoder": source,
             **linear_probe(encoder, cfg, train_set, test_set, probe, **ctx.obj)}, out)


@_command("few-shot", EncoderSpec, "data", FewShotConfig, out="runs/few-shot")
def _few_shot(ctx, spec, data, fs, out):
    """W-way S-shot episodes; reports mean +- std of the query accuracy over folds."""
    import jepa3d_data

    encoder, cfg, source, *splits = _open(ctx, spec, data, () if fs.fold_files else ("train", "test"))
    episodes = [jepa3d_data.read_fewshot_fold(Path(fs.fold_files), fs.way, fs.shot, fold, data["trust_pickle"])
                for fold in range(fs.folds)] if fs.fold_files else _usage(draw_episodes, *splits, fs, ctx.obj["seed"])
    result = few_shot(encoder, cfg, *(splits or (None, None)), fs, episodes=episodes, out_dir=out,
                      augment=jepa3d_data.augmentation(FinetuneConfig.augment), **ctx.obj)
    _report({"command": "few-shot", "encoder": source, **result}, out)


@_command("point-probe", EncoderSpec, "data", PointProbeConfig, out="runs/point-probe")
def _point_probe(ctx, spec, data, pp, out):
    """Per-point linear probe on frozen features: what each point's feature says about its
    part (a teacher-features cache of the built-in RGB-D videos, or a part dataset such as
    builtin-parts / ShapeNetPart). Reports point accuracy and mIoU."""
    import jepa3d_data

    data["dataset"] = data["dataset"] or (None if data["data"] else "builtin-parts")
    encoder, cfg, source, train_set, test_set = _open(ctx, spec, data)
    names = jepa3d_data.point_label_names(train_set)
    encoder, source = jepa3d_data.probed_features(pp.features, train_set, encoder, source)
    result = point_probe(encoder, dataclasses.replace(cfg, num_points=train_set[0][0].shape[-2]), train_set,
                         test_set, len(names), train_points=pp.train_points, test_points=pp.test_points,
                         device=ctx.obj["device"], seed=ctx.obj["seed"], names=names)
    print(f"point probe: accuracy {result['point_accuracy']:.2f}, mIoU {result['miou']:.2f}", file=sys.stderr)
    _report({"command": "point-probe", "encoder": source, "data": train_set.name, **result}, out)


@_command("embed", EncoderSpec, "data", EmbedConfig, options=lambda click, jd: (click.option(
    "--out", type=click.Path(dir_okay=False), default="features.npz",
    help="the .npz to write (the JSON result goes beside it, as <out>.json)"),))
def _embed(ctx, spec, data, how, out):
    """Write per-cloud features (and optionally per-patch tokens) to an .npz for other tools."""
    import jepa3d_data

    encoder, cfg, source, ds = _open(ctx, spec, data, (how.split,))
    feats = embed(encoder, cfg, ds, per_patch=how.per_patch, batch_size=how.batch_size, **ctx.obj)
    _report({"command": "embed", "encoder": source, "data": optional(ds, "name"), "split": how.split,
             "file": str(out), "arrays": jepa3d_data.write_features(out, feats, optional(ds, "classes")),
             "features": "concat(max, mean) of the last-layer tokens"}, f"{out}.json")


@_command("teacher-features", options=lambda click, jd: (
    click.option("--data", type=click.Path(), default=None, help="a TUM RGB-D or LiDAR + cameras folder (calib.json"
                 "); clouds (ModelNet40, ...) are rendered from --views cameras; default: the built-in RGB-D videos"),
    click.option("--dataset", type=click.Choice([*jd.PAIRED_TABLE, *jd.RENDERED_LAYOUTS]), default=None,
                 help="force the layout (builtin, builtin-scan: the built-in shapes, rendered)"),
    click.option("--out", type=click.Path(file_okay=False), default="runs/teacher-features",
                 help="cache folder (pretrain reads it with --data); an interrupted run resumes"),
    *_config_options(jd.TeacherFeaturesConfig)))
def _teacher_features(ctx, data, dataset, out, **cfg):
    """Cache a frozen 2D teacher's per-point features: every point takes the feature of the
    pixel it projects to (calibrated cameras, z-buffer visibility), float16, resumable.
    Then: jepa3d pretrain --data OUT --objective distill (or jepa+distill)."""
    import jepa3d_data

    t, cfg = time.time(), _usage(jepa3d_data.TeacherFeaturesConfig, **_given(cfg))
    meta = jepa3d_data.cache_teacher_features(out, data, dataset, cfg, progress_callback("chunks"), ctx.obj["device"])
    print(json.dumps({"command": "teacher-features", "out": str(out), **jepa3d_data.cache_summary(out, meta),
                      "seconds": round(time.time() - t, 1)}))


@_command("inspect", options=lambda click, jd: (
    click.argument("path", type=click.Path()),
    click.option("--dataset", type=click.Choice([*jd.LAYOUTS, "lidar-cameras"]), default=None, help="force a layout"),
    *_config_options(jd.ReadOptions, only=("num_points", "frames", "frame_stride", "intrinsics", "variant",
                                          "trust_pickle", "min_depth", "max_depth"))))
def _inspect(ctx, path, dataset, **read):
    """Show the layout detected at PATH, samples per split, classes, points per cloud (sequence
    data: sequences, frames, clips, points per frame) and problems."""
    import jepa3d_data

    report = jepa3d_data.inspect_data(path, dataset=dataset, **_given(read))
    print("\n".join(jepa3d_data.describe(report)), file=sys.stderr)
    print(json.dumps(report))
    if not any(s.get("samples") for s in report["splits"].values()):
        raise SystemExit(1)


@_command("plot", options=lambda click, jd: (click.argument("run", type=click.Path(exists=True, file_okay=False)),))
def _plot(ctx, run):
    """Draw RUN/curves.png from a pretraining run's metrics.jsonl (and probe.jsonl): loss against
    the batch-mean prediction's, the collapse monitors, the probe accuracy. Needs matplotlib."""
    import jepa3d_data

    try:
        print(json.dumps({"curves": str(jepa3d_data.plot_run(Path(run)))}))
    except ImportError:
        raise DataError("plotting needs matplotlib: pip install 'jepa3d[plot]'") from None


def make_cli():
    """The `jepa3d` click group with every command (click is imported here, not at import time)."""
    import click

    import jepa3d_data

    def cli(ctx, **kw):
        """jepa3d: 3D-JEPA self-supervised learning on point clouds, pure torch.

        Logs and progress go to stderr; each command prints one JSON result on stdout."""
        rt = RuntimeConfig(**_given(kw))
        try:
            device = resolve_device(rt.device)
            set_threads(rt.threads)
        except ValueError as err:
            raise click.BadParameter(str(err)) from None
        ctx.obj = {"device": device, "seed": rt.seed, "precision": rt.precision}

    for option in reversed(_config_options(RuntimeConfig)):
        cli = option(cli)
    cli = click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})(
        click.version_option(__version__, prog_name="jepa3d")(click.pass_context(cli)))
    for name, spec in _COMMANDS.items():
        cli.add_command(_click_command(click, jepa3d_data, name, *spec))
    return cli


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`jepa3d`, `python -m jepa3d`)."""
    make_cli()(args=argv, prog_name="jepa3d")
