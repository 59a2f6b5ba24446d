"""The cohort and evaluate library APIs called from Python (``cohort.run_cohort``,
``evaluation_report.evaluate_case``), on the tiny model and phantom cases of test_cli; the
command line is a shell over them (test_cli runs the commands)."""
import json
import pickle

import pytest
import SimpleITK as sitk

from LRPSegmentationLib import cli, cohort, evaluation, evaluation_report, pipeline
from LRPSegmentationLib.engine import Target
from LRPSegmentationLib.inputs import UserError, load_model, read_mask
from test_cli import SEQUENCES, _read_rows, data  # noqa: F401 — `data` is a fixture


def test_run_case_is_picklable_and_reports_empty_regions(data, tmp_path):
    """The per-case function of every executor, in-process: an empty region is a finished case
    with a note (no rows), and a second call skips it."""
    empty = sitk.ReadImage(str(data["case"] / "mask.nrrd")) * 0
    sitk.WriteImage(empty, str(tmp_path / "empty.nrrd"))
    spec = cohort.CaseSpec(name="case 1", folder=str(data["case"]), mask=str(tmp_path / "empty.nrrd"))
    settings = cohort.CohortSettings(model=data["model"], output=str(tmp_path / "out"), regions=("mask",))
    assert pickle.loads(pickle.dumps((cohort.run_case, spec, settings)))[1:] == (spec, settings)
    status = cohort.run_case(spec, settings)
    assert status["status"] == "done", status
    assert status["rows"] == [] and "region 'mask' is empty" in status["message"]
    folder = tmp_path / "out" / "cases" / "case_1"
    assert json.loads((folder / "done.json").read_text(encoding="utf-8"))["notes"] == [status["message"]]
    assert (folder / "segmentation.nrrd").is_file()
    assert [p.name for p in (tmp_path / "out" / "cases").iterdir()] == ["case_1"]  # no scratch left
    assert cohort.run_case(spec, settings)["status"] == "skipped"


def test_run_cohort_from_python(data, tmp_path):
    specs = cohort.read_cohort_cases(data["cohort"], SEQUENCES)
    assert [s.name for s in specs] == ["case-a", "case-b", "case-c"]
    assert specs[0].mask.endswith("mask.nrrd") and specs[0].reference_label.endswith("reference_label.nrrd")
    seen, started = [], []
    output = tmp_path / "cohort"
    # case-a and case-c (which lacks its T2 image), in one local worker process
    result = cohort.run_cohort(specs[::2], data["model"], output, regions=["mask", "mask"], target="tumour",
                               progress=seen.append, on_start=lambda *counts: started.append(counts))
    assert started == [(2, 0)]
    assert sorted(s["case"] for s in seen) == ["case-a", "case-c"]
    assert [s["case"] for s in result.done] == ["case-a"] and [s["case"] for s in result.failed] == ["case-c"]
    assert "missing sequence(s) ['T2']" in result.failed[0]["message"]
    rows = _read_rows(output / "cohort_shares.csv")
    assert [r["sequence"] for r in rows] == SEQUENCES and {r["region"] for r in rows} == {"mask"}
    assert sum(float(r["share"]) for r in rows) == pytest.approx(1.0, abs=1e-4)
    assert result.summary["settings"]["regions"] == ["mask"] and result.summary["settings"]["target"] == 1
    assert set(result.summary["summary"]["mask"]) == set(SEQUENCES)
    assert result.summary["charts"] == {"mask": "cohort_shares.png"}
    # rerun of the finished case: skipped without starting a worker, tables rewritten from done.json
    seen.clear()
    again = cohort.run_cohort(specs[:1], data["model"], output, regions=("mask",), target=1, progress=seen.append)
    assert [s["status"] for s in again.statuses] == ["skipped"] and seen == again.statuses
    assert _read_rows(output / "cohort_shares.csv") == rows
    with pytest.raises(UserError, match="other settings"):
        cohort.run_cohort(specs[:1], data["model"], output, regions=("predicted",))
    with pytest.raises(UserError, match="--workers must be at least 1"):
        cohort.run_cohort(specs, data["model"], tmp_path / "other", workers=0)


