"""Benchmark of the engine against the plain gradient and the per-voxel Zennit loop.

Prints, side by side, time and peak memory of:
  gradient            plain input gradient of the region score (autograd; the floor to compare with)
  lrp_pass            one LRP pass from one voxel (explain_voxel: trace + rules + backward)
  explain_region      exact region-normalized M_A (forward + transposed pass + LRP pass)
  composition         sequence_composition for all C sequences
  zennit_voxel        one Zennit LRP pass (the per-voxel loop's unit), ×|A| extrapolated

Memory: on CUDA, peak allocated during the call minus what was allocated before (model, input);
on CPU, each measurement runs in a fresh subprocess and reports peak RSS minus RSS before the call.

``--ratios`` (the issue's targets): in ONE process, rounds of gradient, explain_region and
composition for each composite in ``--composites``, interleaved so that a machine's load hits
them alike; best of ``--repeat`` rounds, each as a ratio to the gradient of the same run. Peak
memory of each comes from one run in a fresh subprocess started before (CPU) or from the CUDA
allocator's peak during its timed calls.

Usage:
  python bench/bench_engine.py                         # CPU: 6×64×64×32, 22.6 M-parameter U-Net
  python bench/bench_engine.py --ratios --repeat 3 --profile --json bench/reference/cpu_engine_ratios_after.json
  python bench/bench_engine.py --chunks --repeat 3 --json bench/reference/cpu_engine_chunks.json
  python bench/bench_engine.py --device cuda --shape 6 128 128 64 --region-voxels 10059
  python bench/bench_engine.py --network monai.SegResNet --shape 4 96 96 64 --region-voxels 2000
  python bench/bench_engine.py --network monai.SwinUNETR --shape 4 64 64 64 --region-voxels 2000

``--network`` other than unet3d: MONAI networks in the sizes of ``NETWORK_KWARGS`` (SegResNet as in
MONAI's brain-tumour bundle; SwinUNETR with its defaults); Zennit cannot run them, so no
zennit_voxel row.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LRPSegmentation"))
from LRPSegmentationLib.engine import explain_region, explain_voxel, sequence_composition  # noqa: E402
from LRPSegmentationLib.models import UNet3D  # noqa: E402
from LRPSegmentationLib.models.registry import build_architecture  # noqa: E402

MEASUREMENTS = ("gradient", "lrp_pass", "explain_region", "composition", "zennit_voxel")
#: Architecture arguments of the MONAI networks benchmarked (besides in/out channels).
NETWORK_KWARGS = {
    "monai.SegResNet": {"init_filters": 16, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)},
    "monai.SwinUNETR": {"feature_size": 24},
}


def make_model(args):
    if args.network == "unet3d":
        return UNet3D(args.shape[0], 2, args.base, args.depth)
    return build_architecture(args.network, in_channels=args.shape[0], out_channels=2,
                              **NETWORK_KWARGS[args.network])


def make_case(args):
    torch.manual_seed(0)
    model = make_model(args).eval()
    for module in model.modules():  # non-trivial batch-norm statistics, as in a trained model
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    device = torch.device(args.device)
    model.to(device)
    x = torch.randn((1,) + tuple(args.shape), generator=torch.Generator().manual_seed(1)).to(device)
    d, h, w = args.shape[1:]
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, device=device) for n in (d, h, w)), indexing="ij"))
    centre = torch.tensor([d / 2, h / 2, w / 2], device=device).view(3, 1, 1, 1)
    distance = ((grid - centre) ** 2).sum(0).flatten()
    region = torch.zeros(d * h * w, dtype=torch.bool, device=device)
    region[distance.argsort()[: args.region_voxels]] = True  # a ball of exactly region_voxels voxels
    return model, x, region.view(d, h, w)


def zennit_pass(model, x, voxel, composite):
    x = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        out = modified(x)
        r = torch.zeros_like(out)
        r[0, 1, voxel[0], voxel[1], voxel[2]] = out[0, 1, voxel[0], voxel[1], voxel[2]]
        (relevance,) = torch.autograd.grad(out, x, r)
    return relevance


def zennit_composite(name, x):
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonGammaBox, SpecialFirstLayerMapComposite, layer_map_base
    from zennit.rules import Epsilon, ZBox
    from zennit.types import Convolution
    dims = (0, 2, 3, 4)
    low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    if name == "epsilon_gamma_box":
        return EpsilonGammaBox(low=low, high=high, canonizers=[SequentialMergeBatchNorm()])
    return SpecialFirstLayerMapComposite(layer_map=layer_map_base() + [(Convolution, Epsilon())],
                                         first_map=[(Convolution, ZBox(low, high))],
                                         canonizers=[SequentialMergeBatchNorm()])


def run_once(name, model, x, region, args):
    voxel = region.nonzero()[0].tolist()
    if name == "gradient":
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        (grad,) = torch.autograd.grad(logits[0, 1][region].sum(), xg)
        return grad
    if name == "lrp_pass":
        return explain_voxel(model, x, voxel, 1, args.composite, device=args.device)
    if name == "explain_region":
        return explain_region(model, x, region, 1, args.composite, device=args.device).relevance
    if name == "composition":
        return sequence_composition(model, x, 1, args.composite, device=args.device)
    if name == "zennit_voxel":
        return zennit_pass(model, x, voxel, zennit_composite(args.composite, x))
    raise ValueError(name)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(name, args):
    """Time (best of ``repeat`` after one warm-up) and peak memory of one measurement, in-process."""
    model, x, region = make_case(args)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    repeat = 1 if name == "zennit_voxel" and not cuda else args.repeat
    run_once(name, model, x, region, args)  # warm-up (imports, cuDNN algorithm choice, allocator)
    if cuda:
        sync()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = rss_mib()
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        out = run_once(name, model, x, region, args)
        sync()
        times.append(time.perf_counter() - start)
        del out
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - before) / 2 ** 30
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before) / 1024
    return {"name": name, "seconds": min(times), "peak_gib": peak}


RATIO_MEASUREMENTS = ("explain_region", "composition")


def measure_ratios(args) -> list[dict]:
    """Best-of-``repeat`` times of the gradient and, per composite, explain_region and composition,
    interleaved round by round in this process (after one warm-up round); peak memory per
    measurement as in `measure` (CPU: a fresh subprocess each, one timed call)."""
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    entries = [("gradient", args.composite)] + [(name, c) for name in RATIO_MEASUREMENTS for c in args.composites]
    seconds = {entry: float("inf") for entry in entries}
    peaks = {entry: 0.0 for entry in entries}
    if not cuda:  # first: a child forked from a process holding the case would inherit its peak RSS
        for name, composite in entries:
            forwarded = [a for a in sys.argv[1:] if a != "--ratios"]
            if "--json" in forwarded:
                i = forwarded.index("--json")
                del forwarded[i:i + 2]
            command = [sys.executable, __file__, *forwarded, "--only", name, "--composite", composite,
                       "--repeat", "1"]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            peaks[name, composite] = json.loads(output.strip().splitlines()[-1])["peak_gib"]
    model, x, region = make_case(args)
    for round_ in range(args.repeat + 1):  # round 0 warms up (allocator, oneDNN/cuDNN choices)
        for name, composite in entries:
            run_args = argparse.Namespace(**vars(args) | {"composite": composite})
            if cuda:
                sync()
                torch.cuda.empty_cache()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            out = run_once(name, model, x, region, run_args)
            sync()
            if round_:
                seconds[name, composite] = min(seconds[name, composite], time.perf_counter() - start)
                if cuda:
                    peaks[name, composite] = max(peaks[name, composite],
                                                 (torch.cuda.max_memory_allocated() - before) / 2 ** 30)
            del out
    grad = (seconds[entries[0]], peaks[entries[0]])
    results = [{"name": name, "composite": composite, "seconds": seconds[name, composite],
                "peak_gib": peaks[name, composite], "time_ratio": seconds[name, composite] / grad[0],
                "memory_ratio": peaks[name, composite] / grad[1] if grad[1] > 0 else None}
               for name, composite in entries]
    if args.profile:
        for result, (name, composite) in zip(results, entries):
            run_args = argparse.Namespace(**vars(args) | {"composite": composite})
            result["profile"] = convolution_profile(lambda: run_once(name, model, x, region, run_args))
    return results


#: Profiler rows of convolution kernels (CPU and CUDA) and of their backward.
CONVOLUTION_KERNELS = ("aten::mkldnn_convolution", "aten::slow_conv3d_forward", "aten::slow_conv_transpose3d",
                       "aten::slow_conv_dilated3d", "aten::cudnn_convolution", "aten::cudnn_convolution_transpose")


def convolution_profile(call) -> dict:
    """Self CPU time of one ``call`` (torch.profiler): convolutions (forward kernels, backward)
    against everything else, and the largest other rows. What bounds a ratio: the engine's
    convolutions alone, divided by the gradient's total time."""
    with torch.profiler.profile() as prof:
        call()
    rows = prof.key_averages()
    total = sum(r.self_cpu_time_total for r in rows) / 1e6
    forward = sum(r.self_cpu_time_total for r in rows if r.key in CONVOLUTION_KERNELS) / 1e6
    backward = sum(r.self_cpu_time_total for r in rows if r.key == "aten::convolution_backward") / 1e6
    others = sorted((r for r in rows if r.key not in CONVOLUTION_KERNELS + ("aten::convolution_backward",)),
                    key=lambda r: -r.self_cpu_time_total)[:4]
    return {"total_s": total, "convolution_forward_s": forward, "convolution_backward_s": backward,
            "convolution_share": (forward + backward) / total,
            "largest_other_s": {r.key: r.self_cpu_time_total / 1e6 for r in others}}


