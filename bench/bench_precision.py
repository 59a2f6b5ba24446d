"""What bfloat16 convolutions in the engine's transposed and LRP passes would buy, and what they cost.

The engine computes in float32 (float64 for references) and refuses half precision. This script
measures the alternative it does not ship: inside this process only, `bfloat16_convolutions()`
patches `LinearLayer.apply` (convolutions without bias on float32 input: the passes, not the
forward and denominator convolutions with bias) and `LinearLayer.adjoint` so that each
convolution runs on bfloat16 copies of its input and weight and returns float32.

For each composite: best-of-``--repeat`` times (after one warm-up round, interleaved round by
round) of the region-score gradient (the floor, as in bench_engine.py), explain_region and
sequence_composition in float32 and bfloat16; then the errors of both against a float64 reference
(the model and input in double): max |Δ|/max |ref| and Σ|Δ|/Σ|ref| of the relevance map, the
largest difference of the sequence shares (percentage points), excluded voxels, the conservation
error, and for sequence_composition the region's shares (`region_shares`) against float64.
The "verdict" line of the JSON is computed from these numbers.

Usage:
  python bench/bench_precision.py                                   # CPU, 6×64×64×32, 22.6 M-parameter U-Net
  python bench/bench_precision.py --repeat 2 --json /tmp/perf/precision_cpu.json
  python bench/bench_precision.py --device cuda --shape 6 128 128 64 --json bench/reference/cuda_precision.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine  # noqa: E402  (also puts LRPSegmentation on sys.path)
from LRPSegmentationLib.engine import explain_region, region_shares, sequence_composition  # noqa: E402
from LRPSegmentationLib.engine.linear import LinearLayer  # noqa: E402

PRECISIONS = ("float32", "bfloat16")


@contextlib.contextmanager
def bfloat16_convolutions():
    """Convolutions of the passes on bfloat16 copies of input and weight, results back in float32;
    the original methods are restored on exit."""
    apply, adjoint = LinearLayer.apply, LinearLayer.adjoint

    def apply_bf16(self, x, weight, bias=None):
        if self.kind != "conv" or bias is not None or x.dtype != torch.float32:
            return apply(self, x, weight, bias)
        return apply(self, x.bfloat16(), weight.bfloat16()).float()

    def adjoint_bf16(self, s, weight, input_shape):
        if self.kind != "conv" or s.dtype != torch.float32:
            return adjoint(self, s, weight, input_shape)
        return adjoint(self, s.bfloat16(), weight.bfloat16(), input_shape).float()

    LinearLayer.apply, LinearLayer.adjoint = apply_bf16, adjoint_bf16
    try:
        yield
    finally:
        LinearLayer.apply, LinearLayer.adjoint = apply, adjoint


def precision(name):
    return bfloat16_convolutions() if name == "bfloat16" else contextlib.nullcontext()


def compute(name, model, x, region, composite, device):
    if name == "explain_region":
        return explain_region(model, x, region, 1, composite, device=device)
    return sequence_composition(model, x, 1, composite, device=device)


def errors(name, out, ref, region):
    """Errors of one result against the float64 reference ``ref`` of the same computation."""
    if name == "composition":
        shares, _, excluded = region_shares(out, region)
        ref_shares, _, ref_excluded = region_shares(ref, region)
        return {"share_error_pp": 100 * float((shares.double() - ref_shares).abs().max()), "n_excluded": excluded,
                "n_excluded_float64": ref_excluded}
    delta = (out.relevance.double() - ref.relevance).abs()
    return {"max_error": float(delta.max() / ref.relevance.abs().max()),
            "l1_error": float(delta.sum() / ref.relevance.abs().sum()),
            "share_error_pp": 100 * float((out.sequence_shares.double() - ref.sequence_shares).abs().max()),
            "n_excluded": out.n_excluded, "n_excluded_float64": ref.n_excluded,
            "conservation_error": out.diagnostics.get("conservation_error")}


def measure(args) -> list[dict]:
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model, x, region = bench_engine.make_case(args)
    entries = [(c, n, p) for c in args.composites for n in ("explain_region", "composition") for p in PRECISIONS]
    seconds = {e: float("inf") for e in entries + [("gradient",)]}
    outputs = {}
    for round_ in range(args.repeat + 1):  # round 0 warms up (allocator, oneDNN/cuDNN choices)
        for entry in [("gradient",)] + entries:
            sync()
            start = time.perf_counter()
            if entry == ("gradient",):
                out = bench_engine.run_once("gradient", model, x, region, args)
            else:
                with precision(entry[2]):
                    out = compute(entry[1], model, x, region, entry[0], args.device)
            sync()
            if round_:
                seconds[entry] = min(seconds[entry], time.perf_counter() - start)
            if round_ == args.repeat and entry != ("gradient",):
                outputs[entry] = out  # the last round's results are the ones checked
            del out
    grad = seconds["gradient",]
    results = [{"composite": None, "name": "gradient", "precision": "float32", "seconds": grad, "time_ratio": 1.0}]
    model.double()
    try:
        for composite in args.composites:
            for name in ("explain_region", "composition"):
                ref = compute(name, model, x.double(), region, composite, args.device)
                for p in PRECISIONS:
                    t = seconds[composite, name, p]
                    results.append({"composite": composite, "name": name, "precision": p, "seconds": t,
                                    "time_ratio": t / grad, "speedup": seconds[composite, name, "float32"] / t}
                                   | errors(name, outputs[composite, name, p], ref, region))
                del ref
    finally:
        model.float()
    return results


def verdict(results, composites) -> str:
    row = {(r["composite"], r["name"], r["precision"]): r for r in results}
    parts = []
    for c in composites:
        bf, fp = row[c, "explain_region", "bfloat16"], row[c, "explain_region", "float32"]
        comp = row[c, "composition", "bfloat16"]
        parts.append(f"{c}: explain_region {bf['speedup']:.2f}× faster, map L1 error {100 * bf['l1_error']:.1f} % "
                     f"(float32: {100 * fp['l1_error']:.1g} %), shares off by {bf['share_error_pp']:.2f} pp; "
                     f"composition {comp['speedup']:.2f}× faster, shares off by {comp['share_error_pp']:.2f} pp")
    return "bfloat16 convolutions in the passes — " + "; ".join(parts) + " — not used by the engine"


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=[6, 64, 64, 32], metavar=("C", "D", "H", "W"))
    parser.add_argument("--network", default="unet3d", choices=["unet3d", *bench_engine.NETWORK_KWARGS])
    parser.add_argument("--base", type=int, default=32, help="U-Net base width (32: 22.6 M parameters)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--region-voxels", type=int, default=10059)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--composites", nargs="+", default=["epsilon", "epsilon_gamma_box"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    results = measure(args)
    machine = bench_engine.describe_machine(args)
    torch.manual_seed(0)
    params = sum(p.numel() for p in bench_engine.make_model(args).parameters()) / 1e6
    print(f"{machine}; torch {torch.__version__}; {args.network} {params:.1f} M parameters; input {tuple(args.shape)}; "
          f"|A| = {args.region_voxels}; TF32 off; best of {args.repeat} interleaved rounds; errors vs float64")
    print(f"{'computation':<40} {'precision':<9} {'time':>8} {'× grad':>6} {'speedup':>7} {'max err':>8} "
          f"{'L1 err':>8} {'shares pp':>9} {'excl':>5} {'conserv.':>8}")
    for r in results:
        label = r["name"] if r["composite"] is None else f"{r['name']} ({r['composite']})"
        print(f"{label:<40} {r['precision']:<9} {r['seconds']:7.3f}s {r['time_ratio']:6.2f} "
              f"{fmt(r.get('speedup'), '7.2f'):>7} {fmt(r.get('max_error'), '8.1e'):>8} "
              f"{fmt(r.get('l1_error'), '8.1e'):>8} {fmt(r.get('share_error_pp'), '9.3f'):>9} "
              f"{fmt(r.get('n_excluded'), 'd'):>5} {fmt(r.get('conservation_error'), '8.1e'):>8}")
    line = verdict(results, args.composites)
    print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "torch": torch.__version__, "mode": "precision",
                                         "load_average": os.getloadavg(), "args": vars(args) | {"json": str(args.json)},
                                         "results": results, "verdict": line}, indent=2))


if __name__ == "__main__":
    main()
