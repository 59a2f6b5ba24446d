"""lrpseg: explain 3D segmentation networks on multi-sequence MRI from the command line.

Subcommands:

    lrpseg predict   segmentation of one case, on the reference sequence's grid
    lrpseg explain   relevance maps, sequence-composition map, per-sequence shares and figures of one case
    lrpseg cohort    `explain` for many cases (local processes or a Dask cluster), resumable,
                     then one shares table, the cohort bar chart and a summary per region mode
    lrpseg evaluate  faithfulness of an explanation: region perturbation (MoRF / LeRF / random)
                     and per-sequence ablation vs shares
    lrpseg import    write a .lrpmodel package from an nnU-Net v2 folder or a MONAI bundle
    lrpseg demo      the bundled demo (a phantom case through the whole pipeline)
    lrpseg review    the interactive review in the browser (needs the web extra)

--model takes a .lrpmodel folder, an nnU-Net v2 trained-model folder
(<Trainer>__<Plans>__<configuration>) or a MONAI bundle folder; the format is detected.

A case is either a folder holding one image file (or DICOM folder) per sequence, named after the
sequence (``--case FOLDER``; ``t1_15min.nii.gz`` matches ``T1-15min``), or one ``--sequence
NAME=PATH`` per sequence. Every sequence is resampled onto the model's reference sequence's grid,
and every output is written on that grid (same size, spacing, origin and direction).

User errors (missing files, unreadable images, grids that do not overlap, an empty region, inputs
that do not match the model package, existing outputs without ``--overwrite``) end with one line
``error: ...`` on stderr and exit status 2. ``lrpseg cohort`` exits with 1 when some cases failed.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cohort import EXECUTORS, run_cohort
from .inputs import (REFERENCE_LABEL_STEMS, USER_ERRORS, UserError, find_optional_file, load_model, REGION_HINTS,
                     model_options, one_line, parse_sequence_args, read_mask, resolve_target)
from .regions import choose_regions
from .vocabulary import REGION_MODES, decision_caution, distractor_caution

PROG = "lrpseg"


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------
_QUIET = False


def _bar(total: int | None, desc: str, unit: str = "step"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=_QUIET, leave=False,
                dynamic_ncols=True)


def _note(message: str) -> None:
    """A message on stderr that does not break a running progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


class _Steps:
    """A progress bar over named steps; ``pipeline`` progress messages advance it."""

    def __init__(self, steps: Sequence[str], desc: str) -> None:
        self.bar = _bar(len(steps), desc)
        self.steps = list(steps)
        self.done = 0

    def __call__(self, message: str) -> None:
        self.bar.set_postfix_str(message[:60], refresh=False)
        self.advance()

    def advance(self, message: str | None = None) -> None:
        if message:
            self.bar.set_postfix_str(message[:60], refresh=False)
        if self.done < self.bar.total:
            self.bar.update(1)
            self.done += 1

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> _Steps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def load_case_inputs(package, case: str | None = None, sequences: Sequence[str] | None = None,
                     reference_label: str | None = None, name: str | None = None, announce: bool = True):
    """A pipeline `Case` from a case folder or NAME=PATH sequences (and an optional reference label;
    a case folder's ``reference_label.*``/``label.*`` file is used when none is given)."""
    from . import pipeline

    if case is not None:
        folder = Path(case)
        if not folder.exists():
            raise UserError(f"case folder not found: {folder}")
        if not folder.is_dir():
            raise UserError(f"--case expects a folder, {folder} is a file")
        if reference_label is None:
            found = find_optional_file(folder, REFERENCE_LABEL_STEMS)
            if found is not None:
                reference_label = str(found)
                if announce:
                    _note(f"using the reference label {found}")
        sources: Any = folder
    else:
        sources = parse_sequence_args(sequences or [], package.sequences)
        for seq, path in sources.items():
            if not Path(path).exists():
                raise UserError(f"image of sequence {seq} not found: {path}")
    if reference_label is not None and not Path(reference_label).exists():
        raise UserError(f"reference label not found: {reference_label}")
    return pipeline.load_case(sources, package, reference_label=reference_label, name=name)


