"""Issue 27's done-when: every new preset extracts a small folder dataset with seeded random weights under each
strategy it supports (the others refused before any image is read); a lab's own family, from a module outside
the package, runs through extraction, the MLP and the report."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dinoloc.classify.stage import run_classification
from dinoloc.config import checked_spec, compose, data_spec, extract_spec, report_spec
from dinoloc.data.prepare import run_data
from dinoloc.extract.stage import check, run_extraction
from dinoloc.io import DinolocError
from dinoloc.report.stage import run_report
from test_folder_data import write_folder_dataset

# the folder's channels DNA, actin, protein named by role: nucleus, microtubules (stand-in), protein
ROLES = "data.channel_roles={DNA: nucleus, actin: microtubules}"
TINY = {
    "subcell": ["+backbone.model_kwargs.embed_dim=32", "+backbone.model_kwargs.depth=1",
                "+backbone.model_kwargs.num_heads=2", "+backbone.model_kwargs.pool_dim=16"],
    "openphenom": ["+backbone.model_kwargs.embed_dim=32", "+backbone.model_kwargs.depth=1",
                   "+backbone.model_kwargs.num_heads=2"],
    "channelvit": ["+backbone.model_kwargs.embed_dim=32", "+backbone.model_kwargs.depth=1",
                   "+backbone.model_kwargs.num_heads=2"],
    "cell_dino": ["+backbone.model_kwargs.embed_dim=32", "+backbone.model_kwargs.depth=1",
                  "+backbone.model_kwargs.num_heads=2"],
    "dinov3_vits16": ["+backbone.model_kwargs.embed_dim=32", "+backbone.model_kwargs.depth=1",
                      "+backbone.model_kwargs.num_heads=2"],
}
# strategy -> features per image for 3 data channels (None: refused); embed 32 (SubCell: 2 pooled heads = 64)
EXPECTED = {
    "subcell": {"mapping": 64, "replication": 3 * 64, "native": 64},   # variant rbg = exactly the data's channels
    "openphenom": {"mapping": 32, "replication": 3 * 32, "native": 32},
    "channelvit": {"mapping": 32, "replication": 3 * 32, "native": None},  # R, G, B: no data channel by that name
    "cell_dino": {"mapping": 4 * 32, "replication": 3 * 4 * 32, "native": 3 * 32},  # a bag of channels
    "dinov3_vits16": {"mapping": 32, "replication": 3 * 32, "native": None},
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("families") / "imgs"
    write_folder_dataset(root, n_groups=8, per_group=1, size=32, unlabelled_groups=0)
    return root


def _common(root, out) -> list[str]:
    return [f"paths.output_dir={out}", "data=folder", f"data.root={root}", "data.channels=[DNA,actin,protein]", ROLES,
            "backbone.weights=", "allow_random_weights=true", "backbone.preprocess.img_size=32",
            "extract.num_workers=0", "device=cpu", "data.split.n_folds=2"]


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_extracts_under_every_strategy_it_supports(preset, folder, tmp_path):
    seen = {}
    for strategy, n_features in EXPECTED[preset].items():
        cfg = compose([*_common(folder, tmp_path / "out"), f"backbone={preset}", f"strategy={strategy}", *TINY[preset]])
        if n_features is None:
            with pytest.raises(DinolocError, match="strategy=native"):
                check(extract_spec(cfg))
            continue
        check(extract_spec(cfg))
        spec = extract_spec(cfg)
        manifest, _ = run_data(data_spec(cfg))
        entry = run_extraction(spec, manifest)
        emb, ids = entry.load()
        assert ids == manifest["image_id"].tolist() and np.isfinite(emb).all()
        assert emb.shape == (len(manifest), n_features), (preset, strategy)
        assert entry.meta["random_weights"] is True and entry.meta["model"]["family"] == spec.backbone.family.rsplit(".")[-1]
        seen[strategy] = entry.meta["approach"]
    if EXPECTED[preset]["native"] is not None:
        if preset in ("openphenom", "cell_dino"):  # any channel count: every data channel fed, named in the report
            assert seen["native"] == "native (all 3: nucleus, microtubules, protein)"
        else:
            assert seen["native"] == "–"  # trained on exactly these channels
    assert seen["mapping"] == "mapping" and seen["replication"] == "replication"


def test_subcell_picks_its_variant_from_the_data(folder, tmp_path):
    common = [o for o in _common(folder, tmp_path / "out") if not o.startswith("backbone.weights")]
    bb = extract_spec(compose([*common, "backbone=subcell", *TINY["subcell"]])).backbone
    assert bb.channels == ("microtubules", "nucleus", "protein") and bb.display == "SubCell rbg"
    assert bb.weights.endswith("subcell/rbg/encoder.pth")
    opencell = compose([f"paths.output_dir={tmp_path / 'o'}", "backbone=subcell"])
    assert extract_spec(opencell).backbone.channels == ("nucleus", "protein")  # OpenCell -> bg


def test_channelvit_native_matches_channels_by_name(folder, tmp_path):
    """A ChannelViT whose channel embeddings are named as the data's roles takes them natively, by name."""
    names = "[protein,nucleus,microtubules]"  # another order than the data's: matched by name
    cfg = compose([*_common(folder, tmp_path / "out"), "backbone=channelvit", "strategy=native", *TINY["channelvit"],
                   f"backbone.channels={names}", f"backbone.model_kwargs.channels={names}",
                   "backbone.channel_map={protein: protein, nucleus: nucleus}"])
    check(extract_spec(cfg))
    manifest, _ = run_data(data_spec(cfg))
    entry = run_extraction(extract_spec(cfg), manifest)
    assert entry.load()[0].shape == (len(manifest), 32)
    assert entry.meta["approach"] == "native (all 3: nucleus, microtubules, protein)"


