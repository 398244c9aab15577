"""GPU placement of judge servers: each per_task server of a task on its own GPUs, in-process models
on the first GPU left, and the same arithmetic refusing inconsistent configs before submission."""

from __future__ import annotations

import sys
import textwrap

import pytest

from ain.config import load_config
from ain.config_base import ConfigError, JudgeConfig, Resources, ServerConfig
from ain.serve.placement import check_gpus, in_process_device, plan_gpus, visible_gpus
from ain.serve.server import endpoint


def judge(model: str, tp: int = 1, mode: str = "per_task") -> JudgeConfig:
    return JudgeConfig(model=model, server=ServerConfig(mode=mode, tensor_parallel_size=tp))


def test_each_server_gets_its_own_consecutive_gpus():
    gpus = ["3", "4", "5", "6", "7"]
    plan = plan_gpus({"translator": judge("72b", tp=4)}, gpus)
    assert plan == {"translator": ["3", "4", "5", "6"]}
    assert in_process_device(plan, gpus) == "cuda:4"          # LaBSE: the one GPU left (physical 7)
    two = plan_gpus({"vision_judge": judge("llavaguard"), "text_judge": judge("qwen3guard")}, ["0", "1"])
    assert two == {"vision_judge": ["0"], "text_judge": ["1"]}


def test_one_server_when_both_roles_name_the_same_model_and_server_and_none_for_shared():
    same = judge("guard")
    assert plan_gpus({"vision_judge": same, "text_judge": judge("guard")}, ["0"]) == {"vision_judge": ["0"]}
    assert plan_gpus({"eval_judge": judge("72b", tp=4, mode="shared")}, ["0"]) == {}


def test_too_few_gpus_at_run_time_and_cpu_nodes():
    with pytest.raises(RuntimeError, match=r"need 2 GPU\(s\), this task has 1"):
        plan_gpus({"a": judge("a"), "b": judge("b")}, ["0"])
    assert plan_gpus({"a": judge("a")}, []) == {"a": None}      # CPU node: the server sees the task's devices
    assert in_process_device({"a": None}, []) is None


def test_visible_gpus_reads_slurms_variable(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_check_gpus_names_the_keys():
    errors: list[str] = []

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            errors.append(f"{key}: {message}")

    check_gpus("verify", Resources(gpus_per_node=1), {"translate.translator": judge("72b", tp=4)}, need, 8,
               in_process=1, in_process_what="LaBSE")
    assert errors == ["verify.resources.gpus_per_node: 1 GPU(s), but the task needs 5 "
                      "(translate.translator.server.tensor_parallel_size=4 + 1 for LaBSE): each per_task server gets "
                      "its own GPUs; raise gpus_per_node, or run the judge as server.mode=shared/external"]
    errors.clear()
    check_gpus("verify", Resources(gpus_per_node=1), {"translate.translator": judge("72b", tp=4)}, need, 0)
    assert errors == []                                          # the CPU test cluster: no GPU arithmetic


def test_the_ain_recipe_passes_and_an_inconsistent_one_is_refused(chdir_root):
    cfg = load_config(["recipe=ain", "cluster=slurm"], check_paths=False)
    assert (cfg.verify.resources.gpus_per_node, cfg.safety.resources.gpus_per_node) == (5, 2)
    with pytest.raises(ConfigError) as exc:
        load_config(["recipe=ain", "cluster=slurm", "safety.resources.gpus_per_node=1",
                     "verify.resources.gpus_per_node=4"], check_paths=False)
    assert "verify.resources.gpus_per_node: 4 GPU(s), but the task needs 5" in str(exc.value)
    assert ("safety.resources.gpus_per_node: 1 GPU(s), but the task needs 2 (safety.vision_judge.server."
            "tensor_parallel_size=1 + safety.text_judge.server.tensor_parallel_size=1)") in str(exc.value)


ENV_SERVER = textwrap.dedent("""
    import http.server, os, sys
    open(sys.argv[3], "w").write(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
    http.server.ThreadingHTTPServer((sys.argv[2], int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
""")


def test_a_per_task_server_sees_only_its_devices(tmp_path):
    script = tmp_path / "server.py"
    script.write_text(ENV_SERVER)
    seen = tmp_path / "seen.txt"
    cfg = ServerConfig(command=[sys.executable, str(script), "{port}", "{host}", str(seen)], health_path="/",
                       startup_timeout_s=20.0)
    with endpoint(JudgeConfig(model="m", server=cfg), tmp_path, "text_judge", tmp_path / "logs", devices=["1", "3"]):
        assert seen.read_text() == "1,3"
