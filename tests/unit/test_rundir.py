"""The run directory: frozen config, changed-key refusal, launch lock, events, permissions."""

from __future__ import annotations

import os
import stat

import pytest

from ain.config import RunConfig
from ain.config_base import ConfigError
from ain.rundir import RunDir


def test_freeze_refuses_changes_naming_the_keys_unless_forced(tmp_path):
    run = RunDir(tmp_path / "r")
    cfg = RunConfig(stages=["canary"])
    assert run.freeze(cfg, argv=["x"]) == []
    cfg.canary.items_per_task = 99
    cfg.seed = 5
    with pytest.raises(ConfigError) as err:
        run.freeze(cfg, argv=["x"])
    assert "canary.items_per_task: 5 -> 99" in str(err.value) and "seed: 0 -> 5" in str(err.value)
    assert run.load_config().canary.items_per_task == 5  # untouched by the refused launch
    assert run.freeze(cfg, force=True, argv=["x"]) == ["canary.items_per_task", "seed"]
    assert run.load_config().canary.items_per_task == 99


def test_cluster_settings_may_change_between_launches(tmp_path):
    run = RunDir(tmp_path / "r")
    cfg = RunConfig(stages=["canary"])
    run.freeze(cfg, argv=["x"])
    cfg.cluster.partition = "other"
    cfg.cluster.array_parallelism = 1
    assert run.freeze(cfg, argv=["x"]) == []
    launches = sorted((run.root / "launch").glob("*.json"))
    assert len(launches) == 2


def test_launch_lock_is_exclusive(tmp_path):
    run = RunDir(tmp_path / "r")
    with run.lock():
        with pytest.raises(ConfigError, match="another launch"):
            with run.lock():
                pass
    with run.lock():  # released
        pass


def test_run_directory_is_private(tmp_path):
    run = RunDir(tmp_path / "r")
    run.freeze(RunConfig(stages=["canary"]), argv=["x"])
    paths = run.stage("canary").create()
    for p in (run.root, paths.logs, paths.out):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(run.config_path).st_mode) == 0o600


def test_markers_replace_failure_records(tmp_path):
    paths = RunDir(tmp_path / "r").stage("s").create()
    paths.write_failure(3, {"error": "boom"})
    assert paths.failure(3).exists() and paths.done_indices() == set()
    paths.write_marker(3, {"items": 1})
    assert paths.done_indices() == {3} and not paths.failure(3).exists()


def test_events_append(tmp_path):
    run = RunDir(tmp_path / "r")
    run.freeze(RunConfig(stages=["canary"]), argv=["x"])
    run.append_event({"kind": "submit", "n": 1})
    run.append_event({"kind": "cancel", "n": 2})
    assert [e["n"] for e in run.events()] == [1, 2]
