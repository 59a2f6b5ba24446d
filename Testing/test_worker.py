"""The computation process (LRPSegmentationLib.slicer.worker) through its client, with real processes.

The module's flow on real MRML nodes (slicer-core): prepare (MRML) -> a real worker process ->
publish (MRML). A tiny saved model package (6 sequences, 8x8x12) keeps each request fast; starting
a worker (interpreter + torch import) costs a few seconds, so tests that need no fresh process
share one client. "Mid-request" is made deterministic with the worker's ``wait_for_file`` option:
the worker says "waiting for ..." and blocks until the file exists (it never does here).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import fields

import numpy as np
import pytest

pytest.importorskip("torch")
slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from test_slicer_logic import case  # noqa: E402,F401 — a fixture: reference + 6 inputs + region A on MRML
from test_slicer_logic import SEQUENCES, make_model, make_package, subject_hierarchy_item_count  # noqa: E402

from LRPSegmentationLib.engine import Target  # noqa: E402
from LRPSegmentationLib.models.package import load_package  # noqa: E402
from LRPSegmentationLib.slicer import compute, jobs, logic, publish  # noqa: E402
from LRPSegmentationLib.slicer.worker import PROTOCOL, Worker  # noqa: E402
from LRPSegmentationLib.slicer.worker_client import WorkerClient  # noqa: E402

TIMEOUT = 120  # seconds for one request, worker start included (2 shared cores)


@pytest.fixture(scope="module")
def package_path(tmp_path_factory):
    return str(make_package(make_model()).save(tmp_path_factory.mktemp("models") / "tiny.lrpmodel"))


@pytest.fixture(scope="module")
def client():
    """One worker client shared by the tests that need no fresh process."""
    shared = WorkerClient()
    yield shared
    shared.shutdown()
    assert not shared.running


def finished(job):
    """``job.result()`` once done (fails the test after TIMEOUT)."""
    assert job.wait(TIMEOUT), f"still running: {job.message}"
    return job.result()


def wait_until_waiting(job) -> None:
    """Poll like the module's QTimer until the worker reports it is blocked in ``wait_for_file``."""
    deadline = time.monotonic() + TIMEOUT
    while not job.message.startswith("waiting for"):
        assert not job.done, f"the job ended before it blocked: {job.result()}"
        assert time.monotonic() < deadline, f"the worker never blocked: {job.message}"


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def explain_request(case, package, segment_id=None, **options):
    return logic.prepare_explain(case.inputs, case.reference, case.segmentation, segment_id or case.segment_id,
                                 package, Target(1), options.pop("composite", None), "cpu", **options)


def assert_same_result(got: compute.ExplainResult, expected: compute.ExplainResult) -> None:
    """The worker's result equals the in-process one: integer and bool arrays exactly, float32 maps
    to float32 rounding (two processes may run torch with different thread counts, which sums in
    another order: observed differences ≤ 7.5e-8 on shares of ~0.17)."""
    for field in fields(compute.ExplainResult):
        a, b = getattr(got, field.name), getattr(expected, field.name)
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype, field.name
            if b.dtype.kind == "f":
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=field.name)  # NaN equals NaN
            else:
                np.testing.assert_array_equal(a, b, err_msg=field.name)
        elif isinstance(b, (float, dict)):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-6), field.name
        else:
            assert a == b, field.name


def scene_size(scene) -> tuple[int, int]:
    return scene.GetNumberOfNodes(), subject_hierarchy_item_count(scene)


# ------------------------------------------------------------------------------------------------


def test_segment_and_explain_in_the_worker_publish_the_in_process_arrays(case, client, package_path):
    package = load_package(package_path)
    inputs = logic.prepare_inputs(case.inputs, case.reference, package)
    labels = finished(client.segment(inputs, package_path, "cpu").start())
    np.testing.assert_array_equal(labels, compute.compute_labels(compute.load_model(package), inputs, package, "cpu"))
    assert labels.dtype == np.uint8
    node = publish.publish_segmentation(case.scene, labels, case.reference, package)
    assert node.GetSegmentation().GetNumberOfSegments() >= 1

    request = explain_request(case, package, cross_check=True)
    job = client.explain(request, package_path).start()
    result = finished(job)
    assert job.fraction == 1.0
    assert_same_result(result, compute.compute_explanation(request, package))
    outputs = publish.publish_explanation(case.scene, result, case.reference)
    assert len(outputs.relevance_nodes) == len(SEQUENCES)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(outputs.relevance_nodes[0]), result.relevance[0])
    np.testing.assert_allclose(outputs.shares, result.shares)
    assert publish.find_explanation(case.scene).table_node is outputs.table_node
    assert not list(client.log_path.parent.glob("*.npy")), "array files of finished requests are removed"


