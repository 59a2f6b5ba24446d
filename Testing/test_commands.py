"""Every command as the user runs it: the installed ``lrpseg`` console script as a process, checking
its exit status (0 on success, 2 with one ``error:`` line on bad input) and that it wrote its output.
An in-process call cannot see a crash at interpreter exit; ``make demo`` is in test_demo.py."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from LRPSegmentationLib import phantom
from test_cli import SEQUENCES, data  # noqa: F401 — `data` is a fixture (tiny model, cases on disk)

LRPSEG = Path(sys.executable).with_name("lrpseg")
pytestmark = pytest.mark.skipif(not LRPSEG.exists(), reason="the lrpseg console script is not installed")


def lrpseg(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([str(LRPSEG), "--quiet", *[str(a) for a in argv]], capture_output=True, text=True, encoding="utf-8",
                          timeout=900)


def assert_ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Segmentation fault" not in done.stderr


def assert_refused(done: subprocess.CompletedProcess, phrase: str) -> None:
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and phrase in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def test_predict_explain_evaluate_as_processes(data, tmp_path):
    case, model = data["case"], data["model"]
    done = lrpseg("predict", "--model", model, "--case", case, "--device", "cpu", "--output", tmp_path / "seg.nrrd")
    assert_ok(done)
    assert sitk.ReadImage(str(tmp_path / "seg.nrrd")).GetSize() == sitk.ReadImage(str(case / "T2.nrrd")).GetSize()

    done = lrpseg("explain", "--model", model, "--case", case, "--region", "mask", "tp", "--mask", case / "mask.nrrd",
                  "--device", "cpu", "--output", tmp_path / "explain")
    assert_ok(done)
    shares = json.loads((tmp_path / "explain" / "mask" / "shares.json").read_text(encoding="utf-8"))
    assert {row["sequence"] for row in shares["shares"]} == set(SEQUENCES)

    done = lrpseg("evaluate", "--model", model, "--case", case, "--region", "mask", "--mask", case / "mask.nrrd",
                  "--steps", "2", "--patch", "8", "8", "8", "--device", "cpu", "--output", tmp_path / "evaluate")
    assert_ok(done)
    assert "mask" in json.loads((tmp_path / "evaluate" / "evaluation.json").read_text(encoding="utf-8"))["regions"]

    # bad input: one line, exit status 2, nothing written
    done = lrpseg("explain", "--model", model, "--case", case, "--region", "mask", "--mask", case / "mask.nrrd",
                  "--device", "gpu", "--output", tmp_path / "bad")
    assert_refused(done, "gpu")
    assert not (tmp_path / "bad").exists()


def test_cohort_as_a_process(data, tmp_path):
    done = lrpseg("cohort", "--model", data["model"], "--cases", data["cohort"], "--region", "mask",
                  "--target", "0", "--shapley", "--device", "cpu", "--output", tmp_path / "cohort")
    # case-c lacks its T2 image: reported, the others finish, exit status 1
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "case-c" in done.stderr + done.stdout
    for name in ("case-a", "case-b"):
        assert (tmp_path / "cohort" / "cases" / name / "done.json").is_file()
    assert (tmp_path / "cohort" / "cohort_shares.csv").is_file()
    summary = json.loads((tmp_path / "cohort" / "cohort_summary.json").read_text(encoding="utf-8"))
    assert "mean_shapley_share" in json.dumps(summary)  # --shapley reached the cohort


def test_lrpseg_demo_as_a_process(tmp_path):
    """The demo through the console script (its scene export is what crashed at exit)."""
    # --no-shapley: the decision shares' 64 passes are covered by test_demo.py (make demo); this
    # test is about the console script's exit.
    done = lrpseg("demo", "--output", tmp_path / "demo", "--device", "cpu", "--no-shapley")
    assert_ok(done)
    assert (tmp_path / "demo" / "slicer-scene" / "scene.mrml").is_file()
    for name in phantom.SEQUENCES:
        assert (tmp_path / "demo" / "predicted" / f"relevance_{name}.nrrd").is_file()
