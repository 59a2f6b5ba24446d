"""`lrpseg review` driven in a real browser: headless Chromium (Debian's /usr/bin/chromium) through
Playwright, against a fresh server process per test.

What the reviewer does is done with the mouse (Segment, the paint / erase tools, Explain,
Export); what the server holds is read from its status endpoint (``/lrpseg/status``, enabled by
``LRPSEG_REVIEW_DEBUG=1`` only). Every wait polls a condition with a deadline, never a fixed sleep:
on a loaded 2-core machine the page lags.

Without trame-slicer, Playwright or Chromium the browser tests skip with the reason; under CI
(``LRPSEG_REQUIRE_BROWSER=1``, set by .ci/run) they fail instead. ``LRPSEG_SCREENSHOTS=DIR`` also
saves the flow's screenshots there (the README's come from this test).
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 850}
REQUIRE_BROWSER = os.environ.get("LRPSEG_REQUIRE_BROWSER") == "1"
SCREENSHOTS = os.environ.get("LRPSEG_SCREENSHOTS")
#: Deadlines (s) of the slow steps on a loaded 2-core CPU: server start, Segment, Explain.
START_S, SEGMENT_S, EXPLAIN_S = 120, 240, 420


def _missing() -> str:
    reasons = [f"{module} is not installed (pip install -c constraints.txt -e '.[web]')"
               for module in ("trame_slicer", "playwright") if importlib.util.find_spec(module) is None]
    if not os.access(CHROMIUM, os.X_OK):
        reasons.append(f"no {CHROMIUM} (apt-get install chromium)")
    return "; ".join(reasons)


MISSING = _missing()


def require_browser() -> None:
    if MISSING:
        if REQUIRE_BROWSER:
            pytest.fail(f"LRPSEG_REQUIRE_BROWSER=1 but the browser tests cannot run: {MISSING}")
        pytest.skip(MISSING)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _lrpseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "LRPSegmentationLib.cli", *args]


def _poll(condition, what: str, timeout: float, interval: float = 0.25):
    """``condition()`` until it returns something truthy (returned), else fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class ReviewServer:
    """A ``lrpseg review`` process on a free local port, with its status endpoint."""

    def __init__(self, folder: Path, *args: str, token: str | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.token = token
        self.log_path = folder / "server.log"
        env = {**os.environ, "LRPSEG_REVIEW_DEBUG": "1"}
        self.export_root = folder / "exports"
        self.export_root.mkdir()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                _lrpseg("review", "--port", str(self.port), "--export-root", str(self.export_root), *args),
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
        self.worker_pid = None
        _poll(self._answers, "the review server to answer", START_S, interval=0.5)

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"the review server exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def status(self) -> dict:
        query = f"?secret={self.token}" if self.token else ""
        with urllib.request.urlopen(f"{self.url}lrpseg/status{query}", timeout=30) as response:
            status = json.load(response)
        self.worker_pid = status.get("worker_pid") or self.worker_pid
        return status

    def wait_for(self, condition, what: str, timeout: float) -> dict:
        return _poll(lambda: (lambda s: s if condition(s) else None)(self.status()), what, timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.worker_pid:  # the worker leaves when its stdin closes; make sure of it
            try:
                os.kill(int(self.worker_pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def review_server(tmp_path):
    require_browser()
    servers = []

    def start(*args: str, token: str | None = None) -> ReviewServer:
        server = ReviewServer(tmp_path, *args, token=token)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def page(tmp_path):
    """A page of a fresh headless Chromium (its own user-data-dir)."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport=VIEWPORT)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def _image(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


def _redness(image: np.ndarray, half: int = 20) -> float:
    """The fraction of red pixels (R - G > 60 of 255) in a square around the image's centre (the
    lesion, where the views are centred after Segment).

    A grey image has R = G; the lesion's outlines are thin (a few % of the square). Positive
    relevance, in the module's blue-white-red colour table, makes the overlay red there."""
    height, width, _ = image.shape
    patch = image[height // 2 - half:height // 2 + half, width // 2 - half:width // 2 + half]
    return float(np.mean(patch[..., 0] - patch[..., 1] > 60))


def _stroke(page, view, dx: float, dy: float = 0.0, steps: int = 12) -> None:
    """Drag the mouse across the view's centre from (-dx, -dy) to (+dx, +dy) pixels."""
    box = view.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - dx, cy - dy)
    page.mouse.down()
    for step in range(1, steps + 1):
        page.mouse.move(cx - dx + 2 * dx * step / steps, cy - dy + 2 * dy * step / steps)
    page.mouse.up()


def _table_texts(page) -> dict[str, str]:
    """sequence -> the "LRP share" cell's text of the shares table on the page."""
    rows = page.locator("#shares-table tr").all_inner_texts()
    cells = [re.split(r"\t", row.strip()) for row in rows[1:]]
    return {row[0]: row[1] for row in cells if len(row) > 1}


def _shown(shares: dict[str, float]) -> dict[str, str]:
    return {name: f"{100 * value:.1f} %" for name, value in shares.items()}


def _screenshot(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / name))


def test_segment_paint_explain_export_and_repaint_in_the_browser(review_server, page, tmp_path):
    server = review_server()
    page.goto(server.url)
    page.locator("#btn-segment").wait_for(timeout=START_S * 1000)

    # Segment: the worker predicts; the views are centred on the predicted lesion.
    page.click("#btn-segment")
    status = server.wait_for(lambda s: s["predicted_voxels"] > 0 and not s["busy"], "Segment", SEGMENT_S)
    assert status["counters"]["segment_requests"] == 1

    # Paint a short stroke inside the predicted tumour, with the mouse, in the axial view.
    page.click("#btn-paint")
    server.wait_for(lambda s: s["tool"] == "paint" and s["active_segment"], "the paint tool", 30)
    view = page.locator(".remote-controlled-area").first
    _stroke(page, view, dx=10)
    status = server.wait_for(lambda s: s["region_voxels"] > 0, "the painted region A", 60)
    painted = status["region_voxels"]
    assert status["region_inside_predicted"] >= 0.8 * painted, status  # the stroke is inside the tumour
    _screenshot(page, "review-1-painted.png")

    # Explain: the overlay appears where relevance is high (the lesion at the views' centre).
    page.click("#btn-navigate")
    before = _redness(_image(view.screenshot()))
    clicked = time.monotonic()
    page.click("#btn-explain")

    def overlay_shown() -> bool:
        return _redness(_image(view.screenshot())) > before + 0.08

    # Until the overlay shows or the server has published the explanation; then 30 s more at most.
    _poll(lambda: overlay_shown() or server.status()["explained"], "Explain", EXPLAIN_S, interval=0.2)
    _poll(overlay_shown, "the relevance overlay on screen", 30, interval=0.2)
    overlay_seconds = time.monotonic() - clicked
    status = server.wait_for(lambda s: s["explained"] and not s["busy"], "Explain", EXPLAIN_S)
    print(f"\nExplain click -> overlay on screen: {overlay_seconds:.1f} s "
          f"(worker {status['last_job_info'].get('seconds', float('nan')):.1f} s)")
    assert status["shares_source"] == "LRP pass" and status["n_used"] + 0 <= painted
    assert status["shown_sequence"] in status["sequences"]
    shares = status["shares"]
    assert abs(sum(shares.values()) - 1.0) < 1e-4
    _poll(lambda: _table_texts(page) == _shown(shares), "the shares table on the page", 60)
    assert page.locator("#legend").is_visible()
    _screenshot(page, "review-2-explained.png")

    # Export: the files of `lrpseg explain`, plus region A as mask.nrrd.
    page.click("#btn-export")
    status = server.wait_for(lambda s: s["last_export"] and not s["busy"], "Export", EXPLAIN_S)
    exported = Path(status["last_export"])
    summary = json.loads((exported / "summary.json").read_text(encoding="utf-8"))
    assert (exported / "mask.nrrd").is_file() and (exported / "mask" / "shares.csv").is_file()
    assert status["counters"]["forward_passes"] == 2  # the prediction, then the traced pass reused by Export

    # The shares shown equal `lrpseg explain --region mask` on that mask (the command line, as a process).
    files = status["case_files"]
    output = tmp_path / "cli"
    done = subprocess.run(_lrpseg("-q", "explain", "--model", status["model"], *sum(
        (["--sequence", f"{name}={files[name]}"] for name in status["sequences"]), []), "--region", "mask",
        "--mask", str(exported / "mask.nrrd"), "--output", str(output)), capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert done.returncode == 0, done.stderr
    cli = json.loads((output / "summary.json").read_text(encoding="utf-8"))["regions"]["mask"]
    assert cli["voxels_used"] == status["n_used"] == summary["regions"]["mask"]["voxels_used"]
    for name in status["sequences"]:
        assert abs(cli["shares"][name] - shares[name]) < 1e-4, (name, cli["shares"], shares)
        assert abs(summary["regions"]["mask"]["shares"][name] - shares[name]) < 1e-6

    # Repaint (erase part of A): the table follows from the composition map, with no new LRP pass.
    counters = status["counters"]
    page.click("#btn-erase")
    server.wait_for(lambda s: s["tool"] == "erase", "the erase tool", 30)
    _stroke(page, view, dx=0, dy=6)
    status = server.wait_for(lambda s: s["counters"]["share_updates"] > counters["share_updates"]
                             and 0 < s["region_voxels"] < painted, "the shares of the repainted region", 60)
    assert status["shares_source"] == "composition map"
    assert status["counters"]["explain_requests"] == counters["explain_requests"]  # no request to the worker
    assert status["counters"]["forward_passes"] == counters["forward_passes"]
    assert status["shares"] != shares and abs(sum(status["shares"].values()) - 1.0) < 1e-4
    _poll(lambda: _table_texts(page) == _shown(server.status()["shares"]), "the updated table on the page", 60)
    _screenshot(page, "review-3-repainted.png")

    # The region shortcuts write region A too, and the shares follow from the composition map.
    page.click("#btn-predicted")
    status = server.wait_for(lambda s: s["region_segment"] == "A: predicted tumour", "the Predicted shortcut", 60)
    assert status["region_voxels"] == status["predicted_voxels"]
    page.click("#btn-lesion")  # the crosshair sits at the predicted lesion's centre after Segment
    server.wait_for(lambda s: s["region_segment"] == "A: this tumour lesion" and s["region_voxels"] > 0,
                    "the This lesion shortcut", 60)
    page.click("#btn-errors")  # TP, FN and FP against the phantom's ground truth; region A becomes TP
    status = server.wait_for(lambda s: s["region_segment"] == "A: TP tumour", "the TP / FN / FP shortcut", 60)
    assert 0 < status["region_voxels"] <= status["predicted_voxels"]
    assert status["shares_source"] == "composition map" and abs(sum(status["shares"].values()) - 1.0) < 1e-4
    assert status["counters"]["explain_requests"] == counters["explain_requests"]


def test_token_is_checked_on_connection(review_server, page):
    token = "correct-horse-battery-staple-42"
    server = review_server("--token", token, token=token)
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(server.url + "?secret=not-the-token")
    # (waiting inside Playwright lets its sync API deliver the console events)
    _poll(lambda: page.wait_for_timeout(250) or any("Authentication failed" in text for text in console),
          "the refused connection", 60)
    assert page.locator("#btn-segment").count() == 0  # no page without the token
    page.goto(server.url + f"?secret={token}")
    page.locator("#btn-segment").wait_for(timeout=START_S * 1000)
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{server.url}lrpseg/status", timeout=30)  # no secret, no status


@pytest.mark.parametrize("host", ["0.0.0.0"])
def test_non_local_host_without_token_refuses_to_start(host, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "LRPSEG_REVIEW_TOKEN"}
    done = subprocess.run(_lrpseg("review", "--host", host, "--port", str(_free_port())), capture_output=True,
                          text=True, encoding="utf-8", timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--token" in lines[0], done.stderr
    done = subprocess.run(_lrpseg("review", "--host", host, "--token", "short"), capture_output=True, text=True, encoding="utf-8",
                          timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 2 and "too short" in done.stderr


def test_sequence_files_enter_the_scene_as_the_command_line_reads_them(mrml_scene, tmp_path):
    """``lrpseg review --sequence NAME=FILE ... --reference LABEL`` (no browser, no worker): the volumes
    in the scene are `pipeline.load_case`'s arrays on its grid, and the reference label is a segment."""
    from LRPSegmentationLib import pipeline
    from LRPSegmentationLib.models.package import load_package
    from LRPSegmentationLib.review.session import CaseSource, ReviewSession
    from LRPSegmentationLib.slicer import mrml, sample_data
    from LRPSegmentationLib.vocabulary import DEMO_MODEL

    files = sample_data.sample_files(tmp_path)
    sample_data.write_sample_case(tmp_path)
    names = sample_data.node_names()[:-1]
    sequences = [f"{name}={path}" for name, path in zip(names, files)]
    session = ReviewSession(DEMO_MODEL, CaseSource(sequences=sequences, reference_label=str(files[-1])))
    session.load_case()
    case = pipeline.load_case(dict(zip(names, files)), load_package(DEMO_MODEL), reference_label=files[-1])
    assert [node.GetName() for node in session.input_nodes] == case.sequences
    stacked = mrml.arrays_on_reference(session.input_nodes, session.reference_node, case.sequences)
    np.testing.assert_array_equal(stacked, case.images)
    np.testing.assert_allclose(mrml.ijk_to_ras_matrix(session.reference_node), case.geometry.ijk_to_ras(), atol=1e-6)
    truth = mrml.segment_mask(session.truth_node, session.truth_segment_id, session.reference_node)
    np.testing.assert_array_equal(truth, case.reference_label == 1)
    assert session.case_files == dict(item.split("=", 1) for item in sequences)