def test_the_worker_returns_the_decision_shares(case, client, package_path):
    """``shapley`` in the explain request: the decision shares (exact Shapley values) come back as
    `compute.ExplainResult` fields, equal to the in-process ones; without a decision in region A
    (no voxel predicted as the target) they are None, not an error."""
    package = load_package(package_path)
    request = logic.prepare_explain(case.inputs, case.reference, case.segmentation, case.segment_id, package,
                                    Target(0), None, "cpu")  # the untrained net calls every voxel 0
    request.shapley = True
    result = finished(client.explain(request, package_path).start())
    assert_same_result(result, compute.compute_explanation(request, package))
    assert result.decision_shares.shape == (len(SEQUENCES),) and result.margin_all > result.margin_none
    assert result.decision_values.sum() == pytest.approx(result.margin_all - result.margin_none, rel=1e-9)
    assert result.margin_retained is None  # the decision shares alone, without the cross-check
    undecided = explain_request(case, package)  # Target(1): no voxel of region A is called 1
    undecided.shapley = True
    undecided = finished(client.explain(undecided, package_path).start())
    assert undecided.decision_shares is None and undecided.without_decision is None


def test_two_regions_of_one_case_share_the_forward_pass(case, client, package_path):
    package = load_package(package_path)
    other = np.zeros(case.mask.shape, np.uint8)
    other[1:4, 4:8, 0:6] = 1
    segment_b = case.segmentation.GetSegmentation().AddEmptySegment("B", "region B")
    slicer.util.updateSegmentBinaryLabelmapFromArray(other, case.segmentation, segment_b, case.reference)
    # A composite no other test uses: the first explain must trace the case.
    first, second = (explain_request(case, package, segment, composite="epsilon")
                     for segment in (case.segment_id, segment_b))

    job = client.explain(first, package_path).start()
    assert_same_result(finished(job), compute.compute_explanation(first, package))
    assert (job.info["forward_passes"], job.info["forward_reused"]) == (1, False)

    job = client.explain(second, package_path).start()
    assert_same_result(finished(job), compute.compute_explanation(second, package))
    assert (job.info["forward_passes"], job.info["forward_reused"]) == (0, True)


def test_the_worker_refuses_a_case_or_a_model_it_does_not_hold(client, package_path, tmp_path):
    assert finished(client.request("load_model", path=package_path).start())["reused"] in (True, False)
    with pytest.raises(jobs.WorkerError, match="does not hold case 'no-such-case'.*send set_case first") as error:
        finished(client.request("segment", case_id="no-such-case", model=package_path, device="cpu").start())
    assert error.value.kind == "unknown_case"

    other = str(make_package(make_model(seed=1)).save(tmp_path / "other.lrpmodel"))
    with pytest.raises(jobs.WorkerError, match="has not loaded the model .*other.lrpmodel") as error:
        finished(client.request("explain", case_id="no-such-case", model=other, device="cpu").start())
    assert error.value.kind == "unknown_model"


def test_the_handler_refuses_malformed_requests(tmp_path):
    """The transport-free core: request dict -> response dict (no process, no torch needed)."""
    worker = Worker(tmp_path)
    old = worker.handle({"protocol": 0, "id": "a", "type": "hello"})
    assert (old["type"], old["kind"], old["id"]) == ("error", "bad_request", "a")
    assert "protocol 1" in old["message"]
    unknown = worker.handle({"protocol": PROTOCOL, "id": "b", "type": "train"})
    assert unknown["kind"] == "bad_request" and "unknown request type 'train'" in unknown["message"]
    missing = worker.handle({"protocol": PROTOCOL, "id": "c", "type": "set_case", "case_id": "x"})
    assert missing["kind"] == "bad_request" and "needs the field 'sequences'" in missing["message"]
    outside = worker.handle({"protocol": PROTOCOL, "id": "d", "type": "set_case", "case_id": "x", "sequences": ["T2"],
                             "inputs": {"npy": str(tmp_path.parent / "elsewhere.npy")}})
    assert outside["kind"] == "bad_request" and "session folder" in outside["message"]


