"""The dry run's work estimate of the eval stage: the items of every evaluation unit, counted in
the local mirror (`eval.data_root`) the way the stage selects them (the registry's `where`,
ArabicMMLU's few-shot rows left out, `max_items_per_dataset`), at `eval.items_per_gpu_s`.

Datasets read from the hub are not downloaded here (the login node may have no network, and a
download is not a dry run's business): their rows come from their hub card as recorded in
`<registry_dir>/hub_cards.yaml` (the card's num_examples at a named commit). Those without a
recorded card are named, and while any is uncounted the stage's time stays its time limit rather
than an estimate that leaves them out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import yaml

from ain.eval.data import DataError, iter_rows, local_path, selected
from ain.eval.registry import DatasetSpec, eval_units, load_registry
from ain.slurm.cost import WorkEstimate, device_hours

if TYPE_CHECKING:
    from ain.config import RunConfig


def count_items(spec: DatasetSpec, data_root: str, cap: int = 0) -> Optional[int]:
    """Items the eval stage asks of one dataset, from the local mirror; None: not in it."""
    if not data_root or local_path(spec, data_root) is None:
        return None
    path = local_path(spec, data_root)
    if path is not None and path.suffix == ".parquet" and not spec.where and spec.family != "arabic_mmlu":
        import pyarrow.parquet as pq  # noqa: PLC0415

        n = pq.ParquetFile(path).metadata.num_rows
    else:
        _, _, rows = iter_rows(spec, data_root)
        n = 0
        for row in rows:
            if spec.family == "arabic_mmlu" and str(row.get("is_few_shot", 0)) in ("1", "True", "true"):
                continue
            n += selected(row, spec.where)
    return min(n, cap) if cap else n


def card_rows(registry_dir: Path) -> dict[str, int]:
    """dataset -> rows of its split, from the recorded hub cards (complete ones with a row count)."""
    path = Path(registry_dir) / "hub_cards.yaml"
    if not path.is_file():
        return {}
    cards = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("cards") or {}
    return {name: int(c["rows"]) for name, c in cards.items() if c.get("rows") and not c.get("partial")}


def estimate_eval(cfg: "RunConfig", run_root: Path, upstream: Mapping[str, Any]) -> WorkEstimate:
    e = cfg.eval
    units = eval_units(e, load_registry(e.registry_path(), e.camel_grouping))
    items: dict[str, int] = {}
    uncounted: list[str] = []
    from_cards = card_rows(e.registry_path()) if not e.data_root else {}
    for unit in units:
        for spec in unit.datasets:
            try:
                n = count_items(spec, e.data_root, e.max_items_per_dataset)
            except DataError as exc:  # the stage would fail on it too: say so here
                raise ValueError(f"eval dataset {spec.name}: {exc}") from None
            if n is None and spec.name in from_cards and not spec.where:
                n = min(from_cards[spec.name], e.max_items_per_dataset or from_cards[spec.name])
            if n is None:
                uncounted.append(spec.name)
            else:
                items[spec.name] = n
    devices = max(1, e.resources.nodes * e.resources.gpus_per_node)
    total = float(sum(items.values()))
    by_family = {}
    for unit in units:
        by_family[unit.family] = by_family.get(unit.family, 0) + sum(items.get(s.name, 0) for s in unit.datasets)
    where = f"counted in {e.data_root}" if e.data_root else "from their hub cards' rows (configs/eval/hub_cards.yaml)"
    sources = (f"{len(items)} dataset(s) {where}: " + ", ".join(f"{f} {n:,}" for f, n in by_family.items())
               if items else "no dataset counted")
    if uncounted:
        more = f" and {len(uncounted) - 8} more" if len(uncounted) > 8 else ""
        sources += f"; NOT counted (read from the hub at run time): {', '.join(uncounted[:8])}{more}"
    hours = None if uncounted else device_hours(total, e.items_per_gpu_s, devices, max(1, len(units)))
    counted = "items" if not uncounted else f"items in the {len(items)} dataset(s) counted"
    return WorkEstimate("eval", (("eval units", float(len(units))), (counted, total)), sources, hours, devices,
                        f"{e.items_per_gpu_s:,g} items/s per GPU (eval.items_per_gpu_s)")
