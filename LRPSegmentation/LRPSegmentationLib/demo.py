"""The main job on a fresh machine: ``python -m LRPSegmentationLib.demo --output demo-output``.

1. Generate a six-sequence liver DCE-MRI phantom case (a seed never used in training).
2. Segment it with the bundled demo model (the seed's 3D U-Net trained on the phantom).
3. Take the predicted tumour as region A and explain it exactly; also the true-positive,
   false-negative and false-positive parts against the phantom's ground truth.
4. Write one relevance map per sequence (NRRD, on the input grid), the sequence-composition map,
   the per-sequence shares (CSV, JSON), the seed's figures (PNG) and a 3D Slicer scene
   (``scene.mrml`` with its data) showing the relevance maps colour-mapped over the images.
5. Print a report: Dice, per-sequence shares, how much of the decision each sequence carries
   (sequence ablation, and the decision shares: exact Shapley values beside the LRP shares), and
   which sequences carry the lesion's contrast.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from . import evaluation, outputs, phantom, pipeline, shapley
from .imaging import Geometry
from .inference import Inferer
from .models.package import load_package
from .vocabulary import DEMO_MODEL, decision_caution, distractor_caution

#: Phantom seed of the demo case (training uses 1000+, validation 5000+; 9000+ are never used).
DEMO_SEED = 9001


def case_from_phantom(generated: phantom.PhantomCase, name: str | None = None) -> pipeline.Case:
    """A phantom case as a pipeline `Case` (images on their own grid, tumour as reference label)."""
    images, _ = generated.to_sitk()
    return pipeline.Case(name or f"phantom-{generated.seed}", generated.images.astype(np.float32),
                         Geometry.from_image(images[-1]), list(generated.sequences),
                         generated.tumour.astype(np.uint8))


def phantom_case(seed: int, shape: tuple[int, int, int], name: str | None = None, **options) -> pipeline.Case:
    """`case_from_phantom` of ``phantom.generate_case(seed, shape=shape, **options)``."""
    return case_from_phantom(phantom.generate_case(seed, shape=shape, **options), name)


def report(result: pipeline.CaseResult, dice: float, ablation: evaluation.AblationResult | None = None,
           decisions: dict[str, shapley.ShapleyResult] | None = None) -> str:
    """A plain-text report of one explained case (and of its sequence ablation and the regions'
    decision shares (`shapley.case_decision_shares`), when given)."""
    names = result.case.sequences
    lines = [f"case {result.case.name}: tumour Dice {dice:.3f}; target {result.target.describe(['background', 'tumour'])}; "
             f"composite {result.composite}", ""]
    header = f"{'region':<12}{'voxels':>8}{'excl.':>7}  " + "".join(f"{n:>10}" for n in names)
    lines.append("per-sequence share of the region's normalized relevance (signed / positive part):")
    lines.append(header)
    for region, explanation in result.explanations.items():
        lines.append(f"{region:<12}{explanation.n_used:>8}{explanation.n_excluded:>7}  "
                     + "".join(f"{100 * s:>9.1f}%" for s in explanation.sequence_shares.tolist()))
        lines.append(f"{'':<12}{'':>8}{'':>7}  "
                     + "".join(f"{100 * s:>9.1f}%" for s in explanation.positive_shares.tolist()))
    if ablation is not None:
        # The cross-check: relevance on a sequence whose removal leaves the decision untouched is
        # distractor relevance (README, "the proof").
        lines += ["", "decision margin of the true positives kept when the sequence is replaced by its mean "
                      "(100 % = not used):",
                  f"{'':<29}" + "".join(f"{100 * m:>9.1f}%" for m in ablation.margin_retained.tolist()),
                  f"{'':<29}" + "".join(f"{n:>10}" for n in names)]
        # The margin is measured over the true positives: compare with their explanation.
        region = "tp" if "tp" in result.explanations else next(iter(result.explanations), None)
        flagged = (evaluation.relevance_without_sensitivity(result.explanations[region].positive_shares,
                                                            ablation.margin_retained) if region else [])
        if flagged:
            lines.append(distractor_caution([names[c] for c in flagged], region))
    for region, decision in (decisions or {}).items():
        # What the computation used (LRP) beside what the decision rests on (Shapley, README).
        explanation = result.explanations[region]
        lines += ["", f"region {region}: LRP shares beside the decision shares (Shapley)"]
        lines += shapley.shares_table(names, explanation.sequence_shares.tolist(), explanation.positive_shares.tolist(),
                                      decision)
        flagged = shapley.relevance_without_decision(explanation.positive_shares.numpy(), decision.shares)
        if flagged:
            lines.append("  " + decision_caution([names[c] for c in flagged], region))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m LRPSegmentationLib.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("demo-output"), help="output folder")
    parser.add_argument("--model", type=Path, default=DEMO_MODEL, help="model package (.lrpmodel folder)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="phantom seed of the demo case")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available)")
    parser.add_argument("--composite", default=None, help="LRP composite (default: the model's)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-scene", action="store_true", help="do not write the 3D Slicer scene")
    parser.add_argument("--shapley", action=argparse.BooleanOptionalAction, default=True,
                        help="the decision shares (exact Shapley values, 64 more forward passes) in the report "
                             "(default: on)")
    args = parser.parse_args(argv)
    start = time.time()
    try:
        # All-or-nothing: everything goes to a temporary folder, renamed to --output when complete
        # (an interrupted demo leaves the earlier output or none). Entered first: an existing or
        # unwritable output folder is reported before minutes of work.
        with outputs.atomic_folder(args.output, args.overwrite, markers=(pipeline.SUMMARY,)) as folder:
            text = _run(args, folder)
    except (FileExistsError, ValueError, OSError) as error:  # OSError: e.g. outputs.WriteError (disk full)
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text)
    print(f"\noutputs in {args.output.resolve()} ({time.time() - start:.0f} s)")
    return 0


def _run(args: argparse.Namespace, folder: Path) -> str:
    """The demo's work, its outputs written into ``folder``; returns the printed report."""
    from tqdm import tqdm

    try:
        package = load_package(args.model)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"cannot load the model package: {error}") from None
    steps = ["load model", "generate case", "segment", "composition map", "explain regions", "write outputs",
             "write Slicer scene"]
    bar = tqdm(total=len(steps), desc="demo", unit="step")
    try:
        model = package.build()
        bar.update()
        shape = tuple(package.training_info.get("phantom_shape", package.patch_size))
        generated = phantom.generate_case(args.seed, shape=shape)
        case = case_from_phantom(generated)
        bar.update()

        def progress(message: str) -> None:
            bar.set_postfix_str(message)
            if message.startswith("computing") or message.startswith("explaining"):
                bar.update()

        # the predicted tumour and its true/false positive/negative parts, from one forward pass
        result = pipeline.explain_case(case, model, package, regions=["predicted", "tp", "fn", "fp"],
                                       composite=args.composite, device=args.device, progress=progress)
        truth = case.reference_label.astype(bool)
        bar.update()
        pipeline.write_case_files(result, folder, package)
        bar.update()
        if not args.no_scene:
            try:
                from .slicer.scene import save_slicer_scene
                save_slicer_scene(result, folder, package)
            except ImportError as error:
                print(f"note: no 3D Slicer scene written ({error}); install slicer-core to get one",
                      file=sys.stderr)
        bar.update()
    finally:
        bar.close()
    ablation = Inferer.for_package(model, package, args.device).ablation(pipeline.network_input(case, package), truth,
                                                                         result.target)
    decisions = {}
    if args.shapley:
        decisions, _ = shapley.case_decision_shares(result, model, package, args.device)  # fn: no decision
        outputs.write_json(folder / "shapley.json", shapley.decision_report(decisions, result.explanations))
    text = report(result, evaluation.dice(result.labels == result.target.index, truth), ablation, decisions)
    outputs.write_text(folder / "report.txt", text + "\n")
    lesion_table = phantom.CONTRAST_TABLE
    lines = [text, "", "phantom lesion contrast vs liver (the truth the shares can be compared with):"]
    for lesion in sorted({lesion.lesion_type for lesion in generated.lesions}):
        ratios = np.array(lesion_table[lesion]) / np.array(lesion_table["liver"])
        lines.append(f"  {lesion:<11}" + "".join(f"{r:>10.2f}" for r in ratios))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
