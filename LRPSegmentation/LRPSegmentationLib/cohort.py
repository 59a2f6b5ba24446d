"""Many cases (``lrpseg cohort`` as a library): every case explained into its own folder by a pool
of local processes or a Dask cluster, resumable, then one table of shares, a summary per region
mode and the cohort bar chart.

    result = run_cohort("cases.csv", "tumour.lrpmodel", "out/cohort", regions=("tp", "fn"), workers=4)
    result.failed            # the statuses of the cases that failed (the others are done or skipped)

Layout of ``output``:

- ``cases/<case>/``: the case's `pipeline.write_case_files` outputs and ``done.json`` (written
  last; a case with it is skipped by the next run). A case folder appears only when complete
  (`outputs.atomic_folder`).
- ``cohort.json``: the settings that decide the results; a rerun with other settings is refused.
- ``cohort_shares.csv`` (one row per case, region and sequence), ``cohort_status.csv``,
  ``cohort_summary.csv``/``.json`` (per region mode and sequence: mean, std, median, min, max,
  mean rank) and ``cohort_shares.png`` (``cohort_shares_<mode>.png`` with several region modes).
- With ``shapley=True`` every case also gets its regions' decision shares (exact Shapley values,
  ``cases/<case>/shapley.json``; 2^C more forward passes per case): a ``shapley_share`` column
  beside each LRP share, ``mean_shapley_share`` in the summary, and a second chart panel with
  them per patient.

One failing case never stops the others: `run_case`, the function every executor runs, returns
a status instead of raising. It is a module-level function over picklable `CaseSpec` and
`CohortSettings`, so local processes and Dask workers import and run the same code.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .inputs import (MASK_STEMS, REFERENCE_LABEL_STEMS, REGION_HINTS, USER_ERRORS, UserError, find_optional_file,
                     load_model, one_line, parse_sequence_args, read_mask, resolve_target)

#: Marker written last into a finished case folder.
DONE_MARKER = "done.json"
#: The settings of the cohort run in an output folder.
COHORT_MANIFEST = "cohort.json"
EXECUTORS = ("local", "dask")

#: A case's status, as `run_case` returns it: {case, status ("done", "skipped", "failed"),
#: message, rows (its rows of the cohort table), seconds, ...}.
Status = dict[str, Any]


@dataclass(frozen=True)
class CaseSpec:
    """One cohort case: a case folder, or sequence name → path (absolute paths)."""

    name: str
    folder: str | None = None
    sequences: dict[str, str] | None = None
    reference_label: str | None = None
    mask: str | None = None


@dataclass(frozen=True)
class CohortSettings:
    """What every case of a cohort run is computed with (picklable; shipped to the workers)."""

    model: str
    output: str
    regions: tuple[str, ...] = ("predicted",)
    target: int | None = None
    contrast: bool = False
    composite: str | None = None
    device: str | None = None
    overwrite: bool = False
    threads: int | None = None
    shapley: bool = False

    def manifest(self) -> dict[str, Any]:
        """The settings that decide the results (a rerun must use the same)."""
        return {"model": self.model, "regions": list(self.regions), "target": self.target,
                "contrast": self.contrast, "composite": self.composite, "shapley": self.shapley}


@dataclass
class CohortResult:
    """What `run_cohort` did.

    Attributes:
        output: the output folder.
        statuses: one `Status` per case, in the order of the cases.
        summary: the content of ``cohort_summary.json`` (settings, sequences, cases, the summary
            per region mode and sequence, chart file names).
    """

    output: Path
    statuses: list[Status]
    summary: dict[str, Any]

    def with_status(self, status: str) -> list[Status]:
        return [s for s in self.statuses if s["status"] == status]

    @property
    def done(self) -> list[Status]:
        return self.with_status("done")

    @property
    def skipped(self) -> list[Status]:
        """Cases finished by an earlier run."""
        return self.with_status("skipped")

    @property
    def failed(self) -> list[Status]:
        return self.with_status("failed")


# --------------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------------
def read_cohort_cases(source: str | os.PathLike, sequences: Sequence[str]) -> list[CaseSpec]:
    """Cases from a CSV (columns ``case``, one per sequence name, optional ``reference_label`` and
    ``mask``; relative paths are relative to the CSV's folder) or a folder of case folders (each
    may hold ``reference_label.*`` and ``mask.*``). Case names are checked to make folder names.

    Args:
        sequences: the model package's sequence names (CSV columns compare like sequence names).
    """
    source = Path(source)
    if not source.exists():
        raise UserError(f"--cases {source} does not exist")
    if source.is_dir():
        return _cases_of_folder(source)
    columns, rows = _read_csv(source)
    column_of = _csv_columns(source, columns, sequences)
    if not rows:
        raise UserError(f"{source} lists no cases")
    base = source.resolve().parent

    def path(value: str) -> str | None:
        return str((base / value).resolve()) if value else None

    from .outputs import folder_name

    specs, seen = [], set()
    for number, row in rows:
        name = row[column_of["case"]]
        if not name:
            raise UserError(f"{source}, line {number}: the case name is empty")
        try:
            folder_name(name)  # its output folder: OUTPUT/cases/<name>
        except ValueError as error:
            raise UserError(f"{source}, line {number}: case {one_line(error)}") from None
        if name in seen:
            raise UserError(f"{source}: case {name!r} is listed more than once")
        seen.add(name)
        specs.append(CaseSpec(name=name, sequences={s: path(row[column_of[s]]) or "" for s in sequences},
                              reference_label=path(row.get(column_of.get("reference_label", ""), "")),
                              mask=path(row.get(column_of.get("mask", ""), ""))))
    return specs


def _cases_of_folder(source: Path) -> list[CaseSpec]:
    """One case per subfolder (its name is the case's)."""
    from .imaging import IMAGE_EXTENSIONS

    subfolders = [p for p in sorted(source.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not subfolders:
        images = [p.name for p in source.iterdir() if p.name.lower().endswith(IMAGE_EXTENSIONS)]
        hint = " (it holds images: for a single case use `lrpseg explain --case`)" if images else ""
        raise UserError(f"{source} holds no case folders{hint}")
    return [CaseSpec(name=folder.name, folder=str(folder.resolve()),
                     reference_label=_optional(find_optional_file(folder, REFERENCE_LABEL_STEMS)),
                     mask=_optional(find_optional_file(folder, MASK_STEMS)))
            for folder in subfolders]


def _optional(path: Path | None) -> str | None:
    return str(path.resolve()) if path is not None else None


def _read_csv(source: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and the rows (line number, stripped cells by column) of a cohort CSV."""
    with open(source, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows: list[tuple[int, dict[str, str]]] = []
        for row in reader:
            if None in row:  # more cells than the header: DictReader files the rest under None
                raise UserError(f"{source}, line {reader.line_num}: {len(columns) + len(row[None])} cells, the "
                                f"header has {len(columns)}; remove the extra cells (a path with a comma needs "
                                "quotes)")
            rows.append((reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items()}))
    return columns, rows


def _csv_columns(source: Path, columns: Sequence[str], sequences: Sequence[str]) -> dict[str, str]:
    """"case", each sequence name, "reference_label" and "mask" → its column in the CSV."""
    from .imaging import sequence_key  # columns match sequences as case files do

    by_key = {sequence_key(s): s for s in sequences}
    column_of: dict[str, str] = {}
    unknown = []
    for column in columns:
        key = sequence_key(column)
        if key in ("case", "reference_label", "mask"):
            column_of[key] = column
        elif key == "label":
            column_of["reference_label"] = column
        elif key in by_key:
            column_of[by_key[key]] = column
        elif column:
            unknown.append(column)
    missing = [s for s in sequences if s not in column_of]
    if "case" not in column_of or missing or unknown:
        problems = (["no 'case' column"] if "case" not in column_of else []) + \
                   ([f"no column for sequence(s) {missing}"] if missing else []) + \
                   ([f"unknown column(s) {unknown}"] if unknown else [])
        raise UserError(f"{source}: {'; '.join(problems)}; expected columns: case, {', '.join(sequences)}, "
                        "and optionally reference_label, mask")
    return column_of


# --------------------------------------------------------------------------------------------
# The cohort run
# --------------------------------------------------------------------------------------------
def run_cohort(cases: str | os.PathLike | Sequence[CaseSpec], model: str | os.PathLike, output: str | os.PathLike,
               *, regions: Sequence[str] = ("predicted",), target: int | str | None = None, contrast: bool = False,
               composite: str | None = None, device: str | None = None, overwrite: bool = False,
               threads: int | None = None, executor: str = "local", workers: int = 1, scheduler: str | None = None,
               progress: Callable[[Status], None] | None = None,
               on_start: Callable[[int, int], None] | None = None, shapley: bool = False) -> CohortResult:
    """Explain every case into ``output/cases/<case>/``, then write the cohort tables and charts.

    Resumable: finished cases (``done.json``) are skipped unless ``overwrite``; a rerun into the
    same folder must use the same settings (model, regions, target, contrast, composite). A
    failing case is reported in its status and the others go on.

    Args:
        cases: a cases CSV or a folder of case folders (`read_cohort_cases`), or the specs.
        model: the model package (each worker loads it once).
        regions: region modes explained in every case (``predicted``, ``tp``, ``fn``, ``fp``,
            ``lesions``, ``mask``); an empty region is a note in the case's status, not a failure.
        target: class index or name; default: the last class.
        threads: torch threads per case; default: CPU cores / workers for the local executor.
        executor: ``local`` (a pool of spawned processes that end with this one) or ``dask``.
        workers: local processes, or workers of the local Dask cluster started without ``scheduler``.
        scheduler: a Dask scheduler address, e.g. ``tcp://host:8786`` (workers must see the same paths).
        progress: called with each case's `Status` once known: first the cases finished by an
            earlier run, then each case as it finishes.
        on_start: called with (cases to compute, cases already done) before the computation.
        shapley: also each region's decision shares (exact Shapley values; 2^C more forward passes
            per case, 64 for six sequences) beside the LRP shares in every table and chart.

    Raises:
        UserError: unusable settings, cases or output folder, found before any case is computed
            (messages name the ``lrpseg cohort`` options).
    """
    output = Path(output).resolve()
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; give a folder")
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if scheduler and executor != "dask":
        raise UserError("--scheduler is used with --executor dask")
    package, _ = load_model(model, build=False)  # the workers build the network
    threads = threads or (max(1, (os.cpu_count() or 1) // workers) if executor == "local" else None)
    settings = CohortSettings(model=str(Path(model).resolve()), output=str(output),
                              regions=tuple(dict.fromkeys(regions)),
                              target=resolve_target(None if target is None else str(target), package.class_names),
                              contrast=contrast, composite=composite, device=device, overwrite=overwrite,
                              threads=threads, shapley=shapley)
    specs = list(cases) if not isinstance(cases, (str, os.PathLike)) else read_cohort_cases(cases, package.sequences)
    _check_folder_names(specs, settings)
    from .outputs import writing

    with writing(output):  # an unwritable output folder fails here, before any case is computed
        output.mkdir(parents=True, exist_ok=True)
        _check_manifest(output, settings)
        (output / "cases").mkdir(exist_ok=True)

    statuses: dict[str, Status] = {}

    def report(status: Status) -> None:
        statuses[status["case"]] = status
        if progress is not None:
            progress(status)

    pending = []
    for spec in specs:  # finished cases are skipped here, without starting a worker
        done = None if settings.overwrite else _read_done(case_folder(settings, spec.name))
        if done is not None:
            report({"case": spec.name, "status": "skipped", "message": "already done",
                    "rows": done.get("rows", []), "seconds": round(float(done.get("seconds", 0.0)), 3)})
        else:
            pending.append(spec)
    if on_start is not None:
        on_start(len(pending), len(specs) - len(pending))
    if pending and executor == "dask":
        _run_dask(pending, settings, workers, scheduler, report)
    elif pending:
        _run_local(pending, settings, workers, report)
    ordered = [statuses[s.name] for s in specs if s.name in statuses]
    summary = write_cohort_outputs(output, ordered, package.sequences, settings)
    return CohortResult(output, ordered, summary)


def case_folder(settings: CohortSettings, name: str) -> Path:
    """``OUTPUT/cases/<folder name>``; ValueError for a name that cannot name a folder ("..", "")."""
    from .outputs import folder_name

    return Path(settings.output) / "cases" / folder_name(name)


def _check_folder_names(specs: Sequence[CaseSpec], settings: CohortSettings) -> None:
    """Refuse two cases that would share an output folder."""
    folders: dict[str, str] = {}
    for spec in specs:
        folder = case_folder(settings, spec.name)
        # case-insensitively: one folder on macOS and Windows file systems
        other = folders.setdefault(folder.name.casefold(), spec.name)
        if other != spec.name:
            raise UserError(f"cases {other!r} and {spec.name!r} would get the same output folder {folder} "
                            "(characters other than letters, digits, '-', '_', '.' become '_'; case is "
                            "ignored); rename one")


def _read_done(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / DONE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _check_manifest(output: Path, settings: CohortSettings) -> None:
    """Refuse a folder that holds another cohort run (or anything else) unless overwriting; then
    record this run's settings."""
    from .outputs import write_json

    manifest_path = output / COHORT_MANIFEST
    manifest = settings.manifest()
    if manifest_path.exists() and not settings.overwrite:
        try:
            previous = json.loads(manifest_path.read_text(encoding="utf-8")).get("settings", {})
        except (OSError, ValueError):
            previous = None
        if previous != manifest:
            changed = sorted(k for k in manifest if previous is None or previous.get(k) != manifest[k])
            raise UserError(f"{output} holds a cohort run with other settings ({', '.join(changed)} differ); "
                            "choose another output folder or pass --overwrite to recompute every case")
    elif not manifest_path.exists() and output.exists() and any(output.iterdir()) and not settings.overwrite:
        raise UserError(f"output folder {output} is not empty and holds no cohort run; choose another output "
                        "folder or pass --overwrite")
    write_json(manifest_path, {"settings": manifest, "started": time.strftime("%Y-%m-%dT%H:%M:%S")},
               overwrite=True)


# --------------------------------------------------------------------------------------------
# One case (runs in the workers)
# --------------------------------------------------------------------------------------------
def run_case(spec: CaseSpec, settings: CohortSettings) -> Status:
    """Explain one cohort case into ``OUTPUT/cases/<case>/`` (the same function for every executor).

    Finished cases (a ``done.json`` marker, written last) are skipped unless ``settings.overwrite``.
    The outputs are written into a temporary folder, created before the computation (so an
    unwritable output fails at once) and renamed when complete (`outputs.atomic_folder`): a case
    folder exists only when it is finished. Never raises: returns {case, status ("done", "skipped",
    "failed"), message, rows (the case's rows of the cohort table), seconds, folder}.
    """
    from .outputs import atomic_folder

    start = time.time()
    status: Status = {"case": spec.name, "status": "failed", "message": "", "rows": [], "seconds": 0.0,
                      "folder": None}
    try:
        folder = case_folder(settings, spec.name)
        status["folder"] = str(folder)
        done = _read_done(folder)
        if done is not None and not settings.overwrite:
            status.update(status="skipped", rows=done.get("rows", []), message="already done",
                          notes=done.get("notes", []))
            return status
        with atomic_folder(folder, settings.overwrite, markers=(DONE_MARKER, "summary.json")) as scratch:
            rows, empty = _explain_case_into(scratch, spec, settings, start)
        status.update(status="done", rows=rows, notes=empty, message="; ".join(empty))
    except (UserError, OSError, *USER_ERRORS) as error:
        status["message"] = one_line(error)
    except Exception as error:  # noqa: BLE001 — one failing case must not stop the cohort
        status["message"] = f"{type(error).__name__}: {one_line(error)}"
    status["seconds"] = round(time.time() - start, 3)
    return status


_MODEL_CACHE: dict[Any, Any] = {}


def _cached_model(path: str):
    """One (package, model) per worker process (reloaded when the package changes)."""
    stamp = Path(path, "model.json").stat().st_mtime_ns if Path(path, "model.json").exists() else None
    key = (path, stamp)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = load_model(path)
    return _MODEL_CACHE[key]


def _explain_case_into(folder: Path, spec: CaseSpec, settings: CohortSettings, start: float
                       ) -> tuple[list[dict[str, Any]], list[str]]:
    """`run_case`'s work: explain the case, write its outputs and ``done.json`` into the empty
    ``folder``; returns its rows of the cohort table and the notes on empty regions."""
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    from . import pipeline
    from .outputs import write_json

    package, model = _cached_model(settings.model)
    sources: Any = Path(spec.folder) if spec.folder else dict(spec.sequences or {})
    if isinstance(sources, dict):
        unset = [s for s, p in sources.items() if not p]
        if unset:
            raise UserError(f"no image given for sequence(s) {unset}")
        missing = [f"{s}: {p}" for s, p in sources.items() if not Path(p).exists()]
        if missing:
            raise UserError(f"image not found ({'; '.join(missing)})")
        sources = parse_sequence_args([f"{s}={p}" for s, p in sources.items()], package.sequences)
    case = pipeline.load_case(sources, package, reference_label=spec.reference_label, name=spec.name)
    mask = read_mask(spec.mask, case.geometry) if spec.mask else None
    result, empty = _explain(case, package, model, settings, mask)
    pipeline.write_case_files(result, folder, package)
    rows = result.shares_rows()
    if settings.shapley:
        from . import shapley

        decisions, notes = shapley.case_decision_shares(result, model, package, settings.device)
        write_json(folder / "shapley.json", shapley.decision_report(decisions, result.explanations))
        for row in rows:  # None: the region holds no voxel predicted as the target
            decision = decisions.get(row["region"])
            row["shapley_share"] = None if decision is None else float(
                decision.shares[case.sequences.index(row["sequence"])])
        empty = empty + notes
    write_json(folder / DONE_MARKER, {"case": spec.name, "settings": settings.manifest(), "rows": rows,
                                      "notes": empty, "seconds": time.time() - start,
                                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return rows, empty


def _explain(case, package, model, settings: CohortSettings, mask):
    """The per-case explanation (`pipeline.explain_case`): (CaseResult, notes on empty regions); a
    case whose regions are all empty still gets its prediction and composition map."""
    from . import pipeline

    result = pipeline.explain_case(case, model, package, regions=settings.regions,
                                   target=pipeline.case_target(package, settings.target, settings.contrast),
                                   composite=settings.composite, device=settings.device, mask=mask,
                                   require_region=False, region_hints=REGION_HINTS)
    return result, result.empty


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """Initializer of the local cohort workers: end with the main process, however it ends (kill -9
    included), instead of running on and then waiting forever for work, holding a model in memory.

    Linux: the kernel sends the worker SIGKILL when its parent ends (prctl PR_SET_PDEATHSIG; the
    pool starts its workers from the main thread). Elsewhere a thread checks the parent every second.
    """
    import signal
    import threading

    PR_SET_PDEATHSIG = 1
    if sys.platform.startswith("linux"):
        import ctypes

        watched = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    else:
        watched = False
    if not watched:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="lrpseg-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent ended before the watch began
        os._exit(1)


def _run_local(specs: list[CaseSpec], settings: CohortSettings, workers: int, report: Callable[[Status], None]
               ) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # spawn: forking a process that already runs torch threads can deadlock
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(run_case, spec, settings): spec for spec in specs}
        for future in as_completed(futures):
            try:
                report(future.result())
            except BrokenProcessPool as error:
                report(_failed(futures[future], f"the worker process died ({one_line(error)})"))
            except Exception as error:  # noqa: BLE001
                report(_failed(futures[future], f"{type(error).__name__}: {one_line(error)}"))


def _run_dask(specs: list[CaseSpec], settings: CohortSettings, workers: int, scheduler: str | None,
              report: Callable[[Status], None]) -> None:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as error:
        raise UserError(f"--executor dask needs dask.distributed: pip install 'dask[distributed]' ({error})") \
            from None
    cluster = None
    if scheduler:
        _probe_scheduler(scheduler)
    try:
        if scheduler:
            client = Client(scheduler, timeout="30s")
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
    except (OSError, TimeoutError, ValueError) as error:
        if cluster is not None:
            cluster.close()
        raise UserError(f"cannot connect to the Dask scheduler {scheduler or '(local cluster)'}: "
                        f"{one_line(error)}") from None
    try:
        stamp = f"{os.getpid()}-{time.time_ns()}"
        futures = [client.submit(run_case, spec, settings, pure=False, key=f"lrpseg-case-{i}-{stamp}")
                   for i, spec in enumerate(specs)]
        spec_of = {f.key: s for f, s in zip(futures, specs)}
        for future in as_completed(futures):
            try:
                report(future.result())
            except Exception as error:  # noqa: BLE001 — e.g. KilledWorker
                report(_failed(spec_of[future.key], f"{type(error).__name__}: {one_line(error)}"))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _probe_scheduler(address: str) -> None:
    """Fail fast (instead of Dask's 30 s of retries) when nothing listens at a tcp:// address."""
    import socket
    from urllib.parse import urlsplit

    if "://" not in address:
        address = "tcp://" + address
    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls") or not parts.hostname:
        return  # inproc://, ucx://, ...: left to Dask
    try:
        port = parts.port or 8786
        with socket.create_connection((parts.hostname, port), timeout=10):
            pass
    except (OSError, ValueError) as error:
        raise UserError(f"cannot connect to the Dask scheduler {address}: {one_line(error)}") from None


def _failed(spec: CaseSpec, message: str) -> Status:
    return {"case": spec.name, "status": "failed", "message": message, "rows": [], "seconds": 0.0}


# --------------------------------------------------------------------------------------------
# Cohort tables and charts
# --------------------------------------------------------------------------------------------
def _region_mode(name: str) -> str:
    """The mode a region name comes from ("lesion-3" → "lesions")."""
    return "lesions" if name.startswith("lesion-") else name


def cohort_summary(rows: Sequence[Mapping[str, Any]], sequences: Sequence[str]) -> list[dict[str, Any]]:
    """Per region mode and sequence: n, mean, std (sample; 0 for one value), median, min, max of the
    shares over all (case, region) samples, mean positive share, mean rank (1 = largest share
    within its case and region), and where rows carry decision shares (``shapley_share``) their
    mean over the samples that have one (``mean_shapley_share``, with their count)."""
    import numpy as np

    samples: dict[tuple[str, str, str], dict[str, tuple[float, float]]] = {}
    for row in rows:
        key = (_region_mode(row["region"]), row["case"], row["region"])
        decision = row.get("shapley_share")
        samples.setdefault(key, {})[row["sequence"]] = (float(row["share"]), float(row["positive_share"]),
                                                        np.nan if decision in (None, "") else float(decision))
    has_decisions = any("shapley_share" in row for row in rows)
    summary = []
    for mode in dict.fromkeys(k[0] for k in samples):
        groups = [v for k, v in samples.items() if k[0] == mode and all(s in v for s in sequences)]
        shares = np.array([[g[s][0] for s in sequences] for g in groups])
        positive = np.array([[g[s][1] for s in sequences] for g in groups])
        decision = np.array([[g[s][2] for s in sequences] for g in groups])
        decided = ~np.isnan(decision[:, 0]) if len(groups) else np.zeros(0, dtype=bool)
        order = np.argsort(-shares, axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(1, len(sequences) + 1)[None].repeat(len(groups), 0), axis=1)
        for c, sequence in enumerate(sequences):
            values = shares[:, c]
            summary.append({"region": mode, "sequence": sequence, "n": int(values.size),
                            "mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                            "median": float(np.median(values)), "min": float(values.min()),
                            "max": float(values.max()), "mean_positive_share": float(positive[:, c].mean()),
                            "mean_rank": float(ranks[:, c].mean())})
            if has_decisions:
                summary[-1]["n_shapley"] = int(decided.sum())
                summary[-1]["mean_shapley_share"] = float(decision[decided, c].mean()) if decided.any() else None
    return summary


def _chart_shares(rows: Sequence[Mapping[str, Any]], mode: str, sequences: Sequence[str], column: str = "share"
                  ) -> dict[str, list[float]]:
    """The bars of one mode's cohort chart: case (case/region for lesions) → C values of ``column``
    (cases without a value, e.g. no decision share, are left out)."""
    shares: dict[str, list[float]] = {}
    for row in rows:
        if row["region_mode"] == mode and row.get(column) not in (None, ""):
            label = row["case"] if row["region"] == mode else f"{row['case']}/{row['region']}"
            shares.setdefault(label, [0.0] * len(sequences))[list(sequences).index(row["sequence"])] = \
                float(row[column])
    return {label: values for label, values in shares.items()}


def write_cohort_outputs(output: Path, statuses: list[Status], sequences: Sequence[str],
                         settings: CohortSettings) -> dict[str, Any]:
    """cohort_shares.csv, cohort_status.csv, cohort_summary.csv/.json and the bar chart(s); each file
    replaced all-or-nothing (`outputs.atomic_file`). Returns the content of cohort_summary.json."""
    from . import figures
    from .outputs import atomic_file, safe_name, write_csv, write_json, writing

    rows = [dict(row, region_mode=_region_mode(row["region"])) for s in statuses for row in s.get("rows", [])]
    columns = ["case", "region", "region_mode", "sequence", "share", "positive_share", "voxels_used",
               "voxels_excluded"] + (["shapley_share"] if settings.shapley else [])
    write_csv(output / "cohort_shares.csv", rows, columns, overwrite=True)
    write_csv(output / "cohort_status.csv",
              [{"case": s["case"], "status": s["status"], "seconds": s.get("seconds", 0.0),
                "regions": " ".join(dict.fromkeys(r["region"] for r in s.get("rows", []))),
                "message": s.get("message", "")} for s in statuses],
              ["case", "status", "seconds", "regions", "message"], overwrite=True)
    summary = cohort_summary(rows, sequences)
    write_csv(output / "cohort_summary.csv", summary, list(summary[0]) if summary else ["region", "sequence"],
              overwrite=True)
    modes = list(dict.fromkeys(r["region_mode"] for r in rows))
    charts = {}
    for mode in modes:
        shares = _chart_shares(rows, mode, sequences)
        decision = _chart_shares(rows, mode, sequences, "shapley_share") if settings.shapley else None
        name = "cohort_shares.png" if len(modes) == 1 else f"cohort_shares_{safe_name(mode)}.png"
        with atomic_file(output / name, overwrite=True) as temp, writing(output / name):
            figures.plot_sequence_shares(shares, sequences, temp, title=f"Normalized relevance per sequence, "
                                                                        f"region {mode} ({len(shares)} cases)",
                                         decision_shares=decision)
        charts[mode] = name
    data = {"settings": settings.manifest(), "sequences": list(sequences),
            "cases": [{k: s.get(k) for k in ("case", "status", "message", "seconds")} for s in statuses],
            "summary": {mode: {r["sequence"]: {k: v for k, v in r.items() if k not in ("region", "sequence")}
                               for r in summary if r["region"] == mode} for mode in modes},
            "charts": charts}
    write_json(output / "cohort_summary.json", data, overwrite=True)
    return data
