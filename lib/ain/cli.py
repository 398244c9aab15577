"""Shared command-line handling of the jobs/ entry points: key=value overrides plus a few flags.

Entry points stay thin: parse, load and validate the config, launch, print, exit. The submitting
ones call `submit_main`; the others that act on a config (render_sbatch, prefetch,
check_eval_data) call `config_main` with their own `run(cfg, args)`, the shared flags they take
(FLAGS) and any options of their own. Both share the rules below and the `error: ...` exit 2.

- Flags may stand anywhere among the overrides (`recipe=smoke --dry-run cluster=local`).
- `--help` lists the keys of the sections the chosen recipe uses (its stages, the cluster and the
  top-level settings) with the values that recipe gives them; `--help-all` lists every key.
- `recipe=` and `cluster=` take names of files in configs/recipe and configs/cluster, never paths:
  a run's recipe is what the project ships and a frozen run records (copy your own file there).
- An override that gives a list or a mapping key a plain value (`stages=ingest`) is refused with
  the syntax to use (`stages=[ingest]`), before OmegaConf's message would say "AnyNode".
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from typing import Any, Callable, Mapping, Sequence

from ain.config import CONFIGS_DIR, RunConfig, describe_fields, load_config
from ain.config_base import ConfigError
from ain.rundir import RunDir
from ain.slurm.launcher import Launcher, StageFailed, describe, executor_kind, resolve_run_dir, wait_for
from ain.stages import select_stages
from ain.sweep import launch_sweep, plan_sweep, submit_report_job, write_sweep_report

HELP_EPILOG = ("Overrides are key=value (e.g. recipe=ain cluster=slurm ingest.num_tasks=8); lists are "
               "written [a,b] (stages=[ingest,translate]), mappings {k: v}; quote them for the shell.")
SELECTORS = {"recipe": "recipe", "cluster": "cluster"}  # key -> configs/<dir>
_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z(])")  # a full stop, not "e.g."


# The options an entry point may take besides the overrides and --help/--help-all, by flag.
FLAGS: dict[str, dict[str, Any]] = {
    "--dry-run": dict(action="store_true", help="print the DAG, arrays, resources and sbatch text; submit nothing"),
    "--force": dict(action="store_true", help="accept config changes against the frozen config.yaml"),
    "--wait": dict(action="store_true", help="with Slurm: block until the submitted jobs have left the queue"),
    "--only": dict(action="append", metavar="STAGE[,STAGE]",
                   help="submit only these stages (the stages before them must be complete or queued)"),
    "--from": dict(dest="start", metavar="STAGE", help="submit this stage and every later one"),
}
SUBMIT_FLAGS = ("--dry-run", "--force", "--wait", "--only", "--from")


def parser(description: str, flags: Sequence[str] = SUBMIT_FLAGS,
           options: Mapping[str, Mapping[str, Any]] | None = None) -> argparse.ArgumentParser:
    """Overrides, --help and --help-all, the shared `flags` named (FLAGS) and an entry point's own
    `options` (flag -> add_argument keywords)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=HELP_EPILOG, add_help=False)
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("-h", "--help", action="store_true",
                   help="show this help and the keys of the sections the chosen recipe uses, with its values")
    p.add_argument("--help-all", action="store_true", help="show this help and every key of every section")
    for flag in flags:
        p.add_argument(flag, **FLAGS[flag])
    for flag, kwargs in (options or {}).items():
        p.add_argument(flag, **kwargs)
    return p


def parse(description: str, argv: Sequence[str] | None = None, flags: Sequence[str] = SUBMIT_FLAGS,
          options: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Flags and overrides in any order (argparse's intermixed parsing)."""
    p = parser(description, flags, options)
    return p, p.parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))


def config_main(description: str, run: Callable[[RunConfig, argparse.Namespace], int],
                argv: Sequence[str] | None = None, *, extra: Sequence[str] = (), flags: Sequence[str] = (),
                options: Mapping[str, Mapping[str, Any]] | None = None, check_paths: bool = True) -> int:
    """An entry point that acts on a config: parse, --help, check the overrides, load and validate
    the config (`extra` overrides first, so the user's win), then `run(cfg, args)` -> exit status.
    A ConfigError, from the command line or from `run`, is printed as `error: ...` with status 2."""
    def load_and_run(overrides: list[str], args: argparse.Namespace) -> int:
        return run(load_config(overrides, check_paths=check_paths), args)

    return _main(description, load_and_run, argv, extra, flags, options)


