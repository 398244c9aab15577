"""Typed configuration: dataclasses are the schema, YAML files and the command line are overrides.

Composition order (later wins), all merged in OmegaConf struct mode so an unknown key fails:

    RunConfig defaults  <-  configs/recipe/<recipe>.yaml  <-  configs/cluster/<cluster>.yaml
                        <-  key=value overrides from the command line

`load_config` returns a plain `RunConfig` (never a DictConfig) that has passed `validate`, so
every mistake a queue wait would otherwise reveal is reported on the login node, naming the key.

Each field is documented by the string literal under it; `describe_fields` reads those strings
for `--help`.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ain import PROJECT_ROOT
from ain.config_base import ClusterConfig, ConfigError, JudgeConfig, config_from_yaml
from ain.pipeline import STAGES
from ain.stages import StageSpec

CONFIGS_DIR = PROJECT_ROOT / "configs"

# Stages in pipeline order (ain.pipeline.STAGES). A recipe lists the subset it runs; each listed
# stage waits for the previous listed one unless its spec says otherwise.
PIPELINE_ORDER = tuple(spec.name for spec in STAGES)


@dataclass
class RunSettings:
    """Top level: one run of one recipe on one cluster. `RunConfig` adds one section per stage."""

    recipe: str = "smoke"
    """Recipe name (configs/recipe/<recipe>.yaml)."""
    name: str = ""
    """Run name; the run directory is <runs_root>/<name>. Default: the recipe name, so re-running
    the same command continues the same run."""
    runs_root: str = "runs"
    """Directory holding run directories (on the shared filesystem on a cluster)."""
    seed: int = 0
    """Seed recorded for every randomised step."""
    stages: list[str] = field(default_factory=lambda: ["ingest"])
    """Stages to run, in pipeline order; each waits for the previous one (afterok)."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    stage_specs: ClassVar[tuple[StageSpec, ...]] = STAGES

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_root) / self.name

    def spec(self, stage: str) -> StageSpec:
        for spec in self.stage_specs:
            if spec.name == stage:
                return spec
        raise ConfigError(f"unknown stage {stage!r}; the pipeline is {list(PIPELINE_ORDER)}")

    def judges(self, run_root: Optional[Path] = None) -> dict[str, tuple[JudgeConfig, list[str]]]:
        """Judge role -> (its config, the listed stages that call it): one shared server per role.
        With `run_root`, also the model under evaluation when eval.backend is endpoint (its
        default model path is inside the run directory)."""
        users: dict[str, tuple[JudgeConfig, list[str]]] = {}
        for stage in self.stages:
            spec = self.spec(stage)
            for role, judge in spec.judges(getattr(self, stage), self, run_root).items():
                users.setdefault(role, (judge, []))[1].append(stage)
        return users


# One section per stage, named after it, typed by its spec: `cfg.train` is a TrainConfig.
RunConfig = make_dataclass(
    "RunConfig", [(spec.name, spec.config, field(default_factory=spec.config)) for spec in STAGES],
    bases=(RunSettings,), namespace={"__doc__": RunSettings.__doc__})
RunConfig.__module__ = __name__  # pickles and reprs as ain.config.RunConfig


def split_overrides(argv: list[str]) -> tuple[str, str, list[str]]:
    """Pull `recipe=` and `cluster=` (which choose files) out of the key=value list."""
    recipe, cluster, rest = "smoke", "local", []
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r} is not key=value (e.g. recipe=smoke ingest.num_tasks=4)")
        key, value = arg.split("=", 1)
        if key == "recipe":
            recipe = value
        elif key == "cluster":
            cluster = value
        else:
            rest.append(arg)
    return recipe, cluster, rest


def _yaml(kind: str, name: str, configs_dir: Path) -> Any:
    if "/" in name or "\\" in name or name.endswith((".yaml", ".yml")) or name.startswith("."):
        known = sorted(p.stem for p in (configs_dir / kind).glob("*.yaml"))
        raise ConfigError(f"{kind}={name!r}: give a name from configs/{kind}/ ({', '.join(known)}), not a path")
    path = configs_dir / kind / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (configs_dir / kind).glob("*.yaml"))
        raise ConfigError(f"{kind}={name}: no file {path}; known: {', '.join(known)}")
    try:
        return OmegaConf.load(path)
    except Exception as exc:  # YAML syntax errors carry line numbers
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc


def _merge(base: Any, other: Any, what: str) -> Any:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"{what}: key '{key}': {exc.msg if hasattr(exc, 'msg') else exc}".rstrip()) from exc


