"""The GPU canary (`python jobs/check_cluster.py cluster=<profile> --gpu`): one short job of
`gpu_check.resources.nodes` x `tasks_per_node` ranks, started exactly as training is (submitit,
one Slurm task per rank, srun --cpus-per-task), that reports what a 64-GPU run would otherwise
find out after its queue wait:

  per rank   torch / CUDA / driver versions and the GPUs torch sees; flash-attn import and one
             varlen attention call; DeepSpeed's accelerator and whether its ops build here; the
             cores the rank may run on (against cpus_per_task); free space on the filesystem of
             the run directory (checkpoints go there)
  all ranks  an all-reduce across the nodes (NCCL on GPUs, gloo on CPUs) and the hosts it spanned
  rank 0     the recipe's models present in the offline cache (`gpu_check.models`; the entry point
             fills in the `ain` recipe's)

On a CPU cluster (the local test cluster) the GPU checks are skipped, each with its reason, and
the rest runs. The report is the stage's marker and `stages/gpu_check/out/report.json`; every
rank logs its own lines.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ain import hub
from ain.atomic import atomic_write_json
from ain.config_base import Need, Resources
from ain.stages import TaskContext

if TYPE_CHECKING:
    from ain.config import RunConfig


@dataclass
class GpuCheckConfig:
    """A short multi-node job that checks the GPU stack, the network and the caches."""

    models: list[str] = field(default_factory=list)
    """Hub ids or local paths that must be in the offline cache (jobs/check_cluster.py --gpu: the
    `ain` recipe's)."""
    min_free_gb: float = 100.0
    """Free space the run directory's filesystem should have for checkpoints (a 7B ZeRO-3
    checkpoint with optimizer state is ~100 GB); less is reported as a problem."""
    num_tasks: ClassVar[int] = 1  # not a setting: one job of nodes x tasks_per_node ranks
    resources: Resources = field(default_factory=lambda: Resources(nodes=2, tasks_per_node=8, cpus_per_task=8,
                                                                    gpus_per_node=8, mem_gb=0, time_min=15))

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(self.min_free_gb >= 0, "gpu_check.min_free_gb", "must be >= 0")


def _versions() -> dict[str, Any]:
    import torch  # noqa: PLC0415

    out: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                           "cuda_available": torch.cuda.is_available(),
                           "gpus_seen": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=60)
        out["driver"] = proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else None
    else:
        out["driver"] = None
    return out


def _flash_attention(cuda: bool) -> dict[str, Any]:
    """Import flash-attn and run one variable-length call (two sequences packed in one row)."""
    if not cuda:
        return {"ok": None, "skipped": "no CUDA device: flash-attn needs one"}
    try:
        import torch  # noqa: PLC0415
        from flash_attn import flash_attn_varlen_func  # noqa: PLC0415
    except ImportError as exc:
        return {"ok": False, "error": f"flash_attn does not import: {exc} (training falls back to sdpa)"}
    try:
        q = torch.randn(12, 4, 64, device="cuda", dtype=torch.bfloat16)
        cu = torch.tensor([0, 5, 12], device="cuda", dtype=torch.int32)
        out = flash_attn_varlen_func(q, q, q, cu, cu, 7, 7, causal=True)
        torch.cuda.synchronize()
        return {"ok": bool(torch.isfinite(out).all().item()), "shape": list(out.shape)}
    except Exception as exc:  # an unsupported GPU (compute capability < 8.0), a wheel built for another torch
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _deepspeed(cuda: bool) -> dict[str, Any]:
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed  # noqa: PLC0415
        from deepspeed.accelerator import get_accelerator  # noqa: PLC0415
        from deepspeed.ops.op_builder import CPUAdamBuilder  # noqa: PLC0415
    except ImportError as exc:
        return {"ok": False, "error": f"deepspeed does not import: {exc}"}
    out: dict[str, Any] = {"ok": True, "version": deepspeed.__version__, "accelerator": get_accelerator()._name}
    if cuda:  # whether the ops a ZeRO run may JIT-build can be built on this node (nvcc, matching CUDA)
        from deepspeed.ops.op_builder import FusedAdamBuilder  # noqa: PLC0415
        out["ops_compatible"] = {b.NAME: bool(b().is_compatible(verbose=False)) for b in (FusedAdamBuilder, CPUAdamBuilder)}
    else:
        out["ops_compatible"] = {"skipped": "no CUDA device: DeepSpeed's CUDA ops are not built on CPU nodes"}
    return out


