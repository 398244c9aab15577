"""The embedding track's configuration: recipes load and validate, derived fields, every field
documented, mistakes named by key."""

from __future__ import annotations

import dataclasses

import pytest

from ain.config import _field_docs, load_config
from ain.config_base import ConfigError
from ain.vdr import config as vc


def test_every_vdr_config_field_has_a_docstring():
    for cls in (vc.VdrPrepareConfig, vc.HardNegativeMiningConfig, vc.VdrTrainConfig, vc.LeaderboardModel,
                vc.VdrEvalConfig, vc.VdrReportConfig):
        docs = _field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, (cls.__name__, missing)


def test_vdr_ar_is_the_blogs_recipe(chdir_root):
    cfg = load_config(["recipe=vdr_ar", "cluster=local", "cluster.max_gpus_per_node=8",
                       "cluster.max_cpus_per_node=64"], check_paths=False)
    assert cfg.stages == ["vdr_prepare", "vdr_train", "vdr_eval", "vdr_report"]
    t = cfg.vdr_train
    assert (t.model, t.loss, t.mini_batch_size, t.batch_size, t.lr, t.warmup_ratio) == (
        "Qwen/Qwen3-VL-Embedding-2B", "cached_mnrl", 2, 64, 2e-5, 0.1)
    assert t.matryoshka_dims == [2048, 1536, 1024, 512, 256, 128, 64]
    assert t.bf16 and t.gradient_checkpointing and t.batch_sampler == "no_duplicates" and t.save_total_limit == 1
    # PEARL-FULL is distributed as JSON parts + image folders (Google Drive zips), not hub parquet
    p = cfg.vdr_prepare
    assert p.source.endswith("pearl-full") and p.source_format == "json" and p.num_queries == 50000
    assert (p.dev_queries, p.test_queries, p.random_negative_from) == (999, 999, "corpus")
    # one GPU as in the blog, global batch 64, Tom Aarsen's processor bounds
    assert (t.resources.tasks_per_node, t.resources.gpus_per_node, t.per_device_batch_size(1)) == (1, 1, 64)
    assert t.gather_across_devices and t.train_negatives == 4
    assert t.processor_kwargs() == {"min_pixels": 28 * 28, "max_pixels": 600 * 600}
    assert cfg.vdr_eval.num_tasks == len(cfg.vdr_eval.models) == 8            # derived: one task per model
    assert cfg.vdr_eval.corpus == "positional"
    assert {m.path for m in cfg.vdr_eval.models} >= {vc.FINETUNED, "Qwen/Qwen3-VL-Embedding-2B"}
    # trust_remote_code where the model card loads the model with it (docs/VDR.md, "Fidelity")
    assert {m.path: m.trust_remote_code for m in cfg.vdr_eval.models} == {
        vc.FINETUNED: False, "Qwen/Qwen3-VL-Embedding-8B": False, "tomaarsen/Qwen3-VL-Embedding-2B-vdr": False,
        "Qwen/Qwen3-VL-Embedding-2B": False, "nvidia/llama-nemotron-embed-vl-1b-v2": True,
        "llamaindex/vdr-2b-multi-v1": True, "BidirLM/BidirLM-Omni-2.5B-Embedding": True, "BAAI/BGE-VL-large": True}
    assert [m.blog_dev_ndcg10 for m in cfg.vdr_eval.models] == [0.1238, 0.0657, 0.0534, 0.0407, 0.0376, 0.0347,
                                                                 0.0318, 0.0026]


def test_global_batch_over_ranks(chdir_root):
    """batch_size is the global batch (the blog's 64 on one GPU): 2 ranks get 32 each and gather
    embeddings; a world size that does not divide 64 is refused by key."""
    assert vc.per_device_batch_size(64, 1) == 64 and vc.per_device_batch_size(64, 2) == 32
    assert vc.per_device_batch_size(64, 8) == 8
    with pytest.raises(ValueError, match="does not divide evenly over 3 ranks"):
        vc.per_device_batch_size(64, 3)
    base = ["recipe=vdr_ar", "cluster=local", "cluster.max_gpus_per_node=8", "cluster.max_cpus_per_node=64"]
    two = load_config(base + ["vdr_train.resources.tasks_per_node=2", "vdr_train.resources.gpus_per_node=2"],
                      check_paths=False)
    assert two.vdr_train.batch_size == 64 and two.vdr_train.per_device_batch_size(2) == 32
    with pytest.raises(ConfigError, match=r"vdr_train\.batch_size: the global batch 64 must divide evenly over 3 ranks"):
        load_config(base + ["vdr_train.resources.tasks_per_node=3", "vdr_train.resources.gpus_per_node=3"],
                    check_paths=False)


