"""The benchmark registry: configs/eval/*.yaml loaded into typed, checked dataclasses, and the
evaluation units (array tasks) a selection of it yields.

Units, in a fixed order (task index i = the i-th unit):
  - CAMEL-Bench: one unit per domain, except domains marked `split_by_dataset` (the two large
    ones), which give one unit per dataset;
  - ArabicMMLU: one unit;
  - English: one unit per benchmark.
`eval.datasets` filters datasets first; a domain left with no dataset gives no unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import yaml

from ain.eval.prompts import PROMPTS
from ain.eval.scoring import JUDGE_FALLBACKS, METRICS, SCORERS

if TYPE_CHECKING:
    from ain.eval.config import EvalConfig

FILES = {"camel_bench": "camel_bench.yaml", "arabic_mmlu": "arabic_mmlu.yaml", "english": "english.yaml"}
IMAGE_MODES = ("single", "multi", "none")


class RegistryError(ValueError):
    """A mistake in a registry file; the message names the file and key."""


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: where it comes from and how its items are asked and scored."""

    name: str
    family: str
    hub: str
    split: str
    prompt: str
    scorer: str
    metric: str = "accuracy"
    config: Optional[str] = None
    domain: str = ""
    domain_label: str = ""
    images: str = "single"
    threshold: Optional[float] = None
    image_side: Optional[int] = None
    max_images: Optional[int] = None
    max_new_tokens: int = 128
    tasks: dict[str, str] = field(default_factory=dict)
    """ArabicMMLU: task name -> category."""
    judge_fallback: Optional[str] = None
    """choice_matcher / answer_extractor: ask `eval.judge` when the scorer's rule step cannot read
    a reply (ain.eval.scoring.JUDGE_FALLBACKS); None: the rule alone (unreadable = wrong)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Where this dataset keeps a value the builders read under a standard name: role -> its column
    (e.g. {image: decoded_image} for MathVista, {answer: number} for CAMEL-Bench countbench)."""
    where: dict[str, str] = field(default_factory=dict)
    """Only rows whose columns equal these values are asked (SEED-Bench: {data_type: image})."""
    source: str = ""
    """The official code the prompt, max_new_tokens and scorer follow (repository, file, commit)."""


@dataclass(frozen=True)
class Domain:
    name: str
    label: str
    split_by_dataset: bool
    datasets: tuple[str, ...]


@dataclass
class Registry:
    datasets: dict[str, DatasetSpec]
    domains: list[Domain]
    published: dict[str, Any]
    root: Path


@dataclass(frozen=True)
class EvalUnit:
    """One array task of the eval stage."""

    name: str
    family: str
    domain: str
    datasets: tuple[DatasetSpec, ...]


def _load_yaml(path: Path) -> Any:
    if not path.is_file():
        raise RegistryError(f"{path}: registry file missing")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: cannot parse: {exc}") from exc


