"""Whole-slide inference over many slides on a Ray cluster: ``pathseg predict ... --ray ADDRESS``.

One Ray actor per worker (:class:`SlideWorker`) loads the checkpoint once, in its ``__init__``, and
keeps one :class:`pathseg.inference.predictor.SlidePredictor`; the driver sends it one slide per call
and gives each actor a new slide as soon as it is free. Every output file is written by the same
``SlidePredictor`` code as a local run (:func:`pathseg.inference.batch.predict_slides`), into the same
``out/<name>/`` folders, so a slide predicted on Ray and one predicted locally are byte-identical
where the format allows (all files but ``<stem>.run.json``, whose timings and output paths differ),
provided the backend, device and numerics are the same. A slide that fails is retried up to
``retries`` times (on any free worker); its record keeps the number of attempts and every error.
A worker process that dies (out of memory, a crashed node) is restarted by Ray, up to
:data:`MAX_RESTARTS` times.

Paths: the driver sends slide paths as given and each worker first moves into the driver's
working directory when that exists on its node; on a cluster of several machines, slides, the
checkpoint and ``out`` must sit on a filesystem every node mounts at the same path.

Ray is imported only inside these functions: ``import pathseg.scale`` works without it, and a
missing Ray is reported with the command that installs it (``pip install "pathseg[ray]"``).

Example:
    >>> records = predict_slides_ray(["a.svs", "b.svs"], "model.ckpt", "preds/", address="auto",
    ...                               workers=4, gpus_per_worker=1)
    >>> [r["status"] for r in records]        # in input order
    ['done', 'done']

Shape:
    paths (N slides) -> N records (dicts: the local run record plus ``attempts``, ``worker`` and,
    after a failed attempt, ``errors``).
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from pathseg.errors import ConfigError, DataError, PathsegError

RAY_INSTALL = 'pip install "pathseg[ray]"'
#: How often Ray restarts a worker process that died before the driver stops sending it slides.
MAX_RESTARTS = 2
NICENESS_ENV = "RAY_worker_niceness"


def import_ray() -> Any:
    """``import ray``, or a :class:`ConfigError` naming the install command."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError(f"--ray needs Ray, which is not installed in this environment ({e}); install it with "
                          f"{RAY_INSTALL} on the driver and on every node of the cluster") from e
    return ray


class SlideWorker:
    """Holds one backend and one SlidePredictor for the life of its process (a Ray actor, or plain).

    ``__init__`` never raises: a checkpoint that cannot be loaded is kept as ``init_error`` and
    reported by :meth:`info`, so the driver can stop with that message before any slide.

    Args:
        checkpoint: .ckpt/.pt pathseg checkpoint or exported .onnx (the same for every worker).
        out: output folder; the ONNX export is cached per user, as in a local run.
        config: the :class:`~pathseg.inference.predictor.PredictConfig` of the run.
        backend: torch | onnx | openvino | auto ("auto" on a CPU worker means the CPU default, OpenVINO).
        device: "cpu", or None for CUDA when the worker was given a GPU.
        threads: CPU threads for the model (torch, ONNX Runtime, OpenVINO).
        cwd: the driver's working directory; relative paths resolve against it when it exists here.
        stain_norm: apply the checkpoint's stain normalisation, if any.
        precision: auto | fp32 | fp16 | bf16 (:func:`pathseg.inference.backends.load_backend`); INT8 is
            quantised once by the driver and reaches the workers as an INT8 .onnx.
    """

    def __init__(self, checkpoint: str | os.PathLike, out: str | os.PathLike, config: Any, *, backend: str = "auto",
                 device: str | None = "cpu", threads: int = 1, cwd: str | None = None, stain_norm: bool = True,
                 precision: str = "auto") -> None:
        self.init_error: str | None = None
        self.out = str(out)
        self.host, self.pid = socket.gethostname(), os.getpid()
        try:
            if cwd and os.path.isdir(cwd):
                os.chdir(cwd)
            import torch

            from pathseg.inference.backends import load_backend
            from pathseg.inference.onnx import file_digest
            from pathseg.inference.predictor import SlidePredictor

            torch.set_num_threads(threads)
            checkpoint, out = Path(checkpoint), Path(out)
            be = load_backend(checkpoint, backend=backend, tile=config.tile,
                              device=device, threads=threads, stain_norm=stain_norm, precision=precision)
            model_id = f"{checkpoint.name}:{file_digest(checkpoint)}" if checkpoint.is_file() else str(checkpoint)
            self.predictor = SlidePredictor(be, config, model_id=model_id)
        except Exception as e:  # reported by info(); the driver stops with it
            self.init_error = (str(e) if isinstance(e, PathsegError)
                               else f"{checkpoint}: cannot load the model ({type(e).__name__}: {e})")

    def info(self) -> dict[str, Any]:
        """Where this worker runs and what it runs with (or ``error`` when the model did not load)."""
        if self.init_error:
            return {"host": self.host, "pid": self.pid, "error": self.init_error}
        be = self.predictor.backend
        return {"host": self.host, "pid": self.pid, "backend": be.name, "device": be.device,
                "stain": be.info.get("stain") if be.stain is not None else None}

    def predict(self, path: str, mpp_override: float | None = None, name: str | None = None,
                overwrite: bool = False) -> dict[str, Any]:
        """One slide, exactly as the local loop does it; a failure comes back as a failed record.

        Shape:
            path -> record dict (``status`` done / skipped / failed; failed ones have ``error`` and
            ``traceback``, the last frames of the exception).
        """
        from pathseg.inference.batch import failure_record, predict_one

        t = time.perf_counter()
        if self.init_error:
            rec = failure_record(Path(path), DataError(self.init_error))
        else:
            rec = predict_one(self.predictor, Path(path), Path(self.out), mpp_override=mpp_override, name=name,
                              overwrite=overwrite)
        if rec.get("status") == "failed":
            rec.setdefault("timings", {"total_s": time.perf_counter() - t})
        rec["worker"] = f"{self.host}:{self.pid}"
        return rec


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------

