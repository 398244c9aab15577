"""ain.train.ds_config: batch arithmetic, ZeRO/bf16 fields, the optimizer (torch's AdamW as a
client optimizer, no DeepSpeed FusedAdam), and a real deepspeed.initialize."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest

from ain.train.config import TrainConfig
from ain.train.ds_config import deepspeed_config, derive_batch, make_optimizer, optimizer_kwargs, warmup_steps


@pytest.mark.parametrize("micro,accum,world,expected", [
    (1, 2, 64, 128),  # the report: 8 nodes x 8 GPUs, per-device 1 x accum 2
    (1, 1, 1, 1),
    (2, 4, 3, 24),
    (4, 8, 16, 512),
])
def test_derive_batch(micro, accum, world, expected):
    cfg = TrainConfig(micro_batch_size=micro, grad_accum=accum)
    assert derive_batch(cfg, world) == (micro, accum, expected)
    assert derive_batch(replace(cfg, global_batch_size=expected), world) == (micro, accum, expected)


def test_global_batch_mismatch_names_the_key():
    cfg = TrainConfig(micro_batch_size=1, grad_accum=2, global_batch_size=256)
    with pytest.raises(ValueError) as err:
        derive_batch(cfg, 64)
    msg = str(err.value)
    assert "train.global_batch_size=256" in msg and "1 x 2 x 64 = 128" in msg


def test_report_config_zero3_bf16():
    cfg = TrainConfig()  # defaults follow the report: micro 1, accum 2, ZeRO-3, bf16, lr 1e-5, warmup 0.1
    ds = deepspeed_config(cfg, world_size=64, total_steps=28125)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (1, 2, 128)
    assert ds["bf16"] == {"enabled": True} and ds["gradient_clipping"] == 1.0
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["overlap_comm"] and z["contiguous_gradients"]
    assert z["stage3_gather_16bit_weights_on_model_save"] is True
    assert "allgather_partitions" not in z
    # no optimizer block: with one DeepSpeed would build (JIT-compile, per rank) FusedAdam on GPU
    assert "optimizer" not in ds and "FusedAdam" not in json.dumps(ds)
    assert optimizer_kwargs(cfg, on_cpu=False) == {"lr": 1e-5, "betas": (0.9, 0.999), "eps": 1e-8,
                                                   "weight_decay": 0.0, "fused": True}
    sched = ds["scheduler"]
    assert sched["type"] == "WarmupCosineLR"
    assert sched["params"] == {"total_num_steps": 28125, "warmup_num_steps": 2813, "warmup_min_ratio": 0.0,
                               "warmup_type": "linear", "cos_min_ratio": 0.0}
    assert ds["wall_clock_breakdown"] is False and ds["steps_per_print"] > 0
    assert "auto" not in json.dumps(ds)


def test_zero2_cpu_fp32():
    cfg = TrainConfig(zero_stage=2, bf16=False, weight_decay=0.01)
    ds = deepspeed_config(cfg, world_size=2, total_steps=10)
    z = ds["zero_optimization"]
    assert z["stage"] == 2 and not any(k.startswith("stage3_") for k in z)
    assert ds["bf16"] == {"enabled": False}
    kwargs = optimizer_kwargs(cfg, on_cpu=True)
    assert kwargs["fused"] is False and kwargs["weight_decay"] == 0.01  # plain AdamW on CPU
    assert ds["train_batch_size"] == 4


def test_make_optimizer_is_torch_adamw():
    torch = pytest.importorskip("torch")
    cfg = TrainConfig(lr=3e-4, weight_decay=0.1)
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = make_optimizer(cfg, on_cpu=True)(params)
    assert type(opt) is torch.optim.AdamW  # one of ZeRO's supported optimizers
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (3e-4, (0.9, 0.999), 1e-8, 0.1)
    assert not group["fused"]
    if torch.cuda.is_available():  # the cluster's case
        opt = make_optimizer(cfg, on_cpu=False)([torch.nn.Parameter(torch.zeros(3, device="cuda"))])
        assert opt.param_groups[0]["fused"] is True


def test_warmup_and_bad_inputs():
    assert warmup_steps(TrainConfig(warmup_ratio=0.1), 95) == 10  # ceil(9.5)
    assert warmup_steps(TrainConfig(warmup_ratio=0.0), 95) == 1  # DeepSpeed refuses 0
    with pytest.raises(ValueError, match="zero_stage"):
        deepspeed_config(TrainConfig(zero_stage=1), 1, 10)
    with pytest.raises(ValueError, match="global_batch_size"):
        deepspeed_config(TrainConfig(global_batch_size=3), 1, 10)


_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch, deepspeed
    from ain.train.config import TrainConfig
    from ain.train.ds_config import deepspeed_config, make_optimizer
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    out = {}
    for stage in (2, 3):
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 1)
        cfg = TrainConfig(zero_stage=stage, bf16=False, micro_batch_size=2, grad_accum=1,
                          lr=1e-2, warmup_ratio=0.3)
        ds = deepspeed_config(cfg, world_size=1, total_steps=10)
        engine, opt, _, sched = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds,
                                                     optimizer=make_optimizer(cfg, on_cpu=True))
        x, y = torch.randn(2, 8), torch.randn(2, 1)
        lrs, losses = [], []
        for _ in range(6):
            lrs.append(engine.get_lr()[0])
            loss = torch.nn.functional.mse_loss(engine(x), y)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        out[stage] = {"lrs": lrs, "losses": losses, "sched": type(sched).__name__,
                      "opt": type(engine.optimizer).__name__, "basic": type(engine.basic_optimizer).__module__
                      + "." + type(engine.basic_optimizer).__name__, "batch": engine.train_batch_size()}
    print("RESULT " + json.dumps(out))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_deepspeed_initialize_cpu(tmp_path):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install deepspeed)")
    env = dict(os.environ, DS_ACCELERATOR="cpu", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1",
               GLOO_SOCKET_IFNAME="lo")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT "):])
    warm = 3  # ceil(0.3 * 10)
    for stage in ("2", "3"):
        r = out[stage]
        assert r["sched"] == "WarmupCosineLR" and r["batch"] == 2
        assert r["basic"] == "torch.optim.adamw.AdamW"  # the client optimizer, wrapped by ZeRO
        # lr used by optimizer step i (0-based): DeepSpeed's scheduler lags one step in the warmup
        # (steps 0 and 1 at 0, step i < warm+1 at (i-1)/warm); from step warm+1 on it equals HF's
        # cosine: 0.5 * (1 + cos(pi * (i - warm) / (total - warm)))
        expected = [1e-2 * max(i - 1, 0) / warm for i in range(warm + 1)]
        expected += [1e-2 * 0.5 * (1 + math.cos(math.pi * (i - warm) / (10 - warm))) for i in (4, 5)]
        assert r["lrs"] == pytest.approx(expected, abs=1e-9), r["lrs"]
        assert all(math.isfinite(v) for v in r["losses"]) and r["losses"][-1] < r["losses"][1]
