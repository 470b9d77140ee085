"""DINO's projection head and multi-crop wrapper (same structure and parameter names as official DINO)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """MLP (nlayers Linear with GELU) -> bottleneck -> L2-normalize -> weight-normed Linear(bottleneck, out_dim).

    With norm_last_layer the weight-norm magnitude g is fixed to 1 (not trained), which official DINO found to
    stabilise training. Weight init: truncated normal std 0.02, zero biases, as official. The sizes have no
    defaults: they come from the pretrain YAML.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        nlayers: int,
        hidden_dim: int,
        bottleneck_dim: int,
        *,
        norm_last_layer: bool,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        # parametrizations.weight_norm: original0 = g (magnitude, one per output row), original1 = v (direction).
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        if norm_last_layer:
            g.requires_grad = False

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    """backbone + head over a list of crops: consecutive crops of the same resolution go through the backbone
    as one batch (2 global crops together, then all local crops), outputs concatenated in input order."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        crops = [x] if isinstance(x, torch.Tensor) else list(x)
        outputs, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            out = self.backbone(torch.cat(crops[start:end]))
            outputs.append(out[0] if isinstance(out, tuple) else out)
            start = end
        return self.head(torch.cat(outputs))
