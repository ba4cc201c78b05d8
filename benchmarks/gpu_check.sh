#!/usr/bin/env bash
# The device checks of a lent GPU machine, as one script: `gpu_check.sh [check ...]` runs the named
# checks in order (all when none is named), each under its own time limit so one that hangs cannot
# eat the lease. That machine has torch but none of the simulators: the benchmarks build their
# agents from known task shapes (LDMPC_BENCH_NO_ENV=1), and the pure-Python dependencies of the
# core (omegaconf, gymnasium) are carried in .devsite/ (copied from .venv's site-packages).
set -u
OUT=${OUT:-/tmp/ldmpc-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/.devsite:$PWD PYTHONUNBUFFERED=1 LDMPC_BENCH_NO_ENV=1
ALL=(tests step_cost diffusion_bench planner_batch update_rate plan_latency plan_latency_full)
CHECKS=("$@")
[ ${#CHECKS[@]} -eq 0 ] && CHECKS=("${ALL[@]}")

check() {  # name: one check, its output teed to $OUT/<name>.log
    case "$1" in
        tests) timeout 300 python3 -m pytest -q -rs -m gpu -p no:cacheprovider \
                   tests/test_diffusion.py tests/test_diffusion_agent.py tests/test_compile.py ;;
        step_cost) timeout 150 python3 -m benchmarks step_cost ;;
        diffusion_bench) timeout 40 python3 -m ldmpc.diffusion.bench 1 1 cuda ;;
        planner_batch) timeout 170 python3 -m benchmarks planner_batch ;;
        update_rate) QUICK=1 timeout 130 python3 -m benchmarks update_rate ;;
        plan_latency) timeout 120 python3 -m benchmarks plan_latency ;;
        plan_latency_full) FULL=1 timeout 120 python3 -m benchmarks plan_latency ;;
        *) echo "gpu_check: unknown check $1 (known: ${ALL[*]})" >&2; return 2 ;;
    esac
}

nvidia-smi -L
python3 -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name())"
for name in "${CHECKS[@]}"; do
    echo "=== gpu_check $name ($(date +%T)) ==="
    check "$name" 2>&1 | tee "$OUT/$name.log"
done
cp benchmarks/results/*.csv "$OUT/" 2>/dev/null
true
