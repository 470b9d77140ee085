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

import functools
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


def ome_channel_names(tf: tifffile.TiffFile) -> list[str] | None:
    """The channel names in an OME-TIFF's OME-XML (first image), or None (not OME, or channels unnamed)."""
    if not tf.is_ome or not tf.ome_metadata:
        return None
    try:
        image = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]
        image = image[0] if isinstance(image, list) else image
        chans = image["Pixels"].get("Channel", [])
        chans = chans if isinstance(chans, list) else [chans]
        names = [str(c.get("Name", "")).strip() for c in chans]
    except (KeyError, TypeError, ValueError, AttributeError):  # damaged XML: fall back to position
        return None
    return names if names and all(names) and len(set(names)) == len(names) else None


def _ome_order(path: Path, file_names: list[str], wanted: Sequence[str]) -> list[int]:
    missing = [n for n in wanted if n not in file_names]
    if missing:
        raise DinolocError(f"{path}: channel(s) {missing} of data.channels not found among the file's OME channel "
                           f"names {file_names}; fix data.channels (names as in the file) or the file")
    return [file_names.index(n) for n in wanted]


def _read_ome(path: Path, tf: tifffile.TiffFile, file_names: list[str], wanted: Sequence[str]) -> np.ndarray:
    """An OME-TIFF's channels `wanted`, by name, as (C, H, W)."""
    order = _ome_order(path, file_names, wanted)
    series = tf.series[0]
    arr, axes = np.asarray(series.asarray()), str(series.axes)
    if "C" not in axes or arr.shape[axes.index("C")] != len(file_names):
        raise DinolocError(f"{path}: OME-XML names {len(file_names)} channels but the pixels have axes {axes} "
                           f"{arr.shape}; re-export the file")
    arr = np.moveaxis(arr, axes.index("C"), 0)
    arr = arr.reshape([arr.shape[0], *[s for s in arr.shape[1:] if s != 1]])
    if arr.ndim != 3:
        raise DinolocError(f"{path}: OME image of shape {arr.shape} is not 2-D per channel (z-stack or time "
                           "series?); project it to one plane per channel")
    return arr[order]


def read_folder_image(path: str | os.PathLike, n_channels: int, keep: Sequence[int] | None = None,
                      names: Sequence[str] | None = None) -> np.ndarray:
    """One image as float32 (C, H, W) in data.channels order (values kept: 8/16-bit counts or floats); `keep`
    selects channels (the mapping strategy's placed channels). An OME-TIFF whose OME-XML names its channels is
    read by `names` (data.channels), whatever the stored order; other files by position."""
    path = Path(path)
    if not path.is_file():
        raise DinolocError(f"{path}: image file not found; check data.root and the labels CSV")
    try:
        if _suffix(path) in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tf:
                file_names = ome_channel_names(tf) if names is not None else None
                if file_names is not None:
                    arr = _read_ome(path, tf, file_names, names)
                else:
                    arr = np.asarray(tf.series[0].asarray())
            if arr.ndim > 3:
                arr = arr.reshape([s for s in arr.shape if s != 1])
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
    except DinolocError:
        raise
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


def check_ome_names(path: str | os.PathLike, channels: Sequence[str]) -> bool:
    """True when `path` is an OME-TIFF with channel names (then every data.channels name must be among them;
    an error lists the file's names); False for any other file (read by position)."""
    path = Path(path)
    if _suffix(path) not in TIFF_SUFFIXES:
        return False
    try:
        with tifffile.TiffFile(path) as tf:
            file_names = ome_channel_names(tf)
    except Exception as err:
        raise DinolocError(f"{path}: unreadable image ({type(err).__name__}: {err}); replace or remove it") from err
    if file_names is None:
        return False
    _ome_order(path, file_names, channels)
    return True


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
def _read_csv_text(path: Path, help: str) -> pd.DataFrame:
    """A CSV as strings (columns stripped); `help` says what it should hold."""
    if not path.is_file():
        raise DinolocError(f"{path}: CSV not found; set data.annotations to {help}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DinolocError(f"{path}: not valid UTF-8 (byte {err.start}); re-save it as UTF-8") from err
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as err:
        raise DinolocError(f"{path}: not a readable CSV ({err}); expected {help}") from err
    table.columns = [str(c).strip() for c in table.columns]
    if table.empty:
        raise DinolocError(f"{path}: header only, no images; add one row per image")
    return table


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DinolocError(f"{path}: labels CSV not found; set data.annotations (default <data.root>/labels.csv) "
                           f"with {CSV_HELP}")
    table = _read_csv_text(path, CSV_HELP)
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("image", "labels") if c not in table.columns]
    if missing:
        raise DinolocError(f"{path}: missing column(s) {missing}; expected {CSV_HELP}")
    if table.empty:
        raise DinolocError(f"{path}: header only, no images; add one row per image")
    return table


