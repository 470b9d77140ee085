"""SubCell (Lundberg lab; CellProfiling/SubCellPortable): a ViT-B/16 trained on HPA single-cell crops, pooled by a
gated attention pooler into a 1536-d embedding, with one model per channel subset (rybg, rbg, ybg, bg).

Release layout (SubCellPortable @676f0e1 vit_model.py `ViTPoolClassifier.load_model_dict`, model_config.yaml):
`models/<variant>/<type>/encoder.pth`, a plain state dict of the Hugging Face ViT under `encoder.`
(`encoder.embeddings.{cls_token, position_embeddings, patch_embeddings.projection.*}`,
`encoder.encoder.layer.<i>.{layernorm_before, attention.attention.{query,key,value}, attention.output.dense,
layernorm_after, intermediate.dense, output.dense}.*`, `encoder.layernorm.*`) and the pooler under `pool_model.`
whose Sequential index is 1 in the file (`pool_model.attention_v.1.*`, `attention_u.1.*`, `attention.*`).
Here the ViT is timm's (same computation: pre-norm blocks, exact GELU, LayerNorm eps 1e-12, q/k/v fused into
timm's qkv), so the conversion is a key rename plus the q/k/v concatenation.
Channels: r = microtubules, y = ER, b = nucleus, g = protein (README); the embedding is the pooler's output.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import torch
from torch import nn

from dinoloc.backbones.families import unwrap
from dinoloc.io import DinolocError

ANY_CHANNELS = False
LETTERS = {"r": "microtubules", "y": "er", "b": "nucleus", "g": "protein"}  # SubCellPortable README


class GatedAttentionPool(nn.Module):
    """Gated attention pooling over all tokens (tanh and GELU branches, one softmax per head), heads concatenated."""

    def __init__(self, dim: int, int_dim: int, num_heads: int) -> None:
        super().__init__()
        self.attention_v = nn.Sequential(nn.Linear(dim, int_dim), nn.Tanh())
        self.attention_u = nn.Sequential(nn.Linear(dim, int_dim), nn.GELU())
        self.attention = nn.Linear(int_dim, num_heads)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = self.attention(self.attention_v(tokens) * self.attention_u(tokens)).softmax(dim=1)  # B, N, heads
        return torch.einsum("bnh,bnd->bhd", weights, tokens).flatten(1)


class SubCellEncoder(nn.Module):
    def __init__(self, in_chans: int, img_size: int, embed_dim: int, depth: int, num_heads: int, patch_size: int,
                 pool_dim: int, pool_heads: int) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.vit = VisionTransformer(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0, global_pool="",
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-12), dynamic_img_size=True,
        )
        self.pool = GatedAttentionPool(embed_dim, pool_dim, pool_heads)
        self.embed_dim, self.patch_size, self.in_chans = embed_dim * pool_heads, patch_size, in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.vit.forward_features(x))


def create(arch: str, in_chans: int, img_size: int = 448, *, embed_dim: int = 768, depth: int = 12,
           num_heads: int = 12, patch_size: int = 16, pool_dim: int = 512, pool_heads: int = 2) -> nn.Module:
    """SubCell's encoder (defaults: model_config.yaml's ViT-B/16, pool_model {int_dim 512, num_heads 2})."""
    return SubCellEncoder(in_chans, img_size, embed_dim, depth, num_heads, patch_size, pool_dim, pool_heads)


def create_for_checkpoint(state: dict[str, torch.Tensor], arch: str, in_chans: int, img_size: int = 448,
                          **model_kwargs: Any) -> nn.Module:
    """Built at the checkpoint's grid (448 px for the release); other sizes are interpolated at forward time."""
    from dinoloc.backbones.families import checkpoint_img_size

    size = checkpoint_img_size(state.get("vit.pos_embed"), model_kwargs.get("patch_size", 16), img_size)
    return create(arch, in_chans, size, **model_kwargs)


_LAYER = {
    "layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
}


def state_from_checkpoint(obj: Any, checkpoint_key: str, source: str) -> dict[str, torch.Tensor]:
    sd = unwrap(obj, source)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.startswith("pool_model."):
            out["pool." + re.sub(r"^(attention_[uv])\.1\.", r"\1.0.", key[len("pool_model."):])] = value
            continue
        if not key.startswith("encoder."):
            out[key] = value  # not SubCell's: left for the strict load to list as unexpected
            continue
        k = key[len("encoder."):]
        fixed = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed"}
        if k in fixed:
            out["vit." + fixed[k]] = value
        elif k.startswith("embeddings.patch_embeddings.projection."):
            out["vit.patch_embed.proj." + k.rsplit(".", 1)[1]] = value
        elif k.startswith("layernorm."):
            out["vit.norm." + k.rsplit(".", 1)[1]] = value
        elif m := re.match(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$", k):
            qkv.setdefault(f"vit.blocks.{m.group(1)}.attn.qkv.{m.group(3)}", {})[m.group(2)] = value
        elif m := re.match(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", k):
            if m.group(2) not in _LAYER:
                out[key] = value
                continue
            out[f"vit.blocks.{m.group(1)}.{_LAYER[m.group(2)]}.{m.group(3)}"] = value
        else:
            out[key] = value
    for name, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise DinolocError(f"{source}: {name} lacks {sorted({'query', 'key', 'value'} - set(parts))}")
        out[name] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def configure(backbone: dict[str, Any], data_channels: list[str]) -> dict[str, Any]:
    """backbone.variant=auto: the variant using the most of the data's channels (every one of its channels
    present); none fits -> rybg, which mapping and replication can still feed. `{variant}` in the weights path
    and the display name is the chosen variant."""
    variants: dict[str, list[str]] = {v: [LETTERS[c] for c in v] for v in backbone.get("variants") or []}
    if not variants:
        raise DinolocError("backbone.variants is empty; list SubCell's channel subsets, e.g. [rybg, rbg, ybg, bg]")
    variant = str(backbone.get("variant") or "auto")
    if variant == "auto":
        fits = [v for v, ch in variants.items() if set(ch) <= set(data_channels)]
        variant = max(fits, key=lambda v: len(v)) if fits else max(variants, key=len)
    if variant not in variants:
        raise DinolocError(f"backbone.variant={variant!r} is not one of {list(variants)} or auto")
    out = dict(backbone)
    out["variant"], out["channels"], out["in_chans"] = variant, variants[variant], len(variants[variant])
    out["weights"] = str(backbone.get("weights") or "").replace("{variant}", variant)
    out["display_name"] = str(backbone.get("display_name") or "SubCell {variant}").replace("{variant}", variant)
    out["channel_map"] = {k: v for k, v in (backbone.get("channel_map") or {}).items() if v in variants[variant]}
    return out