def _region_modes(args) -> list[str]:
    modes = list(dict.fromkeys(args.region or (["mask"] if getattr(args, "mask", None) else ["predicted"])))
    if getattr(args, "mask", None) and "mask" not in modes:
        raise UserError("--mask is used by the region mode 'mask'; add --region mask")
    return modes


def _check_output_file(path: Path, overwrite: bool) -> None:
    from .imaging import IMAGE_EXTENSIONS

    if not str(path).lower().endswith(IMAGE_EXTENSIONS):
        raise UserError(f"{path}: cannot tell the file format from the name; use one of {', '.join(IMAGE_EXTENSIONS)}")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise UserError(f"output already exists: {path}; choose another name or pass --overwrite")


# --------------------------------------------------------------------------------------------
# One case: explain (shared by `explain` and `cohort`)
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------
def cmd_predict(args) -> int:
    from . import pipeline
    from .imaging import write_label
    from .outputs import atomic_file, writing

    output = Path(args.output)
    _check_output_file(output, args.overwrite)
    # all-or-nothing; creating the temporary file first checks that the output can be written
    with atomic_file(output, args.overwrite) as temp, \
            _Steps(["load model", "read case", "segment", "write"], "predict") as steps:
        package, model = load_model(args.model, **_model_options(args))
        steps.advance("reading the case")
        case = load_case_inputs(package, args.case, args.sequence, announce=False)
        steps.advance("segmenting")
        logits, _ = pipeline.predict(model, pipeline.network_input(case, package), package, args.device)
        labels = pipeline.labels_on_source_grid(case, logits)  # back from the model's spacing
        steps.advance("writing")
        with writing(temp):
            write_label(labels, case.source_geometry, temp, overwrite=True)
        steps.advance()
    counts = {name: int((labels == k).sum()) for k, name in enumerate(package.class_names)}
    print(f"segmentation written to {output} ({', '.join(f'{n}: {c} voxels' for n, c in counts.items())})")
    return 0


# --------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------
def cmd_explain(args) -> int:
    from . import pipeline, shapley
    from .outputs import atomic_folder, write_json

    output = Path(args.output)
    modes = _region_modes(args)
    # all-or-nothing; creating the temporary folder first checks that the output can be written
    with atomic_folder(output, args.overwrite, markers=(pipeline.SUMMARY,)) as folder, \
            _Steps(["load model", "read case", "segment", "composition map", "explain regions"]
                   + (["decision shares"] if args.shapley else []) + ["write"], "explain") as steps:
        package, model = load_model(args.model, **_model_options(args))
        target_index = resolve_target(args.target, package.class_names)
        steps.advance("reading the case")
        case = load_case_inputs(package, args.case, args.sequence, args.reference_label)
        mask = read_mask(args.mask, case.geometry) if args.mask else None
        result = pipeline.explain_case(case, model, package, regions=modes,
                                       target=pipeline.case_target(package, target_index, args.contrast),
                                       composite=args.composite, device=args.device, mask=mask, progress=steps,
                                       region_hints=REGION_HINTS)
        for message in result.empty:
            _note(f"note: {message}; skipped")
        decisions: dict = {}
        if args.shapley:  # 2^C more forward passes (64 for six sequences)
            steps.advance("decision shares (Shapley)")
            decisions, skipped = shapley.case_decision_shares(result, model, package, args.device)
            for message in skipped:
                _note(f"note: {message}")
        steps.advance("writing outputs")
        summary = pipeline.write_case_files(result, folder, package)
        if decisions:
            write_json(folder / "shapley.json", shapley.decision_report(decisions, result.explanations))
        steps.advance()
    print(f"case {case.name}: target {summary['target']}, composite {summary['composite']}")
    names = case.sequences
    print(f"{'region':<14}{'voxels':>8}  " + "".join(f"{n:>10}" for n in names))
    for region, info in summary["regions"].items():
        print(f"{region:<14}{info['voxels_used']:>8}  "
              + "".join(f"{100 * info['shares'][n]:>9.1f}%" for n in names))
    for region, decision in decisions.items():
        explanation = result.explanations[region]
        print(f"region {region}: LRP shares beside the decision shares (Shapley)")
        print("\n".join(shapley.shares_table(names, explanation.sequence_shares.tolist(),
                                             explanation.positive_shares.tolist(), decision)))
        flagged = shapley.relevance_without_decision(explanation.positive_shares.numpy(), decision.shares)
        if flagged:
            print(f"  {decision_caution([names[c] for c in flagged], region)}")
    print(f"outputs in {output}")
    return 0