TOY_FAMILY = '''
"""A lab's own backbone family, outside dinoloc: mean-pooled patch features through one linear layer."""
import torch
from torch import nn

ANY_CHANNELS = False


class Toy(nn.Module):
    def __init__(self, in_chans, patch_size, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.embed_dim, self.patch_size, self.in_chans = embed_dim, patch_size, in_chans

    def forward(self, x):
        return self.proj(x).mean(dim=(-2, -1))


def create(arch, in_chans, img_size=224, patch_size=4, embed_dim=12):
    return Toy(in_chans, patch_size, embed_dim)


def state_from_checkpoint(obj, checkpoint_key, source):
    return obj["weights"]
'''

TOY_YAML = '''
# a lab's own backbone: its family named by import path
name: toy
display_name: Toy (lab)
family: mylab_toy_family
arch: toy_patch4
model_kwargs: {patch_size: 4, embed_dim: 12}
in_chans: 3
channels: [nucleus, microtubules, protein]
weights: ""
weights_sha256: null
checkpoint_key: teacher
dino_epochs: null
synthetic: false
channel_map: {protein: protein, nucleus: nucleus}
preprocess: {img_size: 32, spatial: resize, crop_size: 600, intensity: zscore, mean: null, std: null}
'''


def test_a_labs_own_family_runs_through_the_pipeline(folder, tmp_path, monkeypatch):
    """Module and YAML written outside src/: extraction, the MLP (few epochs) and the report, no dinoloc edit."""
    lab = tmp_path / "lab"
    (lab / "conf" / "backbone").mkdir(parents=True)
    (lab / "mylab_toy_family.py").write_text(textwrap.dedent(TOY_FAMILY))
    (lab / "conf" / "backbone" / "toy.yaml").write_text(TOY_YAML)
    monkeypatch.syspath_prepend(str(lab))
    common = [*_common(folder, tmp_path / "out"), f"hydra.searchpath=[file://{lab / 'conf'}]", "backbone=toy",
              "classifier.epochs=3", "experiment_name=lab", "report.embedding_maps=none"]
    for strategy in ("mapping", "replication", "native"):
        cfg = compose([*common, f"strategy={strategy}"])
        run_classification(checked_spec(cfg))
    run_report(report_spec(compose(common)))
    table = pd.read_csv(tmp_path / "out" / "reports" / "lab" / "table3.csv")
    assert len(table) == 3 and set(table["family"]) == {"mylab_toy_family"}
    assert list(table["strategy"]) == ["mapping", "replication", "native"]  # the strategies' own order
    for _, row in table.iterrows():
        res = json.loads((Path(row["run_dir"]) / "result.json").read_text())
        assert res["n_features"] == (3 * 12 if row["strategy"] == "replication" else 12)
        assert res["model_label"] == "toy/4" and res["embed_dim"] == 12  # from the model, not the arch name
    assert table.set_index("strategy").loc["native", "approach"] == "–"