def test_vdr_smoke_loads_with_absolute_paths(chdir_root, tmp_path):
    from ain_testkit.pearl_fixture import write_pearl_fixture

    pearl = write_pearl_fixture(tmp_path / "pearl")
    cfg = load_config(["recipe=vdr_smoke", f"vdr_prepare.source={pearl}"], check_paths=False)
    assert cfg.vdr_eval.num_tasks == 2 and cfg.vdr_train.resources.tasks_per_node == 2
    assert cfg.vdr_eval.models[1].path.startswith("/") or not (chdir_root / ".cache/tiny/vdr_embedder").exists()


def test_base_models_wait_only_for_the_dataset_and_the_fine_tune_for_training(chdir_root, tmp_path):
    from ain.rundir import RunDir
    from ain.slurm.launcher import Launcher
    from ain.stages import plan

    cfg = load_config(["recipe=vdr_smoke", f"runs_root={tmp_path}", "cluster.executor=slurm"], check_paths=False)
    stages = {st.name: st for st in plan(cfg)}
    assert stages["vdr_eval"].task_depends_on == ("vdr_train", "vdr_prepare")   # models[0] is @vdr_train
    assert stages["vdr_eval"].upstream_groups([0, 1]) == {"vdr_train": [0], "vdr_prepare": [1]}
    assert stages["vdr_report"].upstream_of(0) == "vdr_eval" and not stages["vdr_report"].task_depends_on
    text = Launcher(cfg, RunDir(cfg.run_dir)).dry_run()
    assert "vdr_eval: 2 tasks (2 to run), after vdr_train (1 task(s)), vdr_prepare (1 task(s));" in text


@pytest.mark.parametrize("argv, key", [
    (["vdr_train.matryoshka_dims=[16,32,64]"], "vdr_train.matryoshka_dims"),   # not largest first
    (["vdr_train.loss=triplet"], "vdr_train.loss"),
    (["vdr_train.save_total_limit=0"], "vdr_train.save_total_limit"),
    (["vdr_train.resources.nodes=2"], "vdr_train.resources.nodes"),
    (["vdr_prepare.num_queries=20", "vdr_prepare.dev_queries=10", "vdr_prepare.test_queries=10"],
     "vdr_prepare.num_queries"),
    (["vdr_prepare.bad_rows=ignore"], "vdr_prepare.bad_rows"),
    (["vdr_report.split=train"], "vdr_report.split"),
    (["vdr_eval.models=[]"], "vdr_eval.models"),
    (["vdr_prepare.source_format=parquet", "vdr_prepare.source=/nonexistent/pearl"], "vdr_prepare.source"),
    (["vdr_prepare.source_format=json", "vdr_prepare.source=/nonexistent/pearl"], "vdr_prepare.source"),
    (["vdr_prepare.source_format=zip"], "vdr_prepare.source_format"),
    (["vdr_prepare.random_negative_from=split"], "vdr_prepare.random_negative_from"),
    (["vdr_train.batch_size=15"], "vdr_train.batch_size"),          # smoke: 2 ranks
    (["vdr_train.train_negatives=5"], "vdr_train.train_negatives"),
    (["vdr_train.min_pixels=1000", "vdr_train.max_pixels=10"], "vdr_train.max_pixels"),
    (["vdr_eval.corpus=unique"], "vdr_eval.corpus"),
])
def test_mistakes_name_their_key(chdir_root, argv, key):
    with pytest.raises(ConfigError) as err:
        load_config(["recipe=vdr_smoke", "cluster=local", *argv], check_paths=True)
    assert key in str(err.value)


def test_submit_embed_defaults_to_vdr_ar_and_user_recipe_wins(chdir_root, tmp_path):
    import subprocess
    import sys

    from ain_testkit.tiny_vdr_embedder import ensure_tiny_vdr_embedder

    ensure_tiny_vdr_embedder(chdir_root / ".cache/tiny/vdr_embedder")  # the smoke recipe's model must exist
    ar = subprocess.run([sys.executable, "jobs/submit_embed.py", "cluster=localslurm", f"runs_root={tmp_path}",
                         "--dry-run"], capture_output=True, text=True, cwd=chdir_root)
    assert ar.returncode == 2 and "vdr_train.resources.gpus_per_node" in ar.stderr   # a GPU: not here
    smoke = subprocess.run([sys.executable, "jobs/submit_embed.py", "recipe=vdr_smoke", "cluster=localslurm",
                            f"runs_root={tmp_path}", "vdr_prepare.source_format=auto", "--dry-run"],
                           capture_output=True, text=True, cwd=chdir_root)
    assert smoke.returncode == 0, smoke.stderr
    assert "vdr_train: 1 tasks" in smoke.stdout and "vdr_eval: 2 tasks" in smoke.stdout
    assert not list(tmp_path.iterdir())  # a dry run creates nothing
