"""The command line shared by jobs/ (ain.cli: submit_main, config_main) and the run-directory tools: flags among
overrides, help sized to the recipe, hints for list syntax, recipe names not paths, clear errors
on a directory that is not a run, and absurd values refused before anything is submitted.
Nothing here submits: every launch is a --dry-run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ain.cli import check_overrides, config_main, help_text, parse, parser, submit_main
from ain.config import load_config
from ain.config_base import ConfigError

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ flags anywhere
@pytest.mark.parametrize("argv", [
    ["recipe=smoke", "--dry-run", "cluster=local"],
    ["--dry-run", "recipe=smoke", "cluster=local"],
    ["recipe=smoke", "cluster=local", "--dry-run"],
])
def test_flags_may_stand_among_the_overrides(argv):
    _, args = parse("test", argv)
    assert args.dry_run is True and args.overrides == ["recipe=smoke", "cluster=local"]


def test_flags_with_values_among_the_overrides():
    _, args = parse("test", ["recipe=smoke", "--only", "ingest", "cluster=local", "--from", "translate", "seed=3"])
    assert args.only == ["ingest"] and args.start == "translate"
    assert args.overrides == ["recipe=smoke", "cluster=local", "seed=3"]


def test_dry_run_with_a_flag_in_the_middle(chdir_root, tmp_path, capsys):
    assert submit_main("test", ["recipe=canary", "--dry-run", "cluster=local", f"runs_root={tmp_path}"]) == 0
    assert "canary" in capsys.readouterr().out
    assert not (tmp_path / "canary").exists()  # a dry run creates nothing


# -------------------------------------------------------------------------------------- help
def test_help_shows_the_recipes_sections_with_its_values(chdir_root, capsys):
    assert submit_main("test", ["recipe=canary", "--help"]) == 0
    out = capsys.readouterr().out
    assert "canary.num_tasks = " in out and "cluster.max_nodes = " in out and "stages = ['canary']" in out
    assert "train.lr" not in out and "ingest.sources" not in out
    assert "--help-all" in out
    assert len(out.splitlines()) < 120


def test_help_uses_the_recipes_values_not_the_dataclass_defaults(chdir_root, capsys):
    assert submit_main("test", ["recipe=smoke", "cluster=local", "--help", "ingest.num_tasks=5"]) == 0
    out = capsys.readouterr().out
    assert "ingest.commit_every = 8" in out          # the smoke recipe's value (the default is 64)
    assert "ingest.num_tasks = 5" in out             # and the command line's
    smoke = load_config(["recipe=smoke"], check_paths=False)
    assert f"train.max_pixels = {smoke.train.max_pixels}" in out and smoke.train.max_pixels != 262144


def test_help_all_lists_every_section(chdir_root, capsys):
    assert submit_main("test", ["recipe=canary", "--help-all"]) == 0
    out = capsys.readouterr().out
    assert "train.lr = " in out and "vdr_train." in out and "canary.num_tasks = " in out


def test_help_still_prints_when_the_overrides_are_wrong(chdir_root):
    text = help_text(parser("test"), ["recipe=nosuch"])
    assert "do not load" in text and "recipe = " in text


# ------------------------------------------------------------------------------- list syntax
@pytest.mark.parametrize("arg, hint", [
    ("stages=ingest", "write stages=[ingest] (several: stages=[ingest,translate])"),
    ("ingest.sources=x.jsonl", "write 'ingest.sources=[{path: x.jsonl}]'"),
    ("eval.datasets=mme", "write eval.datasets=[mme]"),
    ("cluster.setup=module load x", "write cluster.setup=[module load x]"),
    ("cluster.extra_sbatch=exclusive", "is a mapping"),
    ("ingest.resources=4", "is a section; set its keys"),
])
def test_list_and_mapping_mistakes_get_a_hint(arg, hint):
    with pytest.raises(ConfigError) as info:
        check_overrides([arg])
    assert hint in str(info.value)


@pytest.mark.parametrize("arg", ["stages=[ingest]", "ingest.sources=[{path: a.jsonl}]", "ingest.sources[0].path=x",
                                 "cluster.extra_sbatch={exclusive: ''}", "cluster.extra_sbatch.reservation=x",
                                 "ingest.num_tasks=4", "train.model=/m", "ingest.min_pixels=null"])
def test_well_formed_overrides_pass(arg):
    check_overrides([arg])


def test_list_mistake_exits_2_with_the_hint(chdir_root, capsys):
    assert submit_main("test", ["recipe=smoke", "stages=ingest", "--dry-run"]) == 2
    assert "stages=[ingest]" in capsys.readouterr().err


# --------------------------------------------------------------------------- recipe names only
@pytest.mark.parametrize("arg", ["recipe=/etc/passwd", "recipe=../configs/recipe/smoke", "recipe=smoke.yaml",
                                 f"recipe={ROOT}/configs/recipe/canary.yaml", "cluster=/tmp/x", "recipe="])
def test_recipe_and_cluster_are_names_not_paths(chdir_root, capsys, arg):
    assert submit_main("test", [arg, "--dry-run"]) == 2
    err = capsys.readouterr().err
    key, value = arg.split("=", 1)
    assert f"give a {key} name from" in err and "known: " in err
    if value:
        assert err.count(value) == 1  # named once, never joined onto configs/<dir>/


# ------------------------------------------------------------------------------ absurd values
@pytest.mark.parametrize("argv, key, fragment", [
    (["ingest.num_tasks=100000"], "ingest.num_tasks", "over 1001"),
    (["ingest.num_tasks=80"], "ingest.num_tasks", "80 tasks for 79 input rows"),
    (["ingest.max_image_bytes=-1"], "ingest.max_image_bytes", "must be >= 1"),
    (["ingest.max_row_bytes=0"], "ingest.max_row_bytes", "must be >= 1"),
    (["ingest.max_image_pixels=-5"], "ingest.max_image_pixels", "must be >= 1"),
    (["ingest.max_turn_chars=-1"], "ingest.max_turn_chars", "must be >= 1"),
    (["ingest.max_bad_row_share=1.5"], "ingest.max_bad_row_share", "between 0 and 1"),
    (["ingest.min_pixels=-3"], "ingest.min_pixels", "must be >= 1"),
    (["ingest.min_pixels=5000", "ingest.max_pixels=4000"], "ingest.min_pixels", "over ingest.max_pixels"),
    (["ingest.max_length=-1"], "ingest.max_length", "must be >= 0"),
])
def test_absurd_ingest_values_are_refused_naming_the_key(chdir_root, argv, key, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(["recipe=smoke", "stages=[ingest]", *argv])
    assert key in str(info.value) and fragment in str(info.value)


def test_num_tasks_up_to_the_rows_and_resolved_limits(chdir_root):
    cfg = load_config(["recipe=smoke", "stages=[ingest]", "ingest.num_tasks=79"])
    # the trainability limits ingest checks are written out, from the train section
    assert (cfg.ingest.min_pixels, cfg.ingest.max_pixels, cfg.ingest.max_length) == \
        (cfg.train.min_pixels, cfg.train.max_pixels, cfg.train.max_length) != (3136, 262144, 2048)


# --------------------------------------------------------------------------- run-directory tools
@pytest.mark.parametrize("script", ["jobs/report.py", "jobs/status.py"])
def test_tools_on_a_directory_that_is_not_a_run(tmp_path, script):
    for target in (tmp_path, tmp_path / "missing"):
        proc = subprocess.run([sys.executable, script, str(target)], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ") and str(target) in proc.stderr


# ----------------------------------------------------- the other config entry points (config_main)
def test_config_main_parses_helps_and_refuses_like_submit_main(chdir_root, capsys):
    seen = []

    def run(cfg, args):
        seen.append((cfg.stages, cfg.ingest.num_tasks, args.force, args.extra_flag))
        return 7

    options = {"--extra-flag": dict(action="store_true", help="a flag of this entry point's own")}
    argv = ["recipe=smoke", "--extra-flag", "cluster=local", "--force", "stages=[ingest]", "ingest.num_tasks=3"]
    assert config_main("test", run, argv, extra=["stages=[canary]"], flags=["--force"], options=options,
                       check_paths=False) == 7
    assert seen == [(["ingest"], 3, True, True)]  # flags anywhere; the user's stages win over `extra`

    assert config_main("test", run, ["recipe=eval_smoke", "--help"], extra=["stages=[eval]"], options=options) == 0
    out = capsys.readouterr().out
    assert "--extra-flag" in out and "eval.datasets = " in out and "--dry-run" not in out and not seen[1:]

    assert config_main("test", run, ["recipe=canary", "stages=ingest"]) == 2
    assert "write stages=[ingest]" in capsys.readouterr().err

    def refuses(cfg, args):
        raise ConfigError("stages: nothing to do")

    assert config_main("test", refuses, ["recipe=canary", "cluster=local"]) == 2
    assert capsys.readouterr().err == "error: stages: nothing to do\n"


@pytest.mark.parametrize("script", ["jobs/render_sbatch.py", "jobs/prefetch.py", "jobs/check_eval_data.py"])
def test_config_entry_points_share_the_help_and_the_override_checks(script):
    def job(*argv):
        return subprocess.run([sys.executable, script, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)

    helped = job("recipe=eval_smoke", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "Keys of the sections recipe=eval_smoke uses" in helped.stdout and "--help-all" in helped.stdout
    refused = job("recipe=smoke.yaml", "stages=train", "nosuch=1")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "give a recipe name from" in refused.stderr and "write stages=[train]" in refused.stderr


def test_render_sbatch_takes_force_among_the_overrides(chdir_root, tmp_path):
    def render(*argv):
        return subprocess.run([sys.executable, "jobs/render_sbatch.py", "recipe=smoke", *argv, f"runs_root={tmp_path}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)

    first = render("--force")  # a flag between overrides
    assert first.returncode == 0, first.stderr
    assert "torch.distributed.run" in (tmp_path / "smoke" / "train.sbatch").read_text()
    changed = render("train.lr=0.5")  # against the frozen config: refused, naming the key and --force
    assert changed.returncode == 2 and "train.lr" in changed.stderr and "--force" in changed.stderr


def test_prefetch_list_among_the_overrides(tmp_path):
    proc = subprocess.run([sys.executable, "jobs/prefetch.py", "recipe=ain", "--list", "cluster=slurm",
                           f"cluster.hf_home={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "NOT CACHED  (train.model)" in proc.stdout and not any(tmp_path.iterdir())  # listed, nothing fetched
