# Two commands for a fresh machine with only Python: `make test` and `make demo`.
# Each creates .venv and installs the project into it first (once; re-run after pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# PyTorch with the torchvision that lmms-eval needs (on these machines both wheels come from local disk); on a GPU
# machine set TORCH_SPEC to your CUDA wheels before `make`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,mllm,eval,tools

.PHONY: test demo pipeline lint setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --no-build-isolation "deepspeed>=0.15"
	touch $@

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/genlip-pretrain
	$(BIN)/genlip-pretrain --recipe stage2_tiny_cpu
	$(BIN)/genlip-mllm pretrain
	$(BIN)/genlip-mllm finetune
	$(BIN)/genlip-mllm chat --model runs/mllm_finetune_tiny_cpu/final \
	  --image "$${GENLIP_HOME:-$$HOME/.cache/genlip}/sft-n512-s0/images/000003.png" --prompt "Which bar is the tallest?"

# the whole chain on generated data: GenLIP vs a same-budget contrastive encoder vs a random one (~10 min, CPU)
pipeline: setup
	$(BIN)/genlip-eval pipeline

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
