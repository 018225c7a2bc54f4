#!/usr/bin/env bash
# Everything a lent GPU machine is needed for, in one prepared call: install the packages its image lacks (wheels
# carried in .whl/), record the machine, run the benchmark's GPU sections, then the GPU tests. Results and logs go to
# $OUT (default gpu_results/); each step has its own time limit, so a step that runs long never costs the others.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh                       # the defaults below
#   BENCH_ARGS="--networks unet --dims 3" BENCH_TIMEOUT=120 bash benchmarks/gpu_check.sh
#
# The default plan is what the last GPU run (2026-11-27, README run 4) left open. Its profile: cuDNN transposed
# every 3D convolution's input and filter to NDHWC and its output back (26-29 % of kernel time), channels-last
# weights or not. Reading torch's Inductor (kernel/conv.py, graph.py): its layout optimization is for 2D convolutions
# only (so force_layout cannot help a 3D network; env.txt shows the line on the machine's torch), a 3D convolution
# takes the layout its input has in the graph, and instance norm copies to channels-first. The plan measures
# acceleration.keep_channels_last (cl_inputs, cl_norm; no_layout_opt: Inductor's layout optimization off, so that
# inference graphs keep the inputs' layout too) on the networks, the sliding window and the bundle, with the bundle's
# data wait when every cached case is on disk (cache_gb=0), and the fused AdamW (optimizer#fused=true): with AMP,
# torch's GradScaler reads back whether the gradients overflowed before every step of an unfused optimizer (one
# device sync per iteration, the last one in the bundles' training iteration); a fused one takes the flag on the
# device. (torch issue 126585: fused Adam once failed beside torch.compile on 1x1 convolutions' gradient strides;
# the trial shows whether this torch still does.) On a lent machine's 15 minutes:
#   OUT=$OUT BENCH_TIMEOUT=360 CASE_TIMEOUT=220 TEST_TIMEOUT=150 bash benchmarks/gpu_check.sh
#
# Steps: SKIP_BENCH=1 or SKIP_TESTS=1 leave one out, TEST_SELECT="expr" passes -k to pytest. SW_CHECKPOINT (default
# .devcarry/sw_checkpoint.pt, when it exists) gives the sliding-window trials trained weights, so that their label
# maps are compared on a real segmentation rather than on a random network's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed" >&2; exit 2; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import torch, monai, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'monai', monai.__version__, 'cpus', __import__('os').cpu_count())"
    python3 -c "import subprocess, sys, time; t = time.time(); subprocess.run([sys.executable, '-c', 'import torch, monai']); print(f'a python3 process importing torch and monai: {time.time() - t:.1f} s')"
    # Inductor's layout optimization of convolutions, as this machine's torch has it (2D only where it says ndim == 2)
    grep -n "layout_opt and ndim" "$(python3 -c 'import torch._inductor.kernel.conv as c; print(c.__file__)')"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ "${SKIP_BENCH:-0}" != 1 ]; then
    SW_CKPT=""
    ckpt=${SW_CHECKPOINT:-.devcarry/sw_checkpoint.pt}
    [ -f "$ckpt" ] && SW_CKPT="--sw_checkpoint $ckpt"
    # shellcheck disable=SC2086
    timeout -s INT "${BENCH_TIMEOUT:-420}" python3 benchmarks/run.py --device cuda --out "$OUT/bench" \
        --repeats 10 --warmup 3 --roof_size 128 --case_timeout ${CASE_TIMEOUT:-300} $SW_CKPT \
        ${BENCH_ARGS:---dims 3 --networks unet --sections networks,sliding_window,bundle --jobs 16 --profile --options compile:unet/attention_unet/monai_basicunet,compile+channels_last:unet/attention_unet,compile+channels_last+cl_inputs+cl_norm:unet/attention_unet,compile+channels_last+cl_inputs+cl_norm+no_layout_opt:unet/attention_unet --sw_trials "compile=false,sw_batch_size=2;channels_last=false;cl_inputs=true,cl_norm=true;cl_inputs=true,cl_norm=true,layout_opt=false" --bundle_epochs 4 --bundle_cases 24 --bundle_trials "cache_gb=0;cl_inputs=true,cl_norm=true,layout_opt=false;optimizer#fused=true"} \
        > "$OUT/bench.log" 2>&1
    echo "benchmark: exit $?"
    grep -v -E "^\s*$|it/s\]|case/s\]" "$OUT/bench.log" | tail -60
fi

if [ "${SKIP_BENCH:-0}" != 1 ]; then
    # the host's time for a training iteration's output bookkeeping, MONAI's pieces against the bundles' (~10 s)
    timeout 45 python3 benchmarks/iteration_output.py --device cuda --size 96 --repeats 10 > "$OUT/iteration_output.txt" 2>&1
    echo "iteration output: exit $?"
    tail -4 "$OUT/iteration_output.txt"
fi

if [ "${SKIP_TESTS:-0}" != 1 ]; then
    n=""
    python3 -c "import xdist" 2>/dev/null && n="-n ${TEST_JOBS:-8}"
    # shellcheck disable=SC2086
    TORCHINDUCTOR_COMPILE_THREADS=2 timeout "${TEST_TIMEOUT:-200}" python3 -m pytest -q -p no:cacheprovider $n \
        tests/test_gpu.py ${TEST_SELECT:+-k "$TEST_SELECT"} > "$OUT/pytest.log" 2>&1
    echo "GPU tests: exit $?"
    tail -15 "$OUT/pytest.log"
fi
