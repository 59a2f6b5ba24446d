#!/usr/bin/env bash
# One-shot GPU check (run on a CUDA machine from the repo root): the whole-volume sliding-window
# benchmark at the GPU size, the engine benchmark (both default composites), the ratios to a
# gradient and the bfloat16 check, then the engine tests incl. CUDA vs CPU. Zennit and SimpleITK may come as wheels in .whl/. Results go to $OUT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/LRPSegmentation:${PYTHONPATH:-}"
OUT=${OUT:-bench/results}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
for composite in epsilon epsilon_gamma_box; do
  timeout 150 python3 bench/bench_sliding.py --device cuda --base 32 --depth 4 --patch 64 128 128 \
    --composite "$composite" --json "$OUT/sliding_$composite.json" 2>&1 | tee "$OUT/sliding_$composite.txt"
done
for composite in epsilon epsilon_gamma_box; do
  timeout 120 python3 bench/bench_engine.py --device cuda --shape 6 128 128 64 --region-voxels 10059 \
    --composite "$composite" --repeat 5 --json "$OUT/bench_128_$composite.json" 2>&1 | tee "$OUT/bench_128_$composite.txt"
done
# The ratios (gradient, explain_region, composition; both composites) in one process, with the
# CUDA allocator's peaks, then what bfloat16 passes would buy and cost (not used by the engine).
timeout 150 python3 bench/bench_engine.py --device cuda --ratios --shape 6 128 128 64 --region-voxels 10059 \
  --repeat 5 --json "$OUT/gpu_engine_ratios_128.json" 2>&1 | tee "$OUT/gpu_engine_ratios_128.txt"
timeout 120 python3 bench/bench_precision.py --device cuda --shape 6 128 128 64 --repeat 3 \
  --json "$OUT/gpu_precision_128.json" 2>&1 | tee "$OUT/gpu_precision_128.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider Testing/test_engine_exactness.py Testing/test_engine_errors.py \
  Testing/test_zennit_parity.py Testing/test_sliding.py Testing/test_traced_forward.py 2>&1 | tail -25 | tee "$OUT/tests.txt"