def submit_main(description: str, argv: Sequence[str] | None = None, extra: Sequence[str] = ()) -> int:
    return _main(description, _submit, argv, extra, SUBMIT_FLAGS)


def sweep_main(description: str, argv: Sequence[str] | None = None) -> int:
    """jobs/submit_sweep.py: plan the variants (ain.sweep), print the plan, launch them."""
    return _main(description, _sweep, argv, (), ("--dry-run", "--force", "--wait"))


def _sweep(overrides: list[str], args: argparse.Namespace) -> int:
    plan = plan_sweep(overrides, check_paths=not args.dry_run)
    print(plan.describe(), flush=True)
    if args.dry_run:
        for v in plan.variants:
            launcher = Launcher(v.cfg, RunDir(v.cfg.run_dir), selected=v.own)
            print(f"\n# ==== variant {v.name} ====")
            print("\n".join(line for line in launcher.dry_run().splitlines() if not line.startswith(("#", "srun", "export"))))
        return 0
    try:
        reports = launch_sweep(plan, force=args.force, argv=sys.argv)
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, report in reports.items():
        print(f"-- {name}\n{describe(report)}")
    if all(executor_kind(v.cfg) == "local" for v in plan.variants):
        print(f"finished; comparison table: {write_sweep_report(plan.root)['report']}")
        return 0
    report_job = submit_report_job(plan, reports)
    if report_job:
        print(f"sweep report: job {report_job} writes {plan.root / 'report' / 'sweep.md'} once every job above has ended")
    if args.wait:
        for v in plan.variants:
            wait_for(RunDir(v.cfg.run_dir), [], poll_s=v.cfg.cluster.poll_s)
        print(f"all jobs left the queue; comparison table: {write_sweep_report(plan.root)['report']}")
    print(f"follow it with: python jobs/status.py {plan.root}; the table: python jobs/report.py {plan.root}")
    return 0


def _main(description: str, body: Callable[[list[str], argparse.Namespace], int], argv: Sequence[str] | None,
          extra: Sequence[str], flags: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None) -> int:
    """What every entry point does with its command line: parse; --help/--help-all print the keys;
    overrides refused with a hint (check_overrides); `body(overrides, args)`; ConfigError -> status 2."""
    p, args = parse(description, argv, flags, options)
    overrides = [*extra, *args.overrides]
    if args.help or args.help_all:
        print(help_text(p, overrides, full=args.help_all))
        return 0
    try:
        check_overrides(overrides)
        return body(overrides, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _submit(overrides: list[str], args: argparse.Namespace) -> int:
    try:
        if args.dry_run:
            return _dry_run(overrides, args)
        cfg = load_config(overrides)
        run = resolve_run_dir(cfg)
        launcher = Launcher(cfg, run, select_stages(cfg, args.only, args.start))
        print(f"run directory: {run.root.resolve()}  (executor: {launcher.kind})", flush=True)
        report = launcher.launch(force=args.force, argv=sys.argv)
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe(report))
    if launcher.kind == "slurm":
        if args.wait:
            wait_for(run, report, poll_s=cfg.cluster.poll_s)
            print("all jobs left the queue")
        print(f"follow it with: python jobs/status.py {run.root}")
    else:
        print(f"finished; outputs under {run.root.resolve()}/stages")
    return 0


