"""Config composition and validation: every mistake names its key before anything is submitted."""

from __future__ import annotations

import pytest

from ain.config import RunConfig, describe_fields, from_yaml, load_config
from ain.config_base import ConfigError, to_yaml


def test_recipe_cluster_and_overrides_compose(chdir_root):
    cfg = load_config(["recipe=canary", "cluster=localslurm", "canary.num_tasks=7", "cluster.array_parallelism=3"])
    assert isinstance(cfg, RunConfig)
    assert cfg.recipe == "canary" and cfg.name == "canary"          # default name: the recipe
    assert cfg.canary.num_tasks == 7 and cfg.canary.items_per_task == 10  # CLI over YAML over defaults
    assert cfg.cluster.name == "localslurm" and cfg.cluster.partition == "debug"
    assert cfg.cluster.array_parallelism == 3


@pytest.mark.parametrize("argv, key", [
    (["canary.num_taskz=3"], "num_taskz"),                                   # unknown key
    (["canary.num_tasks=many"], "canary.num_tasks"),                         # wrong type
    (["canary.num_tasks=0"], "canary.num_tasks"),                            # impossible value
    (["canary.resources.nodes=3"], "canary.resources.nodes"),                # more nodes than the cluster
    (["canary.resources.gpus_per_node=1"], "canary.resources.gpus_per_node"),
    (["canary.resources.cpus_per_task=8"], "canary.resources.cpus_per_task"),
    (["canary.resources.time_min=100000"], "canary.resources.time_min"),
    (["cluster.signal_delay_s=1200", "canary.resources.time_min=10"], "canary.resources.time_min"),
    (["stages=[canary,frobnicate]"], "stages"),
    (["stages=[ingest,canary]"], "stages"),                                  # out of pipeline order
    (["stages=[train]"], "train.resources.nodes"),                           # 8 nodes on a 2-node profile
    (["cluster.executor=kubernetes"], "cluster.executor"),
    (["name=../elsewhere"], "name"),
    (["notakeyvalue"], "notakeyvalue"),
])
def test_validation_errors_name_the_key(chdir_root, argv, key):
    with pytest.raises(ConfigError) as err:
        load_config(["recipe=canary", "cluster=local", *argv])
    assert key in str(err.value)


def test_missing_input_path_is_reported_with_its_key(chdir_root, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(["recipe=smoke", "stages=[ingest]", f"ingest.sources=[{{path: {tmp_path}/nope.jsonl}}]"])
    assert "ingest.sources[0].path" in str(err.value) and "nope.jsonl" in str(err.value)


def test_unknown_recipe_lists_the_known_ones(chdir_root):
    with pytest.raises(ConfigError, match="known: .*canary"):
        load_config(["recipe=nosuch"])


def test_yaml_round_trip_is_exact(chdir_root):
    cfg = load_config(["recipe=canary", "canary.seconds_per_item=0.05"])
    assert from_yaml(to_yaml(cfg)) == cfg


def test_every_field_is_documented():
    undocumented = [key for key, _, doc in describe_fields() if not doc]
    assert undocumented == []


def test_relative_input_paths_become_absolute(chdir_root):
    cfg = load_config(["recipe=smoke", "stages=[ingest]"])
    assert all(src.path.startswith(str(chdir_root)) for src in cfg.ingest.sources)


def test_two_sources_with_one_name_are_refused(chdir_root):
    with pytest.raises(ConfigError, match="both named"):
        load_config(["recipe=smoke", "stages=[ingest]", "ingest.sources=[{path: tests/fixtures/smoke/en_llava.json},"
                     "{path: tests/fixtures/smoke/en_llava.json}]"])


def test_missing_local_model_directory_is_reported(chdir_root, tmp_path):
    with pytest.raises(ConfigError, match="translate.translator.model"):
        load_config(["recipe=smoke", f"translate.translator.model={tmp_path}/no-model", "stages=[ingest,translate]"])


def test_external_judge_needs_url_and_its_key_variable(chdir_root, monkeypatch):
    monkeypatch.delenv("AIN_TEST_KEY", raising=False)
    with pytest.raises(ConfigError) as err:
        load_config(["recipe=smoke", "stages=[ingest,translate]", "translate.translator.model=org/model",
                     "translate.translator.server.mode=external", "translate.translator.server.api_key_env=AIN_TEST_KEY"])
    assert "translate.translator.server.url" in str(err.value) and "AIN_TEST_KEY" in str(err.value)