def mask_path(root: Path, value: object, where: str) -> str:
    """A label-image path of the masks column (relative to data.root), checked to exist."""
    rel = PurePosixPath(str(value).strip().replace("\\", "/")).as_posix()
    if not str(value).strip() or not (root / rel).is_file():
        raise DinolocError(f"{where}: mask {str(value).strip() or '(empty)'} not found under data.root={root}; "
                           "fix the masks column (a label image: 0 = background, 1..n = cells)")
    return rel


def build_folder_manifest(
    root: str | os.PathLike,
    annotations: str | os.PathLike,
    channels: Sequence[str],
    classes: Sequence[str] | None = None,
    *,
    group_by: str = "target",
    validate_images: bool = True,
    masks: str | None = None,
) -> pd.DataFrame:
    """The manifest of a labels-CSV folder (see the module doc). Every error names the CSV line and the fix.
    `masks` (data.masks, data.unit=cell): the CSV column holding each image's label-image path (-> `mask`)."""
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
    mask_col = None if masks is None else str(masks).strip().lower()
    if mask_col is not None and mask_col not in table.columns:
        raise DinolocError(f"{path}: data.masks={masks} but the CSV has no such column (columns: "
                           f"{list(table.columns)}); add the label-image paths or unset data.masks to segment")
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
        if validate_images and not check_ome_names(file, channels):
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
        row = {"image_id": rel, "path": rel, "target": group or rel, "labeled": bool(names)}
        if mask_col is not None:
            row["mask"] = mask_path(root, rec[mask_col], where)
        rows.append(row)
        labels.append(names)
    return finish_manifest(rows, labels, given, path, group_by, [seen[r["path"]] for r in rows])


def finish_manifest(rows: list[dict], labels: list[list[str]], classes: Sequence[str] | None, path: Path,
                    group_by: str, lines: list[int]) -> pd.DataFrame:
    """rows (image_id, path, target, labeled, a reader's own columns) + one 0/1 column per class, sorted by
    image_id, `attrs["classes"]` set. `classes` None = the sorted union of the labels; `lines`: each row's CSV
    line (named when a group mixes labelled and unlabelled images)."""
    class_list = list(classes) if classes is not None else sorted({n for names in labels for n in names})
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
            where = [lines[i] for i in np.flatnonzero((m["target"] == g).to_numpy())]
            raise DinolocError(
                f"{path}: group {g!r} (lines {where}) holds labelled and unlabelled images; unlabelled images may "
                "be used for pretraining, so a labelled test group would leak. Label all its images, or give the "
                "unlabelled ones their own group"
            )
    base = ["image_id", "path", "target", "labeled"]
    extra = [c for c in m.columns if c not in base]  # a reader's own columns go after the classes
    m = pd.concat([m[base], pd.DataFrame(y, columns=class_list), m[extra]], axis=1)
    m = m.sort_values("image_id", kind="stable").reset_index(drop=True)
    m.attrs["classes"] = list(class_list)
    return m


# ----------------------------------------------------------------------------------------------------------
# what extraction needs from a dataset config
# ----------------------------------------------------------------------------------------------------------
def data_channel_names(spec, roles: Mapping[str, str | None] | None) -> list[str]:
    """Every channel of a dataset (a DataSpec) by the name the backbones know: its reader's channels renamed by
    data.channel_roles, a channel without a role keeping its own name (OpenCell: protein, nucleus)."""
    from dinoloc.data.reader import get_reader

    channels = get_reader(spec.reader).channels(spec)
    return [r if r is not None else c for c, r in zip(channels, channel_roles(channels, roles), strict=True)]


def source_setup(data, backbone_channels: Sequence[str], channel_map: Mapping[str, str], strategy: str,
                 roles: Mapping[str, str | None] | None = None) -> Source:
    """How a dataset's images enter a backbone (its reader's `source`, dinoloc.data.reader). `data`: a DataSpec."""
    from dinoloc.data.reader import get_reader

    return get_reader(data.reader).source(data, roles, backbone_channels, channel_map, strategy)


# ----------------------------------------------------------------------------------------------------------
# the reader interface (dinoloc.data.reader)
# ----------------------------------------------------------------------------------------------------------
from dinoloc.data.reader import Reader, Source  # noqa: E402  (the interface imports nothing of this module)


class FolderReader(Reader):
    """A labels CSV over any image folder (one multi-channel file per image)."""

    name = "folder"
    root_help = "point it at your image folder (with labels.csv: image, group, labels)"

    def manifest(self, spec):
        return build_folder_manifest(spec.root, spec.annotations, self.channels(spec), self.classes(spec),
                                     group_by=spec.split.group_by, masks=spec.masks if spec.unit == "cell" else None)

    def read_fn(self, spec, keep=None):
        return functools.partial(read_folder_image, n_channels=len(self.channels(spec)), keep=keep,
                                 names=self.channels(spec))

    def read_names(self, channels):
        return functools.partial(read_folder_image, n_channels=len(channels), names=list(channels))


READER = FolderReader()
