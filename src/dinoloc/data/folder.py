"""Any image folder with a labels CSV (`data=folder`): the generic reader behind the manifest.

`data.annotations` (default `<data.root>/labels.csv`) has one row per image:

- `image`: the path relative to `data.root`; a TIFF (any channel count, channel-first or channel-last,
  8/16-bit or float) or a PNG / JPEG;
- `group` (optional): the unit that never crosses splits (protein, patient, plate, ...); default the image;
- `labels`: class names separated by `;`; empty = unlabelled. Single-label data has one name per row.

`data.channels` names the files' channels in order; `data.classes` (optional) fixes the class list and its
order, else it is the sorted union of the labels. The manifest has the same layout as OpenCell's minus
OpenCell's own columns: image_id (= the relative path), path, target (= the group), labeled, one 0/1
column per class; `manifest.attrs["classes"]` carries the class list.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import tifffile

from dinoloc.io import DinolocError

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
CSV_HELP = ("columns image (path relative to data.root), optional group, labels (class names separated by ';', "
            "empty = unlabelled)")
DROP_ROLES = (None, "", "none", "null")


# ----------------------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------------------
def _suffix(path: str | os.PathLike) -> str:
    return Path(path).suffix.lower()


def image_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The stored array shape, from the header only (TIFF: series shape; PNG/JPEG: (H, W[, bands]))."""
    suffix = _suffix(path)
    try:
        if suffix in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tf:
                shape = tuple(int(s) for s in tf.series[0].shape)
            return tuple(s for s in shape if s != 1) if len(shape) > 3 else shape
        if suffix in PIL_SUFFIXES:
            from PIL import Image

            with Image.open(path) as im:
                bands = len(im.getbands())
                return (im.height, im.width) if bands == 1 else (im.height, im.width, bands)
    except Exception as err:  # tifffile / PIL raise many types on damaged files
        raise DinolocError(f"{path}: unreadable image ({type(err).__name__}: {err}); replace or remove it") from err
    raise DinolocError(
        f"{path}: unsupported file type {suffix!r}; use TIFF ({', '.join(TIFF_SUFFIXES)}) or PNG / JPEG"
    )


def channel_axis(shape: tuple[int, ...], n_channels: int) -> int | None:
    """0 (channel-first), -1 (channel-last), or None for a 2-D single-channel image; raises ValueError when the
    shape holds no axis of n_channels at either end."""
    if len(shape) == 2:
        if n_channels == 1:
            return None
        raise ValueError(f"a single-channel image of shape {shape}")
    if len(shape) != 3:
        raise ValueError(f"shape {shape} is not (C, H, W), (H, W, C) or (H, W)")
    if shape[0] == n_channels:
        return 0
    if shape[-1] == n_channels:
        return -1
    raise ValueError(f"shape {shape} has {shape[0]} or {shape[-1]} channels")


