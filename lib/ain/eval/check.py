"""Check the benchmark data before a GPU job meets it: one row of every registered dataset, through
the same code the eval stage runs (column roles, row filter, prompt builder, images, gold).

Run where the hub is reachable (`python jobs/check_eval_data.py recipe=ain`, streaming one row per
dataset) or against a local mirror (`eval.data_root=...`). A renamed column, a moved image, a list
where one image was expected or a hub id that does not exist fails here, naming the dataset and the
reason, instead of failing array task 37 after its queue wait.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from ain.eval.data import (
    DataError,
    iter_rows,
    local_path,
    raw_bytes,
    row_images,
    selected,
    undecoded_images,
    with_roles,
)
from ain.eval.prompts import PROMPTS, RowError
from ain.eval.registry import DatasetSpec

# Rows looked at for the first one the registry's `where` filter keeps (SEED-Bench's image rows).
SCAN_ROWS = 1000


@dataclass
class DatasetCheck:
    name: str
    source: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name:<18} {self.source}: {self.detail}"


def _hub_rows(spec: DatasetSpec) -> tuple[str, Iterator[dict[str, Any]]]:
    import datasets  # noqa: PLC0415

    args = (spec.hub, spec.config) if spec.config else (spec.hub,)
    ds = datasets.load_dataset(*args, split=spec.split, streaming=True)
    return f"{spec.hub}[{spec.split}]", iter(undecoded_images(ds))


def check_dataset(spec: DatasetSpec, data_root: str = "") -> DatasetCheck:
    """One dataset: load rows, take the first the filter keeps, build its questions, decode its
    images, look at its gold. Any failure becomes the check's reason."""
    from PIL import Image  # noqa: PLC0415

    source, pos = spec.hub, 0
    try:
        if data_root:
            if local_path(spec, data_root) is None:
                return DatasetCheck(spec.name, data_root, False, "not in the local mirror")
            source, base_dir, rows = iter_rows(spec, data_root)
        else:
            (source, rows), base_dir = _hub_rows(spec), None
        row: Optional[dict[str, Any]] = None
        pos = 0
        for pos, candidate in enumerate(itertools.islice(rows, SCAN_ROWS)):  # noqa: B007 (pos: reported)
            if selected(candidate, spec.where):
                row = candidate
                break
        if row is None:
            return DatasetCheck(spec.name, source, False,
                                f"no row in the first {SCAN_ROWS} matches `where` {spec.where}" if spec.where else "no rows")
        row = with_roles(row, spec.columns)
        questions = PROMPTS[spec.prompt](row, {})
        images = row_images(row, spec.images)
        if spec.images != "none" and not images:
            raise RowError(f"no image in the {'image column' if spec.images == 'single' else 'image_0..image_8 columns'}")
        sizes = []
        for k, raw in enumerate(images):
            try:
                sizes.append(Image.open(io.BytesIO(raw_bytes(raw, base_dir))).size)
            except Exception as exc:  # noqa: BLE001 (any decoder error is the finding)
                raise RowError(f"image {k} cannot be decoded: {type(exc).__name__}: {exc}") from exc
    except (RowError, DataError, ValueError, KeyError) as exc:
        return DatasetCheck(spec.name, source, False, f"row {pos}: {exc}")
    except Exception as exc:  # noqa: BLE001 (hub errors: missing dataset, config, split, gated)
        return DatasetCheck(spec.name, source, False, f"cannot load: {type(exc).__name__}: {str(exc)[:300]}")
    gold = "gold present" if any(q.gold is not None for q in questions) else "gold withheld (blank): not scorable"
    return DatasetCheck(spec.name, source, True,
                        f"row {pos}: {len(questions)} question(s), {len(sizes)} image(s) {sizes[:3]}, {gold}")
