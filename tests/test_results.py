"""The results contract (dinoloc.results): one writer, one reader, versioned result.json, image paths relative
to the data root."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dinoloc import results
from dinoloc.io import DinolocError
from dinoloc.ontology import CATEGORIES
from test_classify import P_COLS, make_data, run, small_params


def _manifest(ids) -> pd.DataFrame:
    return pd.DataFrame({"image_id": list(ids), "path": [f"T/{i}_proj.tif" for i in ids]})


@pytest.fixture(scope="module")
def cv():
    data = make_data()
    return run(data, small_params(epochs=1)), data


def _write(run_dir, cv, **extra):
    res, data = cv
    result = {**res.summary, "backbone": "x", "strategy": "mapping", "data": {"root": "/data"}, **extra}
    predictions = results.add_image_paths(res.predictions, _manifest(data[4]))
    results.write_run(run_dir, result, predictions, res.per_class)
    return res


def test_write_then_read_round_trips_and_marks_completion_last(tmp_path, cv):
    run_dir = tmp_path / "runs" / "x__mapping"
    assert results.load_result(run_dir) is None
    res = _write(run_dir, cv)
    assert {p.name for p in run_dir.iterdir()} == {"result.json", "predictions.csv", "per_class.csv"}
    assert (run_dir / "result.json").stat().st_mtime_ns >= (run_dir / "predictions.csv").stat().st_mtime_ns
    loaded = results.load_result(run_dir)
    assert loaded["result_version"] == results.RESULT_VERSION
    assert loaded["test_macro_f1_mean"] == pytest.approx(res.summary["test_macro_f1_mean"])
    back = results.read_run(run_dir)
    assert back.result["run_dir"] == str(run_dir)
    assert back.predictions[P_COLS].to_numpy().tolist() == res.predictions[P_COLS].to_numpy().tolist()
    assert list(back.predictions.columns[:5]) == ["image_id", "fold", "split", "target", "path"]
    assert back.predictions["path"].str.startswith("T/").all()
    assert len(back.per_class) == len(res.per_class)
    (run_dir / "result.json").write_text("{not json")
    with pytest.raises(DinolocError, match="result.json"):
        results.load_result(run_dir)


def test_column_lists_are_built_in_one_place():
    assert results.label_columns(["a", "b"]) == ["y_a", "y_b"]
    assert results.prob_columns(["a", "b"]) == ["p_a", "p_b"]
    cols = results.prediction_columns(CATEGORIES)
    assert cols[:5] == list(results.PREDICTION_KEY_COLUMNS) and len(cols) == 5 + 2 * len(CATEGORIES)


def test_writer_refuses_files_outside_the_contract(tmp_path, cv):
    res, _ = cv
    result = {**res.summary, "backbone": "x", "strategy": "mapping", "data": {"root": "/data"}}
    with pytest.raises(DinolocError, match=r"predictions\.csv lacks column\(s\) \['path'\]"):
        results.write_run(tmp_path / "r", result, res.predictions, res.per_class)
    with pytest.raises(DinolocError, match=r"lacks key\(s\) \['backbone'\]"):
        results.write_run(tmp_path / "r", {k: v for k, v in result.items() if k != "backbone"},
                          res.predictions.assign(path="a"), res.per_class)
    assert not (tmp_path / "r" / "result.json").exists()


@pytest.mark.parametrize("version, said", [(None, "no result_version"), (1, "result_version 1"),
                                           (99, "result_version 99")])
def test_reader_names_an_older_or_unknown_version(tmp_path, cv, version, said):
    run_dir = tmp_path / "r"
    _write(run_dir, cv)
    result = json.loads((run_dir / "result.json").read_text())
    result.pop("result_version")
    if version is not None:
        result["result_version"] = version
    (run_dir / "result.json").write_text(json.dumps(result))
    with pytest.raises(DinolocError, match=rf"r/result\.json has {said}.*reads result_version "
                                           rf"{results.RESULT_VERSION}.*force=true"):
        results.read_result(run_dir)
    assert results.load_result(run_dir) is None  # dinoloc-run recomputes such a row instead of reusing it


def test_image_paths_resolve_against_the_recorded_data_root(tmp_path):
    preds = pd.DataFrame({"image_id": ["b", "a"], "fold": 0, "split": "test", "target": "T"})
    out = results.add_image_paths(preds, _manifest(["a", "b", "c"]))
    assert list(out.columns) == ["image_id", "fold", "split", "target", "path"]
    assert out["path"].tolist() == ["T/b_proj.tif", "T/a_proj.tif"]
    with pytest.raises(DinolocError, match=r"not in the manifest, e\.g\. \['z'\]"):
        results.add_image_paths(preds.assign(image_id=["z", "a"]), _manifest(["a"]))
    (tmp_path / "T").mkdir()
    (tmp_path / "T" / "a_proj.tif").write_bytes(b"x")
    result = {"data": {"root": str(tmp_path)}, "run_dir": "/runs/x"}
    assert results.image_file(result, "T/a_proj.tif") == tmp_path / "T" / "a_proj.tif"
    with pytest.raises(DinolocError, match=r"T/b_proj\.tif not found .*data\.root=.*/runs/x/result\.json"):
        results.image_file(result, "T/b_proj.tif")


def test_run_folder_names():
    assert results.run_dir_name("hpa", "mapping", "mlp") == "hpa__mapping"
    assert results.run_dir_name("hpa", "mapping", "knn", "crop600") == "hpa__mapping__knn__crop600"
    assert results.result_run_name({"backbone": "hpa", "strategy": "native", "head": "linear"}) == "hpa__native__linear"
