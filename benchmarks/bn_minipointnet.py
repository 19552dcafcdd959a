"""`jepa3d` with Point-MAE's BatchNorm/ReLU mini-PointNet in place of jepa3d's LayerNorm/GELU
one, for issue 13's measurement only (its checkpoints hold BatchNorm buffers jepa3d itself does
not load; the in-run probe, --eval-every, reads the model directly):

    python benchmarks/bn_minipointnet.py --seed 0 pretrain --data ../shared/data/modelnet40 \
        --preset tiny --epochs 5 --eval-every 512 --eval-data ../shared/data/modelnet40 --out R
"""
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jepa3d  # noqa: E402


class LinearBNReLU(nn.Module):
    """Point-MAE's Conv1d(k=1) + BatchNorm1d + ReLU, on (..., C) tensors."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.lin, self.bn = nn.Linear(cin, cout), nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        return torch.relu(self.bn(h.reshape(-1, h.shape[-1])).reshape(h.shape))


class MiniPointNetBN(nn.Module):
    """Point-MAE's mini-PointNet: patches (..., K, 3) -> tokens (..., D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.first = nn.Sequential(LinearBNReLU(3, 128), nn.Linear(128, 256))
        self.second = nn.Sequential(LinearBNReLU(512, 512), nn.Linear(512, dim))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        h = self.first(patches)                                               # (..., K, 256)
        glob = h.amax(dim=-2, keepdim=True).expand_as(h)                      # (..., K, 256)
        return self.second(torch.cat([glob, h], -1)).amax(dim=-2)             # (..., D)


if __name__ == "__main__":
    jepa3d.MiniPointNet = MiniPointNetBN  # Encoder builds its patch embedding by this name
    sys.exit(jepa3d.main())