def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at ``address`` or start a local instance; True when this call started Ray.

    ``address``: "auto" (the cluster ``ray start`` made on this machine), "HOST:6379",
    "ray://HOST:10001", or None / "local" for a new local instance with ``num_cpus`` CPUs (no
    dashboard, workers at normal priority). A process that already called ``ray.init`` is reused as it is
    (and returns False).
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    import logging

    try:
        if address in (None, "", "local"):
            # Ray runs workers at nice 15; a local instance stands in for a local run, so run them at the
            # usual priority (measured: 20x slower at nice 15 beside another busy process on 2 cores).
            # The raylet reads RAY_worker_niceness from its environment; a value the user set is kept.
            saved = os.environ.get(NICENESS_ENV)
            os.environ.setdefault(NICENESS_ENV, "0")
            try:
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
            finally:
                if saved is None:
                    os.environ.pop(NICENESS_ENV, None)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as e:
        raise ConfigError(f"cannot reach a Ray cluster at {address!r} ({e}); start one with `ray start --head` "
                          f"(and `ray start --address HEAD:6379` on the other nodes), or pass --ray local") from e
    return True


def start_workers(checkpoint: str | os.PathLike, out: str | os.PathLike, config: Any, *, workers: int | None = None,
                  cpus_per_worker: float = 1, gpus_per_worker: float = 0, backend: str = "auto",
                  stain_norm: bool = True, precision: str = "auto") -> tuple[list, list]:
    """Create ``workers`` :class:`SlideWorker` actors and wait until each has loaded the model.

    ``workers=None``: as many as the cluster's GPUs (``gpus_per_worker`` > 0) or CPUs allow. The model
    runs with ``max(1, int(cpus_per_worker))`` threads, on the worker's GPU when it has one.
    Returns (actor handles, their :meth:`SlideWorker.info`). Raises :class:`ConfigError` when the
    cluster cannot hold that many workers, :class:`DataError` when the model does not load.
    """
    ray = import_ray()
    if cpus_per_worker <= 0 or gpus_per_worker < 0:
        raise ConfigError(f"cpus_per_worker must be > 0 and gpus_per_worker >= 0, got {cpus_per_worker}, "
                          f"{gpus_per_worker}")
    have = ray.cluster_resources()
    cpus, gpus = float(have.get("CPU", 0)), float(have.get("GPU", 0))
    if workers is None:
        workers = int(gpus // gpus_per_worker) if gpus_per_worker > 0 else int(cpus // cpus_per_worker)
        workers = max(1, workers)
    if workers < 1:
        raise ConfigError(f"need at least 1 Ray worker, got {workers}")
    for what, per, total in (("CPU", cpus_per_worker, cpus), ("GPU", gpus_per_worker, gpus)):
        if per and workers * per > total + 1e-9:
            raise ConfigError(f"{workers} Ray workers x {per:g} {what} need {workers * per:g} {what}s but the "
                              f"cluster has {total:g}; pass fewer --ray-workers, or add nodes with "
                              f"`ray start --address HEAD:6379`")
    actor = ray.remote(SlideWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                            max_restarts=MAX_RESTARTS, max_task_retries=0)
    actors = [actor.remote(str(checkpoint), str(out), config, backend=backend,
                           device="cpu" if gpus_per_worker == 0 else None,
                           threads=max(1, int(cpus_per_worker)), cwd=os.getcwd(), stain_norm=stain_norm,
                           precision=precision)
              for _ in range(workers)]
    try:
        infos = ray.get([a.info.remote() for a in actors])
    except BaseException:
        stop_workers(actors)
        raise
    errors = [i["error"] for i in infos if "error" in i]
    if errors:
        stop_workers(actors)
        raise DataError(f"the Ray workers cannot load the model: {errors[0]}")
    return actors, infos


def stop_workers(actors: Sequence[Any]) -> None:
    """End the actors (frees their CPUs/GPUs on a shared cluster)."""
    ray = import_ray()
    for a in actors:
        try:
            ray.kill(a)
        except Exception:  # already gone
            pass


def run_on_workers(actors: Sequence[Any], paths: Sequence[str | os.PathLike], *, mpp_override: float | None = None,
                   retries: int = 1, overwrite: bool = False,
                   on_done: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Predict ``paths`` on ``actors``, one slide per call, a new slide to each actor as soon as it is free.

    Each slide goes into ``out/<name>`` with the names of :func:`pathseg.inference.batch.output_names` (two
    slides of one file name get distinct folders), as in a local run; ``overwrite`` recomputes done slides.

    Slides are handed out largest file first (records still come back in input order).

    A failed slide goes back to the end of the queue until it has had ``1 + retries`` attempts. A
    worker whose process died :data:`MAX_RESTARTS` + 1 times gets no more slides; when none is left,
    the remaining slides are recorded as failed. ``on_done(record)`` is called as each slide finishes.

    Shape:
        N paths -> N records in input order, each with ``attempts`` (int) and, when an attempt
        failed, ``errors`` (one message per failed attempt).
    """
    ray = import_ray()
    from ray.exceptions import RayActorError, RayError

    from pathseg.inference.batch import failure_record, output_names

    if retries < 0:
        raise ConfigError(f"retries must be >= 0, got {retries}")
    paths = [Path(p) for p in paths]
    names = output_names(paths)
    records: list[dict[str, Any] | None] = [None] * len(paths)
    attempts = [0] * len(paths)
    errors: list[list[str]] = [[] for _ in paths]
    deaths = [0] * len(actors)
    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:
            return 0

    # largest files first, so the run does not end with one big slide on one worker while the rest idle
    queue = deque(sorted(range(len(paths)), key=lambda i: -size(paths[i])))
    idle = deque(range(len(actors)))
    running: dict[Any, tuple[int, int]] = {}

    def finish(i: int, rec: dict[str, Any]) -> None:
        rec["attempts"] = attempts[i]
        if errors[i]:
            rec["errors"] = list(errors[i])
        records[i] = rec
        if on_done is not None:
            on_done(rec)

    while queue or running:
        while queue and idle:
            i, w = queue.popleft(), idle.popleft()
            attempts[i] += 1
            running[actors[w].predict.remote(str(paths[i]), mpp_override, names[paths[i]], overwrite)] = (i, w)
        if not running:  # every worker is gone
            i = queue.popleft()
            errors[i].append(f"{paths[i]}: not predicted: every Ray worker died (see the errors of the slides before)")
            finish(i, {"slide": str(paths[i]), "status": "failed", "error": errors[i][-1]})
            continue
        (ref,), _ = ray.wait(list(running), num_returns=1)
        i, w = running.pop(ref)
        try:
            rec = ray.get(ref)
            idle.append(w)
        except RayActorError as e:  # the process died (OOM kill, segfault, lost node); Ray restarts it
            deaths[w] += 1
            if deaths[w] <= MAX_RESTARTS:
                idle.append(w)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            rec = {"slide": str(paths[i]), "status": "failed",
                   "error": f"{paths[i]}: the Ray worker predicting it died ({type(e).__name__}: {first[:300]}); "
                            f"out of memory? try fewer workers per node or a smaller --batch-size"}
        except RayError as e:
            idle.append(w)
            rec = failure_record(paths[i], e)
        if rec.get("status") == "failed":
            errors[i].append(rec.get("error", "?"))
            if attempts[i] <= retries:
                queue.append(i)
                continue
        finish(i, rec)
    return [r for r in records if r is not None]


def predict_slides_ray(paths: Sequence[str | os.PathLike], checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                       address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0,
                       cpus_per_worker: float = 1, retries: int = 1, mpp: float | None = None,
                       mpp_override: float | None = None, tile: int = 512, overlap: float = 0.5,
                       loader_workers: int = 0, batch_size: int = 8, backend: str = "auto",
                       probabilities: bool = False, blend: str = "mean", min_tissue: float = 0.05,
                       tissue_method: str = "saturation", stain_norm: bool = True, overwrite: bool = False,
                       min_area: float | None = None, simplify: float | None = None,
                       multipolygon: bool | None = None, precision: str = "auto", show_progress: bool = True,
                       out_console: Console | None = None) -> list[dict[str, Any]]:
    """:func:`pathseg.inference.batch.predict_slides` on a Ray cluster: same settings, same outputs, same records.

    Args:
        address: Ray address ("auto", "HOST:6379", "ray://HOST:10001"); None or "local" starts a
            local instance with ``workers x cpus_per_worker`` CPUs, shut down at the end.
        workers: Ray workers (actors), each holding the model once; None = as many as fit.
        gpus_per_worker, cpus_per_worker: resources each worker asks Ray for; the model runs with
            ``int(cpus_per_worker)`` threads, on CUDA when ``gpus_per_worker`` > 0.
        retries: further attempts for a failed slide (its record keeps ``attempts`` and ``errors``).
        loader_workers: DataLoader reader processes inside each worker (``--workers`` of the local run).
        min_area, simplify, multipolygon: GeoJSON options (:class:`pathseg.inference.predictor.PredictConfig`).
        The rest: as :func:`pathseg.inference.batch.predict_slides`.

    Settings errors, an unwritable ``out`` or a checkpoint that does not load stop the run before any
    slide; a slide's own failure is recorded and the others go on.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pathseg.inference.batch import check_writable, output_names, renamed, stain_note
    from pathseg.inference.predictor import PredictConfig

    con = out_console or Console(stderr=True)
    import_ray()
    geo = {k: v for k, v in (("min_area_um2", min_area), ("simplify", simplify), ("multipolygon", multipolygon))
           if v is not None}
    cfg = PredictConfig(tile=tile, overlap=overlap, mpp=mpp, batch_size=batch_size, workers=loader_workers,
                        probabilities=probabilities, blend=blend, min_tissue=min_tissue, tissue_method=tissue_method,
                        **geo)
    out = check_writable(out)
    paths = [Path(p) for p in paths]
    for note in renamed(output_names(paths)):
        con.print(note)
    num_cpus = None
    if address in (None, "", "local"):
        num_cpus = math.ceil(workers * cpus_per_worker) if workers else (os.cpu_count() or 1)
    started = connect(address, num_cpus=num_cpus)
    actors: list = []
    try:
        actors, infos = start_workers(checkpoint, out, cfg, workers=workers, cpus_per_worker=cpus_per_worker,
                                      gpus_per_worker=gpus_per_worker, backend=backend, stain_norm=stain_norm,
                                      precision=precision)
        if infos and infos[0].get("stain"):
            con.print(stain_note(infos[0]["stain"]))
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=con, disable=not show_progress, transient=False) as progress:
            task = progress.add_task(f"slides on Ray ({len(actors)} workers)", total=len(paths))
            rows = run_on_workers(actors, paths, mpp_override=mpp_override, retries=retries, overwrite=overwrite,
                                  on_done=lambda _: progress.advance(task))
    finally:
        if actors:
            stop_workers(actors)
        if started:
            import_ray().shutdown()
    where = sorted({f"{i['backend']} on {i['device']}" for i in infos})
    con.print(f"Ray: {len(actors)} workers on {len({i['host'] for i in infos})} node(s), backend {', '.join(where)}")
    return rows
