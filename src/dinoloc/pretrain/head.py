"""DINO's projection head and multi-crop wrapper (same structure and parameter names as official DINO)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

# torch's parametrization names for the weight-normalised last layer vs official DINO's (the deprecated
# nn.utils.weight_norm it uses). Same tensors and shapes (g: (out_dim, 1), v: (out_dim, bottleneck)).
_PARAM_TO_OFFICIAL = {
    "last_layer.parametrizations.weight.original0": "last_layer.weight_g",
    "last_layer.parametrizations.weight.original1": "last_layer.weight_v",
}


def _rename(state: dict[str, torch.Tensor], mapping: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for old, new in mapping.items():
            if key == old or key.endswith("." + old):
                key = key[: len(key) - len(old)] + new
                break
        out[key] = value
    return out


def to_official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with the head's last layer under official DINO's keys (`last_layer.weight_g/weight_v`),
    so official DINO and Dino4Cells code can load and resume dinoloc checkpoints."""
    return _rename(state, _PARAM_TO_OFFICIAL)


def from_official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of to_official_keys (either form in, this module's parametrization keys out)."""
    return _rename(state, {v: k for k, v in _PARAM_TO_OFFICIAL.items()})


class DINOHead(nn.Module):
    """MLP (nlayers Linear with GELU) -> bottleneck -> L2-normalize -> weight-normed Linear(bottleneck, out_dim).

    With norm_last_layer the weight-norm magnitude g is fixed to 1 (not trained), which official DINO found to
    stabilise training. Weight init: truncated normal std 0.02, zero biases, as official.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
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
