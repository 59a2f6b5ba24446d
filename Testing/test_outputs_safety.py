"""Outputs are never lost nor half-written (issue #10): every command writes its output folder (or
file) under a hidden temporary sibling and renames it into place when complete; case names map to
safe folder names; cohort workers die with their main process; unwritable outputs are one-line
errors found before the computation where possible.

The behaviours that concern a process (exit status, kill -9) run ``lrpseg`` as a subprocess."""
import csv
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from LRPSegmentationLib import outputs
from test_cli import SEQUENCES, assert_one_line_error, data, run  # noqa: F401 — `data` is a fixture

CLI = [sys.executable, "-m", "LRPSegmentationLib.cli", "--quiet"]


def lrpseg(*argv, **options) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *[str(a) for a in argv]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, encoding="utf-8", **options)


def explain_args(data, output, *extra):
    case = data["case"]
    return ["explain", "--model", data["model"], "--case", case, "--region", "mask", "--mask", case / "mask.nrrd",
            "--device", "cpu", "--output", output, *extra]


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None, step: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process ended (status {process.returncode}) before {what}: {process.stderr.read()}")
        time.sleep(step)
    pytest.fail(f"timed out waiting for {what}")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cohort_csv(path: Path, data, names: dict[str, str]) -> Path:
    """A cohort CSV: case name → case folder of data["cohort"] (images relative to the CSV)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case"] + SEQUENCES + ["mask"])
        for name, folder in names.items():
            writer.writerow([name] + [str(data["cohort"] / folder / f"{s}.nrrd") for s in SEQUENCES]
                            + [str(data["cohort"] / folder / "mask.nrrd")])
    return path


# ------------------------------------------------------------------------------------------------
# 1. case names → safe, unique folder names
# ------------------------------------------------------------------------------------------------
def test_folder_name_refuses_names_that_are_not_one_folder():
    assert outputs.folder_name("case 1") == "case_1"
    assert outputs.folder_name("a/b") == "a_b"
    assert outputs.folder_name(".hidden") == "_hidden"  # hidden names are reserved for temporary folders
    for name in ("", ".", "..", "...", "x" * 300):
        with pytest.raises(ValueError, match="folder name"):
            outputs.folder_name(name)


def test_cohort_case_named_dotdot_cannot_delete_the_cohort(data, capfd, tmp_path):
    output = tmp_path / "cohort"
    base = ["cohort", "--model", data["model"], "--region", "mask", "--output", output, "--workers", "1"]
    finished_case = output / "cases" / "case-a"  # as a finished case looks (enough: nothing may touch it)
    finished_case.mkdir(parents=True)
    (finished_case / "done.json").write_text('{"case": "case-a", "rows": []}')
    (finished_case / "summary.json").write_text("{}")
    finished = snapshot(finished_case)
    for bad in ("..", "."):
        table = cohort_csv(tmp_path / "bad.csv", data, {"case-a": "case-a", bad: "case-b"})
        code, _, err = run(capfd, *base, "--cases", table, "--overwrite")
        assert snapshot(finished_case) == finished
        assert_one_line_error(code, err, "line 3", repr(bad), "folder name")
    # two names that become the same folder: an error naming both
    table = cohort_csv(tmp_path / "same.csv", data, {"case a": "case-a", "case_a": "case-b"})
    code, _, err = run(capfd, *base, "--cases", table, "--overwrite")
    assert_one_line_error(code, err, "'case a'", "'case_a'", "same output folder")
    assert snapshot(finished_case) == finished


# ------------------------------------------------------------------------------------------------
# 2./3. all-or-nothing output folders; --overwrite replaces the whole folder
# ------------------------------------------------------------------------------------------------
def test_kill_during_the_write_phase_keeps_the_old_complete_output(data, capfd, tmp_path):
    output = tmp_path / "explained"
    code, _, err = run(capfd, *explain_args(data, output))
    assert code == 0, err
    old = snapshot(output)
    first = f"composition_{SEQUENCES[0]}.nrrd"
    stamp = (output / first).stat().st_mtime_ns

    def new_map_written():  # wherever the command writes it: the write phase has begun
        return [p for p in tmp_path.rglob(first) if p.stat().st_mtime_ns != stamp]

    # another composite: every map differs from the first run's
    process = lrpseg(*explain_args(data, output, "--overwrite", "--composite", "epsilon"))
    try:
        wait_for(new_map_written, 120, "the write phase", process, step=0.002)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(30)
    assert process.returncode == -signal.SIGKILL, "the command ended before it could be killed while writing"
    assert snapshot(output) == old  # the old complete output, not a mixture
    # the next run removes the killed run's temporary folder (even one refused at once: a wrong --target)
    assert any(p.name.startswith(".explained.partial-") for p in tmp_path.iterdir())
    code, _, err = run(capfd, *explain_args(data, output, "--overwrite", "--target", "liver"))
    assert_one_line_error(code, err, "not a class of the model")
    assert [p.name for p in tmp_path.iterdir()] == ["explained"]
    assert snapshot(output) == old


def test_overwrite_replaces_the_whole_folder(data, capfd, tmp_path):
    """No region folder of an earlier run survives beside the new summary."""
    output = tmp_path / "explained"
    code, _, err = run(capfd, *explain_args(data, output))
    assert code == 0, err
    assert (output / "mask" / "shares.csv").is_file()
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(output / "segmentation.nrrd")))
    present = int(labels.flat[0])  # a class the network predicts: its region is not empty
    code, _, err = run(capfd, "explain", "--model", data["model"], "--case", data["case"], "--region", "predicted",
                       "--target", present, "--device", "cpu", "--output", output, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in output.iterdir() if p.is_dir()) == ["predicted"]
    assert [p.name for p in tmp_path.iterdir()] == ["explained"]


def test_overwrite_refuses_a_folder_that_holds_no_earlier_output(data, capfd, tmp_path):
    output = tmp_path / "mine"
    output.mkdir()
    (output / "notes.txt").write_text("someone's data")
    code, _, err = run(capfd, *explain_args(data, output, "--overwrite"))
    assert_one_line_error(code, err, "holds no earlier output")
    assert (output / "notes.txt").read_text(encoding="utf-8") == "someone's data"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]


def test_predict_replaces_its_file_atomically(data, capfd, tmp_path):
    output = tmp_path / "seg.nii.gz"
    code, _, err = run(capfd, "predict", "--model", data["model"], "--case", data["case"], "--output", output)
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]
    with outputs.atomic_file(output, overwrite=True) as temp:
        assert temp.parent == tmp_path and temp.name.startswith(".seg.partial-") and temp.name.endswith(".nii.gz")
        temp.write_bytes(b"half")
        assert sitk.ReadImage(str(output)).GetSize()  # still the complete old file
    assert output.read_bytes() == b"half"


def test_atomic_folder_rolls_back_and_cleans_leftovers(tmp_path):
    final = tmp_path / "out"
    with outputs.atomic_folder(final) as temp:
        (temp / "a.txt").write_text("1")
    assert (final / "a.txt").read_text(encoding="utf-8") == "1"
    with pytest.raises(RuntimeError):
        with outputs.atomic_folder(final, overwrite=True, markers=("a.txt",)) as temp:
            (temp / "b.txt").write_text("2")
            raise RuntimeError("computation failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (final / "a.txt").is_file()
    with pytest.raises(FileExistsError, match="already exists"):
        with outputs.atomic_folder(final):
            pass
    # the temporary folder of a process that no longer runs is removed; one of a running process is not
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, encoding="utf-8")
    host = outputs._HOST
    stale = tmp_path / f".out.partial-{host}-{int(dead.stdout)}"
    alive = tmp_path / f".out.partial-{host}-{os.getppid()}"
    stale.mkdir()
    alive.mkdir()
    with outputs.atomic_folder(final, overwrite=True, markers=("a.txt",)) as temp:
        (temp / "c.txt").write_text("3")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", alive.name])
    assert [p.name for p in final.iterdir()] == ["c.txt"]
    # killed between the two renames of a swap: the old complete folder is put back
    shutil.move(final, tmp_path / f".out.old-{host}-{int(dead.stdout)}")
    with outputs.atomic_folder(tmp_path / "other"):
        pass
    assert not final.exists()
    with pytest.raises(FileExistsError):
        with outputs.atomic_folder(final):
            pass
    assert [p.name for p in final.iterdir()] == ["c.txt"]


# ------------------------------------------------------------------------------------------------
# 4. cohort workers die with the main process
# ------------------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text(encoding="utf-8")
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended (nobody may reap it in a container)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cohort_workers_die_with_the_main_process(data, tmp_path):
    process = lrpseg("cohort", "--model", data["model"], "--cases", data["cohort"], "--region", "mask",
                     "--output", tmp_path / "cohort", "--workers", "1", "--device", "cpu")
    try:
        workers = wait_for(lambda: _children(process.pid), 60, "a worker process", process, step=0.05)
        time.sleep(1.5)  # the worker is past its start-up, loading the model or explaining a case
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(30)
    deadline = time.monotonic() + 10
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [w for w in workers if _running(w)]
    for worker in alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the cohort's worker outlived its main process"


# ------------------------------------------------------------------------------------------------
# 5. read-only output folder, full disk
# ------------------------------------------------------------------------------------------------
def _can_mount() -> bool:
    """Whether this machine lets an unprivileged process mount a tmpfs in its own namespaces."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs tmpfs /tmp"], capture_output=True)
    return probe.returncode == 0


