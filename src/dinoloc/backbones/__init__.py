"""Backbones: timm ViTs whose forward pass returns DINO's embedding, and strict DINO checkpoint loading.

One loader reads every weight file the study uses: the official backbone-only release
(`dino_vitbase8_pretrain.pth`, a plain state dict), full DINO training checkpoints
(`{student, teacher, optimizer, epoch, args, dino_loss}`: Dino4Cells' HPA model and our own OpenCell
pretraining), and `{"state_dict": ...}` / `{"model": ...}` wrappers. Loading is strict on purpose: a key or
shape that does not fit is an error, never a silently random layer.

- `spec`: the `backbone` config group as a typed spec (BackboneSpec, PreprocessSpec; its keys' rules);
- `vit`: the model (`create_vit`) and official DINO's position-embedding interpolation;
- `weights`: where weights come from (files, URLs, timm names, random init), fingerprints and display names;
- `checkpoint`: reading checkpoints and loading them strictly;
- `build`: `build_backbone`, the model with its weights;
- `families`: one module per backbone family (found by the YAML's `family:`);
- `classical`: `backbone=classical`, CellProfiler-style measurements (the classical reference).
Names are imported from the module that defines them (this file re-exports nothing, so importing a light
module such as `params` or `spec` does not import the heavy ones).
"""