def load_config(argv: list[str], configs_dir: Path = CONFIGS_DIR, check_paths: bool = True) -> RunConfig:
    """Compose defaults <- recipe <- cluster <- overrides, then validate."""
    recipe, cluster, overrides = split_overrides(argv)
    merged = OmegaConf.structured(RunConfig)
    merged = _merge(merged, _yaml("recipe", recipe, configs_dir), f"configs/recipe/{recipe}.yaml")
    merged = _merge(merged, {"cluster": _yaml("cluster", cluster, configs_dir)}, f"configs/cluster/{cluster}.yaml")
    merged = _merge(merged, {"recipe": recipe, "cluster": {"name": cluster}}, "selection")
    try:
        cli = OmegaConf.from_dotlist(overrides)
    except Exception as exc:
        raise ConfigError(f"command line: {exc}") from exc
    merged = _merge(merged, cli, "command line")
    cfg: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    if not cfg.name:
        cfg.name = cfg.recipe
    for stage in cfg.stages:  # derived fields and absolute local paths of the listed stages
        resolve = getattr(getattr(cfg, stage, None), "resolve", None)  # unknown stages: validate says
        if callable(resolve):
            resolve(cfg)
    validate(cfg, check_paths=check_paths)
    return cfg


def validate(cfg: RunConfig, check_paths: bool = True) -> None:
    """Checks a queue wait would otherwise reveal. Raises ConfigError naming the key."""
    errors: list[str] = []

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            errors.append(f"{key}: {message}")

    need(bool(cfg.name) and "/" not in cfg.name and not cfg.name.startswith("."), "name",
         f"{cfg.name!r} must be a plain directory name")
    unknown = [s for s in cfg.stages if s not in PIPELINE_ORDER]
    need(not unknown, "stages", f"unknown stage(s) {unknown}; the pipeline is {list(PIPELINE_ORDER)}")
    need(len(set(cfg.stages)) == len(cfg.stages), "stages", "a stage is listed twice")
    order = [PIPELINE_ORDER.index(s) for s in cfg.stages if s in PIPELINE_ORDER]
    need(order == sorted(order), "stages", f"must follow pipeline order {list(PIPELINE_ORDER)}")
    need(bool(cfg.stages), "stages", "empty: list at least one stage")

    c = cfg.cluster
    need(c.executor in ("auto", "slurm", "local"), "cluster.executor", "must be auto, slurm or local")
    need(c.array_parallelism >= 1, "cluster.array_parallelism", "must be >= 1")
    need(c.signal_delay_s >= 0, "cluster.signal_delay_s", "must be >= 0")
    need(c.max_requeues >= 0, "cluster.max_requeues", "must be >= 0")
    for opt in c.extra_sbatch:
        need(opt.replace("-", "_").replace("_", "").isalnum(), f"cluster.extra_sbatch.{opt}",
             "option names are letters, digits, - and _ (no leading --)")

    for stage in cfg.stages:
        sub = getattr(cfg, stage, None)
        if sub is None:  # unknown: reported above
            continue
        need(sub.num_tasks >= 1, f"{stage}.num_tasks", "must be >= 1")
        need(sub.num_tasks <= c.max_array_size, f"{stage}.num_tasks",
             f"{sub.num_tasks} is over {c.max_array_size} (cluster.max_array_size: Slurm's MaxArraySize)")
        if callable(getattr(sub, "check", None)):  # stage packages validate their own sections
            sub.check(cfg, need, check_paths)
        r = sub.resources
        key = f"{stage}.resources"
        need(1 <= r.nodes <= c.max_nodes, f"{key}.nodes",
             f"{r.nodes} requested, cluster '{c.name}' allows 1..{c.max_nodes} (cluster.max_nodes)")
        need(r.nodes == 1 or cfg.spec(stage).multi_node, f"{key}.nodes",
             f"{r.nodes} requested: {stage} is not a multi-node stage (its tasks run on one node each)")
        need(r.tasks_per_node >= 1, f"{key}.tasks_per_node", "must be >= 1")
        need(0 <= r.gpus_per_node <= c.max_gpus_per_node, f"{key}.gpus_per_node",
             f"{r.gpus_per_node} requested, cluster '{c.name}' has {c.max_gpus_per_node} per node")
        need(1 <= r.cpus_per_task * r.tasks_per_node <= c.max_cpus_per_node, f"{key}.cpus_per_task",
             f"{r.cpus_per_task} x {r.tasks_per_node} tasks > {c.max_cpus_per_node} cores per node")
        need(r.mem_gb >= 0, f"{key}.mem_gb", "must be >= 0")
        need(1 <= r.time_min <= c.max_time_min, f"{key}.time_min",
             f"{r.time_min} not in 1..{c.max_time_min} (cluster.max_time_min)")
        need(c.signal_delay_s < r.time_min * 60, f"{key}.time_min",
             f"USR2 would come {c.signal_delay_s}s before a {r.time_min}-minute limit: raise time_min "
             "or lower cluster.signal_delay_s")

    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))


def from_yaml(text: str) -> RunConfig:
    """A frozen config.yaml back into a RunConfig (see ain.rundir)."""
    return config_from_yaml(RunConfig, text)


def _field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass (attribute docstrings)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe_fields(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every field, recursively: the text of `--help`."""
    rows: list[tuple[str, str, str]] = []
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):  # RunConfig is made from RunSettings: its docs live there
        docs.update(_field_docs(base))
    defaults = cls()
    for f in fields(cls):
        value = getattr(defaults, f.name)
        if is_dataclass(value):
            rows.extend(describe_fields(type(value), f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", repr(value), docs.get(f.name, "")))
    return rows
