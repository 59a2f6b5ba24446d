"""The README's main command, end to end: ``python -m LRPSegmentationLib.demo`` on the bundled model
(the phantom case, segmentation, exact explanations, every output file, the report)."""
import json

import numpy as np
import SimpleITK as sitk

from LRPSegmentationLib import demo, phantom


def test_the_demo_writes_every_output_and_refuses_to_overwrite(tmp_path, capsys):
    output = tmp_path / "demo"
    assert demo.main(["--output", str(output), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    for name in phantom.SEQUENCES:
        composition = sitk.ReadImage(str(output / f"composition_{name}.nrrd"))
        assert composition.GetSize() == (96, 96, 32)
    segmentation = sitk.GetArrayFromImage(sitk.ReadImage(str(output / "segmentation.nrrd")))
    assert segmentation.max() == 1
    for region in ("predicted", "tp", "fn", "fp"):
        shares = json.loads((output / region / "shares.json").read_text())
        assert set(phantom.SEQUENCES) <= set(json.dumps(shares).split('"'))
        for name in phantom.SEQUENCES:
            assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(output / region / f"relevance_{name}.nrrd")))).all()
        assert (output / region / "relevance.png").stat().st_size > 0
    assert (output / "shares.png").stat().st_size > 0
    assert (output / "slicer-scene" / "scene.mrml").is_file()
    report = (output / "report.txt").read_text()
    assert "tumour Dice" in report and "decision margin of the true positives" in report
    assert report.strip() in printed
    # A second run without --overwrite stops with a message and leaves the files as they were.
    before = (output / "report.txt").stat().st_mtime_ns
    assert demo.main(["--output", str(output), "--device", "cpu"]) == 2
    assert "exist" in capsys.readouterr().err
    assert (output / "report.txt").stat().st_mtime_ns == before
