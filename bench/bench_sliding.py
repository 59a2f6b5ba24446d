"""Benchmark of whole-volume explanation with sliding windows (a typical liver DCE-MRI study).

Prints time and peak memory of: sliding-window prediction, `sliding_explain_region` for a
lesion-sized region (only the patches touching it run), and `sliding_sequence_composition`
(every patch), on a 6×64×260×320 volume (D×H×W; 320×260×64 in x, y, z).

Memory: on CUDA the peak allocated beyond the model and input; on CPU each measurement runs in a
fresh subprocess and reports its peak RSS minus the RSS before the call.

Usage:
  python bench/bench_sliding.py                       # CPU, the demo-size U-Net (base 8, depth 3)
  python bench/bench_sliding.py --device cuda --base 32 --depth 4 --patch 64 128 128
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LRPSegmentation"))
from LRPSegmentationLib.engine import (patch_grid, sliding_explain_region, sliding_sequence_composition,  # noqa: E402
                                       sliding_window_logits)
from LRPSegmentationLib.models import UNet3D  # noqa: E402

MEASUREMENTS = ("prediction", "explain_region", "composition")


def make_case(args):
    torch.manual_seed(0)
    model = UNet3D(6, 2, args.base, args.depth).eval()
    x = torch.randn((1, 6) + tuple(args.volume), generator=torch.Generator().manual_seed(1))
    d, h, w = args.volume
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in (d, h, w)), indexing="ij")).float()
    centre = torch.tensor([d * 0.5, h * 0.4, w * 0.35]).view(3, 1, 1, 1)
    scale = torch.tensor(args.spacing).view(3, 1, 1, 1)  # mm per voxel (z, y, x): a round lesion
    distance = (((grid - centre) * scale) ** 2).sum(0).flatten()
    region = torch.zeros(d * h * w, dtype=torch.bool)
    region[distance.argsort()[: args.region_voxels]] = True
    return model, x, region.view(d, h, w)


def run_once(name, model, x, region, args, progress=None):
    common = dict(patch_size=tuple(args.patch), overlap=args.overlap, device=args.device, progress=progress)
    if name == "prediction":
        return sliding_window_logits(model, x, **common)
    if name == "explain_region":
        return sliding_explain_region(model, x, region, 1, args.composite, keep_graphs_gib=args.keep_graphs_gib,
                                      **common)
    return sliding_sequence_composition(model, x, 1, args.composite, **common)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(name, args):
    model, x, region = make_case(args)
    cuda = args.device.startswith("cuda")
    if cuda:
        model.cuda()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = rss_mib()
    steps = []
    start = time.perf_counter()
    out = run_once(name, model, x, region, args, progress=lambda done, total: steps.append((done, total)))
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    patches = out.diagnostics.get("patches_run") if hasattr(out, "diagnostics") else None
    peak = ((torch.cuda.max_memory_allocated() - before) / 2 ** 30 if cuda
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before) / 1024)
    return {"name": name, "seconds": seconds, "peak_gib": peak, "patches_run": patches}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volume", type=int, nargs=3, default=[64, 260, 320], metavar=("D", "H", "W"))
    parser.add_argument("--spacing", type=float, nargs=3, default=[3.0, 1.3, 1.3], metavar=("SZ", "SY", "SX"))
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 96, 96])
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--base", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--region-voxels", type=int, default=10000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--composite", default="epsilon")
    parser.add_argument("--keep-graphs-gib", type=float, default=None,
                        help="explain_region: memory for patch graphs kept between its two sweeps "
                             "(default: half the free GPU memory, a quarter of the available RAM)")
    parser.add_argument("--only", choices=MEASUREMENTS)
    parser.add_argument("--skip", nargs="*", default=[], choices=MEASUREMENTS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if args.only:
        print(json.dumps(measure(args.only, args)))
        return
    results = []
    if args.device.startswith("cuda"):  # CUDA context, cuDNN plans and allocator pools, not timed
        measure("prediction", args)
    for name in MEASUREMENTS:
        if name in args.skip:
            continue
        if args.device.startswith("cuda"):
            results.append(measure(name, args))
        else:
            forwarded = sys.argv[1:]
            if "--json" in forwarded:
                i = forwarded.index("--json")
                del forwarded[i:i + 2]
            out = subprocess.run([sys.executable, __file__, "--only", name] + forwarded, check=True,
                                 capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
        r = results[-1]
        print(f"  {r['name']:<16} {r['seconds']:9.2f} s  {r['peak_gib']:7.2f} GiB  patches {r['patches_run']}",
              flush=True)
    total = len(patch_grid(tuple(args.volume), tuple(args.patch), args.overlap))
    machine = (torch.cuda.get_device_name() if args.device.startswith("cuda")
               else f"{platform.machine()}, {torch.get_num_threads()} threads")
    params = sum(p.numel() for p in UNet3D(6, 2, args.base, args.depth).parameters()) / 1e6
    print(f"\n{machine}; torch {torch.__version__}; U-Net {params:.2f} M parameters; volume 6×{args.volume}; "
          f"patch {args.patch}, overlap {args.overlap} ({total} patches); |A| = {args.region_voxels}; "
          f"composite {args.composite}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "patches_total": total,
                                         "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