def _get(obj: Any, key: str, where: str, kind: type = str, default: Any = ...) -> Any:
    if not isinstance(obj, dict):
        raise RegistryError(f"{where}: expected a mapping, got {type(obj).__name__}")
    if key not in obj:
        if default is ...:
            raise RegistryError(f"{where}: missing key '{key}'")
        return default
    value = obj[key]
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RegistryError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def _spec(entry: Any, where: str, family: str, defaults: dict[str, Any], **extra: Any) -> DatasetSpec:
    name = _get(entry, "name", where)
    where = f"{where}[{name}]"
    allowed = {"name", "prompt", "scorer", "images", "threshold", "hub", "config", "split", "metric", "judge_fallback",
               "max_new_tokens", "columns", "where", "source"}
    unknown = set(entry) - allowed
    if unknown:
        raise RegistryError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    prompt, scorer = _get(entry, "prompt", where), _get(entry, "scorer", where)
    if prompt not in PROMPTS:
        raise RegistryError(f"{where}.prompt: {prompt!r} is not a prompt builder; known: {sorted(PROMPTS)}")
    if scorer not in SCORERS:
        raise RegistryError(f"{where}.scorer: {scorer!r} is not a scorer; known: {sorted(SCORERS)}")
    images = _get(entry, "images", where, default="single")
    if images not in IMAGE_MODES:
        raise RegistryError(f"{where}.images: {images!r}; use one of {IMAGE_MODES}")
    threshold = _get(entry, "threshold", where, float, None)
    if scorer == "cer" and (threshold is None or not 0 < threshold <= 1):
        raise RegistryError(f"{where}.threshold: the cer scorer needs a CER threshold in (0, 1]")
    metric = _get(entry, "metric", where, default="accuracy")
    if metric not in METRICS:
        raise RegistryError(f"{where}.metric: {metric!r}; known: {sorted(METRICS)}")
    fallback = _get(entry, "judge_fallback", where, default=None)
    if fallback is not None and fallback not in JUDGE_FALLBACKS:
        raise RegistryError(f"{where}.judge_fallback: {fallback!r}; known: {sorted(JUDGE_FALLBACKS)}")
    if fallback is not None and scorer not in JUDGE_FALLBACKS[fallback]:
        # the fallback reuses the scorer's rule step and normalisation: other scorers have none
        raise RegistryError(f"{where}.judge_fallback: {fallback} extends the scorers "
                            f"{list(JUDGE_FALLBACKS[fallback])}, not {scorer!r}")
    hub = _get(entry, "hub", where, default=defaults.get("hub", "")).replace("{name}", name)
    mappings = {}
    for key in ("columns", "where"):
        value = _get(entry, key, where, dict, {})
        bad = {k: v for k, v in value.items() if not isinstance(k, str) or not isinstance(v, (str, int, bool))}
        if bad:
            raise RegistryError(f"{where}.{key}: expected name -> value strings, got {bad}")
        mappings[key] = {k: str(v) for k, v in value.items()}
    return DatasetSpec(name=name, family=family, hub=hub, split=_get(entry, "split", where, default=defaults.get("split", "train")),
                       config=_get(entry, "config", where, default=defaults.get("config")), prompt=prompt, scorer=scorer,
                       metric=metric, images=images, threshold=threshold, image_side=defaults.get("image_side"),
                       max_images=defaults.get("max_images"),
                       max_new_tokens=_get(entry, "max_new_tokens", where, int, defaults.get("max_new_tokens", 128)),
                       judge_fallback=fallback, source=_get(entry, "source", where, default=defaults.get("source", "")),
                       **mappings, **extra)


GROUPINGS = ("ain", "camel_bench")