def test_evaluate_case_from_python_is_what_the_command_writes(data, capfd, tmp_path):
    package, model = load_model(data["model"])
    case = pipeline.load_case(data["case"], package, reference_label=data["case"] / "reference_label.nrrd")
    mask = read_mask(data["case"] / "mask.nrrd", case.geometry)
    messages = []
    result = evaluation_report.evaluate_case(case, model, package, {"mask": mask}, Target(1), steps=2,
                                             patch=(8, 8, 8), progress=messages.append)
    assert messages[0] == "segmenting" and messages[-1] == "mask: random"
    region = result.report["regions"]["mask"]
    assert set(result.curves["mask"]) == set(evaluation.PERTURBATION_ORDERS)
    assert len(result.curves["mask"]["morf"]) == 3 and region["voxels"] == int(mask.sum())
    assert region["aopc"]["morf"] == pytest.approx(
        region["perturbation"]["morf"]["scores"][0] - sum(region["perturbation"]["morf"]["scores"]) / 3)
    assert sum(region["shares"].values()) == pytest.approx(1.0, abs=1e-4)
    assert result.report["ablation"]["truth"] == "reference label"
    # the decision shares: the untrained network calls no voxel of the mask "tumour", so there is no
    # decision to share (a note, not an error); for "background" there is
    assert region["shapley"] is None and any("no decision margin" in n for n in result.report["notes"])
    background = evaluation_report.evaluate_case(case, model, package, {"mask": mask}, Target(0), steps=1,
                                                 patch=(8, 8, 8)).report["regions"]["mask"]
    decision = background["shapley"]
    assert set(decision["values"]) == set(SEQUENCES) and decision["method"] == "exact"
    assert sum(decision["values"].values()) == pytest.approx(decision["margin_all"] - decision["margin_none"])
    assert sum(decision["shares"].values()) == pytest.approx(1.0)
    assert decision["lrp_positive_shares"] == pytest.approx(background["positive_shares"])
    assert -1.0 <= decision["spearman_lrp_vs_shapley"] <= 1.0
    folder = evaluation_report.write_evaluation(result, tmp_path / "python")
    assert sorted(p.name for p in folder.iterdir()) == ["ablation.csv", "evaluation.json", "evaluation_mask.png",
                                                        "perturbation_mask.csv"]
    with pytest.raises(FileExistsError):
        evaluation_report.write_evaluation(result, folder)
    evaluation_report.write_evaluation(result, folder, overwrite=True)
    # the command is a shell over the same calls: the same report, the same tables
    code = cli.main(["--quiet", "evaluate", "--model", data["model"], "--case", str(data["case"]), "--region", "mask",
                     "--mask", str(data["case"] / "mask.nrrd"), "--steps", "2", "--patch", "8", "8", "8",
                     "--output", str(tmp_path / "command")])
    assert code == 0, capfd.readouterr().err
    assert json.loads((tmp_path / "command" / "evaluation.json").read_text(encoding="utf-8")) == \
        json.loads((folder / "evaluation.json").read_text(encoding="utf-8"))
    for name in ("ablation.csv", "perturbation_mask.csv"):
        assert (tmp_path / "command" / name).read_text(encoding="utf-8") == (folder / name).read_text(encoding="utf-8")


def test_cohort_decision_shares_stand_beside_the_lrp_shares(data, tmp_path):
    """``shapley=True``: each case's rows get its regions' decision shares (summing to 1 per region,
    as the case's shapley.json says), the summary their mean per sequence, the chart a second panel."""
    import numpy as np

    output = tmp_path / "out"
    settings = cohort.CohortSettings(model=data["model"], output=str(output), regions=("predicted", "mask"), target=0,
                                     shapley=True)  # the untrained network calls every voxel 0: a decision
    specs = cohort.read_cohort_cases(data["cohort"], SEQUENCES)[:2]
    statuses = [cohort.run_case(spec, settings) for spec in specs]
    assert [s["status"] for s in statuses] == ["done", "done"], statuses
    for status in statuses:
        saved = json.loads((output / "cases" / status["case"] / "shapley.json").read_text(encoding="utf-8"))
        assert set(saved) == {"predicted", "mask"}
        for region, report in saved.items():
            rows = [r for r in status["rows"] if r["region"] == region]
            assert [r["shapley_share"] for r in rows] == pytest.approx([report["shares"][s] for s in SEQUENCES])
            assert sum(report["values"].values()) == pytest.approx(report["margin_all"] - report["margin_none"])
            assert sum(r["shapley_share"] for r in rows) == pytest.approx(1.0, abs=1e-9)
    summary = cohort.write_cohort_outputs(output, statuses, SEQUENCES, settings)
    for sequence in SEQUENCES:
        expected = np.mean([r["shapley_share"] for s in statuses for r in s["rows"]
                            if r["region"] == "predicted" and r["sequence"] == sequence])
        assert summary["summary"]["predicted"][sequence]["mean_shapley_share"] == pytest.approx(expected)
        assert summary["summary"]["predicted"][sequence]["n_shapley"] == 2
    table = _read_rows(output / "cohort_shares.csv")
    assert float(table[0]["shapley_share"]) == pytest.approx(statuses[0]["rows"][0]["shapley_share"])
    assert summary["settings"]["shapley"] is True
    assert (output / "cohort_shares_predicted.png").stat().st_size > 0
