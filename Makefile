# Two commands on a fresh machine: `make train` and `make test` (each runs the idempotent setup).
PY      := .venv/bin/python
PYTEST  := .venv/bin/pytest
RUFF    := .venv/bin/ruff
# CPU budget for `make train` (docs/design.md §3.4: TD-MPC2's defaults cost ~0.3 s per agent step on
# this 2-core CPU), compiled, in bf16 where the CPU multiplies bf16 clearly faster (precision=auto),
# updates on a second thread while the driver plans, evaluation in a niced actor beside training
# (docs/results.md: 2.4x make train before the speed work; 40 min per 100k steps here). Every
# changed key is spelled out here; a GPU run uses the full defaults:
#   make train TRAIN_ARGS="task=cartpole-swingup device=cuda"
TRAIN_ARGS ?= task=cartpole-swingup model_size=1 batch_size=64 iterations=2 num_samples=128 \
              num_elites=16 num_pi_trajs=8 seed_steps=1000 steps=100000 eval_freq=2500 \
              eval_episodes=4 checkpoint_freq=2500 compile=true precision=auto \
              overlap=true eval_parallel=true
ARGS   ?=
B      ?=
QUICK  ?=
# pytest-xdist workers for `make test` (0: one process, e.g. to debug with pdb)
JOBS   ?= 2
# Lower-case command-line variables are config keys: `make train task=mw-door-open obs=rgb` forwards
# them after the budget, so they win over it (the CLI keeps the last value of a key).
MAKE_VARS   := TRAIN_ARGS ARGS B QUICK JOBS PY PYTEST RUFF
CONFIG_ARGS  = $(strip $(foreach v,$(filter-out $(MAKE_VARS),$(.VARIABLES)),$(if $(filter command line,$(origin $v)),$v=$($v))))

.PHONY: setup train test lint format bench clean
setup:
	@bash scripts/setup.sh

train: setup
	$(PY) -m ldmpc.cli train $(TRAIN_ARGS) $(CONFIG_ARGS) $(ARGS)

# --durations: the 25 slowest tests close every run, so CI logs say where the time goes.
# Whole modules go to the workers (module-scoped Rays start once); tests/conftest.py hands out
# the ones with `heavy` runs first.
test: setup
	$(PYTEST) -q -n $(JOBS) --dist loadfile -m "not slow and not gpu" --durations=25 $(ARGS)

lint: setup
	$(RUFF) check . && $(RUFF) format --check .

format: setup
	$(RUFF) check --fix . && $(RUFF) format .

# `make bench`: the slow tests (long learning and cluster checks), then every benchmark;
# `make bench B=name[,name]`: just those benchmarks.
bench: setup
	@if [ -z "$(B)" ]; then $(PYTEST) -q -m "slow and not gpu"; fi
	QUICK=$(QUICK) $(PY) -m benchmarks $(B)

clean:
	rm -rf .venv .pytest_cache .ruff_cache