def test_cancel_mid_request_kills_the_worker_and_the_next_request_restarts_it(case, package_path, tmp_path):
    package = load_package(package_path)
    request = explain_request(case, package)
    before = scene_size(case.scene)
    client = WorkerClient()
    try:
        job = client.explain(request, package_path, options={"wait_for_file": str(tmp_path / "never")}).start()
        wait_until_waiting(job)
        pid = client.pid
        job.cancel()
        assert job.done and job.cancelled()
        with pytest.raises(jobs.Cancelled):  # the module's finish step: publish never runs
            publish.publish_explanation(case.scene, job.result(), case.reference, cancel=job.cancelled)
        assert scene_size(case.scene) == before
        assert not client.running and process_gone(pid)

        result = finished(client.explain(request, package_path).start())
        assert client.pid not in (None, pid)
        assert_same_result(result, compute.compute_explanation(request, package))
    finally:
        client.shutdown()


@pytest.mark.skipif(os.name != "posix", reason="kill -9 is POSIX")
def test_a_killed_worker_gives_a_clear_error_and_the_next_request_succeeds(case, package_path, tmp_path):
    package = load_package(package_path)
    inputs = logic.prepare_inputs(case.inputs, case.reference, package)
    client = WorkerClient()
    try:
        job = client.segment(inputs, package_path, "cpu", options={"wait_for_file": str(tmp_path / "never")}).start()
        wait_until_waiting(job)
        os.kill(client.pid, signal.SIGKILL)
        with pytest.raises(jobs.WorkerError, match=r"^the computation process stopped unexpectedly \(exit code -9\); "
                                                   r"Slicer and the scene are intact; press the button again to "
                                                   r"restart it") as error:
            finished(job)
        assert error.value.kind == "crashed" and not job.cancelled()

        labels = finished(client.segment(inputs, package_path, "cpu").start())
        np.testing.assert_array_equal(labels, compute.compute_labels(compute.load_model(package), inputs, package,
                                                                     "cpu"))
    finally:
        client.shutdown()


def test_the_worker_never_imports_slicer_vtk_or_qt(package_path, tmp_path):
    """The handler runs a whole segment + explain; the process must not have loaded the MRML side."""
    script = f"""
import sys, numpy as np
from LRPSegmentationLib.slicer.worker import PROTOCOL, Worker
worker = Worker({str(tmp_path)!r})
np.save({str(tmp_path / "x.npy")!r}, np.random.default_rng(0).normal(size=(6, 8, 8, 12)).astype(np.float32))
region = np.zeros((8, 8, 12), bool); region[2:6, 2:6, 2:8] = True
np.save({str(tmp_path / "r.npy")!r}, region)
for request in [dict(type="load_model", path={package_path!r}),
                dict(type="set_case", case_id="c", inputs={{"npy": {str(tmp_path / "x.npy")!r}}}, sequences=list("abcdef")),
                dict(type="segment", case_id="c", model={package_path!r}, device="cpu"),
                dict(type="explain", case_id="c", model={package_path!r}, device="cpu", target=1,
                     region={{"npy": {str(tmp_path / "r.npy")!r}}})]:
    answer = worker.handle(dict(protocol=PROTOCOL, id="i", **request))
    assert answer["type"] == "result", answer
print(sorted(m for m in ("slicer", "vtk", "vtkmodules", "qt", "ctk") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_worker_that_cannot_start_ends_the_job_with_a_clear_error(tmp_path):
    job = WorkerClient(python=str(tmp_path / "no-python")).segment(
        compute.InputStack(np.zeros((1, 2, 2, 2), np.float32), ["T2"], (2, 2, 2)), str(tmp_path), "cpu").start()
    assert job.done
    with pytest.raises(jobs.WorkerError, match="could not start the computation process") as error:
        job.result()
    assert error.value.kind == "start"


def test_inside_slicer_the_worker_runs_in_pythonslicer_never_in_slicer_itself(tmp_path, monkeypatch):
    """Inside 3D Slicer sys.executable is the application: the worker needs PythonSlicer (on PATH, as
    Slicer sets it, else beside the application)."""
    from LRPSegmentationLib.slicer.worker_client import default_python

    assert default_python() == sys.executable  # here: a plain interpreter
    application = tmp_path / "bin" / "SlicerApp-real"
    application.parent.mkdir()
    application.write_text("")
    monkeypatch.setattr(sys, "executable", str(application))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(jobs.WorkerError, match="could not find PythonSlicer") as error:
        default_python()
    assert error.value.kind == "start"
    beside = application.with_name("PythonSlicer")
    beside.write_text("")
    assert default_python() == str(beside)
    on_path = tmp_path / "path" / "PythonSlicer"
    on_path.parent.mkdir()
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert default_python() == str(on_path)