def _all_reduce(cuda: bool, rank: int, world: int) -> dict[str, Any]:
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    backend = "nccl" if cuda else "gloo"
    start = time.time()
    dist.init_process_group(backend=backend)
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
    value = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(value)
    hosts: list = [None] * world
    dist.all_gather_object(hosts, socket.gethostname())
    expected = world * (world + 1) / 2
    out = {"backend": backend, "ok": float(value.item()) == expected, "sum": float(value.item()), "expected": expected,
           "hosts": hosts, "seconds": round(time.time() - start, 3)}
    return out


def _models(models: list[str], hf_home: str | None) -> dict[str, Any]:
    """Hub ids: in the offline cache (ain.hub, as a launch checks them); local paths: present."""
    assets = [a for m in models for a in hub.hub_model(m, "gpu_check.models")]
    local = [m for m in models if not hub.is_hub_id(m)]
    pins, missing = hub.check_cached(assets, hf_home) if assets else ({}, [])
    absent = [m for m in local if not Path(os.path.expanduser(m)).exists()]
    return {"ok": not missing and not absent, "present": sorted(pins) + [m for m in local if m not in absent],
            "missing": [a.repo_id for a in missing] + absent}


def run_gpu_check_task(ctx: TaskContext) -> dict[str, Any]:
    import submitit  # noqa: PLC0415
    import torch  # noqa: PLC0415

    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    rank, world = env.rank, env.world_size
    cfg: GpuCheckConfig = ctx.cfg.gpu_check
    cuda = torch.cuda.is_available()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    free_gb = shutil.disk_usage(ctx.run.root).free / 1e9
    mine = {"rank": rank, "host": socket.gethostname(), **_versions(),
            "flash_attn": _flash_attention(cuda), "deepspeed": _deepspeed(cuda),
            "cores": cores, "cpus_per_task": cfg.resources.cpus_per_task,
            "free_gb": round(free_gb, 1), "free_ok": free_gb >= cfg.min_free_gb}
    reduce = _all_reduce(cuda, rank, world)
    import torch.distributed as dist  # noqa: PLC0415

    ranks: list = [None] * world
    dist.all_gather_object(ranks, mine)
    dist.barrier()
    dist.destroy_process_group()
    for key, value in mine.items():
        ctx.log.info("rank %d %s: %s", rank, key, value)
    if rank != 0:
        return mine
    report = {"world_size": world, "all_reduce": reduce, "ranks": ranks,
              "models": _models(cfg.models, ctx.cfg.cluster.hf_home)}
    problems = [f"rank {r['rank']}: {r['cores']} core(s) for cpus_per_task {r['cpus_per_task']}"
                for r in ranks if r["cores"] < r["cpus_per_task"]]
    problems += [f"rank {r['rank']}: flash-attn: {r['flash_attn'].get('error')}" for r in ranks
                 if r["flash_attn"]["ok"] is False]
    problems += [f"rank {r['rank']}: {r['free_gb']} GB free for checkpoints (< gpu_check.min_free_gb)" for r in ranks
                 if not r["free_ok"]]
    problems += [] if reduce["ok"] else [f"all-reduce gave {reduce['sum']}, expected {reduce['expected']}"]
    problems += [f"models not in the offline cache: {report['models']['missing']}"] if report["models"]["missing"] else []
    report["problems"] = problems
    atomic_write_json(ctx.paths.out / "report.json", report)
    ctx.log.info("gpu check: %s", "; ".join(problems) if problems else "no problem found")
    return {"items": world, **report}