# --------------------------------------------------------------------------------------------
# cohort
# --------------------------------------------------------------------------------------------
class _CohortReport:
    """Reports a cohort run on stderr: one line per case, a progress bar over the cases to compute."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.bar = None

    def start(self, pending: int, done: int) -> None:
        self.bar = _bar(pending, "cohort", unit="case")
        if pending:
            _note(f"{pending} case(s) to compute, {done} already done; executor {self.where}")

    def case(self, status: dict[str, Any]) -> None:
        if status["status"] == "failed":
            _note(f"case {status['case']}: FAILED: {status['message']}")
        elif status["status"] == "skipped":
            _note(f"case {status['case']}: skipped (already done)")
        else:
            extra = f" ({status['message']})" if status.get("message") else ""
            _note(f"case {status['case']}: {status['status']} in {status['seconds']:.1f} s{extra}")
        if self.bar is not None:  # a case computed by this run
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_cohort(args) -> int:
    if _model_options(args):  # each worker loads --model by its path, with the defaults
        raise UserError("lrpseg cohort uses every fold, mirrored; for --folds / --no-mirroring write a package "
                        "first (lrpseg import FOLDER --output NAME.lrpmodel --folds ... --no-mirroring) and pass it "
                        "as --model")
    if args.mask:
        raise UserError("lrpseg cohort takes masks from a 'mask' CSV column or mask.* files in the case folders, "
                        "not --mask")
    where = f"{args.executor}" + (f" at {args.scheduler}" if args.scheduler else f", {args.workers} worker(s)")
    report = _CohortReport(where)
    try:
        result = run_cohort(args.cases, args.model, args.output, regions=args.region or ["predicted"],
                                   target=args.target, contrast=args.contrast, composite=args.composite,
                                   device=args.device, overwrite=args.overwrite, threads=args.threads,
                                   executor=args.executor, workers=args.workers, scheduler=args.scheduler,
                                   progress=report.case, on_start=report.start, shapley=args.shapley)
    finally:
        report.close()
    failed = result.failed
    print(f"cohort: {len(result.done)} done, {len(result.skipped)} skipped (already done), {len(failed)} failed; "
          f"tables and charts in {result.output}")
    for status in failed:
        print(f"error: case {status['case']}: {status['message']}", file=sys.stderr)
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------
def cmd_evaluate(args) -> int:
    from . import evaluation, evaluation_report, pipeline, shapley
    from .outputs import atomic_folder

    output = Path(args.output)
    modes = _region_modes(args)
    # all-or-nothing; creating the temporary folder first checks that the output can be written
    with atomic_folder(output, args.overwrite, markers=(evaluation_report.REPORT,)) as folder, \
            _Steps(["load model", "read case", "segment", "ablation"] + (["decision shares"] if args.shapley else [])
                   + [f"{m} {o}" for m in modes for o in ("explain",) + evaluation.PERTURBATION_ORDERS] + ["write"],
                   "evaluate") as steps:
        package, model = load_model(args.model, **_model_options(args))
        target = pipeline.case_target(package, resolve_target(args.target, package.class_names), args.contrast)
        steps.advance("reading the case")
        case = load_case_inputs(package, args.case, args.sequence, args.reference_label)
        mask = read_mask(args.mask, case.geometry) if args.mask else None
        steps.advance("segmenting")
        _, labels = pipeline.predict(model, pipeline.network_input(case, package), package, args.device)
        regions, empty = choose_regions(modes, labels, target.index, case.reference_label, mask,
                                        package.class_names[target.index], REGION_HINTS)
        if not regions:
            raise UserError("; ".join(empty))
        for message in empty:
            _note(f"note: {message}; skipped")
        result = evaluation_report.evaluate_case(
            case, model, package, regions, target, composite=args.composite, device=args.device, steps=args.steps,
            patch=args.patch, fill=args.fill, seed=args.seed, labels=labels, notes=empty, progress=steps,
            decision_shares=args.shapley)
        steps.advance("writing")
        evaluation_report.write_evaluation_files(result, folder)
        steps.advance()
    report = result.report
    print(f"case {case.name}: Dice {result.ablation.base_dice:.3f} against {report['ablation']['truth']}")
    for name, info in report["regions"].items():
        print(f"region {name}: AOPC MoRF {info['aopc']['morf']:.4f}, LeRF {info['aopc']['lerf']:.4f}, "
              f"random {info['aopc']['random']:.4f}; area MoRF–LeRF {info['area_between_morf_lerf']:.4f}; "
              f"Spearman(shares, Dice drops) {info['spearman_shares_vs_dice_drop']:.2f}")
        if info["relevance_without_sensitivity"]:
            print(f"  {distractor_caution(info['relevance_without_sensitivity'], name)}")
        decision = result.shapley_results.get(name)
        if decision is not None:
            names = case.sequences
            print("\n".join(shapley.shares_table(names, [info["shares"][n] for n in names],
                                                 [info["positive_shares"][n] for n in names], decision)))
            flagged = shapley.relevance_without_decision([info["positive_shares"][n] for n in names], decision.shares)
            if flagged:
                print(f"  {decision_caution([names[c] for c in flagged], name)}")
    print(f"outputs in {output}")
    return 0


# --------------------------------------------------------------------------------------------
# review
# --------------------------------------------------------------------------------------------
def cmd_review(args) -> int:
    """The web review app (`review.server.run`; imported here so the other commands never load trame)."""
    from .review import server

    try:
        return server.run(args)
    except ImportError as error:
        raise UserError(str(error)) from None


# --------------------------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------------------------
class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line too: ``error: lrpseg explain: ... (see lrpseg explain --help)``."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="PATH",
                   help="a model package (<name>.lrpmodel folder), an nnU-Net v2 trained-model folder or a MONAI "
                        "bundle folder")
    _add_import_options(p)


def _add_import_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folds", nargs="+", metavar="F",
                   help="nnU-Net: the folds to ensemble (default: every fold_N, as nnU-Net)")
    p.add_argument("--no-mirroring", dest="mirroring", action="store_false",
                   help="nnU-Net: without its test-time mirroring (default: mirrored, as nnU-Net predicts)")


def _model_options(args) -> dict:
    return model_options(getattr(args, "folds", None), getattr(args, "mirroring", True))


# --------------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------------
def cmd_import(args) -> int:
    from .models.metadata import PACKAGE_SUFFIX

    output = Path(args.output)
    if not output.name.endswith(PACKAGE_SUFFIX) or output.name == PACKAGE_SUFFIX:
        raise UserError(f"--output must be a folder named <name>{PACKAGE_SUFFIX}, got {output.name!r}")
    if (output.exists() or output.is_symlink()) and not args.overwrite:
        raise UserError(f"output already exists: {output}; choose another name or pass --overwrite")
    package, _ = load_model(args.source, build=False, **_model_options(args))
    if args.name:
        package.name = args.name
    package.save(output, overwrite=args.overwrite)  # written beside it and renamed into place: all or nothing
    parameters = sum(t.numel() for t in package.state_dict.values())
    print(f"{package.name}: {len(package.sequences)} sequence(s) {package.sequences}, classes {package.class_names}, "
          f"architecture {package.architecture} ({parameters:,} parameters) written to {output}")
    return 0


def _add_case(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--case", metavar="FOLDER",
                       help="case folder: one image file or DICOM folder per sequence, named after the sequence "
                            "(an optional reference_label.* / label.* file is used as reference label)")
    group.add_argument("--sequence", action="append", metavar="NAME=PATH",
                       help="one sequence image (file or DICOM folder); repeat for every sequence of the model")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _add_explanation(p: argparse.ArgumentParser, mask: bool = True) -> None:
    from .engine import COMPOSITES

    p.add_argument("--region", action="extend", nargs="+", choices=REGION_MODES, metavar="MODE",
                   help="region(s) A to explain: predicted (the predicted target class), tp/fn/fp (true positive, "
                        "false negative, false positive parts against the reference label), lesions (each "
                        "connected predicted lesion), mask (a given mask). Default: predicted (mask with --mask)")
    if mask:
        p.add_argument("--mask", metavar="FILE", help="region mask image for --region mask (resampled with nearest "
                                                      "neighbour onto the reference grid; non-zero = region)")
    p.add_argument("--target", metavar="CLASS", help="explained class, index or name (default: the last class)")
    p.add_argument("--contrast", action="store_true",
                   help="explain the class-vs-rest logit contrast instead of the class logit")
    p.add_argument("--composite", choices=COMPOSITES, default=None, help="LRP composite (default: the model's)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("predict", formatter_class=_Formatter, help="segment one case",
                       description="Segment one case with a model package and write the label map on the "
                                   "reference sequence's grid.")
    _add_model(p)
    _add_case(p)
    p.add_argument("--output", required=True, metavar="FILE", help="label map to write (.nrrd, .nii.gz, ...)")
    _add_common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", formatter_class=_Formatter, help="explain one case (relevance maps, shares, figures)",
                       description="Explain the segmentation of one case: per-sequence relevance maps of each "
                                   "region, the sequence-composition map, per-sequence shares (CSV, JSON) and "
                                   "figures, all on the reference grid, written to OUTPUT.")
    _add_model(p)
    _add_case(p)
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    _add_explanation(p)
    p.add_argument("--reference-label", metavar="FILE", help="ground-truth label (for --region tp/fn/fp), "
                                                             "resampled with nearest neighbour")
    p.add_argument("--shapley", action=argparse.BooleanOptionalAction, default=False,
                   help="also each sequence's decision share (exact Shapley values of the decision margin; 2^C "
                        "more forward passes, 13-26 s for the demo case on a 2-core CPU): printed beside the "
                        "LRP shares and written to shapley.json (default: off)")
    _add_common(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("cohort", formatter_class=_Formatter, help="explain many cases; cohort tables and chart",
                       description="Explain every case of a cohort (local processes or a Dask cluster) into "
                                   "OUTPUT/cases/<case>/, then write cohort_shares.csv (one row per case, region and "
                                   "sequence), cohort_status.csv, cohort_summary.csv/.json (per sequence: mean, std, "
                                   "median, min, max, mean rank) and the cohort bar chart cohort_shares.png (one "
                                   "colour per case; cohort_shares_<mode>.png with several region modes). Resumable: "
                                   "finished cases (done.json) are skipped; a failing case is reported and the "
                                   "others go on (exit status 1).")
    _add_model(p)
    p.add_argument("--cases", required=True, metavar="CSV_OR_FOLDER",
                   help="a CSV with columns case, one per sequence name (image paths, relative to the CSV), and "
                        "optionally reference_label and mask; or a folder of case folders (each may hold "
                        "reference_label.* and mask.*)")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    _add_explanation(p, mask=False)
    p.add_argument("--mask", help=argparse.SUPPRESS)
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local (default): a pool of local processes; dask: a Dask distributed cluster")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes, or workers of the local Dask cluster started without --scheduler "
                        "(default: 1)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://host:8786 (all workers "
                                                          "must see the same paths)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per case (default: CPU cores / workers for the local executor)")
    p.add_argument("--shapley", action=argparse.BooleanOptionalAction, default=False,
                   help="also each case's decision shares (exact Shapley values of the decision margin, 2^C more "
                        "forward passes per case): a shapley_share column, mean_shapley_share in the summary and a "
                        "decision-share panel in the chart (default: off)")
    _add_common(p)
    p.set_defaults(func=cmd_cohort)

    p = sub.add_parser("evaluate", formatter_class=_Formatter, help="faithfulness of an explanation",
                       description="Faithfulness of the explanation of one case: 3D region perturbation of each "
                                   "region (most relevant first, least relevant first, random; AOPC and the area "
                                   "between the curves) and per-sequence ablation (Dice drop when a sequence is "
                                   "replaced by an uninformative one) against the relevance shares (Spearman). "
                                   "Writes evaluation.json, ablation.csv, perturbation_<region>.csv and "
                                   "evaluation_<region>.png.")
    _add_model(p)
    _add_case(p)
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    _add_explanation(p)
    p.add_argument("--reference-label", metavar="FILE",
                   help="ground-truth label (Dice of the ablation; --region tp/fn/fp). Without it Dice is "
                        "measured against the model's own prediction")
    p.add_argument("--steps", type=int, default=20, help="perturbation steps (default: 20)")
    p.add_argument("--patch", type=int, nargs=3, default=(4, 4, 4), metavar=("D", "H", "W"),
                   help="perturbation block size in voxels (default: 4 4 4)")
    p.add_argument("--fill", default="mean", choices=("mean", "zeros", "noise"), help="what an ablated sequence is replaced by (default: mean)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random perturbation order (default: 0)")
    p.add_argument("--shapley", action=argparse.BooleanOptionalAction, default=True,
                   help="each sequence's decision share (exact Shapley values of the decision margin, 2^C forward "
                        "passes for all regions) beside the LRP shares, under 'shapley' in evaluation.json "
                        "(default: on)")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("import", formatter_class=_Formatter, help="write a .lrpmodel from an nnU-Net or MONAI model",
                       description="Write a model package (<name>.lrpmodel) from any model --model accepts: an "
                                   "nnU-Net v2 trained-model folder (its fold ensemble, with mirroring unless "
                                   "--no-mirroring), a MONAI bundle folder, or a .lrpmodel. The package holds "
                                   "JSON metadata and safetensors weights, for sharing; it predicts and explains "
                                   "exactly as the source.")
    p.add_argument("source", metavar="SRC", help="nnU-Net v2 trained-model folder, MONAI bundle folder or .lrpmodel")
    p.add_argument("--output", required=True, metavar="NAME.lrpmodel", help="package folder to write")
    p.add_argument("--name", help="the package's display name (default: from the source)")
    _add_import_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing package")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("review", formatter_class=_Formatter, help="review in the browser (segment, paint, explain)",
                       description="Serve the interactive review in the browser (needs the web extra: pip install "
                                   "'.[web]'): Slicer's slice views, Segment, region A painted with the Segment "
                                   "Editor or a shortcut, Explain (relevance overlays, shares), Export (the files "
                                   "of lrpseg explain). Without --case/--sequence the bundled phantom case is "
                                   "reviewed. One server serves one reviewer. Binds 127.0.0.1; any other --host "
                                   "needs an access token (--token or LRPSEG_REVIEW_TOKEN); open the page as "
                                   "http://HOST:PORT/?secret=TOKEN.")
    p.add_argument("--model", metavar="PATH", help="a model package (<name>.lrpmodel folder), an nnU-Net v2 "
                                                  "trained-model folder or a MONAI bundle folder (default: the "
                                                  "bundled demo model)")
    _add_import_options(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--case", metavar="FOLDER", help="case folder (as lrpseg explain); default: the bundled phantom")
    group.add_argument("--sequence", action="append", metavar="NAME=PATH", help="one sequence image; repeat per sequence")
    p.add_argument("--reference", metavar="LABEL", help="ground-truth label for the TP / FN / FP shortcuts")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this computer only)")
    p.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    p.add_argument("--token", help="access token, required for any --host but 127.0.0.1 (or set LRPSEG_REVIEW_TOKEN)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--export-root", default=".", metavar="DIR",
                   help="where Export writes its review-export-<time> folders (default: the current folder)")
    p.set_defaults(func=cmd_review)

    sub.add_parser("demo", help="run the bundled demo (options: lrpseg demo --help)", add_help=False,
                   description="Delegates to python -m LRPSegmentationLib.demo; see lrpseg demo --help.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``lrpseg`` console script. Returns the exit status (0 ok, 1 some cohort cases failed,
    2 user error)."""
    global _QUIET
    argv = list(sys.argv[1:] if argv is None else argv)
    # `lrpseg [-q] [--debug] demo ...`: everything after `demo` belongs to the demo's own parser
    position = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if position is not None and argv[position] == "demo":
        from . import demo

        try:
            return demo.main(argv[position + 1:])
        except SystemExit as exit_:  # the demo's --help or usage errors
            return int(exit_.code or 0)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, message already printed)
        return int(exit_.code or 0)
    _QUIET = args.quiet
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (UserError, OSError, *USER_ERRORS) as error:  # OSError: e.g. outputs.WriteError, a full disk
        if args.debug:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
