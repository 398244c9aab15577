"""Training on a real cluster, the parts a CPU machine can check: the attention probe (sdpa here,
recorded), the ZeRO-3 load path (guarded by the zero stage), the fail-fast on GPUs torch cannot
see, and the environment (lock file, README commands, environment.yml).

Network: `test_lock_is_current_with_a_dry_run_resolve` resolves against PyPI with uv and skips
without uv or without network; everything else is offline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ain.config import load_config
from ain.train.attention import FLASH, AttentionChoice, choose_attention, plan_attention
from ain.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "train-gpu.txt"
LOCK_IN = ROOT / "requirements" / "train-gpu.in"


# ------------------------------------------------------------------------------ attention probe
def test_attention_probe_chooses_sdpa_on_this_machine_and_says_why():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine: the CPU fallback is not what happens here")
    choice = choose_attention(FLASH)
    assert choice == AttentionChoice(FLASH, "sdpa", "no CUDA device")
    assert choice.record() == {"attn_implementation": "sdpa", "attn_fallback": "no CUDA device"}


@pytest.mark.parametrize("cap, flash_error, bf16, expected, reason", [
    ((9, 0), None, True, FLASH, ""),  # H100/H200 with flash_attn: used
    ((8, 0), None, True, FLASH, ""),  # A100: used
    ((7, 0), None, True, "sdpa", "GPU compute capability 7.0 < 8.0"),  # V100
    ((9, 0), "flash_attn does not import (ImportError: undefined symbol)", True, "sdpa", "undefined symbol"),
    ((9, 0), None, False, "sdpa", "train.bf16 is false"),
    (None, None, True, "sdpa", "no CUDA device"),
])
def test_attention_probe_decisions(cap, flash_error, bf16, expected, reason, caplog):
    choice = choose_attention(FLASH, bf16=bf16, capability=lambda: cap, import_flash=lambda: flash_error)
    assert choice.implementation == expected and reason in choice.fallback
    if expected == FLASH:
        assert choice.record() == {"attn_implementation": FLASH} and not caplog.records
    else:
        assert "attn_fallback" in choice.record()
        assert any("using sdpa" in r.getMessage() for r in caplog.records)  # the warning in the job's log


@pytest.mark.parametrize("asked", ["sdpa", "eager"])
def test_other_kernels_are_used_as_asked_without_probing(asked):
    def boom():
        raise AssertionError("probed")

    assert choose_attention(asked, capability=boom, import_flash=boom) == AttentionChoice(asked, asked)


def test_metrics_rows_carry_the_attention_choice(tmp_path):
    from ain.train.telemetry import TrainLog, read_metrics

    log = TrainLog(tmp_path, 0, 0, world_size=1, peak_flops=1e12, tensorboard=False,
                   fields=AttentionChoice(FLASH, "sdpa", "no CUDA device").record())
    for step in (1, 2):
        log.step(step, loss=1.0, lr=1e-5, grad_norm=0.5, tokens=10, samples=2, flops=1e9, sample_ids=["a", "b"])
    log.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["attn_implementation"] == "sdpa" and r["attn_fallback"] == "no CUDA device" for r in rows)
    other = TrainLog(tmp_path / "r1", 1, 0, world_size=2, peak_flops=1e12, tensorboard=False,
                     fields={"attn_implementation": "sdpa"})  # rank 1 writes no metrics.jsonl
    other.step(1, loss=1.0, lr=1e-5, grad_norm=0.5, tokens=10, samples=2, flops=1e9, sample_ids=["c"])
    other.close()
    assert not (tmp_path / "r1" / "metrics.jsonl").exists()


def test_dry_run_says_which_attention_each_job_tries(chdir_root, tmp_path):
    from ain.train.estimate import estimate_train

    cfg = load_config(["recipe=ain", "cluster=slurm", "train.attn_implementation=flash_attention_2"],
                      check_paths=False)
    text = estimate_train(cfg, tmp_path).describe()
    line = text.splitlines()[-1]
    assert line.startswith("train attention: flash_attention_2 on each rank whose GPU has compute capability >= 8.0")
    assert "else sdpa with a warning" in line and ("installed" in line)
    cfg = load_config(["recipe=ain", "cluster=slurm", "train.attn_implementation=sdpa"], check_paths=False)
    assert estimate_train(cfg, tmp_path).describe().splitlines()[-1] == "train attention: sdpa (as configured)"
    assert "needs bf16" in plan_attention(FLASH, bf16=False)


# ------------------------------------------------------------------------------ model load (ZeRO-3 init)
class _Visual:
    def __init__(self, torch):
        self.patch_embed, self.blocks, self.merger = (torch.nn.Linear(2, 2) for _ in range(3))


class _StubModel:
    """What load_model touches of a Qwen2-VL model; records the ZeRO-3 state at construction."""

    calls: list = []

    def __init__(self, torch, implementation):
        from transformers.integrations import is_deepspeed_zero3_enabled

        self.zero3_at_load = is_deepspeed_zero3_enabled()
        self.implementation = implementation
        self.config = SimpleNamespace(use_cache=True)
        self.visual = _Visual(torch)

    @classmethod
    def from_pretrained(cls, name, dtype=None, attn_implementation=None):
        import torch

        cls.calls.append(attn_implementation)
        if attn_implementation == FLASH and cls.refuse_flash:
            raise ImportError("FlashAttention2 has been toggled on, but it cannot be used")
        return cls(torch, attn_implementation)

    def gradient_checkpointing_enable(self, **kwargs):
        pass

    def train(self):
        return self


@pytest.fixture
def stub_hf(monkeypatch):
    pytest.importorskip("deepspeed")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from ain.train import loop

    model = type("Stub", (_StubModel,), {"calls": [], "refuse_flash": False})
    # on the classes: transformers' lazy module ignores attributes set on it
    monkeypatch.setattr(Qwen2VLForConditionalGeneration, "from_pretrained", model.from_pretrained)
    monkeypatch.setattr(AutoProcessor, "from_pretrained", staticmethod(lambda name: "processor"))
    yield model
    loop.release_zero3_config()


@pytest.mark.parametrize("stage", [2, 3])
def test_zero3_init_only_under_zero_stage_3(stub_hf, stage):
    from ain.train.ds_config import deepspeed_config
    from ain.train.loop import load_model, release_zero3_config, zero3_init_active

    cfg = TrainConfig(zero_stage=stage, grad_accum=1, bf16=False, model="stub")
    model, processor, choice = load_model(cfg, deepspeed_config(cfg, 1, 10))
    # ZeRO-3: transformers builds the model inside deepspeed.zero.Init (partitioned, rank 0 reads)
    assert model.zero3_at_load is (stage == 3) and zero3_init_active() is (stage == 3)
    assert processor == "processor" and choice.implementation == "sdpa" and model.config.use_cache is False
    assert not any(p.requires_grad for p in model.visual.blocks.parameters())  # frozen as before
    release_zero3_config()
    assert not zero3_init_active()
    model, _, _ = load_model(cfg)  # no DeepSpeed config: a plain load
    assert model.zero3_at_load is False


def test_flash_refused_by_from_pretrained_falls_back_to_sdpa(stub_hf):
    from ain.train.loop import load_model

    stub_hf.refuse_flash = True
    cfg = TrainConfig(zero_stage=2, grad_accum=1, model="stub")
    model, _, choice = load_model(cfg, attention=AttentionChoice(FLASH, FLASH))
    assert stub_hf.calls == [FLASH, "sdpa"] and model.implementation == "sdpa"
    assert choice.implementation == "sdpa" and choice.fallback.startswith("from_pretrained: ImportError")


def test_gpus_allocated_but_invisible_to_torch_stop_the_job(monkeypatch):
    from ain.train.loop import check_gpus_usable

    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "8")
    with pytest.raises(RuntimeError, match="Slurm allocated 8 GPU.*CUDA 13.0"):
        check_gpus_usable(True, "2.14.1", "13.0")
    check_gpus_usable(False, "2.14.1", "13.0")  # torch sees them
    monkeypatch.delenv("SLURM_GPUS_ON_NODE")
    check_gpus_usable(True, "2.14.1", None)  # a CPU job (tests, the local cluster)


# ------------------------------------------------------------------------------ a ZeRO-3 run on CPU (slow)
@pytest.mark.slow
def test_zero3_run_loads_partitioned_uses_torch_adamw_and_records_sdpa(tmp_path_factory):
    """Two ZeRO-3 steps of the tiny Qwen2-VL on CPU (gloo) asking for flash_attention_2: the model
    was built under zero.Init, the optimizer DeepSpeed steps is torch's AdamW, and sdpa (with the
    reason) is in the result and in every metrics.jsonl row."""
    pytest.importorskip("deepspeed")
    from ain_testkit.tiny_judge import build_model_dir
    from tests.unit.test_train_loop import DRIVER, _free_port, _vl_shards  # the same tiny model and shards

    root = tmp_path_factory.mktemp("zero3")
    build_model_dir(root / "model", ["What colour is the square?", "The square is red.", "ما لون المربع؟"] * 4,
                    [], seed=0)
    _vl_shards(root / "shards")
    (root / "driver.py").write_text(DRIVER)
    cfg = dict(model=str(root / "model"), bf16=False, gradient_checkpointing=False, zero_stage=3,
               micro_batch_size=1, grad_accum=1, lr=1e-3, warmup_ratio=0.0, num_workers=0, max_length=96,
               packing=True, packing_buffer=6, min_pixels=56 * 56, max_pixels=112 * 112,
               attn_implementation=FLASH)
    args = {"cfg": cfg, "manifest": str(root / "shards"), "out": str(root / "ckpt"), "max_steps": 2,
            "stop_after": None, "result": str(root / "result.json")}
    (root / "args.json").write_text(json.dumps(args))
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="",
               TOKENIZERS_PARALLELISM="false")
    env.pop("SLURM_GPUS_ON_NODE", None)
    proc = subprocess.run([sys.executable, str(root / "driver.py"), str(root / "args.json")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((root / "result.json").read_text())
    assert res["steps"] == 2 and res["zero3_init"] is True and res["optimizer"] == "AdamW"
    assert res["attn_implementation"] == "sdpa" and res["attn_fallback"] == "no CUDA device"
    rows = [json.loads(line) for line in (root / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["attn_implementation"] == "sdpa" for r in rows)
    assert "is not usable here (no CUDA device): using sdpa" in proc.stderr


# ------------------------------------------------------------------------------ the environment
def _pins(text: str) -> dict[str, str]:
    """name -> version of the `name==version` lines of a requirements file (names normalised)."""
    pins = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def test_lock_pins_torch_deepspeed_and_the_versions_the_suite_runs_with():
    pins = _pins(LOCK.read_text())
    wanted = _pins(LOCK_IN.read_text())
    for name in ("torch", "torchvision", "deepspeed", "transformers", "accelerate"):
        assert name in pins and pins[name] == wanted[name], name
    assert "flash-attn" not in pins  # built after the lock, against its torch (README)
    assert re.search(r"^-e \.$", LOCK.read_text(), re.M)  # this package, editable, from the repo root
    assert any(name.startswith("nvidia-") for name in pins)  # torch's CUDA wheels, from PyPI
    # the pins satisfy pyproject's ranges (a lock that pyproject has moved away from fails here)
    from packaging.requirements import Requirement

    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for spec in project["dependencies"] + extras["curate"] + extras["train"]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} (pyproject) is not in the lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock {name}=={pins[name]} vs {spec}"


def test_readme_and_environment_install_from_the_lock():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## On a cluster", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    lock = next(i for i, line in enumerate(lines) if line == "pip install -r requirements/train-gpu.txt")
    flash = next(i for i, line in enumerate(lines) if "pip install --no-build-isolation flash-attn==" in line)
    assert lines.index(next(x for x in lines if x.startswith("conda env create -f environment.yml"))) < lock < flash
    version = re.search(r"flash-attn==(\S+)", lines[flash]).group(1)
    env = (ROOT / "environment.yml").read_text()
    assert f"flash-attn=={version}" in env and "requirements/train-gpu.txt" in env
    deps = env.split("dependencies:", 1)[1]
    assert "pytorch" not in deps and "-e ." not in deps  # no conda torch (its channel stopped at 2.5)


def _uv() -> str | None:
    here = Path(sys.executable).parent / "uv"
    return str(here) if here.exists() else shutil.which("uv")


def test_lock_is_current_with_a_dry_run_resolve(tmp_path):
    """`uv pip compile` of train-gpu.in with the lock as constraints gives exactly the lock's
    pins: pyproject and the .in still resolve to it (needs uv and PyPI; skips without either)."""
    uv = _uv()
    required = os.environ.get("AIN_REQUIRE_LOCK_CHECK") == "1"  # CI: a broken pin must fail, not skip
    if uv is None:
        if required:
            pytest.fail("AIN_REQUIRE_LOCK_CHECK=1 but uv is not installed (it is in the test extras)")
        pytest.skip("uv is not installed (pip install uv)")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in _pins(LOCK.read_text()).items()))
    try:
        proc = subprocess.run([uv, "pip", "compile", str(LOCK_IN), "--constraint", str(constraints),
                               "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28",
                               "--no-header", "--quiet", "-o", str(tmp_path / "out.txt")],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        (pytest.fail if required else pytest.skip)("uv pip compile took over 60 s (no network?)")
    if proc.returncode != 0 and re.search(r"(?i)network|connect|dns|resolve host|timed out|offline|tls|ssl",
                                          proc.stderr) and "No solution found" not in proc.stderr:
        (pytest.fail if required else pytest.skip)(f"no PyPI: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _pins((tmp_path / "out.txt").read_text()) == _pins(LOCK.read_text())
