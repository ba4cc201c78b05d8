#!/usr/bin/env bash
# The device checks of a lent GPU machine, as one script. That machine has torch but none of the
# simulators: the benchmarks build their agents from known task shapes (LDMPC_BENCH_NO_ENV=1),
# and the config's pure-Python dependency (omegaconf) is carried in .devsite/.
set -u
OUT=${OUT:-/tmp/ldmpc-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/.devsite:$PWD PYTHONUNBUFFERED=1 LDMPC_BENCH_NO_ENV=1
nvidia-smi -L
python3 -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name())"
timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_diffusion.py 2>&1 | tee "$OUT/gpu_tests.log"
timeout 40 python3 -m ldmpc.diffusion.bench 1 1 cuda 2>&1 | tee "$OUT/diffusion_bench.log"
timeout 170 python3 -m benchmarks planner_batch 2>&1 | tee "$OUT/planner_batch.log"
QUICK=1 timeout 130 python3 -m benchmarks update_rate 2>&1 | tee "$OUT/update_rate.log"
timeout 120 python3 -m benchmarks plan_latency 2>&1 | tee "$OUT/plan_latency.log"
FULL=1 timeout 120 python3 -m benchmarks plan_latency 2>&1 | tee "$OUT/plan_latency_full.log"
cp benchmarks/results/*.csv "$OUT/" 2>/dev/null
true
