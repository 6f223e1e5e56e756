#!/usr/bin/env bash
# The GPU check: the CUDA tests, then PPO, SAC and TD3 training speed against SB3 on the
# same GPU (benchmarks/bench_speed.py --device cuda), in under 8 minutes.
#
# Self-contained for a machine without network whose python3 has a CUDA torch, numpy,
# tensorboard, pluggy, pytest, tqdm, pillow, cloudpickle and setuptools (the lent GPU
# machines do) but not gymnasium or SB3: those come along as wheels in .whl/ (git-ignored),
# fetched here first; rl-training itself is installed there from this working tree.
#
#   bash benchmarks/gpu_check.sh --prepare [PYTHON_VERSION]   # here, with PyPI (3.12)
#   bash benchmarks/gpu_check.sh                              # there; the device tool's
#                                                             #   run with carry [".whl"]
#   PYTHON=/some/venv/bin/python bash benchmarks/gpu_check.sh --rehearse
#                                   # here, on the CPU: the same steps, tiny budgets
#
# Everything it prints is also written to $OUT/gpu_check.log when $OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=.whl
SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}

if [ "${1:-}" = "--prepare" ]; then
    set -e
    pyver=${2:-3.12}
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    grep -qxF "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >>.git/info/exclude
    # The versions this project is tested with; google-crc32c is the one compiled wheel.
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$WHEELS" \
        gymnasium==1.4.0 farama-notifications==0.0.6 stable-baselines3==2.9.2 \
        google-crc32c==1.9.0
    ls -l "$WHEELS"
    exit 0
fi

rehearse=0
[ "${1:-}" = "--rehearse" ] && rehearse=1
log=${OUT:-/tmp}/gpu_check.log
exec > >(tee "$log") 2>&1
started=$(date +%s)
export DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1

echo "== install: the carried wheels and this tree into $SITE"
rm -rf "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
    "$WHEELS"/*.whl || exit 1
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
    --target "$SITE" . || exit 1
export PYTHONPATH=$SITE
"$PY" - <<'EOF' || exit 1
import gymnasium, numpy, stable_baselines3, torch
import rl_training
print(f"python {__import__('sys').version.split()[0]}, torch {torch.__version__}, numpy "
      f"{numpy.__version__}, gymnasium {gymnasium.__version__}, SB3 {stable_baselines3.__version__}")
print("CUDA:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
EOF
if [ "$rehearse" = 1 ]; then
    device=cpu
    bench_args=(--steps 600 --repeats 1)
else
    "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" ||
        { echo "gpu_check: torch sees no CUDA device here (use --rehearse on a CPU)"; exit 1; }
    nvidia-smi -L || true
    device=cuda
    bench_args=(--repeats 3)
fi

echo "== CUDA tests ($((  $(date +%s) - started )) s)"
timeout 180 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py \
    tests/test_trainers.py::test_device_resolution -rs
tests=$?

echo "== speed against SB3 on $device ($((  $(date +%s) - started )) s)"
timeout 330 "$PY" benchmarks/bench_speed.py ppo sac td3 --device "$device" "${bench_args[@]}"
bench=$?

echo "== done in $((  $(date +%s) - started )) s: tests exit $tests, speed exit $bench"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
