"""Click to result through the computation process vs the engine's own time, on the demo case.

The demo case (phantom seed 9001, 6×32×96×96) and the demo model (Resources/Models/
demo_unet3d.lrpmodel); region A = the predicted tumour. A click is what the module does: prepare
(read the MRML volumes and region A, normalize; on a headless slicer-core scene when slicer-core
is installed, else numpy only), then the worker (`worker_client.WorkerClient.explain`: arrays to
.npy files, the request, the computation, the result files read back), and, with MRML, publish
(the output nodes). The engine's own time is `compute.compute_explanation` of the same request in
this process, with the model built and torch warm (median of ``--repeats``).

Clicks timed:
- cold: the first click; the worker process starts (interpreter, torch import), loads the model,
  receives the case, traces it and explains;
- warm, next case: the worker is alive with the model loaded; a new case (phantom seed 9002, so
  the inputs travel and the case is traced again): the cost of the process boundary itself;
- warm, repainted region A: same case, another region (the worker reuses the traced pass: one LRP
  pass, no forward pass).
The issue's target: a warm click within 1.2× of the engine's own time.

Usage:
  python bench/bench_worker.py [--repeats 3] [--device cpu] [--cross-check] [--json results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "LRPSegmentation" / "Resources" / "Models" / "demo_unet3d.lrpmodel"
SHAPE = (32, 96, 96)


def machine(device: str) -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if device != "cpu" and torch.cuda.is_available() else "none used"
    return (f"{platform.node()} {platform.machine()}, {platform.processor() or platform.system()}, "
            f"{os.cpu_count()} CPUs (torch threads {torch.get_num_threads()}), GPU: {gpu}; Python "
            f"{platform.python_version()}, torch {torch.__version__}")


class Clicks:
    """The module's click on one case: prepare (MRML or numpy) -> worker -> (publish)."""

    def __init__(self, package, device: str, cross_check: bool) -> None:
        self.package, self.device, self.cross_check = package, device, cross_check
        try:
            from LRPSegmentationLib.slicer.headless import clear_scene

            self.scene = clear_scene()
        except ImportError:  # no slicer-core: prepare with numpy, no publish
            self.scene = None

    def load(self, seed: int, model) -> tuple[object, np.ndarray, np.ndarray]:
        """(what prepare reads, region A, a second region) for phantom ``seed``: its volumes in the
        scene (or its arrays), region A = the predicted tumour, the second = its upper half."""
        from LRPSegmentationLib import demo
        from LRPSegmentationLib.slicer import compute

        case = demo.phantom_case(seed, SHAPE)
        inputs = self._numpy_inputs(case)
        labels = compute.compute_labels(model, inputs, self.package, self.device)
        region = labels == len(self.package.class_names) - 1
        if not region.any():
            region = case.reference_label.astype(bool)
        second = region.copy()
        second[: int(np.nonzero(region)[0].mean()) + 1] = False
        if self.scene is None:
            return inputs, region, second
        import slicer

        ijk_to_ras = case.geometry.ijk_to_ras()
        nodes = {name: slicer.util.addVolumeFromArray(np.ascontiguousarray(image), ijk_to_ras, f"{seed} {name}")
                 for image, name in zip(case.images, case.sequences)}
        return [nodes[name] for name in self.package.sequences], region, second

    def _numpy_inputs(self, case):
        from LRPSegmentationLib.normalization import normalize_sequences
        from LRPSegmentationLib.slicer import compute

        stacked = np.stack([case.images[case.sequences.index(s)] for s in self.package.sequences])
        normalized = normalize_sequences(stacked, self.package.normalization, list(self.package.sequences))
        return compute.InputStack(normalized.astype(np.float32), list(self.package.sequences), SHAPE)

    def prepare(self, source, region: np.ndarray, name: str):
        """The main-thread prepare step of the module (an `ExplainRequest`)."""
        from LRPSegmentationLib.engine import Target
        from LRPSegmentationLib.slicer import compute, logic

        if self.scene is None:
            return compute.ExplainRequest(source, region, Target(1), None, self.device, name, None, self.cross_check)
        import slicer

        reference = source[self.package.sequences.index(self.package.reference_sequence)]
        segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"regions {name}")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        segment_id = segmentation.GetSegmentation().AddEmptySegment(name, name)
        slicer.util.updateSegmentBinaryLabelmapFromArray(region.astype(np.uint8), segmentation, segment_id, reference)
        started = time.perf_counter()
        request = logic.prepare_explain(source, reference, segmentation, segment_id, self.package, Target(1), None,
                                        self.device, cross_check=self.cross_check)
        self.prepare_s = time.perf_counter() - started
        self.reference = reference
        return request

    def click(self, client, source, region: np.ndarray, name: str) -> dict[str, float]:
        """One click: prepare -> worker -> result (-> publish); the seconds of each step."""
        from LRPSegmentationLib.slicer import publish

        self.prepare_s = 0.0
        started = time.perf_counter()
        request = self.prepare(source, region, name)
        prepared = time.perf_counter()
        job = client.explain(request, str(MODEL)).start()
        if not job.wait(1800):
            raise TimeoutError(job.message)
        result = job.result()
        done = time.perf_counter()
        times = {"prepare_s": (prepared - started) if self.scene is None else self.prepare_s,
                 "worker_s": done - prepared, "in_worker_s": job.info["seconds"],
                 "forward_passes": job.info["forward_passes"]}
        times["click_to_result_s"] = times["prepare_s"] + times["worker_s"]
        if self.scene is not None:
            publish.publish_explanation(self.scene, result, self.reference, show=False)
            times["publish_s"] = time.perf_counter() - done
            times["click_to_published_s"] = times["click_to_result_s"] + times["publish_s"]
        self.request = request
        return times