def measure_chunks(args) -> list[dict]:
    """Best-of-``repeat`` time of `sequence_composition` per batch size (``chunk``: sequences carried
    per transposed pass; C = all at once) and composite, interleaved round by round in one process."""
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model, x, region = make_case(args)
    channels = args.shape[0]
    sizes = sorted({channels, 3, 2, 1}, reverse=True)
    seconds = {(c, n): float("inf") for c in args.composites for n in sizes}
    for round_ in range(args.repeat + 1):  # round 0 warms up
        for composite, chunk in seconds:
            sync()
            start = time.perf_counter()
            sequence_composition(model, x, 1, composite, device=args.device, chunk=chunk)
            sync()
            if round_:
                seconds[composite, chunk] = min(seconds[composite, chunk], time.perf_counter() - start)
    return [{"composite": c, "chunk": n, "seconds": t} for (c, n), t in seconds.items()]


def describe_machine(args) -> str:
    return (torch.cuda.get_device_name() if args.device.startswith("cuda")
            else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")


def main_chunks(args) -> None:
    results = measure_chunks(args)
    machine = describe_machine(args)
    print(f"{machine}; torch {torch.__version__}; input {tuple(args.shape)}; sequence_composition by batch size "
          f"(best of {args.repeat} interleaved rounds)")
    for r in results:
        print(f"  {r['composite']:<20} chunk {r['chunk']}: {r['seconds']:.3f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "torch": torch.__version__, "mode": "chunks",
                                         "args": vars(args) | {"json": str(args.json)}, "results": results},
                                        indent=2))


