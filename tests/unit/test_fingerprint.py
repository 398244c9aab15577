"""Stage fingerprints (ain.fingerprint): what changes a stage's outputs, and a `--force` change that
moves exactly the affected stages aside and recomputes only those.

The run tests go through the real launcher on submitit's local executor with the smoke fixtures
(ingest -> mix -> pack: no judge server, a few seconds a stage)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from ain.config import load_config
from ain.config_base import ConfigError
from ain.fingerprint import effective_fields, moved_aside, stage_fingerprints, stale_stages
from ain.rundir import RunDir
from ain.slurm import status
from ain.slurm.launcher import Launcher

ROOT = Path(__file__).resolve().parents[2]
CHAIN = ["recipe=smoke", "cluster=local", "cluster.executor=local", "stages=[ingest,mix,pack]"]


def config(tmp_path: Path, *extra: str):
    return load_config([*CHAIN, f"runs_root={tmp_path}", "name=fp", *extra])


def test_operational_fields_are_left_out_and_changes_reach_downstream(tmp_path):
    base = stage_fingerprints(config(tmp_path))
    assert "commit_every" not in effective_fields(config(tmp_path).ingest)
    assert not any(k.startswith("resources") for k in effective_fields(config(tmp_path).pack))
    # how a stage runs does not change what it computes
    same = stage_fingerprints(config(tmp_path, "ingest.commit_every=3", "pack.resources.time_min=7"))
    assert {s: f.digest for s, f in same.items()} == {s: f.digest for s, f in base.items()}
    # a mix setting changes mix and, through it, pack; not ingest
    changed = stage_fingerprints(config(tmp_path, "mix.authentic_arabic_share=0.2"))
    assert [s for s in base if base[s].digest != changed[s].digest] == ["mix", "pack"]
    # the seed changes every stage (mix samples with it)
    reseeded = stage_fingerprints(config(tmp_path, "seed=1"))
    assert all(base[s].digest != reseeded[s].digest for s in base)


def test_pack_fingerprint_follows_the_processor_it_counts_tokens_with(tmp_path):
    with_train = ["stages=[ingest,mix,pack,train]"]
    a = stage_fingerprints(config(tmp_path, *with_train))
    b = stage_fingerprints(config(tmp_path, *with_train, "train.max_pixels=20000", "ingest.max_pixels=12544"))
    assert a["ingest"].digest == b["ingest"].digest and a["mix"].digest == b["mix"].digest
    assert a["pack"].digest != b["pack"].digest and a["train"].digest != b["train"].digest


def _launch(cfg, force: bool = False):
    run = RunDir(cfg.run_dir)
    return run, Launcher(cfg, run).launch(force=force, argv=["test"])


def _render(run: RunDir) -> str:
    console = Console(width=300, record=True, file=io.StringIO())
    console.print(status.render(run, status.collect(run, use_queue=False)))
    return console.export_text()


def _mtimes(paths) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(paths.out.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_force_change_moves_exactly_the_affected_stages_aside_and_recomputes_only_them(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    run, _ = _launch(config(tmp_path))
    first = {s: run.stage(s).read_marker(0) for s in ("ingest", "mix", "pack")}
    assert all(m and m["fingerprint"] for m in first.values()), first
    ingest_files = _mtimes(run.stage("ingest"))
    old_mix = (run.stage("mix").out / "mix_report.json").read_text()

    changed = config(tmp_path, "mix.authentic_arabic_share=0.2")
    with pytest.raises(ConfigError, match="mix.authentic_arabic_share"):
        _launch(changed)                                   # refused without --force, nothing moved
    assert run.stage("mix").read_marker(0) == first["mix"]
    dry = Launcher(changed, run).dry_run()
    assert "  mix: changed mix.authentic_arabic_share" in dry and "  pack: upstream mix changed" in dry
    assert "  ingest:" not in dry.split("DAG:")[0]

    _, report = _launch(changed, force=True)
    assert [sl.stage for sl in report if sl.submitted] == ["mix", "pack"]   # ingest was not recomputed
    assert _mtimes(run.stage("ingest")) == ingest_files
    assert run.stage("ingest").read_marker(0) == first["ingest"]
    stale = {r["stage"]: r for r in moved_aside(run)}
    assert sorted(stale) == ["mix", "pack"]
    assert stale["mix"]["keys"] == ["mix.authentic_arabic_share"] and stale["pack"]["upstream"] == ["mix"]
    aside = Path(stale["mix"]["path"])
    assert (aside / "out" / "mix_report.json").read_text() == old_mix   # kept, not mixed with the new
    for s in ("mix", "pack"):
        marker = run.stage(s).read_marker(0)
        assert marker["fingerprint"] != first[s]["fingerprint"]
    assert not stale_stages(changed, run)
    shown = _render(run)
    assert "moved aside at launch 1: mix (changed mix.authentic_arabic_share)" in shown, shown
    assert "moved aside at launch 1: pack (upstream mix changed)" in shown
    _, again = _launch(changed)
    assert not any(sl.submitted for sl in again)              # a re-run does nothing


@pytest.mark.slow
def test_changed_input_file_makes_ingest_and_everything_after_it_stale(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    source_dir = tmp_path / "src"
    shutil.copytree(ROOT / "tests/fixtures/smoke", source_dir)
    names = [Path(s.path).name for s in config(tmp_path).ingest.sources]
    cfg = config(tmp_path, "ingest.sources=[" + ",".join(f"{{path: {source_dir / n}}}" for n in names) + "]")
    run, _ = _launch(cfg)
    path = Path(cfg.ingest.sources[0].path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # the file was rewritten
    with pytest.raises(ConfigError, match=r"ingest \(input files changed\)"):
        _launch(cfg)
    assert [s.stage for s in stale_stages(cfg, run)] == ["ingest", "mix", "pack"]
    assert [(s.name, s.state) for s in status.collect(run, use_queue=False)] == [
        ("ingest", "stale"), ("mix", "stale"), ("pack", "stale")]


def test_reuse_key_ignores_thresholds_only():
    base = stage_fingerprints(load_config(["recipe=smoke", "cluster=local"], check_paths=False))
    stricter = stage_fingerprints(load_config(["recipe=smoke", "cluster=local", "verify.min_labse=0.9"],
                                              check_paths=False))
    assert base["verify"].digest != stricter["verify"].digest
    assert base["verify"].reuse_key == stricter["verify"].reuse_key      # same scores, other decisions
    assert base["safety"].reuse_key != stricter["safety"].reuse_key      # downstream: other inputs
    other_model = stage_fingerprints(load_config(["recipe=smoke", "cluster=local", "verify.labse_model=x/y"],
                                                 check_paths=False))
    assert other_model["verify"].reuse_key != base["verify"].reuse_key
