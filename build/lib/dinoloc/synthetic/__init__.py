"""SYNTHETIC demo data in the real on-disk formats (`dinoloc-synth`), so the whole study runs end to end
without the real downloads. Demo tooling, not a data reader: nothing here is real microscopy, every output
says so, and everything is deterministic per seed (byte-identical files) and vectorised (numpy +
scipy.ndimage), so the default set takes seconds on one core.

- `cells`: the geometry of a field of view (touching cells, nuclei, nucleoli, centrosomes) and the
  drawing primitives.
- `patterns`: one protein painter per category of the 17, the Hoechst stain, the camera model.
- `opencell`: the OpenCell-like dataset (`opencell/`) in the distributed layout, its labels and contact sheet.
- `standins`: the unlabelled pretraining stand-ins (`hpa_like/` 4-channel cells, `natural_like/` RGB scenes).
- `files`: the SYNTHETIC notes, the TIFF writer, the image-size check.
- `generate`: the whole set (`generate_all`, sizes from configs/data/synthetic.yaml) and the `dinoloc-synth`
  console command.
"""