def main_ratios(args) -> None:
    results = measure_ratios(args)
    machine = describe_machine(args)
    torch.manual_seed(0)
    params = sum(p.numel() for p in make_model(args).parameters()) / 1e6
    print(f"{machine}; torch {torch.__version__}; {args.network} {params:.1f} M parameters; input {tuple(args.shape)}; "
          f"|A| = {args.region_voxels}; fp32, TF32 off; best of {args.repeat} interleaved rounds")
    print(f"{'computation':<42} {'time':>9} {'× grad':>7} {'peak mem':>10} {'× grad':>7}")
    for r in results:
        label = r["name"] if r["name"] == "gradient" else f"{r['name']} ({r['composite']})"
        memory = f"{r['memory_ratio']:.2f}" if r["memory_ratio"] is not None else "-"
        print(f"{label:<42} {r['seconds']:8.3f}s {r['time_ratio']:7.2f} {r['peak_gib']:8.2f}GiB {memory:>7}")
    if args.profile:
        grad = results[0]["profile"]["total_s"]
        print(f"\n{'profiled once (torch.profiler)':<42} {'total':>9} {'convolutions':>13} {'share':>6} {'conv / grad':>12}")
        for r in results:
            label = r["name"] if r["name"] == "gradient" else f"{r['name']} ({r['composite']})"
            prof = r["profile"]
            conv = prof["convolution_forward_s"] + prof["convolution_backward_s"]
            print(f"{label:<42} {prof['total_s']:8.3f}s {conv:12.3f}s {prof['convolution_share']:6.0%} "
                  f"{conv / grad:11.2f}×")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "torch": torch.__version__, "mode": "ratios",
                                         "load_average": os.getloadavg(), "args": vars(args) | {"json": str(args.json)},
                                         "results": results}, indent=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=[6, 64, 64, 32], metavar=("C", "D", "H", "W"))
    parser.add_argument("--network", default="unet3d", choices=["unet3d", *NETWORK_KWARGS])
    parser.add_argument("--base", type=int, default=32, help="U-Net base width (32: 22.6 M parameters)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--region-voxels", type=int, default=10059)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--composite", default="epsilon")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=MEASUREMENTS, help="run one measurement (used for CPU subprocesses)")
    parser.add_argument("--skip", nargs="*", default=[], choices=MEASUREMENTS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--ratios", action="store_true",
                        help="gradient, explain_region and composition interleaved in one process (see above)")
    parser.add_argument("--profile", action="store_true",
                        help="with --ratios: also profile one call of each row (time in convolutions)")
    parser.add_argument("--composites", nargs="+", default=["epsilon", "epsilon_gamma_box"],
                        help="composites of the --ratios and --chunks rows")
    parser.add_argument("--chunks", action="store_true",
                        help="sequence_composition per batch size (sequences per transposed pass), interleaved")
    parser.add_argument("--note", help="a line describing the engine measured (kept in the JSON)")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if args.chunks:
        main_chunks(args)
        return
    if args.ratios and not args.only:
        main_ratios(args)
        return
    if args.only:
        print(json.dumps(measure(args.only, args)))
        return
    if args.network != "unet3d" and "zennit_voxel" not in args.skip:
        args.skip.append("zennit_voxel")  # Zennit cannot explain these networks
    results = []
    for name in MEASUREMENTS:
        if name in args.skip:
            continue
        if args.device.startswith("cuda"):
            results.append(measure(name, args))
        else:  # a fresh process per measurement, so peak RSS belongs to that measurement alone
            forwarded = sys.argv[1:]
            if "--json" in forwarded:
                i = forwarded.index("--json")
                del forwarded[i:i + 2]
            command = [sys.executable, __file__, "--only", name] + forwarded
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
        print(f"  {results[-1]['name']:<16} {results[-1]['seconds']:9.3f} s  {results[-1]['peak_gib']:7.2f} GiB",
              flush=True)
    by_name = {r["name"]: r for r in results}
    machine = describe_machine(args)
    torch.manual_seed(0)
    params = sum(p.numel() for p in make_model(args).parameters()) / 1e6
    print(f"\n{machine}; torch {torch.__version__}; {args.network} {params:.1f} M parameters; "
          f"input {tuple(args.shape)}; "
          f"|A| = {args.region_voxels}; composite {args.composite}; fp32, TF32 off")
    print(f"{'computation':<34} {'time':>10} {'× grad':>8} {'peak mem':>10} {'× grad':>8}")
    grad = by_name.get("gradient")
    for r in results:
        seconds, peak = r["seconds"], r["peak_gib"]
        label = r["name"]
        if label == "zennit_voxel":
            rows = [("zennit, one voxel", seconds), (f"zennit per-voxel loop ×{args.region_voxels} (extrap.)",
                                                     seconds * args.region_voxels)]
        else:
            rows = [(label, seconds)]
        for text, t in rows:
            ratio_t = f"{t / grad['seconds']:.2f}" if grad else "-"
            ratio_m = f"{peak / grad['peak_gib']:.2f}" if grad and grad["peak_gib"] > 0 else "-"
            print(f"{text:<34} {t:9.3f}s {ratio_t:>8} {peak:8.2f}GiB {ratio_m:>8}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "torch": torch.__version__, "args": vars(args) | {
            "json": str(args.json)}, "results": results}, indent=2))


if __name__ == "__main__":
    main()
