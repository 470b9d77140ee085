"""OpenCell reader: file names, images (layouts, channel order, bad files) and the annotation table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from dinoloc.data.opencell import (
    check_image_header,
    find_images,
    parse_fov_name,
    read_annotations,
    read_image,
)
from dinoloc.io import DinolocError
from dinoloc.ontology import CATEGORIES, grade_columns, label_columns

HEADER = "ensg_id,target_name,annotations_grade_3,annotations_grade_2,annotations_grade_1\n"


def _pair(h=20, w=24):
    nucleus = np.arange(h * w, dtype=np.uint16).reshape(h, w)
    protein = (nucleus + 40000).astype(np.uint16)
    return nucleus, protein


# ---- file names ---------------------------------------------------------------------------------


def test_parse_fov_name_real_example():
    d = parse_fov_name("some/dir/OC-FOV_ATL3_ENSG00000184743_CID000367_FID00030311_proj.tif")
    assert d == {"gene": "ATL3", "ensg_id": "ENSG00000184743", "cell_line": "CID000367", "fov": "FID00030311"}


@pytest.mark.parametrize(
    "name",
    ["OC-FOV_ATL3_ENSG00000184743_CID000367_FID00030311_stack.tif", "ATL3_proj.tif", "OC-FOV_ATL3_proj.tif"],
)
def test_parse_fov_name_rejects(name):
    with pytest.raises(DinolocError, match=name):
        parse_fov_name(name)


# ---- images -------------------------------------------------------------------------------------


def test_read_image_channel_first_is_reordered_to_protein_nucleus(tmp_path):
    nucleus, protein = _pair()
    p = tmp_path / "cf.tif"
    tifffile.imwrite(p, np.stack([nucleus, protein]))
    img = read_image(p)
    assert img.dtype == np.float32 and img.shape == (2, 20, 24)
    np.testing.assert_array_equal(img[0], protein.astype(np.float32))
    np.testing.assert_array_equal(img[1], nucleus.astype(np.float32))
    assert check_image_header(p) == (20, 24)


def test_read_image_channel_last(tmp_path):
    nucleus, protein = _pair()
    p = tmp_path / "cl.tif"
    tifffile.imwrite(p, np.stack([nucleus, protein], axis=-1), photometric="minisblack", planarconfig="contig")
    img = read_image(p)
    assert img.shape == (2, 20, 24)
    np.testing.assert_array_equal(img[0], protein)
    np.testing.assert_array_equal(img[1], nucleus)
    assert check_image_header(p) == (20, 24)


def test_read_image_ambiguous_2x2_prefers_channel_first(tmp_path):
    arr = np.arange(8, dtype=np.uint16).reshape(2, 2, 2)
    p = tmp_path / "tiny.tif"
    tifffile.imwrite(p, arr)
    img = read_image(p, min_size=1)
    np.testing.assert_array_equal(img[0], arr[1])  # channel axis 0: protein is arr[1]


def _write(path, arr, **kw):
    tifffile.imwrite(path, arr, **kw)
    return path


@pytest.mark.parametrize(
    "arr,kw,msg",
    [
        (np.zeros((20, 24), np.uint16), {}, "1 channel"),
        (np.zeros((3, 20, 24), np.uint16), {"photometric": "minisblack"}, "2-channel"),
        (np.zeros((4, 20, 24), np.uint16), {"photometric": "minisblack"}, "2-channel"),
        (np.zeros((20, 24, 3), np.uint16), {"photometric": "rgb"}, "2-channel"),
        (np.zeros((2, 20, 24), np.uint8), {}, "uint8"),
        (np.zeros((2, 20, 24), np.float32), {}, "float32"),
        (np.zeros((2, 8, 24), np.uint16), {}, "smaller than the minimum 16"),
    ],
)
def test_bad_images_rejected_by_reader_and_header_check(tmp_path, arr, kw, msg):
    p = _write(tmp_path / "bad.tif", arr, **kw)
    for fn in (read_image, check_image_header):
        with pytest.raises(DinolocError, match=msg) as e:
            fn(p)
        assert str(p) in str(e.value)


def test_missing_zero_byte_and_garbage_files(tmp_path):
    missing = tmp_path / "missing.tif"
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"this is not a tiff at all")
    for p, msg in ((missing, "not found"), (empty, "unreadable TIFF"), (garbage, "unreadable TIFF")):
        for fn in (read_image, check_image_header):
            with pytest.raises(DinolocError, match=msg) as e:
                fn(p)
            assert str(p) in str(e.value)


@pytest.mark.parametrize("cut", [1, 500, 2100])
def test_truncated_tiff_detected_from_header(tmp_path, cut):
    nucleus, protein = _pair(32, 32)
    full = _write(tmp_path / "full.tif", np.stack([nucleus, protein]))
    data = full.read_bytes()
    p = tmp_path / "cut.tif"
    p.write_bytes(data[: len(data) - cut])
    for fn in (read_image, check_image_header):
        with pytest.raises(DinolocError, match="truncated|unreadable") as e:
            fn(p)
        assert str(p) in str(e.value)


# ---- find_images --------------------------------------------------------------------------------


def test_find_images_layout_and_stack_ignored(write_opencell_tree):
    root, _ = write_opencell_tree(n_targets=3, images_per_target=2)
    # A z-stack next to the projections must be ignored.
    some = next(root.glob("GENE001_*"))
    (some / "OC-FOV_GENE001_ENSG00000000001_CID000001_FID99999999_stack.tif").write_bytes(b"x")
    df = find_images(root)
    assert list(df.columns) == ["image_id", "path", "target", "ensg_id"]
    assert len(df) == 6 and df["image_id"].is_monotonic_increasing
    row = df.iloc[0]
    assert row["path"] == f"GENE000_ENSG00000000000/{row['image_id']}_proj.tif"
    assert row["target"] == "GENE000" and row["ensg_id"] == "ENSG00000000000"
    assert not df["image_id"].str.endswith("_stack").any()


def test_find_images_errors(tmp_path, write_opencell_tree):
    with pytest.raises(DinolocError, match="not found"):
        find_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DinolocError, match="OC-FOV_<gene>"):
        find_images(tmp_path / "empty")
    root, _ = write_opencell_tree(n_targets=2, images_per_target=1)
    src = next(root.rglob("*_proj.tif"))
    (root / "copy").mkdir()
    (root / "copy" / src.name).write_bytes(src.read_bytes())
    with pytest.raises(DinolocError, match="twice") as e:
        find_images(root)
    assert f"copy/{src.name}" in str(e.value) and src.relative_to(root).as_posix() in str(e.value)


# ---- annotations --------------------------------------------------------------------------------


def _csv(tmp_path, body, name="ann.csv"):
    p = tmp_path / name
    p.write_text(HEADER + body, encoding="utf-8")
    return p


def test_annotation_labels_by_min_grade_highest_grade_wins(tmp_path):
    p = _csv(
        tmp_path,
        "ENSG1,A,er;golgi,membrane,golgi\n"  # golgi at grades 3 and 1: 3 wins
        "ENSG2,B,,,cytoplasmic\n"
        "ENSG3,C,,,\n",
    )
    g = {m: read_annotations(p, min_grade=m) for m in (1, 2, 3)}
    a1 = g[1].set_index("ensg_id")
    assert list(g[1].columns) == ["ensg_id", "target_name", *label_columns(), *grade_columns()]
    assert a1.loc["ENSG1", "grade_golgi"] == 3 and a1.loc["ENSG1", "grade_membrane"] == 2
    assert a1.loc["ENSG2", "grade_cytoplasmic"] == 1 and a1.loc["ENSG1", "grade_vesicles"] == 0
    pos = {m: {e: set(np.array(CATEGORIES)[g[m].set_index("ensg_id").loc[e, label_columns()].to_numpy() == 1])
               for e in ("ENSG1", "ENSG2", "ENSG3")} for m in (1, 2, 3)}
    assert pos[1] == {"ENSG1": {"er", "golgi", "membrane"}, "ENSG2": {"cytoplasmic"}, "ENSG3": set()}
    assert pos[2] == {"ENSG1": {"er", "golgi", "membrane"}, "ENSG2": set(), "ENSG3": set()}
    assert pos[3] == {"ENSG1": {"er", "golgi"}, "ENSG2": set(), "ENSG3": set()}
    # Grades do not depend on the cut-off; labels are ints.
    pd.testing.assert_frame_equal(g[1][grade_columns()], g[3][grade_columns()])
    assert g[1][label_columns()].dtypes.eq(np.int64).all()


@pytest.mark.parametrize("bad", [0, 4, 1.5, True])
def test_min_grade_validated(tmp_path, bad):
    with pytest.raises(DinolocError, match="min_grade"):
        read_annotations(_csv(tmp_path, "ENSG1,A,er,,\n"), min_grade=bad)


def test_annotation_errors_name_file_and_row(tmp_path):
    with pytest.raises(DinolocError, match="not found"):
        read_annotations(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DinolocError, match="empty") as e:
        read_annotations(empty)
    assert str(empty) in str(e.value)

    latin = tmp_path / "latin.csv"
    latin.write_bytes(HEADER.encode() + b"ENSG1,A,er,,\nENSG2,Caf\xe9,er,,\n")
    with pytest.raises(DinolocError, match=r"line 3 \(row 2.*UTF-8") as e:
        read_annotations(latin)
    assert str(latin) in str(e.value)

    cols = tmp_path / "cols.csv"
    cols.write_text("ensg_id,target_name,annotations_grade_3\nENSG1,A,er\n")
    with pytest.raises(DinolocError, match="annotations_grade_2, annotations_grade_1") as e:
        read_annotations(cols)
    assert str(cols) in str(e.value)

    unknown = _csv(tmp_path, "ENSG1,A,er,,\nENSG2,B,er;lysosome,,\n", "unknown.csv")
    with pytest.raises(DinolocError, match=r"row 2 .*lysosome.*nucleolus_fc_dfc") as e:
        read_annotations(unknown)
    assert str(unknown) in str(e.value)

    dup = _csv(tmp_path, "ENSG1,A,er,,\nENSG2,B,er,,\nENSG1,C,er,,\n", "dup.csv")
    with pytest.raises(DinolocError, match=r"row 3 .*duplicated ensg_id ENSG1 \(also row 1\)"):
        read_annotations(dup)
    dup_name = _csv(tmp_path, "ENSG1,A,er,,\nENSG2,A,er,,\n", "dupname.csv")
    with pytest.raises(DinolocError, match=r"row 2 .*duplicated target_name A"):
        read_annotations(dup_name)


def test_source_is_a_typed_value_whose_read_fn_reads_the_channels_it_names(tmp_path):
    """extract.stage.source() returns the reader's frozen Source: under mapping a folder's DNA (role nucleus) and
    protein are read in the order source_channels names, actin is left out, and the cache-key fields say so;
    OpenCell's Source adds no cache-key field (its keys stay as they were)."""
    import dataclasses

    from dinoloc.config import compose, extract_spec
    from dinoloc.data.reader import Source, get_reader
    from dinoloc.extract.stage import source

    image = np.stack([np.full((4, 5), v, np.uint16) for v in (10, 20, 30)])  # DNA, actin, protein
    tifffile.imwrite(tmp_path / "a.tif", image)
    spec = extract_spec(compose(["data=folder", f"data.root={tmp_path}", "data.channels=[DNA,actin,protein]",
                                 "data.channel_roles={DNA: nucleus}", "strategy=mapping"]))
    src = source(spec)
    assert isinstance(src, Source)
    assert src.source_channels == ("nucleus", "protein") and src.left_out == ("actin",)
    assert src.channel_map == {"nucleus": "G", "protein": "R"}  # imagenet_demo: protein -> R, nucleus -> G
    assert src.fields == {"data_channels": ["DNA", "actin", "protein"], "source_channels": ["nucleus", "protein"]}
    pixels = src.read_fn(get_reader("folder").item(tmp_path, "a.tif"))
    assert pixels.shape == (2, 4, 5) and pixels[:, 0, 0].tolist() == [10.0, 30.0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        src.left_out = ()  # type: ignore[misc]
    opencell = source(extract_spec(compose([])))
    assert opencell.source_channels == ("protein", "nucleus") and opencell.fields == {} and opencell.left_out == ()
