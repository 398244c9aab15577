"""Which GPUs each judge server of a task gets.

A task that starts several `per_task` servers (safety: the vision and the text judge; verify: the
translator beside LaBSE) must not let them share devices: each vLLM asks for 90% of the memory of
every GPU it sees, so the second one refuses to start. Each server gets its own consecutive slice
of the task's GPUs (Slurm's CUDA_VISIBLE_DEVICES), `tensor_parallel_size` wide, through its own
CUDA_VISIBLE_DEVICES; models the task runs in-process take the first GPU left. `check_gpus` is the
same arithmetic on the login node: a config whose stage has fewer GPUs than its servers need is
refused before submission, naming the keys.
"""

from __future__ import annotations

import os
from typing import Optional

from ain.config_base import JudgeConfig, Need, Resources


def visible_gpus() -> list[str]:
    """The task's GPUs as Slurm exposes them ([] on a CPU node)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return [d.strip() for d in value.split(",") if d.strip() and d.strip() != "-1"]


def _servers(judges: dict[str, JudgeConfig]) -> dict[str, JudgeConfig]:
    """The per_task servers among `judges` (name or key -> judge), one per distinct model+server."""
    out: dict[str, JudgeConfig] = {}
    seen: list[tuple[str, object]] = []
    for name, judge in judges.items():
        identity = (judge.model, judge.server)
        if judge.server.mode == "per_task" and identity not in seen:
            seen.append(identity)
            out[name] = judge
    return out


def plan_gpus(judges: dict[str, JudgeConfig], gpus: list[str]) -> dict[str, Optional[list[str]]]:
    """name -> the devices its server gets (None: no GPUs here, the server sees what the task sees).
    Raises RuntimeError when the task has fewer GPUs than the servers need."""
    servers = _servers(judges)
    if not gpus:
        return {name: None for name in servers}
    need = sum(j.server.tensor_parallel_size for j in servers.values())
    if need > len(gpus):
        raise RuntimeError(f"the judge servers {sorted(servers)} need {need} GPU(s), this task has {len(gpus)} "
                           f"(CUDA_VISIBLE_DEVICES={','.join(gpus)})")
    plan: dict[str, Optional[list[str]]] = {}
    start = 0
    for name, judge in servers.items():
        plan[name] = gpus[start:start + judge.server.tensor_parallel_size]
        start += judge.server.tensor_parallel_size
    return plan


def in_process_device(plan: dict[str, Optional[list[str]]], gpus: list[str]) -> Optional[str]:
    """The torch device for a model the task runs itself: the first GPU no server took, else the
    last GPU (shared with a server: it must then leave room), None on a CPU node."""
    if not gpus:
        return None
    taken = {d for devices in plan.values() if devices for d in devices}
    free = [i for i, d in enumerate(gpus) if d not in taken]
    return f"cuda:{free[0] if free else len(gpus) - 1}"


def check_gpus(stage: str, resources: Resources, judges: dict[str, JudgeConfig], need: Need,
               max_gpus_per_node: int, in_process: int = 0, in_process_what: str = "") -> None:
    """On a GPU cluster (max_gpus_per_node > 0): the stage's GPUs cover its per_task servers
    (each its own tensor_parallel_size) plus `in_process` GPUs for models it runs itself.
    `judges` maps config keys (e.g. "safety.text_judge") to judges."""
    if max_gpus_per_node <= 0:
        return  # the CPU test cluster: servers run on the CPU
    servers = _servers(judges)
    parts = [f"{key}.server.tensor_parallel_size={j.server.tensor_parallel_size}" for key, j in servers.items()]
    if in_process:
        parts.append(f"{in_process} for {in_process_what}")
    wanted = sum(j.server.tensor_parallel_size for j in servers.values()) + in_process
    need(resources.gpus_per_node >= wanted, f"{stage}.resources.gpus_per_node",
         f"{resources.gpus_per_node} GPU(s), but the task needs {wanted} ({' + '.join(parts)}): each per_task server "
         "gets its own GPUs; raise gpus_per_node, or run the judge as server.mode=shared/external")
