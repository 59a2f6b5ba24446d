"""Wall time of ``lrpseg explain`` with 1 vs 3 regions, and how often the network runs.

The demo case (phantom seed 9001, 6×32×96×96, with its reference label) is written to disk once;
then ``lrpseg explain`` runs as a process on it, first with ``--region predicted`` and then with
``--region tp fn fp`` (each ``--repeats`` times, the median is reported). A second, in-process run
of the same command counts the network's forward calls (a forward hook on the model's top module),
a number that does not depend on the machine's load.

``--source DIR`` runs another checkout's library (e.g. a ``git worktree`` of an older commit), so
the same machine measures before and after a change.

Usage:
  python bench/bench_explain.py [--repeats 3] [--source OTHER_CHECKOUT] [--json results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REGION_SETS = {"1 region": ["predicted"], "3 regions": ["tp", "fn", "fp"]}

COUNT_FORWARDS = """
import sys, torch
from LRPSegmentationLib import cli
from LRPSegmentationLib.models import UNet3D
calls = 0
def count(module, args, output):
    global calls
    if isinstance(module, UNet3D) and args[0].device.type != "meta":  # meta: shape probes, no data
        calls += 1
torch.nn.modules.module.register_module_forward_hook(count)
code = cli.main(sys.argv[1:])
print(f"FORWARD_CALLS {calls}")
sys.exit(code)
"""


def write_case(folder: Path) -> None:
    """The demo's case as NRRD files, one per sequence, plus reference_label.nrrd."""
    import SimpleITK as sitk

    from LRPSegmentationLib import phantom
    from LRPSegmentationLib.demo import DEMO_SEED

    generated = phantom.generate_case(DEMO_SEED, shape=(32, 96, 96))
    images, label = generated.to_sitk()
    folder.mkdir(parents=True)
    for name, image in zip(generated.sequences, images):
        sitk.WriteImage(image, str(folder / f"{name}.nrrd"))
    sitk.WriteImage(label, str(folder / "reference_label.nrrd"))


def explain_argv(case: Path, output: Path, regions: list[str]) -> list[str]:
    model = REPO / "LRPSegmentation" / "Resources" / "Models" / "demo_unet3d.lrpmodel"
    return ["--quiet", "explain", "--model", str(model), "--case", str(case), "--device", "cpu",
            "--output", str(output), "--region", *regions]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--source", type=Path, default=REPO, help="checkout whose library runs (default: this one)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    environment = dict(os.environ, PYTHONPATH=str(args.source.resolve() / "LRPSegmentation"))
    sys.path.insert(0, str(REPO / "LRPSegmentation"))
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                     "source": str(args.source.resolve()), "commit": subprocess.run(
                         ["git", "-C", str(args.source), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        case = Path(tmp) / "case"
        write_case(case)
        for label, regions in REGION_SETS.items():
            times = []
            for repeat in range(args.repeats):
                output = Path(tmp) / f"out-{len(regions)}-{repeat}"
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "LRPSegmentationLib.cli", *explain_argv(case, output, regions)],
                                      env=environment, capture_output=True, text=True)
                times.append(time.perf_counter() - start)
                if done.returncode != 0:
                    print(done.stderr, file=sys.stderr)
                    return 1
            counted = subprocess.run([sys.executable, "-c", COUNT_FORWARDS,
                                      *explain_argv(case, Path(tmp) / f"count-{len(regions)}", regions)],
                                     env=environment, capture_output=True, text=True)
            calls = [int(line.split()[1]) for line in counted.stdout.splitlines() if line.startswith("FORWARD_CALLS")]
            results["runs"][label] = {"regions": regions, "wall_s": times, "median_s": statistics.median(times),
                                      "forward_calls": calls[0] if calls else None}
            print(f"lrpseg explain, {label:<9} ({' '.join(regions)}): median {statistics.median(times):6.1f} s "
                  f"of {args.repeats} (process start to exit), network forward calls: {calls[0] if calls else '?'}")
    print(f"machine: {results['machine']}; library from {results['source']} ({results['commit']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
