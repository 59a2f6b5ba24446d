#!/usr/bin/env bash
# One-shot GPU check (run on a CUDA machine from the repo root): engine tests incl. CUDA vs CPU,
# then the benchmark at the GPU size. Zennit (pure Python) may come as a wheel in .whl/.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/LRPSegmentation:${PYTHONPATH:-}"
OUT=${OUT:-bench/results}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider Testing/test_engine_exactness.py Testing/test_engine_errors.py \
  Testing/test_zennit_parity.py 2>&1 | tail -25 | tee "$OUT/tests.txt"
for composite in epsilon epsilon_gamma_box; do
  python3 bench/bench_engine.py --device cuda --shape 6 128 128 64 --region-voxels 10059 \
    --composite "$composite" --repeat 5 --json "$OUT/bench_128_$composite.json" 2>&1 | tee "$OUT/bench_128_$composite.txt"
done
python3 bench/bench_engine.py --device cuda --shape 6 192 192 96 --region-voxels 10059 --composite epsilon \
  --repeat 3 --skip zennit_voxel --json "$OUT/bench_192_epsilon.json" 2>&1 | tee "$OUT/bench_192_epsilon.txt"