def load_registry(root: Path | str, grouping: str = "ain") -> Registry:
    """Read and check every registry file under `root`. `grouping` chooses the CAMEL-Bench domain
    of the datasets the registry's `regroup` section moves (eval.camel_grouping)."""
    if grouping not in GROUPINGS:
        raise RegistryError(f"CAMEL-Bench grouping {grouping!r}: use one of {GROUPINGS}")
    root = Path(root)
    datasets: dict[str, DatasetSpec] = {}
    domains: list[Domain] = []

    def add(spec: DatasetSpec, where: str) -> None:
        if spec.name in datasets:
            raise RegistryError(f"{where}: dataset {spec.name!r} registered twice")
        datasets[spec.name] = spec

    path = root / FILES["camel_bench"]
    doc = _load_yaml(path)
    where = str(path)
    defaults = {"hub": _get(doc, "hub", where), "split": _get(doc, "split", where),
                "image_side": _get(doc, "image_side", where, int, None), "max_images": _get(doc, "max_images", where, int, None),
                "max_new_tokens": _get(doc, "max_new_tokens", where, int, 2000), "source": _get(doc, "source", where, default="")}
    regroup = _get(_get(doc, "regroup", where, dict, {}), grouping, f"{where}:regroup", dict, {})
    entries: list[tuple[dict[str, Any], dict[str, Any], str]] = []  # (domain, dataset entry, where)
    raw_domains = _get(doc, "domains", where, list)
    for d in raw_domains:
        dname = _get(d, "name", f"{where}:domains")
        for entry in _get(d, "datasets", f"{where}:domains[{dname}]", list):
            entries.append((d, entry, f"{where}:domains[{dname}].datasets"))
    names_of = {_get(d, "name", f"{where}:domains"): d for d in raw_domains}
    moved = {_get(e, "name", w): names_of.get(regroup.get(_get(e, "name", w), dname_of(d)))
             for d, e, w in entries}
    unknown = [n for n, target in regroup.items() if target not in names_of or n not in moved]
    if unknown:
        raise RegistryError(f"{where}:regroup.{grouping}: {unknown}: dataset or target domain not in the registry")
    for d in raw_domains:
        dname = dname_of(d)
        dwhere = f"{where}:domains[{dname}]"
        label = _get(d, f"label_{grouping}", dwhere, default=_get(d, "label", dwhere))
        names = []
        # its own datasets first, then those the grouping moves into it, each in file order
        for _, entry, ewhere in sorted(entries, key=lambda e: e[0] is not d):
            if moved[_get(entry, "name", ewhere)] is not d:
                continue
            spec = _spec(entry, ewhere, "camel_bench", defaults, domain=dname, domain_label=label)
            add(spec, dwhere)
            names.append(spec.name)
        if not names:
            raise RegistryError(f"{dwhere}.datasets: empty")
        domains.append(Domain(dname, label, bool(_get(d, "split_by_dataset", dwhere, bool, False)), tuple(names)))

    path = root / FILES["arabic_mmlu"]
    doc = _load_yaml(path)
    where = str(path)
    tasks = _get(doc, "tasks", where, dict)
    for task, category in tasks.items():
        if not isinstance(category, str) or not category:
            raise RegistryError(f"{where}:tasks[{task}]: category must be a non-empty string")
    add(DatasetSpec(name=_get(doc, "name", where), family="arabic_mmlu", hub=_get(doc, "hub", where),
                    config=_get(doc, "config", where, default=None), split=_get(doc, "split", where),
                    prompt="arabic_mmlu", scorer="letter_logprob", metric="category_macro", images="none",
                    max_new_tokens=1, tasks=dict(tasks)), where)

    path = root / FILES["english"]
    doc = _load_yaml(path)
    where = str(path)
    defaults = {"max_new_tokens": _get(doc, "max_new_tokens", where, int, 128), "source": _get(doc, "source", where, default="")}
    for entry in _get(doc, "benchmarks", where, list):
        add(_spec(entry, f"{where}:benchmarks", "english", defaults, domain=_get(entry, "name", where)), where)

    published = _load_yaml(root / "published.yaml")
    if not isinstance(published, dict):
        raise RegistryError(f"{root / 'published.yaml'}: expected a mapping")
    for family, table in published.items():
        where = f"{root / 'published.yaml'}:{family}"
        columns = _get(table, "columns", where, list)
        for model, values in _get(table, "rows", where, dict).items():
            if not isinstance(values, list) or len(values) != len(columns):
                raise RegistryError(f"{where}.rows[{model}]: {len(columns)} numbers expected (columns {columns})")
    return Registry(datasets, domains, published, root)


# image_0..image_8 (ain.eval.data.MULTI_COLUMNS): the most a multi-image row can hold
MAX_MULTI_IMAGES = 9


def largest_image_count(registry: Registry) -> int:
    """The most images any registered dataset sends with one prompt (after its max_images cap)."""
    counts = [0 if s.images == "none" else (s.max_images or MAX_MULTI_IMAGES) if s.images == "multi" else 1
              for s in registry.datasets.values()]
    return max(counts, default=1)


def dname_of(domain: Any) -> str:
    return str(domain.get("name")) if isinstance(domain, dict) else ""


def eval_units(cfg: "EvalConfig", registry: Optional[Registry] = None) -> list[EvalUnit]:
    """The units (array tasks) of `cfg.benchmarks` filtered by `cfg.datasets`, in task order."""
    registry = registry or load_registry(cfg.registry_path(), cfg.camel_grouping)
    wanted = set(cfg.datasets)

    def keep(name: str) -> bool:
        return not wanted or name in wanted

    units: list[EvalUnit] = []
    if "camel_bench" in cfg.benchmarks:
        for d in registry.domains:
            specs = tuple(registry.datasets[n] for n in d.datasets if keep(n))
            if not specs:
                continue
            if d.split_by_dataset:
                units += [EvalUnit(f"camel_bench/{d.name}/{s.name}", "camel_bench", d.name, (s,)) for s in specs]
            else:
                units.append(EvalUnit(f"camel_bench/{d.name}", "camel_bench", d.name, specs))
    for family in ("arabic_mmlu", "english"):
        if family in cfg.benchmarks:
            units += [EvalUnit(f"{family}/{s.name}", family, s.domain or s.name, (s,))
                      for s in registry.datasets.values() if s.family == family and keep(s.name)]
    return units
