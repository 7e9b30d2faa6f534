"""Whole-slide prediction: tissue -> tiles -> batched model -> stitched zarr maps -> per-slide outputs.

:class:`SlidePredictor` runs one slide at a time in bounded memory:

1. open the slide (MPP policy of :func:`pathseg.io.slides.open_slide`);
2. detect tissue at low resolution and lay the tile grid at the model's MPP (:mod:`pathseg.io.tiling`);
3. run the tiles through the backend in batches as a pipeline of three threads, so the model never
   waits for the disk: a reader thread reads and decodes the next batch and prepares the model's input
   (stain normalisation included) while the model runs on this one, and a stitcher thread adds the
   probabilities into zarr (:class:`pathseg.inference.stitch.Stitcher`), checkpointing so an interrupted
   slide resumes. The batches go through :meth:`Backend.map`, so a backend that can (OpenVINO) queues the
   next batch's tiles while finishing this one's. Tiles are stitched in the same order as by a plain loop, so the outputs are the same.
   ``workers`` > 0 reads in that many DataLoader processes instead of the reader thread (for slides
   whose decoding outweighs the model on many cores);
4. write, each atomically, into ``out/<name>/`` (the slide's stem; see
   :func:`pathseg.inference.batch.output_names` for two slides of one name): ``<stem>.labels.tif`` (pyramidal palette TIFF
   with MPP), ``<stem>.prob-<class>.tif`` (optional), ``<stem>.geojson`` (QuPath), ``<stem>.overlay.png``,
   ``<stem>.composition.csv``, ``<stem>.tissue.png`` and, last, ``<stem>.run.json``. A slide whose
   run record says "done" with the same settings is skipped (``overwrite=True`` recomputes it).

One run of a slide is one set of outputs: the run holds ``.<stem>.lock`` in the slide's folder (a second
live run is refused, a stale lock taken over), removes the old run record before it writes anything,
and writes the new record last; the record, the GeoJSON and the composition CSV carry the same
``run_id``. Outputs of a run with other settings replace the earlier ones, and the record says so.

A tile that cannot be read is left out (its area stays class 0), counted and named in the record;
any other failure raises, and :func:`pathseg.cli.slides.predict_slides` moves on to the next slide.

Where the time goes is in the record's ``timings`` (seconds): ``startup_s`` (the process's age when the
slide starts: interpreter, imports, model loading), ``backend_load_s``, ``open_s``, ``tissue_s``,
``inference_s`` (the pipelined loop, wall time) and inside it, per thread, ``read_s`` (read and decode),
``stain_s``, ``normalise_s`` (model input), ``model_s`` (waiting for the model's results, less the waits for
the reader), ``stitch_s``, the model's waits for the reader
(``wait_read_s``) and the stitcher (``wait_stitch_s``), ``first_tile_s`` (process age when the first
probabilities came out), then ``write_s`` and each writer's ``write_<output>_s``, and ``total_s``.

Example:
    >>> be = load_backend("model.ckpt", backend="torch")
    >>> pred = SlidePredictor(be, PredictConfig(tile=512, overlap=0.5))
    >>> result = pred.predict("slide.svs", "out/")
    >>> result["outputs"]["labels"]
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.errors import ConfigError, SlideError
from pathseg.inference.backends import Backend
from pathseg.inference.locks import SlideLock
from pathseg.inference.stitch import BLENDS, Stitcher
from pathseg.inference.writers import DEFAULT_MIN_AREA_UM2
from pathseg.io.files import remove_stale_temporaries
from pathseg.io.slides import SlideReader, open_slide
from pathseg.io.tiling import Tile, TilingConfig, grid_tiles, output_size
from pathseg.io.tissue import TISSUE_DETECTORS, detect_tissue

#: Write the GeoJSON beside the pyramids and PNGs (two threads) rather than one after the other
#: (measured: benchmarks/results/wsi_inference.md).
PARALLEL_WRITERS = True
FIRST_BATCH = 1  # tiles in the first model call (see batch_spans)


class NoTissueError(SlideError):
    """The tissue detector found nothing to predict on."""


@dataclass(frozen=True)
class PredictConfig:
    """Settings of a slide run (all recorded in the run record).

    Args:
        tile, overlap: model input size (px) and overlap fraction (0.5 = the published stitching protocol).
        mpp: resolution to predict at; None = the MPP the checkpoint was trained at.
        min_tissue: skip tiles with less tissue than this fraction.
        tissue_method: "saturation" or "otsu".
        blend: "mean" (average overlapping tiles) or "gaussian".
        batch_size, workers: tiles per model call, and DataLoader reader processes (0 = one reader thread).
        probabilities: also write per-class probability pyramids.
        keep_zarr: keep ``<stem>.zarr`` (labels, probabilities) beside the outputs.
        prob_dtype: "uint8" or "float32" probabilities in the zarr.
        checkpoint_every: tiles between resume checkpoints (also written when the run is interrupted).
        min_area_um2, simplify, multipolygon: GeoJSON polygons (see
            :func:`pathseg.inference.writers.label_polygons`): regions under ``min_area_um2`` µm² are left out,
            ``simplify`` is a tolerance in output pixels, ``multipolygon`` writes one feature per class.
        geojson_objects: QuPath object type of the polygons: "annotation", "detection", or "auto" (detections
            for a model whose classes are cells or nuclei, annotations for tissue regions).
    """

    tile: int = 512
    overlap: float = 0.5
    mpp: float | None = None
    min_tissue: float = 0.05
    tissue_method: str = "saturation"
    blend: str = "mean"
    batch_size: int = 4
    workers: int = 0
    probabilities: bool = False
    keep_zarr: bool = False
    prob_dtype: str = "uint8"
    checkpoint_every: int = 64
    min_area_um2: float = DEFAULT_MIN_AREA_UM2
    simplify: float = 0.0
    multipolygon: bool = False
    geojson_objects: str = "auto"

    def __post_init__(self) -> None:
        if self.geojson_objects not in ("auto", "annotation", "detection"):
            raise ConfigError(f"geojson_objects must be auto, annotation or detection, got {self.geojson_objects!r}")
        if self.min_area_um2 < 0 or self.simplify < 0:
            raise ConfigError(f"min_area_um2 and simplify must be >= 0, got {self.min_area_um2} and {self.simplify}")
        BLENDS.get(self.blend)
        TISSUE_DETECTORS.get(self.tissue_method)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.mpp is not None and not self.mpp > 0:
            raise ConfigError(f"mpp must be a positive number of microns per pixel, got {self.mpp}")
        TilingConfig(tile=self.tile, overlap=self.overlap, mpp=self.mpp or 1.0, min_tissue=self.min_tissue)


class TileDataset:
    """Reads tiles of one slide; a tile that fails to read comes back with ``ok=False`` and the error.

    With ``context_ratio`` r (a HookNet checkpoint), each item also holds the tile's *context*: the
    ``r·tile`` px region (at ``mpp``) centred on the tile, read at ``r·mpp`` as ``tile`` px -- the geometry of
    :func:`pathseg.data.context.cut_pair` in training, except that beyond the slide's edge it is the
    slide's white rather than a mirror image.

    :meth:`read` gives numpy arrays (the predictor's reader thread); ``ds[i]`` gives torch tensors, for a
    torch DataLoader (``workers`` > 0).

    Shape:
        item -> {"index": int, "image": (tile, tile, 3) uint8, ["context": same], "ok": bool, "error": str}
    """

    def __init__(self, slide: SlideReader, tiles: list[Tile], order: list[int], *, tile: int, mpp: float,
                 context_ratio: int | None = None) -> None:
        self.slide, self.tiles, self.order, self.tile, self.mpp = slide, tiles, order, tile, mpp
        self.context_ratio = context_ratio

    def __len__(self) -> int:
        return len(self.order)

    def read(self, i: int) -> dict[str, Any]:
        """Item ``i`` (of ``order``) with numpy images."""
        t = self.tiles[self.order[i]]
        views = {"image": (t.x0, t.y0, self.mpp)}
        if self.context_ratio:
            r = self.context_ratio
            shift = (r - 1) * self.tile / 2 * self.mpp / self.slide.mpp  # level-0 px from the tile's to the context's corner
            views["context"] = (t.x0 - shift, t.y0 - shift, r * self.mpp)
        item: dict[str, Any] = {"index": t.index, "ok": True, "error": ""}
        for key, (x0, y0, mpp) in views.items():
            try:
                img = self.slide.read_region(x0, y0, self.tile, self.tile, mpp=mpp)
            except SlideError as e:
                img = np.zeros((self.tile, self.tile, 3), np.uint8)
                item.update(ok=False, error=str(e))
            item[key] = np.ascontiguousarray(img)
        return item

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        item = self.read(i)
        for key in ("image", "context"):
            if key in item:
                item[key] = torch.from_numpy(item[key])
        return item


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the MPP-override warning was already shown in the main process


def _as_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DataLoader collate: keep the items (the reader thread stacks them)."""
    return items


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: from /proc), None where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = float(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def batch_spans(n: int, batch_size: int, first: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) of each model call over ``n`` tiles: a first call of ``first`` tiles (default
    :data:`FIRST_BATCH`), then ``batch_size`` at a time. A small first call puts the first labels on disk one
    full batch sooner (on 2 cores a batch of 8 U-Net tiles is 1.5-2.5 s of model time) at no cost in
    throughput: the model's tiles/s is flat from batch 4 to 16 (benchmarks/results/wsi_inference.md)."""
    first = min(FIRST_BATCH if first is None else first, batch_size, n)
    spans = [(0, first)] if first > 0 else []
    spans += [(a, min(a + batch_size, n)) for a in range(first, n, batch_size)]
    return spans


@dataclass
class _Batch:
    indices: list[int]
    ok: np.ndarray
    errors: list[str]
    prepared: Any  # the backend's input for the tiles that were read (None: none was)


class _Stop(Exception):
    pass


class _Pipeline:
    """Reader thread -> model (the calling thread) -> stitcher thread, with bounded queues between them.

    The reader reads batches of tiles (or takes them from a DataLoader) and calls ``backend.prepare``; the
    caller iterates :meth:`batches`, runs the model and hands the probabilities to :meth:`stitch`; the
    stitcher thread adds them in the order given. Busy and waiting seconds per stage are in ``times``.
    Exceptions in either thread are raised in the caller.
    """

    DEPTH = 2  # batches waiting between two stages: enough to hide jitter, little memory

    def __init__(self, ds: TileDataset, backend: Backend, batch_size: int, workers: int,
                 add: Callable[[_Batch, np.ndarray | None], None]) -> None:
        self.ds, self.backend, self.batch_size, self.workers, self.add = ds, backend, batch_size, workers, add
        self.times = {"read_s": 0.0, "stain_s": 0.0, "normalise_s": 0.0, "stitch_s": 0.0, "wait_read_s": 0.0,
                      "wait_stitch_s": 0.0}
        self.stop = threading.Event()
        self.to_model: queue.Queue = queue.Queue(self.DEPTH)
        self.to_stitch: queue.Queue = queue.Queue(self.DEPTH)
        self.errors: list[BaseException] = []
        self.reader = threading.Thread(target=self._read, name="pathseg-tile-reader", daemon=True)
        self.stitcher = threading.Thread(target=self._stitch, name="pathseg-stitcher", daemon=True)

    # -- reader -------------------------------------------------------------------------------------
    def _items(self) -> Iterator[list[dict[str, Any]]]:
        spans = batch_spans(len(self.ds), self.batch_size)
        if self.workers == 0:
            for start, stop in spans:
                t = time.perf_counter()
                items = [self.ds.read(i) for i in range(start, stop)]
                self.times["read_s"] += time.perf_counter() - t
                yield items
            return
        from torch.utils.data import DataLoader

        loader = DataLoader(self.ds, batch_sampler=[list(range(a, b)) for a, b in spans],
                            num_workers=self.workers, worker_init_fn=_worker_init, collate_fn=_as_list,
                            persistent_workers=False)
        it = iter(loader)
        while True:
            t = time.perf_counter()
            try:
                items = next(it)
            except StopIteration:
                return
            self.times["read_s"] += time.perf_counter() - t
            yield [{k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in item.items()} for item in items]

    def _put(self, q: queue.Queue, obj: Any) -> None:
        while True:
            if self.stop.is_set():
                raise _Stop
            try:
                q.put(obj, timeout=0.1)
                return
            except queue.Full:
                continue

    def _read(self) -> None:
        be = self.backend
        try:
            for items in self._items():
                ok = np.array([it["ok"] for it in items], bool)
                prepared = None
                if ok.any():
                    t = time.perf_counter()
                    images = be._stain_normalise(np.stack([it["image"] for it, good in zip(items, ok) if good]))
                    context = None
                    if "context" in items[0]:
                        context = be._stain_normalise(np.stack([it["context"] for it, g in zip(items, ok) if g]))
                    t1 = time.perf_counter()
                    prepared = be.model_input(images, context)
                    self.times["stain_s"] += t1 - t
                    self.times["normalise_s"] += time.perf_counter() - t1
                self._put(self.to_model, _Batch([int(it["index"]) for it in items], ok,
                                                [str(it["error"]) for it in items], prepared))
            self._put(self.to_model, None)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001  (handed to the caller)
            self.errors.append(e)
            self.stop.set()

    # -- stitcher -----------------------------------------------------------------------------------
    def _stitch(self) -> None:
        try:
            while True:
                try:
                    got = self.to_stitch.get(timeout=0.1)
                except queue.Empty:
                    if self.stop.is_set():  # stopping, and everything handed over is added
                        return
                    continue
                t = time.perf_counter()
                self.add(*got)
                self.times["stitch_s"] += time.perf_counter() - t
        except BaseException as e:  # noqa: BLE001
            self.errors.append(e)
            self.stop.set()

    # -- the caller's side --------------------------------------------------------------------------
    def __enter__(self) -> _Pipeline:
        self.reader.start()
        self.stitcher.start()
        return self

    def batches(self) -> Iterator[_Batch]:
        while True:
            t = time.perf_counter()
            while True:
                self._raise()
                try:
                    got = self.to_model.get(timeout=0.1)
                    break
                except queue.Empty:
                    continue
            self.times["wait_read_s"] += time.perf_counter() - t
            if got is None:
                return
            yield got

    def stitch(self, batch: _Batch, probs: np.ndarray | None) -> None:
        t = time.perf_counter()
        while True:
            self._raise()
            try:
                self.to_stitch.put((batch, probs), timeout=0.1)
                break
            except queue.Full:
                continue
        self.times["wait_stitch_s"] += time.perf_counter() - t

    def _raise(self) -> None:
        if self.errors:
            raise self.errors[0]

    def finish(self) -> None:
        """Stop reading; let the stitcher add everything handed to it; raise what a thread raised."""
        self.stop.set()
        self.reader.join()
        self.stitcher.join()  # it stops once the queue is empty
        self._raise()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.reader.join()
        self.stitcher.join()


def slide_key(path: Path, cfg: PredictConfig, model_id: str, mpp_override: float | None, out_mpp: float) -> str:
    st = path.stat()
    blob = json.dumps({"path": str(path.resolve()), "size": st.st_size, "mtime": int(st.st_mtime),
                       "cfg": asdict(cfg), "model": model_id, "mpp_override": mpp_override, "out_mpp": out_mpp},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class SlidePredictor:
    """Predict whole slides with one backend and one :class:`PredictConfig`."""

    def __init__(self, backend: Backend, config: PredictConfig | None = None, *, model_id: str = "",
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        self.backend = backend
        self.config = config or PredictConfig()
        self.model_id = model_id or json.dumps(backend.info, sort_keys=True, default=str)
        if backend.stain is not None:  # other pixels in, other outputs: a run without it is not reused
            self.model_id += f":stain={backend.info['stain']['method']}"
        if backend.precision not in ("fp32", "fp16"):  # int8, bf16: other numbers, other outputs
            self.model_id += f":precision={backend.precision}"
        self.progress = progress
        if backend.context_ratio and self.config.tile % 64:
            raise ConfigError(f"{backend.info.get('model')}: the tile size must be a multiple of 64 px for a model "
                              f"that hooks in each tile's context, got {self.config.tile}; pass e.g. --tile 512")
        self.class_names = list(backend.info["class_names"])
        self.colors = [list(c) for c in backend.info.get("colors") or []]
        if len(self.colors) < len(self.class_names):
            from pathseg.models.checkpoint import default_colors

            self.colors = default_colors(len(self.class_names))

    def object_type(self) -> str:
        """QuPath ``objectType`` of the GeoJSON features (see :class:`PredictConfig`, ``geojson_objects``)."""
        if self.config.geojson_objects != "auto":
            return self.config.geojson_objects
        cellular = ("nucle", "cell", "lymphocyte", "neutrophil", "epithelial cell")
        named = [n.lower() for n in self.class_names if n.lower() != "background"]
        return "detection" if named and all(any(w in n for w in cellular) for n in named) else "annotation"

    def output_mpp(self) -> float:
        mpp = self.config.mpp or self.backend.info.get("mpp")
        if not mpp:
            raise ConfigError("the checkpoint does not record the MPP it was trained at; pass --mpp (e.g. --mpp 0.5)")
        return float(mpp)

    @staticmethod
    def paths(out_dir: Path, stem: str) -> dict[str, Path]:
        d = out_dir / stem
        return {
            "dir": d,
            "work": d / f".{stem}.work",
            "labels": d / f"{stem}.labels.tif",
            "geojson": d / f"{stem}.geojson",
            "overlay": d / f"{stem}.overlay.png",
            "tissue": d / f"{stem}.tissue.png",
            "composition": d / f"{stem}.composition.csv",
            "record": d / f"{stem}.run.json",
            "zarr": d / f"{stem}.zarr",
        }

    def predict(self, path: str | os.PathLike, out_dir: str | os.PathLike, *, mpp_override: float | None = None,
                name: str | None = None, overwrite: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Run one slide into ``out_dir/<name>/`` (default name: the slide's stem); returns the run record
        (``status`` "done" or "skipped"). ``overwrite`` recomputes a slide that is already done.

        ``stop_after`` (tests): stop after that many tiles, leaving the slide resumable.
        """
        cfg = self.config
        path, out_dir = Path(path), Path(out_dir)
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        age = process_age_s()
        if age is not None:
            timings["startup_s"] = age
        if getattr(self.backend, "load_s", None) is not None:
            timings["backend_load_s"] = float(self.backend.load_s)
        out_mpp = self.output_mpp()
        name = name or path.stem
        p = self.paths(out_dir, name)
        key = slide_key(path, cfg, self.model_id, mpp_override, out_mpp) if path.is_file() else ""
        prev = _read_record(p["record"])
        if prev.get("status") == "done" and prev.get("key") == key and not overwrite:
            return dict(prev, status="skipped")

        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            slide = open_slide(path, mpp_override=mpp_override)
        slide_warnings = [str(w.message) for w in caught]
        try:
            with SlideLock(p["dir"], name):
                for msg in slide_warnings:
                    warnings.warn(msg, stacklevel=2)
                prev = _read_record(p["record"])  # again, under the lock: another run may have finished it
                if prev.get("status") == "done" and prev.get("key") == key and not overwrite:
                    return dict(prev, status="skipped")
                if prev.get("status") == "done":
                    why = "--overwrite" if prev.get("key") == key else "other settings, model or slide file"
                    slide_warnings.append(f"{p['dir']}: replacing the outputs of run {prev.get('run_id', '?')} "
                                          f"({why})")
                # the record goes first: until the new one is written last, no record vouches for the outputs
                p["record"].unlink(missing_ok=True)
                return self._run(slide, path, p, key, out_mpp, mpp_override, slide_warnings, timings, t, t_start,
                                 stop_after)
        finally:
            slide.close()
            if p["dir"].is_dir() and not any(p["dir"].iterdir()):
                p["dir"].rmdir()  # a slide that failed before writing anything leaves no empty folder

    def _run(self, slide, path, p, key, out_mpp, mpp_override, slide_warnings, timings, t, t_start, stop_after):
        cfg = self.config
        timings["open_s"] = time.perf_counter() - t
        tiling = TilingConfig(tile=cfg.tile, overlap=cfg.overlap, mpp=out_mpp, min_tissue=cfg.min_tissue)
        finest = slide.level_mpp(0)
        if out_mpp < finest * 0.5:
            warnings.warn(f"{path}: predicting at {out_mpp:g} µm/px, finer than the slide's {finest:g} µm/px; "
                          f"tiles are upsampled", stacklevel=3)

        t = time.perf_counter()
        tissue = detect_tissue(slide, cfg.tissue_method)
        tiles = grid_tiles(slide, tiling, tissue=tissue)
        timings["tissue_s"] = time.perf_counter() - t
        if not tiles:
            raise NoTissueError(
                f"{path}: no tissue found ({cfg.tissue_method} detector: {tissue.fraction:.2%} of the slide; no "
                f"{cfg.tile} px tile at {out_mpp:g} µm/px has >= {cfg.min_tissue:.0%} tissue). If the slide does "
                f"hold tissue, lower --min-tissue or try --tissue-method otsu"
            )
        p["dir"].mkdir(parents=True, exist_ok=True)
        p["work"].mkdir(parents=True, exist_ok=True)
        W, H = output_size(slide, out_mpp)
        stitcher = Stitcher(p["work"] / "stitch.zarr", tiles, (W, H), len(self.class_names), tile=cfg.tile,
                            blend=cfg.blend, probabilities=cfg.probabilities or cfg.keep_zarr,
                            prob_dtype=cfg.prob_dtype, chunk=max(64, min(tiling.stride, 512)), key=key)
        n_done = stitcher.load_progress()
        order = stitcher.plan(n_done)
        resumed = n_done > 0

        # -- inference: reader thread -> model (here) -> stitcher thread -----------------------------------
        ds = TileDataset(slide, tiles, order, tile=cfg.tile, mpp=out_mpp, context_ratio=self.backend.context_ratio)
        failed: list[dict[str, Any]] = []
        state = {"since_ckpt": 0}

        def add(batch: _Batch, probs: np.ndarray | None) -> None:  # on the stitcher thread, in order
            j = 0
            for idx, good, err in zip(batch.indices, batch.ok, batch.errors):
                if good:
                    stitcher.add(idx, probs[j])
                    j += 1
                else:
                    stitcher.add(idx, None)
                    failed.append({"tile": idx, "x0": tiles[idx].x0, "y0": tiles[idx].y0, "error": err})
                if idx >= n_done:
                    stitcher.n_done = idx + 1
            state["since_ckpt"] += len(batch.indices)
            if state["since_ckpt"] >= cfg.checkpoint_every:
                stitcher.checkpoint()
                state["since_ckpt"] = 0

        t_model = 0.0
        first_tile = None
        t = time.perf_counter()
        done_in_run = 0
        interrupted = False
        pipe = _Pipeline(ds, self.backend, cfg.batch_size, cfg.workers, add)
        with pipe, closing(self.backend.map((b, b.prepared) for b in pipe.batches())) as results:
            try:
                while True:  # model_s: the time in the model's results, less the waits for the reader
                    t0, waited = time.perf_counter(), pipe.times["wait_read_s"]
                    got = next(results, None)
                    t_model += time.perf_counter() - t0 - (pipe.times["wait_read_s"] - waited)
                    if got is None:
                        break
                    batch, probs = got
                    if first_tile is None:
                        first_tile = process_age_s()
                    pipe.stitch(batch, probs)
                    done_in_run += len(batch.indices)
                    if self.progress is not None:
                        self.progress(path.name, done_in_run, len(order))
                    if stop_after is not None and done_in_run >= stop_after:
                        interrupted = True
                        break
                results.close()  # tiles queued past the stop are waited for and dropped
                pipe.finish()
            except KeyboardInterrupt:  # keep what was computed: the next run resumes from here
                results.close()
                pipe.finish()
                stitcher.checkpoint()
                raise
        timings.update(inference_s=time.perf_counter() - t, model_s=t_model, **pipe.times)
        if first_tile is not None:
            timings["first_tile_s"] = first_tile
        if interrupted:
            stitcher.checkpoint()
            return {"slide": str(path), "status": "interrupted", "key": key, "tiles_done": stitcher.n_done,
                    "tiles_total": len(tiles), "tiles_run": done_in_run, "output_size": [W, H], "timings": timings}
        if failed and len(failed) > 0.5 * len(order):
            raise SlideError(f"{path}: {len(failed)} of {len(order)} tiles could not be read "
                             f"(first: {failed[0]['error']}); the slide is probably truncated or corrupt; "
                             f"re-export or re-copy it")
        if not stitcher.finished:
            raise SlideError(f"{path}: {len(stitcher.pending)} output chunks were left unfinished after every tile "
                             "was added; this is a bug in pathseg, please report it with the run record")

        # -- outputs --------------------------------------------------------------------------------
        t = time.perf_counter()
        counts = stitcher.class_counts()
        run_id = uuid.uuid4().hex[:12]
        outputs = self._write_outputs(slide, path, p, stitcher, tissue, out_mpp, counts, run_id, timings)
        timings["write_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_start
        record = {
            "status": "done",
            "run_id": run_id,
            "key": key,
            "slide": str(path),
            "slide_info": {
                "backend": slide.backend, "vendor": slide.vendor, "dimensions": list(slide.dimensions),
                "levels": len(slide.level_dimensions), "metadata_mpp": slide.metadata_mpp,
                "mpp_override": mpp_override, "mpp": slide.mpp,
            },
            "model": {k: self.backend.info.get(k) for k in ("model", "encoder", "num_classes", "class_names", "mpp")},
            "context_ratio": self.backend.context_ratio,
            "stain_normalisation": None if self.backend.stain is None else self.backend.info["stain"]["method"],
            "model_id": self.model_id[:200],
            "backend": self.backend.name,
            "precision": self.backend.precision,
            "device": self.backend.device,
            "output_mpp": out_mpp,
            "output_size": [W, H],
            "config": asdict(self.config),
            "tiles": {"grid_with_tissue": len(tiles), "run": len(order), "failed": len(failed), "resumed": resumed},
            "failed_tiles": failed[:100],
            "tissue": {"method": self.config.tissue_method, "fraction": tissue.fraction, "mask_mpp": tissue.mpp},
            "class_pixels": {n: int(c) for n, c in zip(self.class_names, counts)},
            "warnings": slide_warnings
            + ([f"{len(failed)} tile(s) could not be read and were left out"] if failed else []),
            "outputs": {k: str(v) for k, v in outputs.items()},
            "timings": timings,
            "tiles_per_s": len(order) / timings["inference_s"] if timings["inference_s"] > 0 else None,
            "versions": _versions(),
        }
        if self.backend.precision == "int8":
            record["quantisation"] = self.backend.info.get("calibration")
        shutil.rmtree(p["work"], ignore_errors=True)
        remove_stale_temporaries(p["dir"])  # left by a killed earlier run; this run holds the lock
        from pathseg.inference.writers import write_run_record

        write_run_record(p["record"], record)
        return record

    def _write_outputs(self, slide, path, p, stitcher: Stitcher, tissue, out_mpp: float,
                       counts: np.ndarray, run_id: str, timings: dict[str, float]) -> dict[str, Path]:
        from pathseg.inference.writers import (
            MAX_POLYGON_SIDE,
            LabelLevels,
            composition_rows,
            map_strips,
            write_composition_csv,
            write_label_geojson,
            write_overlay,
        )
        from pathseg.io.files import write_image
        from pathseg.io.pyramid import write_label_pyramid, write_pyramid

        cfg = self.config
        stem = p["dir"].name
        outputs: dict[str, Path] = {}
        labels = stitcher.labels

        def timed(name: str, fn: Callable[[], Any]) -> Any:
            t = time.perf_counter()
            out = fn()
            timings[f"write_{name}_s"] = timings.get(f"write_{name}_s", 0.0) + time.perf_counter() - t
            return out

        levels = LabelLevels(labels, p["work"])  # each pyramid level from the one before; the overlay reuses one

        def pyramids() -> None:
            outputs["labels"] = timed("labels", lambda: write_label_pyramid(
                p["labels"], levels, mpp=out_mpp, colors=self.colors, class_names=self.class_names))
            if cfg.probabilities and stitcher.probs is not None:
                for k, name in enumerate(self.class_names):
                    src = _ProbView(stitcher.probs, k)
                    desc = f"pathseg probability of {name} (0-255)|MPP = {out_mpp:g}"
                    outputs[f"prob-{name}"] = timed("probabilities", lambda src=src, name=name, desc=desc:
                                                    write_pyramid(p["dir"] / f"{stem}.prob-{_safe(name)}.tif", src,
                                                                  mpp=out_mpp, description=desc))

        H, W = labels.shape
        step = max(1, int(np.ceil(max(H, W) / MAX_POLYGON_SIDE)))

        def geojson() -> None:
            def run() -> Path:  # strip by strip from the store: memory does not grow with the slide
                return write_label_geojson(
                    p["geojson"], map_strips(labels, step), self.class_names, self.colors,
                    scale=step * out_mpp / slide.mpp, id_prefix=stem, min_area=cfg.min_area_um2 / slide.mpp ** 2,
                    simplify=cfg.simplify / step, multipolygon=cfg.multipolygon, object_type=self.object_type(),
                    properties={"pathseg_run_id": run_id})

            outputs["geojson"] = timed("geojson", run)

        def images() -> None:
            def overlay() -> Path:
                thumb, thumb_mpp = slide.thumbnail(2048)
                tstep = max(1, int(thumb_mpp / out_mpp))
                return write_overlay(p["overlay"], thumb, levels[0:H:tstep, 0:W:tstep], self.colors,
                                     self.class_names)

            outputs["overlay"] = timed("overlay", overlay)
            outputs["tissue"] = timed("tissue", lambda: write_image(p["tissue"], tissue.mask.astype(np.uint8) * 255))

        # the GeoJSON (mostly Python) here, the pyramids and PNGs (compression, outside the GIL) on a thread
        # beside it: on 2 cores the writers take about the longest of them rather than their sum
        if PARALLEL_WRITERS:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1, thread_name_prefix="pathseg-writer") as pool:
                done = pool.submit(lambda: (pyramids(), images()))
                geojson()
                done.result()
        else:
            pyramids()
            geojson()
            images()
        levels.close()
        rows = composition_rows(counts, self.class_names, out_mpp)
        outputs["composition"] = timed("composition", lambda: write_composition_csv(
            p["composition"], rows, mpp=out_mpp, run_id=run_id))
        outputs = {k: outputs[k] for k in ("labels", *(f"prob-{n}" for n in self.class_names), "geojson", "overlay",
                                           "tissue", "composition") if k in outputs}
        if cfg.keep_zarr:
            stitcher.drop_accumulator()
            if p["zarr"].exists():
                shutil.rmtree(p["zarr"])
            os.replace(stitcher.store, p["zarr"])
            outputs["zarr"] = p["zarr"]
        return outputs


class _ProbView:
    """Class ``k`` of a (K, H, W) zarr array as a 2-D uint8 array for the pyramid writer."""

    def __init__(self, probs: Any, k: int) -> None:
        self.probs, self.k = probs, k
        self.shape = probs.shape[1:]

    def __getitem__(self, idx: Any) -> np.ndarray:
        a = np.asarray(self.probs[(self.k,) + tuple(idx)])
        return a if a.dtype == np.uint8 else np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)


def _versions() -> dict[str, str]:
    from pathseg.inference.writers import versions

    return versions()


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


__all__ = ["NoTissueError", "PredictConfig", "SlidePredictor", "TileDataset"]
