# Two commands on a fresh machine: `make train` and `make test` (each runs the idempotent setup).
PY      := .venv/bin/python
PYTEST  := .venv/bin/pytest
RUFF    := .venv/bin/ruff
# CPU budget for `make train` (DESIGN.md §3.4: TD-MPC2's defaults cost ~0.3 s per agent step on
# this 2-core CPU). Every reduced key is spelled out here; a GPU run uses the full defaults:
#   make train TRAIN_ARGS="task=cartpole-swingup device=cuda"
TRAIN_ARGS ?= task=cartpole-swingup model_size=1 batch_size=64 iterations=2 num_samples=128 \
              num_elites=16 num_pi_trajs=8 seed_steps=1000 steps=100000 eval_freq=2500 \
              eval_episodes=4 checkpoint_freq=2500
ARGS   ?=
B      ?=
QUICK  ?=

.PHONY: setup train test lint format bench clean
setup:
	@bash scripts/setup.sh

train: setup
	$(PY) -m ldmpc.cli train $(TRAIN_ARGS) $(ARGS)

test: setup
	$(PYTEST) -q -m "not slow and not gpu" $(ARGS)

lint: setup
	$(RUFF) check . && $(RUFF) format --check .

format: setup
	$(RUFF) check --fix . && $(RUFF) format .

bench: setup
	QUICK=$(QUICK) $(PY) -m benchmarks $(B)

clean:
	rm -rf .venv .pytest_cache .ruff_cache