def read_folder_image(path: str | os.PathLike, n_channels: int, keep: Sequence[int] | None = None) -> np.ndarray:
    """One image as float32 (C, H, W) in data.channels order (values kept: 8/16-bit counts or floats); `keep`
    selects channels (the mapping strategy's placed channels)."""
    path = Path(path)
    if not path.is_file():
        raise DinolocError(f"{path}: image file not found; check data.root and the labels CSV")
    try:
        if _suffix(path) in TIFF_SUFFIXES:
            arr = np.asarray(tifffile.imread(path))
            if arr.ndim > 3:
                arr = arr.reshape([s for s in arr.shape if s != 1])
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
    except Exception as err:
        raise DinolocError(f"{path}: unreadable image ({type(err).__name__}: {err}); replace or remove it") from err
    try:
        axis = channel_axis(arr.shape, n_channels)
    except ValueError as e:
        raise DinolocError(f"{path}: {e}, but data.channels names {n_channels}; fix data.channels or the file") from e
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DinolocError(f"{path}: pixel type {arr.dtype} is not a real number type")
    arr = arr[None] if axis is None else (np.moveaxis(arr, -1, 0) if axis == -1 else arr)
    if keep is not None:
        arr = arr[list(keep)]
    return np.ascontiguousarray(arr, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------
# channels: data names -> the names backbones know
# ----------------------------------------------------------------------------------------------------------
def channel_roles(channels: Sequence[str], roles: Mapping[str, str | None] | None) -> list[str | None]:
    """Each data channel's role: `roles[name]` (e.g. DNA -> nucleus), else the name itself; None = left out by
    channel mapping (data.channel_roles: {name: null})."""
    roles = dict(roles or {})
    unknown = sorted(set(roles) - set(channels))
    if unknown:
        raise DinolocError(f"data.channel_roles names {unknown}, which are not in data.channels={list(channels)}")
    out = []
    for c in channels:
        r = roles.get(c, c)
        out.append(None if r is None or str(r).lower() in DROP_ROLES else str(r))
    named = [r for r in out if r is not None]
    if len(set(named)) != len(named):
        raise DinolocError(f"data.channel_roles gives two channels the same role: {dict(zip(channels, out, strict=True))}")
    return out


def mapping_plan(
    channels: Sequence[str], roles: Sequence[str | None], backbone_channels: Sequence[str],
    channel_map: Mapping[str, str],
) -> tuple[list[int], list[str], dict[str, str]]:
    """For strategy=mapping: (indices of the data channels kept, their roles, role -> backbone channel).

    A role goes where backbone.channel_map sends it, else into the backbone channel of the same name
    (an HPA backbone has an `er` channel). A channel with role None, or with no place in this backbone (an ER
    channel on an RGB backbone), is left out, as the paper leaves B = 0: the cache key and result.json list the
    channels used (`source_channels`), and `source_setup` names the ones left out."""
    keep, kept_roles, plan, unplaced = [], [], {}, []
    for i, (c, r) in enumerate(zip(channels, roles, strict=True)):
        if r is None:
            continue
        dest = channel_map.get(r) or (r if r in backbone_channels else None)
        if dest is None:
            unplaced.append(c)
            continue
        keep.append(i)
        kept_roles.append(r)
        plan[r] = dest
    if not keep:
        raise DinolocError(
            f"strategy=mapping: no data channel of {list(channels)} has a place in the backbone (channels "
            f"{list(backbone_channels)}, channel_map {dict(channel_map)}). Give them roles the backbone knows in "
            "data.channel_roles, e.g. {DNA: nucleus, GFP: protein}"
        )
    return keep, kept_roles, plan


def display_pair(path: str | os.PathLike, channels: Sequence[str],
                 roles: Mapping[str, str | None] | None = None) -> np.ndarray:
    """(2, H, W) = the channels shown as protein and nucleus in Figure 2: those whose role is protein / nucleus,
    else the last and the first channel."""
    image = read_folder_image(path, len(channels))
    r = channel_roles(channels, roles)
    protein = r.index("protein") if "protein" in r else len(channels) - 1
    nucleus = r.index("nucleus") if "nucleus" in r else 0
    return image[[protein, nucleus]]


# ----------------------------------------------------------------------------------------------------------
# the labels CSV -> manifest
# ----------------------------------------------------------------------------------------------------------
def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DinolocError(f"{path}: labels CSV not found; set data.annotations (default <data.root>/labels.csv) "
                           f"with {CSV_HELP}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DinolocError(f"{path}: not valid UTF-8 (byte {err.start}); re-save it as UTF-8") from err
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as err:
        raise DinolocError(f"{path}: not a readable CSV ({err}); expected {CSV_HELP}") from err
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("image", "labels") if c not in table.columns]
    if missing:
        raise DinolocError(f"{path}: missing column(s) {missing}; expected {CSV_HELP}")
    if table.empty:
        raise DinolocError(f"{path}: header only, no images; add one row per image")
    return table


def build_folder_manifest(
    root: str | os.PathLike,
    annotations: str | os.PathLike,
    channels: Sequence[str],
    classes: Sequence[str] | None = None,
    *,
    group_by: str = "target",
    validate_images: bool = True,
) -> pd.DataFrame:
    """The manifest of a labels-CSV folder (see the module doc). Every error names the CSV line and the fix."""
    root, path = Path(root), Path(annotations)
    channels = [str(c) for c in channels or []]
    if not channels or len(set(channels)) != len(channels):
        raise DinolocError(f"data.channels={channels}: list the images' channel names in order, each once "
                           "(e.g. [DNA, actin, protein])")
    table = _read_csv(path)
    given = None if classes is None else [str(c).strip() for c in classes]
    if given is not None and (not given or len(set(given)) != len(given) or "" in given):
        raise DinolocError(f"data.classes={list(classes)}: list each class name once, or null for the sorted "
                           "union of the labels")
    has_group = "group" in table.columns
    seen: dict[str, int] = {}
    rows, labels = [], []
    for i, rec in enumerate(table.to_dict("records")):
        line = i + 2  # the header is line 1
        where = f"{path}: line {line}"
        raw = str(rec["image"]).strip()
        if not raw:
            raise DinolocError(f"{where}: empty image path; fill it in or delete the row")
        rel = PurePosixPath(raw.replace("\\", "/")).as_posix()
        if rel in seen:
            raise DinolocError(f"{where}: image {rel} is listed twice (also line {seen[rel]}); keep one row per "
                               "image (put several labels in one row, separated by ';')")
        seen[rel] = line
        file = root / rel
        if not file.is_file():
            raise DinolocError(f"{where}: image {rel} not found under data.root={root}; fix the path or delete the row")
        if validate_images:
            try:
                channel_axis(image_shape(file), len(channels))
            except ValueError as e:
                raise DinolocError(
                    f"{where}: image {rel} has {e}, but data.channels lists {len(channels)} ({', '.join(channels)}); "
                    "fix data.channels or the file"
                ) from e
        names = [n.strip() for n in str(rec["labels"]).split(";") if n.strip()]
        if given is not None:
            bad = [n for n in names if n not in given]
            if bad:
                raise DinolocError(f"{where}: class(es) {bad} not in data.classes={given}; fix the name or add it "
                                   "to data.classes")
        group = str(rec.get("group", "")).strip() if has_group else ""
        rows.append({"image_id": rel, "path": rel, "target": group or rel, "labeled": bool(names)})
        labels.append(names)
    class_list = given if given is not None else sorted({n for names in labels for n in names})
    if not class_list:
        raise DinolocError(f"{path}: no row has a label; the labels column needs class names for some images")
    index = {c: k for k, c in enumerate(class_list)}
    y = np.zeros((len(rows), len(class_list)), dtype=np.int64)
    for r, names in enumerate(labels):
        y[r, [index[n] for n in names]] = 1
    m = pd.DataFrame(rows)
    if group_by == "target":  # a group must not mix labelled and unlabelled images (pretraining may use the latter)
        mixed = m.groupby("target")["labeled"].nunique()
        mixed = mixed[mixed > 1]
        if len(mixed):
            g = mixed.index[0]
            lines = [seen[p] for p in m.loc[m["target"] == g, "path"]]
            raise DinolocError(
                f"{path}: group {g!r} (lines {lines}) holds labelled and unlabelled images; unlabelled images may "
                "be used for pretraining, so a labelled test group would leak. Label all its images, or give the "
                "unlabelled ones their own group"
            )
    m = pd.concat([m, pd.DataFrame(y, columns=class_list)], axis=1)
    m = m.sort_values("image_id", kind="stable").reset_index(drop=True)
    m.attrs["classes"] = list(class_list)
    return m


# ----------------------------------------------------------------------------------------------------------
# what extraction needs from a dataset config
# ----------------------------------------------------------------------------------------------------------
def data_channel_names(data: Mapping) -> list[str]:
    """Every channel of a dataset by the name the backbones know (OpenCell: protein, nucleus; a folder: its
    data.channels renamed by data.channel_roles, a left-out channel keeping its own name)."""
    if str(data.get("reader") or "opencell") == "opencell":
        from dinoloc.ontology import OPENCELL_CHANNELS

        return list(OPENCELL_CHANNELS)
    channels = [str(c) for c in data.get("channels") or []]
    return [r if r is not None else c for c, r in zip(channels, channel_roles(channels, data.get("channel_roles")),
                                                      strict=True)]


def source_setup(data: Mapping, backbone_channels: Sequence[str], channel_map: Mapping[str, str],
                 strategy: str) -> dict:
    """How a dataset's images enter a backbone: {read_fn, source_channels (names the strategy sees, in
    read_fn's channel order), channel_map (for mapping), fields (extra cache-key fields; none for OpenCell)}.

    OpenCell: its reader, (protein, nucleus), backbone.channel_map as is. A folder: data.channels renamed by
    data.channel_roles; mapping reads only the placed channels (`mapping_plan`), replication and native all."""
    import functools

    reader = str(data.get("reader") or "opencell")
    if reader == "opencell":
        from dinoloc.data.opencell import read_image
        from dinoloc.ontology import OPENCELL_CHANNELS

        return {"read_fn": read_image, "source_channels": list(OPENCELL_CHANNELS), "channel_map": dict(channel_map),
                "fields": {}, "left_out": []}
    if reader != "folder":
        raise DinolocError(f"data.reader={reader!r} is unknown; use opencell or folder")
    channels = [str(c) for c in data.get("channels") or []]
    roles = channel_roles(channels, data.get("channel_roles"))
    from dinoloc.channel_strategies import strategy_module

    if not strategy_module(strategy).READS_ALL_CHANNELS:
        keep, source, cmap = mapping_plan(channels, roles, list(backbone_channels), dict(channel_map))
    else:  # every channel; a channel left out of mapping (role null) keeps its own name here
        keep, source, cmap = None, [r if r is not None else c for c, r in zip(channels, roles, strict=True)], dict(channel_map)
    return {
        "read_fn": functools.partial(read_folder_image, n_channels=len(channels), keep=keep),
        "source_channels": source,
        "channel_map": cmap,
        "fields": {"data_channels": channels, "source_channels": source},
        "left_out": [c for i, c in enumerate(channels) if keep is not None and i not in keep],
    }
