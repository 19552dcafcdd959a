"""Matmul FLOPs of one jepa3d pretraining step, counted analytically: the denominator of the
speed benchmark's share of the machine's matmul rate (bench_speed.py). Checked against torch's
FlopCounterMode in tests/test_model.py."""

from __future__ import annotations

import jepa3d


def step_flops(cfg: jepa3d.ModelConfig, batch: int, context: float, targets: int) -> float:
    """Matmul FLOPs of one pretraining step, counted analytically (2 per multiply-add; norms,
    activations and the optimizer left out, as MFU figures do). `context` is the context
    length computed on (the padded Nc, stat `context_padded`), `targets` the patches per target
    block T. Trainable parts count 3x (forward + backward), the EMA teacher 1x. Checked against
    torch's FlopCounterMode in the tests."""
    G, K, D, Dp, M = cfg.num_groups * cfg.token_frames(), cfg.group_size, cfg.dim, cfg.pred_dim, cfg.num_targets
    c = jepa3d.coords(cfg)  # position MLP inputs: 3, or 4 for clips (a clip has token_frames * num_groups patches)
    cin = 3  # mini-PointNet inputs; a tube token holds (2r+1) * K points of (dx, dy, dz, dt)
    if cfg.uses_tubes():
        K, cin = K * (2 * cfg.tube_radius + 1), 4

    def block(rows: float, length: float, width: int, kv_length: float = 0) -> float:
        """A Transformer block over `rows` sequences of `length` tokens (+ cross-attention to
        kv_length context tokens, whose keys/values are computed once per cloud)."""
        hidden = int(width * cfg.mlp_ratio)
        f = rows * length * (2 * width * 3 * width + 2 * width * width + 4 * width * hidden)  # qkv, proj, MLP
        f += rows * 4 * length * length * width                                             # QK^T, AV
        if kv_length:
            f += rows * length * 4 * width * width + batch * kv_length * 4 * width * width  # q + proj, kv
            f += rows * 4 * length * kv_length * width
        return f

    def encoder(n: float) -> float:  # B clouds of n patches
        embed = batch * n * (K * 2 * (cin * 128 + 128 * 256 + 256 * 512 + 512 * D) + 2 * 256 * 512)
        return embed + batch * n * 2 * (c * 128 + 128 * D) + cfg.depth * block(batch, n, D)

    rows = M * batch
    pred = batch * context * 2 * (D * Dp + c * 128 + 128 * Dp) + rows * targets * 2 * (c * 128 + 128 * Dp)
    if cfg.predictor == "cross":
        pred += cfg.pred_depth * block(rows, targets, Dp, kv_length=context)
    else:
        pred += cfg.pred_depth * block(rows, context + targets, Dp)
    pred += rows * targets * 2 * Dp * D                                                      # out
    # distill: the student also encodes the whole cloud; its head runs on (at most) every point
    distill = 3 * (encoder(G) + batch * cfg.num_points * cfg.frames * 2 * D * (D + cfg.teacher_dim)) \
        if "distill" in cfg.objective else 0.0
    if not jepa3d.OBJECTIVES[cfg.objective].masked:
        return distill
    if cfg.objective == "reconstruct":
        return 3 * (encoder(context) + pred + rows * targets * 2 * D * K * 3)
    return 3 * (encoder(context) + pred) + encoder(G) + distill
