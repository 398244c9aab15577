# Two commands do all the set-up (see README.md):
#   make smoke   virtualenv + package, then `python jobs/submit_train.py recipe=smoke`
#   make test    virtualenv + package, system packages and the local Slurm test cluster, then pytest
PY ?= python3
VENV := .venv
export OMP_NUM_THREADS ?= 1

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

.PHONY: setup smoke test cluster-up cluster-down
setup: $(VENV)/.installed

smoke: setup
	$(VENV)/bin/python jobs/submit_train.py recipe=smoke

cluster-up:
	bash tests/cluster/up.sh

cluster-down:
	bash tests/cluster/down.sh

test: setup
	bash scripts/install_system_deps.sh
	$(VENV)/bin/python -m pytest tests
