"""The README's main command, run the way the README states it: ``make demo`` as a process (the
phantom case, segmentation, exact explanations, every output file, the report, the Slicer scene),
checking its exit status. An in-process call cannot see a crash at interpreter exit (the demo used
to write every output and then die with a segmentation fault, exit status 139)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LRPSegmentationLib import phantom

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
STAMP = VENV / ".installed"


def make_demo(output: Path) -> subprocess.CompletedProcess:
    """``make demo`` in the repository with this test run's venv; ``-o`` keeps make from reinstalling it."""
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "-o", str(STAMP), "demo",
                           f"VENV={VENV}", f"DEMO_OUTPUT={output}"],
                          capture_output=True, text=True, encoding="utf-8", timeout=900)


@pytest.mark.skipif(not STAMP.exists(), reason="run through `make test` (the venv that make builds)")
def test_make_demo_exits_0_writes_every_output_and_refuses_to_overwrite(tmp_path):
    output = tmp_path / "demo"
    done = make_demo(output)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Segmentation fault" not in done.stderr
    for name in phantom.SEQUENCES:
        composition = sitk.ReadImage(str(output / f"composition_{name}.nrrd"))
        assert composition.GetSize() == (96, 96, 32)
    segmentation = sitk.GetArrayFromImage(sitk.ReadImage(str(output / "segmentation.nrrd")))
    assert segmentation.max() == 1
    for region in ("predicted", "tp", "fn", "fp"):
        shares = json.loads((output / region / "shares.json").read_text(encoding="utf-8"))
        assert set(phantom.SEQUENCES) <= set(json.dumps(shares).split('"'))
        for name in phantom.SEQUENCES:
            relevance = sitk.GetArrayFromImage(sitk.ReadImage(str(output / region / f"relevance_{name}.nrrd")))
            assert np.isfinite(relevance).all()
        assert (output / region / "relevance.png").stat().st_size > 0
    assert (output / "shares.png").stat().st_size > 0
    assert (output / "slicer-scene" / "scene.mrml").is_file()
    report = (output / "report.txt").read_text(encoding="utf-8")
    assert "tumour Dice" in report and "decision margin of the true positives" in report
    assert report.strip() in done.stdout
    # A second run without --overwrite stops with a one-line message and leaves the files as they were.
    before = (output / "report.txt").stat().st_mtime_ns
    again = make_demo(output)
    assert again.returncode != 0
    assert "already exists" in again.stderr and "Traceback" not in again.stderr
    assert (output / "report.txt").stat().st_mtime_ns == before


def test_a_process_that_wrote_a_slicer_scene_exits_0(tmp_path):
    """The crash's mechanism, directly and cheaper than the demo: explain a small phantom case, write
    its Slicer scene, and leave the headless application for interpreter exit to tear down (before
    the fix: segmentation fault in the colour logic's destructor, every time)."""
    script = tmp_path / "scene.py"
    script.write_text(
        "import sys\n"
        "from LRPSegmentationLib import demo, pipeline\n"
        "from LRPSegmentationLib.models.package import load_package\n"
        "from LRPSegmentationLib.slicer.scene import save_slicer_scene\n"
        "package = load_package(demo.DEMO_MODEL)\n"
        "result = pipeline.explain_case(demo.phantom_case(9001, (16, 48, 48)), package.build(), package, device='cpu')\n"
        "print(save_slicer_scene(result, sys.argv[1], package))\n")
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], capture_output=True, text=True, encoding="utf-8",
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("scene.mrml")
    assert "WARN" not in done.stderr and "ERROR" not in done.stderr, done.stderr[-2000:]
