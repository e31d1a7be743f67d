# Two commands for a fresh machine with only Python: `make test` and `make demo`.
# Each creates .venv and installs the project into it first, with the exact versions of the lock
# (requirements/lock.txt + requirements/torch.txt; re-run after either or pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The PyTorch wheels. Default: the locked stack the suite passed with (PyPI's torch 2.14.1 + torchvision 0.29.1,
# which run on the CPU and on GPUs with a CUDA 13 driver). For other wheels name them, e.g.
#   make setup TORCH_SPEC="torch==2.11.0 torchvision==0.26.0 --index-url https://download.pytorch.org/whl/cu126"
# Other wheels bring their own requirements: where one refuses a locked version (torch 2.11 wants setuptools<82),
# that package follows the wheel and `make` says so; everything else stays locked.
CONSTRAINTS := $(VENV)/constraints.txt
PIP := $(BIN)/python -m pip install --quiet -c $(CONSTRAINTS)
ifeq ($(origin TORCH_SPEC),undefined)
TORCH_INSTALL := $(PIP) -r requirements/torch.txt
LOCK_CHECK :=
else
TORCH_INSTALL := $(BIN)/python -m pip install --quiet $(TORCH_SPEC)
LOCK_CHECK := --torch-unlocked
endif
EXTRAS ?= dev,mllm,eval,tools,tensorboard
# `make lock`: the versions to lock are resolved afresh from pyproject.toml's ranges, with this PyTorch
LOCK_TORCH ?= torch==2.14.1 torchvision==0.29.1
LOCK_VENV := .lock-venv

.PHONY: test demo pipeline lint setup check-env lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/lock.txt requirements/torch.txt
	$(PYTHON) -m venv $(VENV)
	cp requirements/lock.txt $(CONSTRAINTS)
	$(PIP) setuptools packaging
	$(TORCH_INSTALL)
	$(BIN)/python requirements/lock.py constraints $(CONSTRAINTS) $(LOCK_CHECK)
	$(PIP) -e ".[$(EXTRAS)]"
	DS_BUILD_OPS=0 $(PIP) --no-build-isolation deepspeed
	touch $@

# the environment is the locked one and consistent
check-env: setup
	$(BIN)/python -m pip check
	$(BIN)/python requirements/lock.py check $(LOCK_CHECK)

# the test files run side by side, one pytest-xdist worker per logical CPU (at most 8; a file's tests stay together,
# so its module fixtures are made once); `make test PYTEST_JOBS=0` runs them one after another
PYTEST_JOBS ?= logical
test: check-env
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(PYTEST_JOBS) --maxprocesses 8 --dist loadfile

demo: setup
	$(BIN)/genlip-pretrain
	$(BIN)/genlip-pretrain --recipe stage2_tiny_cpu
	$(BIN)/genlip-mllm pretrain
	$(BIN)/genlip-mllm finetune
	$(BIN)/genlip-mllm chat --model runs/mllm_finetune_tiny_cpu/final \
	  --image "$${GENLIP_HOME:-$$HOME/.cache/genlip}/sft-n512-s0/images/000003.png" --prompt "Which bar is the tallest?"

# the whole chain on generated data: GenLIP vs a same-budget contrastive encoder vs a random one (CPU; its time is
# measured in BENCHMARKS.md and quoted in the README)
pipeline: setup
	$(BIN)/genlip-eval pipeline

lint: setup
	$(BIN)/ruff check .

# Re-resolve the newest versions that pyproject.toml allows in a scratch environment and freeze them into
# requirements/*.txt; then run `make clean test` and commit the lock with the change that needed it.
lock:
	rm -rf $(LOCK_VENV) build
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade setuptools
	$(LOCK_VENV)/bin/python -m pip install --quiet $(LOCK_TORCH)
	$(LOCK_VENV)/bin/python -m pip install --quiet ".[$(EXTRAS),bench]"
	DS_BUILD_OPS=0 $(LOCK_VENV)/bin/python -m pip install --quiet --no-build-isolation "deepspeed>=0.15"
	$(LOCK_VENV)/bin/python -m pip check
	$(PYTHON) requirements/lock.py write $(LOCK_VENV)/bin/python
	rm -rf $(LOCK_VENV) build

clean:
	rm -rf $(VENV) $(LOCK_VENV) build *.egg-info
