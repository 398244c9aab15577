"""Pinned code (ain.slurm.snapshot): what is copied, when a copy is reused, and that a job
started with the rendered setup line imports the snapshot instead of the checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ain.config import load_config
from ain.config_base import ConfigError
from ain.slurm.sbatch import pin_code_line, render_sbatch
from ain.slurm.snapshot import code_digest, snapshot_code


def fake_checkout(root: Path) -> Path:
    (root / "lib/ain/sub/__pycache__").mkdir(parents=True)
    (root / "lib/ain/__init__.py").write_text("")
    (root / "lib/ain/sub/mod.py").write_text("X = 1\n")
    (root / "lib/ain/sub/__pycache__/mod.cpython-311.pyc").write_bytes(b"\0stale")
    (root / "configs/eval").mkdir(parents=True)
    (root / "configs/eval/reg.yaml").write_text("a: 1\n")
    (root / "README.md").write_text("not pinned\n")
    return root


def test_snapshot_copies_package_and_configs_once_per_digest(tmp_path):
    src = fake_checkout(tmp_path / "src")
    run = tmp_path / "run"
    first = snapshot_code(run, root=src)
    assert first == run / "code" / code_digest(src)
    copied = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())
    assert copied == ["configs/eval/reg.yaml", "lib/ain/__init__.py", "lib/ain/sub/mod.py"]
    stamp = (first / "lib/ain/sub/mod.py").stat().st_mtime_ns

    # Same code again (even with a new bytecode cache): the same snapshot, not copied again.
    (src / "lib/ain/sub/__pycache__/other.pyc").write_bytes(b"\0")
    assert snapshot_code(run, root=src) == first
    assert (first / "lib/ain/sub/mod.py").stat().st_mtime_ns == stamp

    # An edit in the checkout: a new snapshot for new submissions; the old one is untouched.
    (src / "lib/ain/sub/mod.py").write_text("X = 2\n")
    second = snapshot_code(run, root=src)
    assert second != first and (second / "lib/ain/sub/mod.py").read_text() == "X = 2\n"
    assert (first / "lib/ain/sub/mod.py").read_text() == "X = 1\n"
    assert not [p for p in (run / "code").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_a_config_edit_changes_the_digest(tmp_path):
    src = fake_checkout(tmp_path / "src")
    before = code_digest(src)
    (src / "configs/eval/reg.yaml").write_text("a: 2\n")
    assert code_digest(src) != before


def test_job_setup_line_imports_the_snapshot_not_the_checkout(tmp_path):
    """Runs the exact line the sbatch script carries, in bash, then Python: the real package and
    its registry resolve inside the snapshot (the checkout is also on sys.path via the editable
    install, behind PYTHONPATH)."""
    snap = snapshot_code(tmp_path / "run")
    probe = "import ain, ain.config; print(ain.__file__); print(ain.config.CONFIGS_DIR)"
    out = subprocess.run(["bash", "-c", f'{pin_code_line(snap)}\nexec "$0" -c "$1"', sys.executable, probe],
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert out == [str(snap / "lib/ain/__init__.py"), str(snap / "configs")]


def test_rendered_sbatch_pins_code_after_the_profile_setup(chdir_root):
    cfg = load_config(["recipe=canary", "cluster=localslurm"])
    text = render_sbatch(cfg.cluster, "x", cfg.canary.resources, Path("/r/logs"), 2,
                         code_dir=Path("/runs/my run/code/abc"))
    setup = text.split("# setup\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert setup[-1] == "export PYTHONPATH='/runs/my run/code/abc/lib'${PYTHONPATH:+:$PYTHONPATH}"
    assert setup[:-1] == list(cfg.cluster.setup)


def test_snapshot_is_private_like_the_rest_of_the_run_directory(tmp_path):
    src = fake_checkout(tmp_path / "src")
    (src / "lib/ain/sub/mod.py").chmod(0o644)
    snap = snapshot_code(tmp_path / "run", root=src)
    assert all(p.stat().st_mode & 0o077 == 0 for p in [snap, *snap.rglob("*")])


def test_status_names_the_snapshot_and_warns_when_stages_run_different_code(tmp_path):
    from rich.console import Console

    from ain.rundir import RunDir
    from ain.slurm.status import StageStatus, render

    def text(statuses):
        console = Console(record=True, width=200)
        console.print(render(RunDir(tmp_path), statuses))
        return console.export_text()

    same = [StageStatus("ingest", 2, code="aaa"), StageStatus("pack", 1, code="aaa"), StageStatus("report", 1)]
    assert "every submission runs snapshot aaa" in text(same)
    mixed = [StageStatus("ingest", 2, code="aaa"), StageStatus("train", 1, code="bbb")]
    assert "stages run different snapshots: aaa: ingest; bbb: train" in text(mixed)
    assert "code:" not in text([StageStatus("ingest", 2)])  # local executor runs: nothing pinned


def test_a_package_outside_a_checkout_is_a_clear_error(tmp_path):
    (tmp_path / "site-packages/ain").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"not from a checkout's lib/ain .*pip install -e \."):
        snapshot_code(tmp_path / "run", root=tmp_path / "site-packages")
