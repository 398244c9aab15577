"""Benchmark data: rows from the Hugging Face hub or a local mirror, turned into items to ask.

A local mirror (`eval.data_root`) holds, per dataset, `<name>.parquet`, `.jsonl`, `.json`,
`.arrow` or a `save_to_disk` folder `<name>/`, with the hub's columns. Image cells may be PIL
images (hub), Hugging Face Image structs {"bytes", "path"} (parquet), raw bytes, or a path
relative to the file (jsonl/json). Per dataset (registry `images`): `single` reads column
`image` (a list there is taken whole), `multi` the columns image_0..image_8 that are set (MMMU's
image_1..image_7 and up to 9 video frames), as the official runner's handle_images1/2 do.

Item ids are `<dataset>/<row position><rotation>`, stable for the same data, so predictions of a
restarted task line up with the items it skips.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from ain.eval.prompts import PROMPTS, RowError, missing
from ain.eval.registry import DatasetSpec

LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json", ".arrow")
MULTI_COLUMNS = [f"image_{i}" for i in range(9)]
MMLU_LEVEL_TASK = {"Primary": "Primary School", "Middle": "Middle School", "High": "High School",
                   "Univ": "University", "Prof": "Professional"}


class DataError(ValueError):
    """Bad benchmark input; the message names the file (or hub id), the row and the reason."""


@dataclass
class Item:
    id: str
    dataset: str
    prompt: str
    gold: Optional[str]
    meta: dict[str, Any]
    raw_images: list[Any] = field(default_factory=list)
    base_dir: Optional[Path] = None
    source: str = ""

    def image_files(self, side: Optional[int], max_images: Optional[int]) -> list["ImageFile"]:
        """The encoded images both backends receive, at most `max_images`: with `side` (CAMEL-Bench)
        the longer side resized to `side` and saved as JPEG, exactly as the official runner (which
        writes temp/image<i>.jpg and sends that file); without, the dataset's own bytes. The hf
        backend decodes these bytes, the endpoint backend sends them as they are (data: URL), so
        the two see the same pixels."""
        from PIL import Image  # noqa: PLC0415

        raws = self.raw_images[:max_images] if max_images else self.raw_images
        out = []
        for k, raw in enumerate(raws):
            try:
                data = raw_bytes(raw, self.base_dir)
                img = Image.open(io.BytesIO(data))
                img.load()
                if side:
                    w, h = img.size
                    nw = side if w > h else int((side / h) * w)
                    nh = int((side / w) * h) if w > h else side
                    buf = io.BytesIO()
                    img.resize((max(nw, 1), max(nh, 1))).convert("RGB").save(buf, format="JPEG")
                    out.append(ImageFile(buf.getvalue(), "image/jpeg"))
                else:
                    out.append(ImageFile(data, Image.MIME.get(img.format or "", "application/octet-stream")))
            except Exception as exc:  # noqa: BLE001 (any decoder error is a data error)
                raise DataError(f"{self.source}: item {self.id}: image {k} cannot be decoded: {exc}") from exc
        return out

    def images(self, side: Optional[int], max_images: Optional[int]) -> list[Any]:
        """`image_files` decoded to RGB (what the hf backend's processor gets)."""
        return [f.decode() for f in self.image_files(side, max_images)]


@dataclass(frozen=True)
class ImageFile:
    """An encoded image as a backend receives it."""

    data: bytes
    mime: str

    def decode(self) -> Any:
        from PIL import Image  # noqa: PLC0415

        return Image.open(io.BytesIO(self.data)).convert("RGB")


def raw_bytes(raw: Any, base_dir: Optional[Path]) -> bytes:
    """The encoded bytes of an image cell (a PIL image from the hub is re-encoded losslessly as PNG)."""
    if hasattr(raw, "save") and not isinstance(raw, (bytes, bytearray, dict, str)):
        buf = io.BytesIO()  # an already decoded image: PNG keeps its pixels exactly
        raw.save(buf, format="PNG")
        return buf.getvalue()
    if isinstance(raw, dict):
        if raw.get("bytes"):
            return bytes(raw["bytes"])
        raw = raw.get("path")
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    if isinstance(raw, str):
        path = Path(raw)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return path.read_bytes()
    raise ValueError(f"unsupported image cell of type {type(raw).__name__}")


def local_path(spec: DatasetSpec, data_root: str) -> Optional[Path]:
    root = Path(data_root)
    for suffix in LOCAL_SUFFIXES:
        if (root / f"{spec.name}{suffix}").is_file():
            return root / f"{spec.name}{suffix}"
    return root / spec.name if (root / spec.name).is_dir() else None


def iter_rows(spec: DatasetSpec, data_root: str = "") -> tuple[str, Optional[Path], Iterator[dict[str, Any]]]:
    """(source name for messages, base dir for relative image paths, rows)."""
    if data_root:
        path = local_path(spec, data_root)
        if path is None:
            raise DataError(f"dataset {spec.name}: no {spec.name}{{{','.join(LOCAL_SUFFIXES)}}} or folder "
                            f"{spec.name}/ in the local mirror {data_root}")
        return str(path), path.parent, _local_rows(path)
    import datasets  # noqa: PLC0415

    ds = datasets.load_dataset(spec.hub, spec.config, split=spec.split) if spec.config else \
        datasets.load_dataset(spec.hub, split=spec.split)
    return f"{spec.hub}[{spec.split}]", None, iter(undecoded_images(ds))


def undecoded_images(ds: Any) -> Any:
    """The dataset with its image columns (single or lists) left as {"bytes", "path"}: the bytes are
    sent as stored instead of being decoded and re-encoded (lossy for JPEG)."""
    import datasets  # noqa: PLC0415

    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
        elif isinstance(getattr(feature, "feature", None), datasets.Image):  # Sequence/List of images
            ds = ds.cast_column(name, type(feature)(datasets.Image(decode=False)))
    return ds


def _local_rows(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415

        yield from pq.read_table(path).to_pylist()
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}: line {n}: not JSON: {exc}") from exc
    elif path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not JSON: {exc}") from exc
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        yield from rows
    else:
        import datasets  # noqa: PLC0415

        ds = datasets.Dataset.from_file(str(path)) if path.suffix == ".arrow" else datasets.load_from_disk(str(path))
        yield from ds


def row_images(row: dict[str, Any], mode: str) -> list[Any]:
    if mode == "none":
        return []
    if mode == "single":
        if "image" not in row:
            raise RowError(f"column 'image' missing (columns: {sorted(row)})")
        value = row["image"]
        if isinstance(value, (list, tuple)):
            return [v for v in value if v is not None]
        return [] if missing(value) and not isinstance(value, (dict, bytes)) else [value]
    images = [row[c] for c in MULTI_COLUMNS if c in row and row[c] is not None and not missing(row[c])]
    if not images and "image" in row and row["image"] is not None:
        images = [row["image"]]
    return images


def iter_items(spec: DatasetSpec, data_root: str = "", max_items: int = 0,
               opts: Optional[dict] = None) -> Iterator[Item]:
    """Items of one dataset in row order (circular rotations consecutively)."""
    opts = opts or {}
    source, base_dir, rows = iter_rows(spec, data_root)
    builder = PROMPTS[spec.prompt]
    taken = 0
    for pos, row in enumerate(rows):
        if spec.family == "arabic_mmlu" and str(row.get("is_few_shot", 0)) in ("1", "True", "true"):
            continue
        try:
            if not selected(row, spec.where):
                continue
        except RowError as exc:
            raise DataError(f"{source}: row {pos}: {exc}") from exc
        if max_items and taken >= max_items:
            break
        taken += 1
        try:
            row = with_roles(row, spec.columns)
            questions = builder(row, opts)
            images = row_images(row, spec.images)
            extra = _mmlu_meta(row, spec) if spec.family == "arabic_mmlu" else {}
        except RowError as exc:
            raise DataError(f"{source}: row {pos}: {exc}") from exc
        for q in questions:
            meta = {**q.meta, **extra}
            yield Item(id=f"{spec.name}/{pos}{q.key}", dataset=spec.name, prompt=q.prompt, gold=q.gold,
                       meta=meta, raw_images=images, base_dir=base_dir, source=source)


def selected(row: dict[str, Any], where: dict[str, str]) -> bool:
    """The registry's `where` filter: every named column equals its value (compared as text)."""
    for column, value in where.items():
        if column not in row:
            raise RowError(f"column {column!r} (registry `where`) missing (columns: {sorted(row)})")
        if str(row[column]) != value:
            return False
    return True


def with_roles(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """The row with each role the registry's `columns` maps (e.g. image <- decoded_image) set from
    its column, so the builders read one name whatever the dataset calls it."""
    if not columns:
        return row
    out = dict(row)
    for role, column in columns.items():
        if column not in row:
            raise RowError(f"column {column!r} (registry `columns.{role}`) missing (columns: {sorted(row)})")
        out[role] = row[column]
    return out


def _mmlu_meta(row: dict[str, Any], spec: DatasetSpec) -> dict[str, Any]:
    subject, level = str(row.get("Subject", "")), row.get("Level")
    task = subject if missing(level) else f"{subject} ({MMLU_LEVEL_TASK.get(str(level), str(level))})"
    if task not in spec.tasks:
        raise RowError(f"Subject {subject!r} / Level {level!r} -> task {task!r}, which is not one of the "
                       f"{len(spec.tasks)} ArabicMMLU tasks in the registry")
    return {"task": task, "category": spec.tasks[task]}