def engine_seconds(request, package, model) -> float:
    """One in-process `compute.compute_explanation` of ``request`` (model built, torch warm)."""
    from LRPSegmentationLib.slicer import compute

    started = time.perf_counter()
    compute.compute_explanation(request, package, model)
    return time.perf_counter() - started


def median_row(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="warm clicks of each kind (medians reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cross-check", action="store_true", help="also run the cross-check (C + 1 more passes)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from LRPSegmentationLib.models.package import load_package
    from LRPSegmentationLib.slicer import compute
    from LRPSegmentationLib.slicer.worker_client import WorkerClient

    package = load_package(MODEL)
    model = compute.load_model(package)
    clicks = Clicks(package, args.device, args.cross_check)
    cases = [clicks.load(9001, model), clicks.load(9002, model)]
    print(f"machine: {machine(args.device)}")
    print(f"case: phantom 9001 / 9002, {SHAPE}, region A {int(cases[0][1].sum())} / {int(cases[1][1].sum())} voxels; "
          f"device {args.device}; cross-check {'on' if args.cross_check else 'off'}; MRML prepare/publish "
          f"{'on slicer-core' if clicks.scene is not None else 'off (numpy prepare)'}")
    engine_seconds(clicks.prepare(cases[0][0], cases[0][1], "warm-up"), package, model)  # torch warm in-process

    def timed(client, source, region, name) -> dict[str, float]:
        """A click, then the engine's own time for the same request right after (same machine load)."""
        row = clicks.click(client, source, region, name)
        row["engine_s"] = engine_seconds(clicks.request, package, model)
        return row

    client = WorkerClient()
    results = {}
    try:
        results["cold first click"] = timed(client, cases[0][0], cases[0][1], "A")
        # Each warm click of the next kind brings a case the worker does not hold (alternating patients).
        results["warm click, next case"] = median_row(
            [timed(client, *cases[(i + 1) % 2][:2], f"A{i}") for i in range(args.repeats)])
        last = cases[args.repeats % 2]  # the case the worker holds now: repaint region A on it
        results["warm click, repainted A"] = median_row(
            [timed(client, last[0], last[2 - i % 2], f"A repainted {i}") for i in range(args.repeats)])
    finally:
        client.shutdown()

    print(f"\n{'click':26} {'engine':>7} {'prepare':>8} {'worker':>7} {'in worker':>9} {'result':>7} {'published':>9}"
          f" {'overhead':>8} {'ratio':>6} {'ratio*':>6} {'fwd':>4}")
    for name, row in results.items():
        end_to_end = row.get("click_to_published_s", row["click_to_result_s"])
        row["overhead_s"] = end_to_end - row["in_worker_s"]
        row["ratio_to_engine"] = end_to_end / row["engine_s"]
        row["ratio_to_engine_in_worker"] = end_to_end / row["in_worker_s"]
        published = row.get("click_to_published_s")
        print(f"{name:26} {row['engine_s']:7.3f} {row['prepare_s']:8.3f} {row['worker_s']:7.3f} {row['in_worker_s']:9.3f} "
              f"{row['click_to_result_s']:7.3f} " + (f"{published:9.3f}" if published is not None else f"{'-':>9}")
              + f" {row['overhead_s']:8.3f} {row['ratio_to_engine']:5.2f}x {row['ratio_to_engine_in_worker']:5.2f}x"
              f" {int(row['forward_passes']):4d}")
    print(f"""
seconds. engine: in-process compute_explanation of the same request, right after the click (model built, torch
warm). prepare: MRML -> arrays (main thread). worker: request sent to result read back; in worker: the computation
itself (the engine's own time in the worker). result / published: the click until the arrays are back / the nodes
exist. overhead = published (or result) - in worker: what the module and the process boundary add. ratio = click /
engine; ratio* = click / in worker (the same comparison, immune to load changes between the two runs). fwd: network
passes the worker ran. Warm rows: medians of {args.repeats}.""")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(args.device), "device": args.device,
                                         "cross_check": args.cross_check, "clicks": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
