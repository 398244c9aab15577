"""The one place where a stage's config becomes Slurm parameters and sbatch text.

`slurm_parameters` feeds submitit's SlurmExecutor for real submissions; `render_sbatch` turns the
same parameters into the script text submitit would submit (dry runs and the golden test show
it). Keeping both on one function means the dry run cannot drift from what is submitted.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from submitit.slurm.slurm import _make_sbatch_string  # the text submitit itself submits

from ain.config import ClusterConfig, Resources


def slurm_parameters(cluster: ClusterConfig, job_name: str, res: Resources,
                     dependency: list[str] | None = None) -> dict[str, Any]:
    """Keyword arguments for `submitit.SlurmExecutor.update_parameters`."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": res.time_min,
        "nodes": res.nodes,
        "ntasks_per_node": res.tasks_per_node,
        "cpus_per_task": res.cpus_per_task,
        "signal_delay_s": cluster.signal_delay_s,
        "array_parallelism": cluster.array_parallelism,
        "setup": list(cluster.setup),
    }
    if res.mem_gb:
        params["mem"] = f"{int(res.mem_gb * 1024)}M"
    if res.gpus_per_node:
        if cluster.gres:
            params["gres"] = cluster.gres
        else:
            params["gpus_per_node"] = res.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(cluster, key)
        if value:
            params[key] = value
    # A dependent job whose upstream task failed is cancelled instead of pending forever.
    additional: dict[str, Any] = {"kill-on-invalid-dep": "yes"}
    additional.update({k: (True if v in ("", None) else v) for k, v in cluster.extra_sbatch.items()})
    params["additional_parameters"] = additional
    if dependency:
        params["dependency"] = "afterok:" + ":".join(dependency)
    return params


def render_sbatch(cluster: ClusterConfig, job_name: str, res: Resources, folder: Path, array_size: int,
                  python: str = "python", dependency: list[str] | None = None) -> str:
    """The sbatch script of one stage's array, exactly as submitit would write it."""
    params = slurm_parameters(cluster, job_name, res, dependency)
    command = " ".join([python, "-u", "-m", "submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=array_size, **params)