def _lrpseg_on_tmpfs(mount: Path, options: str, *argv) -> tuple[subprocess.CompletedProcess, list[str]]:
    """lrpseg with a fresh tmpfs (mount options ``options``) at ``mount``, in private namespaces;
    also what the tmpfs holds afterwards."""
    command = (f"mount -t tmpfs -o {options} tmpfs {shlex.quote(str(mount))} || exit 99; "
               f"{shlex.join([*CLI, *[str(a) for a in argv]])}; status=$?; "
               f"echo '--- listing'; ls -A {shlex.quote(str(mount))}; exit $status")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode != 99, done.stderr
    return done, done.stdout.split("--- listing\n", 1)[1].split()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_mount(),
                    reason="needs `unshare -rm` to mount a read-only / full tmpfs (as root, chmod does not stop writes)")
def test_read_only_output_is_refused_before_computing(data, tmp_path):
    """A read-only file system under --output: the error comes before the computation, shown by an
    empty mask (an error the computation would report first otherwise)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    empty = sitk.ReadImage(str(data["case"] / "mask.nrrd")) * 0
    sitk.WriteImage(empty, str(tmp_path / "empty.nrrd"))
    done, left = _lrpseg_on_tmpfs(mount, "ro", "explain", "--model", data["model"], "--case", data["case"],
                                  "--mask", tmp_path / "empty.nrrd", "--device", "cpu", "--output", mount / "out")
    assert_one_line_error(done.returncode, done.stderr, "cannot write", str(mount / "out"), "Read-only file system")
    assert left == []
    done, left = _lrpseg_on_tmpfs(mount, "ro", "predict", "--model", data["model"], "--case", data["case"],
                                  "--output", mount / "seg.nrrd")
    assert_one_line_error(done.returncode, done.stderr, f"cannot write {mount / 'seg.nrrd'}: Read-only file system")


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_mount(),
                    reason="needs `unshare -rm` to mount a small tmpfs (a full disk)")
def test_full_disk_is_one_line_and_leaves_nothing(data, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done, left = _lrpseg_on_tmpfs(mount, "size=48k", *explain_args(data, mount / "out"))
    assert_one_line_error(done.returncode, done.stderr, "cannot write", str(mount / "out"),
                          "No space left on device")
    assert ".partial" not in done.stderr  # the error names the output, not the temporary folder
    assert left == []  # nothing half-written is left


# ------------------------------------------------------------------------------------------------
# 6. a cohort CSV row with more cells than the header
# ------------------------------------------------------------------------------------------------
def test_cohort_csv_row_with_extra_cells(data, capfd, tmp_path):
    table = tmp_path / "cases.csv"
    table.write_text("case," + ",".join(SEQUENCES) + "\n"
                     "a," + ",".join("x" * len(SEQUENCES)) + "\n"
                     "b," + ",".join("x" * len(SEQUENCES)) + ",extra\n")
    code, _, err = run(capfd, "cohort", "--model", data["model"], "--cases", table, "--output", tmp_path / "out")
    assert_one_line_error(code, err, "line 3", "8 cells", "header has 7")
    assert not (tmp_path / "out").exists()
