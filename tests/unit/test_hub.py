"""Models offline and pinned (ain.hub): a launch checks that every hub model and dataset of the
recipe is in the shared cache (a locally built cache in the layout huggingface_hub writes),
refuses naming the missing ones and the prefetch command, and pins the cached revisions; prefetch
refuses a gated repository without a token before downloading anything. The hub itself is not
reachable here: prefetch's hub calls are stand-ins (named in the test)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from ain import hub
from ain.config import load_config
from ain.config_base import ConfigError
from ain.rundir import RunDir
from ain.slurm.launcher import Launcher
from ain.slurm.task import offline_environment


def cache_snapshot(hf_home: Path, kind: str, repo_id: str, sha: str) -> None:
    """One repository in huggingface_hub's cache layout: <kind>s--org--name/{refs/main,snapshots/<sha>/}."""
    root = hf_home / "hub" / f"{kind}s--{repo_id.replace('/', '--')}"
    (root / "snapshots" / sha).mkdir(parents=True)
    (root / "snapshots" / sha / "config.json").write_text("{}")
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(sha)


def eval_cfg(tmp_path: Path, *extra: str):
    return load_config(["recipe=eval_smoke", "cluster=local", "cluster.executor=local", f"runs_root={tmp_path}",
                        "eval.checkpoint=Qwen/Qwen2-VL-7B-Instruct", "eval.datasets=[chartqa_en]",
                        "eval.data_root=''", f"cluster.hf_home={tmp_path / 'hf'}", *extra], check_paths=False)


def test_a_recipes_assets_come_from_its_sections(chdir_root):
    cfg = load_config(["recipe=ain", "cluster=slurm"], check_paths=False)
    assets = {(a.kind, a.repo_id): a.key for a in hub.recipe_assets(cfg)}
    assert assets[("model", "AIML-TUDA/LlavaGuard-v1.2-7B-OV-hf")] == "safety.vision_judge.model"
    assert assets[("model", "Qwen/Qwen2-VL-7B-Instruct")] == "train.model"
    assert assets[("dataset", "lmms-lab/MMT-Benchmark")] == "eval registry mmt_bench_en"
    assert ("model", "Qwen/Qwen2.5-72B-Instruct") in assets
    smoke = load_config(["recipe=smoke"], check_paths=False)
    assert hub.recipe_assets(smoke) == []                               # local directories are not hub assets
    assert not hub.is_hub_id(".cache/tiny/judge") and hub.is_hub_id("BAAI/BGE-VL-large")


def test_launch_refuses_a_missing_model_then_pins_the_cached_revisions(tmp_path, chdir_root):
    cfg = eval_cfg(tmp_path)
    launcher = Launcher(cfg, RunDir(cfg.run_dir))
    with pytest.raises(ConfigError) as exc:
        launcher._hub_pins()
    message = str(exc.value)
    assert "model Qwen/Qwen2-VL-7B-Instruct (eval.checkpoint)" in message and "dataset lmms-lab/ChartQA" in message
    assert "python jobs/prefetch.py recipe=eval_smoke cluster=local" in message
    assert "hub: not in the local hub cache" in launcher.dry_run()
    cache_snapshot(tmp_path / "hf", "model", "Qwen/Qwen2-VL-7B-Instruct", "a" * 40)
    cache_snapshot(tmp_path / "hf", "dataset", "lmms-lab/ChartQA", "b" * 40)
    pins = launcher._hub_pins()
    assert pins == {"model:Qwen/Qwen2-VL-7B-Instruct": "a" * 40, "dataset:lmms-lab/ChartQA": "b" * 40}
    launcher.run.root.mkdir(parents=True)
    launcher._pin_revisions(pins, force=False)
    record = json.loads((cfg.run_dir / "hub_revisions.json").read_text())
    assert record["revisions"] == pins
    # the cache moved on (a new snapshot became main): refused, then accepted with --force
    newer = {**pins, "model:Qwen/Qwen2-VL-7B-Instruct": "c" * 40}
    with pytest.raises(ConfigError, match="pinned other hub revisions.*aaaaaaaaaaaa -> cccccccccccc"):
        launcher._pin_revisions(newer, force=False)
    launcher._pin_revisions(newer, force=True)
    assert json.loads((cfg.run_dir / "hub_revisions.json").read_text())["revisions"] == newer


def test_jobs_run_offline_on_the_shared_cache(monkeypatch, tmp_path):
    for var in ("HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    offline_environment(SimpleNamespace(hf_home=str(tmp_path / "hf"), hub_offline=True))
    assert os.environ["HF_HOME"] == str(tmp_path / "hf") and os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["HF_DATASETS_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"


class StandInHub:
    """Stand-in for HfApi (the hub is not reachable here): repo -> gated flag."""

    def __init__(self, gated: dict[str, bool]) -> None:
        self.gated = gated

    def model_info(self, repo_id):
        return SimpleNamespace(gated=self.gated.get(repo_id, False))

    dataset_info = model_info


def test_prefetch_checks_gated_repositories_first_and_returns_revisions(tmp_path):
    assets = [hub.HubAsset("model", "AIML-TUDA/LlavaGuard-v1.2-7B-OV-hf", "safety.vision_judge.model"),
              hub.HubAsset("model", "Qwen/Qwen3Guard-Gen-8B", "safety.text_judge.model")]
    calls = []

    def download(repo_id, repo_type, cache_dir, token):
        calls.append((repo_id, repo_type, cache_dir, token))
        return str(tmp_path / "snapshots" / ("d" * 40))

    api = StandInHub({"AIML-TUDA/LlavaGuard-v1.2-7B-OV-hf": "auto"})
    with pytest.raises(PermissionError, match=r"gated on the hub .*AIML-TUDA/LlavaGuard-v1.2-7B-OV-hf \(safety"):
        hub.prefetch(assets, str(tmp_path / "hf"), token=None, api=api, download=download)
    assert calls == []                                               # nothing downloaded before the check
    pins = hub.prefetch(assets, str(tmp_path / "hf"), token="hf_x", api=api, download=download)
    assert pins == {"model:AIML-TUDA/LlavaGuard-v1.2-7B-OV-hf": "d" * 40, "model:Qwen/Qwen3Guard-Gen-8B": "d" * 40}
    assert calls[0][2] == str(tmp_path / "hf" / "hub") and calls[0][3] == "hf_x"
