"""End-to-end tests of the `lrpseg` console script (LRPSegmentationLib.cli) on tiny phantom cases
written to disk, with a tiny random model package. Regions are given as masks / derived from the
reference label, so they do not depend on what the random network predicts."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LRPSegmentationLib import cli, phantom, pipeline, vocabulary
from LRPSegmentationLib.models import UNet3D, create_package

SHAPE = (8, 16, 16)  # a (16, 32, 32) phantom binned 2×2×2: cheap on two shared CPU cores
SEQUENCES = list(phantom.SEQUENCES)


def _write_case(folder: Path, seed: int, skip: tuple[str, ...] = ()) -> Path:
    """A phantom case on disk: one NRRD per sequence, reference_label.nrrd and mask.nrrd (the
    tumour, any voxel touching it after binning)."""
    generated = phantom.generate_case(seed, shape=tuple(2 * s for s in SHAPE))
    images, label = generated.to_sitk()
    folder.mkdir(parents=True)
    for name, image in zip(generated.sequences, images):
        if name not in skip:
            sitk.WriteImage(sitk.BinShrink(image, [2, 2, 2]), str(folder / f"{name}.nrrd"))
    tumour = sitk.Cast(sitk.BinShrink(sitk.Cast(label, sitk.sitkFloat32), [2, 2, 2]) > 0, sitk.sitkUInt8)
    assert sitk.GetArrayViewFromImage(tumour).any()
    sitk.WriteImage(tumour, str(folder / "reference_label.nrrd"))
    sitk.WriteImage(tumour, str(folder / "mask.nrrd"))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    spacing = phantom.default_spacing(SHAPE)  # (z, y, x) of the binned grid
    package = create_package(UNet3D(6, 2, base_channels=4, depth=2).eval(), "unet3d",
                             {"in_channels": 6, "out_channels": 2, "base_channels": 4, "depth": 2},
                             sequences=phantom.SEQUENCES, normalization={"type": "zscore", "mask": "foreground"},
                             class_names=["background", "tumour"], target_spacing=tuple(spacing[::-1]),
                             patch_size=SHAPE, name="tiny")
    model = package.save(root / "tiny.lrpmodel")
    case = _write_case(root / "case-1", 1)
    cohort = root / "cohort"
    for name, seed, skip in (("case-a", 1, ()), ("case-b", 2, ()), ("case-c", 3, ("T2",))):
        _write_case(cohort / name, seed, skip)
    return {"root": root, "model": str(model), "case": case, "cohort": cohort}


def run(capfd, *argv):
    """main(argv) → (exit code, stdout, stderr)."""
    code = cli.main(["--quiet", *[str(a) for a in argv]])
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *phrases):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


def sequence_args(folder: Path, names=SEQUENCES):
    args = []
    for name in names:
        args += ["--sequence", f"{name}={folder / (name + '.nrrd')}"]
    return args


def test_help(capfd):
    assert cli.main(["--help"]) == 0
    out = capfd.readouterr().out
    for command in ("predict", "explain", "cohort", "evaluate", "demo"):
        assert command in out
    for command in ("predict", "explain", "cohort", "evaluate"):
        assert cli.main([command, "--help"]) == 0
        assert "--model" in capfd.readouterr().out
    assert cli.REGION_MODES is vocabulary.REGION_MODES  # one definition
    # usage errors are one line too
    assert cli.main(["explain", "--model", "x", "--case", "y", "--output", "z", "--region", "nope"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: lrpseg explain: argument --region")
    done = subprocess.run([sys.executable, "-m", "LRPSegmentationLib.cli", "cohort", "--help"],
                          capture_output=True, text=True, encoding="utf-8", timeout=60)
    assert done.returncode == 0 and "--scheduler" in done.stdout


def test_demo_delegates(monkeypatch):
    from LRPSegmentationLib import demo

    seen = []
    monkeypatch.setattr(demo, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["demo", "--output", "x", "--seed", "3"]) == 0
    assert seen == [["--output", "x", "--seed", "3"]]


def test_predict_keeps_the_reference_geometry(data, capfd, tmp_path):
    output = tmp_path / "seg.nrrd"
    code, out, err = run(capfd, "predict", "--model", data["model"], *sequence_args(data["case"]),
                         "--output", output, "--device", "cpu")
    assert code == 0, err
    label = sitk.ReadImage(str(output))
    reference = sitk.ReadImage(str(data["case"] / "T1-15min.nrrd"))
    assert label.GetSize() == reference.GetSize()
    assert np.allclose(label.GetSpacing(), reference.GetSpacing())
    assert np.allclose(label.GetOrigin(), reference.GetOrigin())
    assert np.allclose(label.GetDirection(), reference.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(label))) <= {0, 1}
    # never replaced without --overwrite
    before = output.stat().st_mtime_ns
    code, _, err = run(capfd, "predict", "--model", data["model"], "--case", data["case"], "--output", output)
    assert_one_line_error(code, err, "already exists", "--overwrite")
    assert output.stat().st_mtime_ns == before
    code, _, err = run(capfd, "predict", "--model", data["model"], "--case", data["case"], "--output", output,
                       "--overwrite")
    assert code == 0, err


def test_explain_writes_everything(data, capfd, tmp_path):
    output = tmp_path / "explained"
    code, out, err = run(capfd, "explain", "--model", data["model"], "--case", data["case"], "--region", "mask",
                         "--mask", data["case"] / "mask.nrrd", "--target", "tumour", "--output", output)
    assert code == 0, err
    assert (output / "segmentation.nrrd").is_file() and (output / "summary.json").is_file()
    assert (output / "shares.png").is_file() and (output / "mask" / "relevance.png").is_file()
    for name in SEQUENCES:
        assert (output / f"composition_{name}.nrrd").is_file()
        relevance = sitk.ReadImage(str(output / "mask" / f"relevance_{name}.nrrd"))
        assert relevance.GetSize() == sitk.ReadImage(str(data["case"] / "T1-15min.nrrd")).GetSize()
    with open(output / "mask" / "shares.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["sequence"] for r in rows] == SEQUENCES
    assert sum(float(r["share"]) for r in rows) == pytest.approx(1.0, abs=1e-4)
    summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
    assert sum(summary["regions"]["mask"]["shares"].values()) == pytest.approx(1.0, abs=1e-4)
    assert summary["regions"]["mask"]["voxels_used"] + summary["regions"]["mask"]["voxels_excluded"] == \
        int(sitk.GetArrayFromImage(sitk.ReadImage(str(data["case"] / "mask.nrrd"))).sum())
    # an existing output folder is refused before anything is computed
    code, _, err = run(capfd, "explain", "--model", data["model"], "--case", data["case"], "--region", "mask",
                       "--mask", data["case"] / "mask.nrrd", "--output", output)
    assert_one_line_error(code, err, "already exists")


def test_user_errors(data, capfd, tmp_path):
    model, case = data["model"], data["case"]
    out = tmp_path / "out"
    # a missing image file
    args = sequence_args(case)
    args[1] = f"T2={tmp_path / 'nope.nrrd'}"
    code, _, err = run(capfd, "predict", "--model", model, *args, "--output", out / "seg.nrrd")
    assert_one_line_error(code, err, "not found", "nope.nrrd")
    # sequence names that do not match the package
    args = sequence_args(case)
    args[1] = f"T3={case / 'T2.nrrd'}"
    code, _, err = run(capfd, "predict", "--model", model, *args, "--output", out / "seg.nrrd")
    assert_one_line_error(code, err, "do not match", "missing ['T2']", "unexpected ['T3']")
    # a case folder that lacks a sequence
    code, _, err = run(capfd, "explain", "--model", model, "--case", data["cohort"] / "case-c", "--output", out)
    assert_one_line_error(code, err, "missing sequence(s) ['T2']")
    # no model package there
    code, _, err = run(capfd, "predict", "--model", tmp_path / "none.lrpmodel", "--case", case,
                       "--output", out / "seg.nrrd")
    assert_one_line_error(code, err, "cannot load the model package")
    # an unreadable image
    (tmp_path / "broken.nrrd").write_text("not an image")
    args = sequence_args(case)
    args[1] = f"T2={tmp_path / 'broken.nrrd'}"
    code, _, err = run(capfd, "predict", "--model", model, *args, "--output", out / "seg.nrrd")
    assert_one_line_error(code, err, "broken.nrrd")
    # an empty mask
    empty = sitk.ReadImage(str(case / "mask.nrrd")) * 0
    sitk.WriteImage(empty, str(tmp_path / "empty.nrrd"))
    code, _, err = run(capfd, "explain", "--model", model, "--case", case, "--mask", tmp_path / "empty.nrrd",
                       "--output", out)
    assert_one_line_error(code, err, "region 'mask' is empty")
    # empty TP/FN regions, deterministic whatever the random network predicts: class 0 (background)
    # against its own prediction has no false negatives; against an all-tumour label no true positives
    code, _, err = run(capfd, "predict", "--model", model, "--case", case, "--output", tmp_path / "own.nrrd")
    assert code == 0, err
    code, _, err = run(capfd, "explain", "--model", model, "--case", case, "--region", "fn", "--target", "0",
                       "--reference-label", tmp_path / "own.nrrd", "--output", out)
    assert_one_line_error(code, err, "region 'fn' is empty", "no false negatives", "covers the reference label")
    code, _, err = run(capfd, "explain", "--model", model, "--case", case, "--region", "tp",
                       "--reference-label", tmp_path / "empty.nrrd", "--output", out)
    assert_one_line_error(code, err, "no true positives", "reference label has no tumour voxel")
    # a mask that does not overlap the case's grid
    far = sitk.ReadImage(str(case / "mask.nrrd"))
    far.SetOrigin((1000.0, 1000.0, 1000.0))
    sitk.WriteImage(far, str(tmp_path / "far.nrrd"))
    code, _, err = run(capfd, "explain", "--model", model, "--case", case, "--mask", tmp_path / "far.nrrd",
                       "--output", out)
    assert_one_line_error(code, err, "does not overlap")
    code, _, err = run(capfd, "explain", "--model", model, "--case", case, "--target", "liver", "--output", out)
    assert_one_line_error(code, err, "not a class of the model")
    # a cohort table with a misspelt sequence column
    (tmp_path / "cases.csv").write_text("case,T2,plainT1,T1-20s,T1-60s,T1-120s,T1-15mn\nc,a,b,c,d,e,f\n")
    code, _, err = run(capfd, "cohort", "--model", model, "--cases", tmp_path / "cases.csv", "--output", out)
    assert_one_line_error(code, err, "no column for sequence(s) ['T1-15min']", "unknown column(s) ['T1-15mn']")
    assert not out.exists()  # nothing was written by any refused command


def _read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def local_cohort(data, tmp_path_factory):
    output = tmp_path_factory.mktemp("cohort") / "local"
    argv = ["--quiet", "cohort", "--model", data["model"], "--cases", str(data["cohort"]), "--region", "mask",
            "--output", str(output), "--executor", "local", "--workers", "1"]
    return output, argv


def test_cohort_local_reports_the_broken_case_and_resumes(local_cohort, capfd):
    output, argv = local_cohort
    code = cli.main(argv)
    out, err = capfd.readouterr()
    assert code == 1, err
    assert "Traceback" not in err
    assert "case case-c: FAILED" in err and "missing sequence(s) ['T2']" in err
    status = {r["case"]: r for r in _read_rows(output / "cohort_status.csv")}
    assert status["case-a"]["status"] == "done" and status["case-b"]["status"] == "done"
    assert status["case-c"]["status"] == "failed" and "T2" in status["case-c"]["message"]
    rows = _read_rows(output / "cohort_shares.csv")
    assert {r["case"] for r in rows} == {"case-a", "case-b"}
    assert {r["region"] for r in rows} == {"mask"} and len(rows) == 2 * len(SEQUENCES)
    for case in ("case-a", "case-b"):
        assert sum(float(r["share"]) for r in rows if r["case"] == case) == pytest.approx(1.0, abs=1e-4)
        assert (output / "cases" / case / "done.json").is_file()
        assert (output / "cases" / case / "mask" / "shares.csv").is_file()
    assert not (output / "cases" / "case-c").exists()
    summary = _read_rows(output / "cohort_summary.csv")
    assert [r["sequence"] for r in summary] == SEQUENCES
    assert all(r["n"] == "2" for r in summary)
    assert sum(float(r["mean_rank"]) for r in summary) == pytest.approx(sum(range(1, 7)))
    shares = np.array([[float(r["share"]) for r in rows if r["sequence"] == s] for s in SEQUENCES])
    assert [float(r["mean"]) for r in summary] == pytest.approx(shares.mean(1).tolist())
    data = json.loads((output / "cohort_summary.json").read_text(encoding="utf-8"))
    assert set(data["summary"]["mask"]) == set(SEQUENCES)
    assert (output / "cohort_shares.png").stat().st_size > 0

    # rerun: finished cases are skipped (outputs untouched), the broken one is tried again
    stamps = {c: (output / "cases" / c / "done.json").stat().st_mtime_ns for c in ("case-a", "case-b")}
    code = cli.main(argv)
    out, err = capfd.readouterr()
    assert code == 1
    assert "case case-a: skipped" in err and "case case-b: skipped" in err and "case case-c: FAILED" in err
    assert {c: (output / "cases" / c / "done.json").stat().st_mtime_ns for c in stamps} == stamps
    assert _read_rows(output / "cohort_shares.csv") == rows
    # other settings in the same folder are refused
    code = cli.main(argv[:-4] + ["--region", "predicted", "--output", str(output)])
    _, err = capfd.readouterr()
    assert_one_line_error(code, err, "other settings", "regions")


def test_cohort_on_a_dask_cluster_matches_local(data, local_cohort, capfd, tmp_path):
    distributed = pytest.importorskip("distributed")
    output, argv = local_cohort
    if not (output / "cohort_shares.csv").exists():
        cli.main(argv)
        capfd.readouterr()
    local = {(r["case"], r["sequence"]): float(r["share"]) for r in _read_rows(output / "cohort_shares.csv")}
    # the same cases as a CSV (sequence paths relative to the CSV's folder), the broken one included
    cohort = data["cohort"]
    moved = cohort.parent / "cases.csv"
    with open(moved, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case"] + SEQUENCES + ["reference_label", "mask"])
        for case in ("case-a", "case-b", "case-c"):
            writer.writerow([case] + [f"{cohort.name}/{case}/{s}.nrrd" for s in SEQUENCES]
                            + [str(cohort / case / "reference_label.nrrd"), str(cohort / case / "mask.nrrd")])
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        code = cli.main(["--quiet", "cohort", "--model", data["model"], "--cases", str(moved), "--region", "mask",
                         "--output", str(tmp_path / "dask"), "--executor", "dask",
                         "--scheduler", cluster.scheduler_address])
    out, err = capfd.readouterr()
    assert code == 1, err
    assert "case case-c: FAILED" in err and "image not found" in err
    remote = {(r["case"], r["sequence"]): float(r["share"]) for r in _read_rows(tmp_path / "dask" / "cohort_shares.csv")}
    assert remote.keys() == local.keys()
    np.testing.assert_allclose([remote[k] for k in local], [local[k] for k in local], rtol=1e-5, atol=1e-6)
    assert (tmp_path / "dask" / "cohort_shares.png").is_file()
    # an unreachable scheduler is a user error
    code, _, err = run(capfd, "cohort", "--model", data["model"], "--cases", moved, "--output", tmp_path / "x",
                       "--executor", "dask", "--scheduler", "tcp://127.0.0.1:1")
    assert_one_line_error(code, err, "cannot connect to the Dask scheduler")


def test_evaluate_writes_its_outputs(data, capfd, tmp_path):
    output = tmp_path / "evaluation"
    code, out, err = run(capfd, "evaluate", "--model", data["model"], "--case", data["case"], "--region", "mask",
                         "--mask", data["case"] / "mask.nrrd", "--steps", "3", "--patch", "8", "8", "8",
                         "--output", output)
    assert code == 0, err
    report = json.loads((output / "evaluation.json").read_text(encoding="utf-8"))
    region = report["regions"]["mask"]
    assert set(region["aopc"]) == {"morf", "lerf", "random"}
    assert len(region["perturbation"]["morf"]["scores"]) == 4
    assert region["area_between_morf_lerf"] == pytest.approx(
        np.mean(np.array(region["perturbation"]["lerf"]["scores"]) - region["perturbation"]["morf"]["scores"]))
    assert -1.0 <= region["spearman_shares_vs_dice_drop"] <= 1.0
    assert report["ablation"]["truth"] == "reference label"
    assert set(report["ablation"]["dice_drop"]) == set(SEQUENCES)
    rows = _read_rows(output / "ablation.csv")
    assert len(rows) == len(SEQUENCES)
    retained = report["ablation"]["margin_retained"]
    assert set(retained) == set(SEQUENCES)
    assert [float(r["margin_retained"]) for r in rows] == pytest.approx(
        [float("nan") if retained[s] is None else retained[s] for s in SEQUENCES], nan_ok=True)
    # the caution lists exactly the sequences with >= 10 % positive relevance and >= 95 % margin kept
    expected = [s for s in SEQUENCES if region["positive_shares"][s] >= 0.1
                and retained[s] is not None and retained[s] >= 0.95]
    assert region["relevance_without_sensitivity"] == expected
    assert len(_read_rows(output / "perturbation_mask.csv")) == 4
    assert (output / "evaluation_mask.png").stat().st_size > 0


def test_explain_with_several_regions_runs_the_network_once(data, capfd, tmp_path):
    """`lrpseg explain --region mask tp fn fp` on a case that fits one patch: one network forward pass
    on data (prediction, every region and the composition from it; shape probes on the meta device
    do not count)."""
    calls = []

    def count(module, args, output):
        if isinstance(module, UNet3D) and args[0].device.type != "meta":
            calls.append(tuple(args[0].shape))

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        code, out, err = run(capfd, "explain", "--model", data["model"], "--case", data["case"], "--region", "mask",
                             "tp", "fn", "fp", "--mask", data["case"] / "mask.nrrd", "--device", "cpu",
                             "--output", tmp_path / "out")
    finally:
        handle.remove()
    assert code == 0, err
    assert len(calls) == 1, calls
    assert (tmp_path / "out" / "mask" / "shares.json").is_file()