def _dry_run(overrides: list[str], args: argparse.Namespace) -> int:
    """Print the plan. Missing inputs (data not staged yet, models not downloaded) do not hide it:
    the plan is printed from the config without the path checks, followed by what a real launch
    would refuse, and the exit status is 2."""
    try:
        cfg, refusal = load_config(overrides), None
    except ConfigError as exc:
        cfg, refusal = load_config(overrides, check_paths=False), exc  # a non-path mistake raises here
    launcher = Launcher(cfg, resolve_run_dir(cfg), select_stages(cfg, args.only, args.start))
    print(launcher.dry_run())
    if refusal is None:
        return 0
    print(f"\nerror: a launch now would be refused: {refusal}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------------ overrides
def check_overrides(overrides: Sequence[str]) -> None:
    """Mistakes OmegaConf reports without a hint, refused with one (ConfigError)."""
    errors = []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        if not sep:
            continue  # load_config names it: "not key=value"
        if key in SELECTORS:
            problem = _selector_problem(key, value)
            if problem:
                errors.append(problem)
            continue
        hint = _shape_hint(key.strip(), value.strip())
        if hint:
            errors.append(hint)
    if errors:
        raise ConfigError("command line:\n  " + "\n  ".join(errors))


def _selector_problem(key: str, value: str) -> str | None:
    """recipe= and cluster= name files shipped in configs/<dir>; paths are refused (a run's
    recipe must be one the project ships, and a path printed itself twice in every message)."""
    if value and "/" not in value and "\\" not in value and not value.endswith((".yaml", ".yml")) \
            and value not in (".", ".."):
        return None
    folder = CONFIGS_DIR / SELECTORS[key]
    known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    return (f"{key}={value}: give a {key} name from {folder}/ (known: {known}), not a path or file name; to use "
            f"your own file, copy it to {folder}/<name>.yaml and pass {key}=<name>")


def _field_type(key: str) -> Any:
    """The declared type of a dotted key of RunConfig, or None where it cannot be told."""
    cls: Any = RunConfig
    hint: Any = None
    for part in key.split("."):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return None
        try:
            hint = typing.get_type_hints(cls).get(part)
        except Exception:  # an annotation that does not resolve: no hint, OmegaConf still checks
            return None
        if hint is None:
            return None
        cls = _unwrap_optional(hint)
    return _unwrap_optional(hint)


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _shape_hint(key: str, value: str) -> str | None:
    """A list or mapping key given a plain value: the syntax to use instead."""
    if not key or "[" in key or value.startswith("${") or value in ("null", "~"):
        return None
    hint = _field_type(key)
    origin = typing.get_origin(hint)
    if origin is list and not value.startswith("["):
        (item,) = typing.get_args(hint) or (str,)
        if dataclasses.is_dataclass(item):
            first = dataclasses.fields(item)[0].name
            example = f"'{key}=[{{{first}: {value or '...'}}}]'"
            several = f"'{key}=[{{{first}: a}},{{{first}: b}}]'"
        else:
            example = f"{key}=[{value or '...'}]"
            several = "stages=[ingest,translate]" if key == "stages" else f"{key}=[a,b]"
        return f"{key}={value}: {key} is a list; write {example} (several: {several})"
    if origin is dict and not value.startswith("{"):
        return f"{key}={value}: {key} is a mapping; write '{key}={{name: value}}' (or {key}.<name>=value)"
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and not value.startswith("{"):
        names = ", ".join(f.name for f in dataclasses.fields(hint)[:4])
        return f"{key}={value}: {key} is a section; set its keys, e.g. {key}.<key>=value (keys: {names}, ...)"
    return None


# ----------------------------------------------------------------------------------------- help
def help_text(p: argparse.ArgumentParser, overrides: Sequence[str], full: bool = False) -> str:
    """The usage, then config keys with the values the chosen recipe gives them: the sections it
    uses (top-level settings, cluster, its stages), or every section with `full`."""
    head = p.format_help().rstrip()
    cfg: Any = None
    note = ""
    try:
        check_overrides(overrides)
        cfg = load_config(list(overrides), check_paths=False)
    except Exception as exc:  # help must print whatever the overrides say (ConfigError or worse)
        note = f"\n(these overrides do not load, so defaults are shown: {str(exc).splitlines()[0]})"
    recipe = cfg.recipe if cfg is not None else "defaults"
    stages = list(cfg.stages) if cfg is not None else []
    rows = describe_fields()
    if full:
        title = f"Every key, with the values of recipe={recipe} (configs/recipe, configs/cluster, your overrides):"
        shown = rows
    else:
        keep = {"cluster", *stages}
        shown = [r for r in rows if "." not in r[0] or r[0].split(".", 1)[0] in keep]
        title = (f"Keys of the sections recipe={recipe} uses (settings, cluster, {', '.join(stages) or 'its stages'}), "
                 f"with its values; --help-all lists every section ({len(rows)} keys):")
    lines = [head, *([note.strip()] if note else []), "", title]
    for key, default, doc in shown:
        value = _value_of(cfg, key) if cfg is not None else default
        if full:
            lines.append(f"  {key} = {value}\n      {doc}")
        else:
            lines.append(f"  {key} = {value}    # {_first_sentence(doc)}")
    return "\n".join(lines)


def _first_sentence(doc: str, limit: int = 100) -> str:
    text = _SENTENCE_END.split(doc, maxsplit=1)[0].rstrip(".")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _value_of(cfg: Any, key: str) -> str:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part, None)
    return _show(value)


def _show(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        defaults = type(value)()
        shown = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
                 if getattr(value, f.name) != getattr(defaults, f.name)}
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in shown.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)
