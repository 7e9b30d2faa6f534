"""Whole-slide prediction: tissue -> tiles -> batched model -> stitched zarr maps -> per-slide outputs.

:class:`SlidePredictor` runs one slide at a time in bounded memory:

1. open the slide (MPP policy of :func:`pathseg.io.slides.open_slide`);
2. detect tissue at low resolution and lay the tile grid at the model's MPP (:mod:`pathseg.io.tiling`);
3. read tiles in a DataLoader (``workers`` processes; 0 reads in the main process, the fastest on
   2 cores), run them through the backend in batches, stitch the probabilities into zarr
   (:class:`pathseg.inference.stitch.Stitcher`), checkpointing so an interrupted slide resumes;
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
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pathseg.errors import ConfigError, SlideError
from pathseg.inference.backends import Backend
from pathseg.inference.stitch import BLENDS, Stitcher
from pathseg.inference.batch import SlideLock
from pathseg.inference.writers import (
    DEFAULT_MIN_AREA_UM2,
    MAX_POLYGON_SIDE,
    composition_rows,
    label_polygons,
    versions,
    write_composition_csv,
    write_geojson,
    write_overlay,
    write_run_record,
)
from pathseg.io.files import remove_stale_temporaries, write_image
from pathseg.io.pyramid import write_label_pyramid, write_pyramid
from pathseg.io.slides import SlideReader, open_slide
from pathseg.io.tiling import Tile, TilingConfig, grid_tiles, output_size
from pathseg.io.tissue import TISSUE_DETECTORS, detect_tissue


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
        batch_size, workers: DataLoader batch size and reader processes (0 = main process).
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


class TileDataset(Dataset):
    """Reads tiles of one slide; a tile that fails to read comes back with ``ok=False`` and the error.

    With ``context_ratio`` r (a HookNet checkpoint), each item also holds the tile's *context*: the
    ``r·tile`` px region (at ``mpp``) centred on the tile, read at ``r·mpp`` as ``tile`` px -- the geometry of
    :func:`pathseg.data.context.cut_pair` in training, except that beyond the slide's edge it is the
    slide's white rather than a mirror image.

    Shape:
        item -> {"index": int, "image": (tile, tile, 3) uint8 tensor, ["context": same], "ok": bool, "error": str}
    """

    def __init__(self, slide: SlideReader, tiles: list[Tile], order: list[int], *, tile: int, mpp: float,
                 context_ratio: int | None = None) -> None:
        self.slide, self.tiles, self.order, self.tile, self.mpp = slide, tiles, order, tile, mpp
        self.context_ratio = context_ratio

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, Any]:
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
            item[key] = torch.from_numpy(np.ascontiguousarray(img))
        return item


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the MPP-override warning was already shown in the main process


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
        self.progress = progress
        if backend.context_ratio and self.config.tile % 64:
            raise ConfigError(f"{backend.info.get('model')}: the tile size must be a multiple of 64 px for a model "
                              f"that hooks in each tile's context, got {self.config.tile}; pass e.g. --tile 512")
        self.class_names = list(backend.info["class_names"])
        self.colors = [list(c) for c in backend.info.get("colors") or []]
        if len(self.colors) < len(self.class_names):
            from pathseg.engine.checkpoint import default_colors

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

        # -- inference ------------------------------------------------------------------------------
        ds = TileDataset(slide, tiles, order, tile=cfg.tile, mpp=out_mpp, context_ratio=self.backend.context_ratio)
        loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers,
                            worker_init_fn=_worker_init if cfg.workers else None,
                            pin_memory=self.backend.device.startswith("cuda"),
                            persistent_workers=False)
        failed: list[dict[str, Any]] = []
        t_model = t_stitch = 0.0
        t = time.perf_counter()
        done_in_run = 0
        since_ckpt = 0
        interrupted = False
        try:
            for batch in loader:
                ok = batch["ok"].numpy()
                t0 = time.perf_counter()
                read = torch.as_tensor(ok)
                probs = None
                if ok.any():
                    context = batch["context"][read].numpy() if "context" in batch else None
                    probs = self.backend(batch["image"][read].numpy(), context)
                t1 = time.perf_counter()
                j = 0
                for idx, good, err in zip(batch["index"].tolist(), ok, batch["error"]):
                    if good:
                        stitcher.add(idx, probs[j])
                        j += 1
                    else:
                        stitcher.add(idx, None)
                        failed.append({"tile": idx, "x0": tiles[idx].x0, "y0": tiles[idx].y0, "error": err})
                    if idx >= n_done:
                        stitcher.n_done = idx + 1
                t_stitch += time.perf_counter() - t1
                t_model += t1 - t0
                done_in_run += len(ok)
                since_ckpt += len(ok)
                if since_ckpt >= cfg.checkpoint_every:
                    stitcher.checkpoint()
                    since_ckpt = 0
                if self.progress is not None:
                    self.progress(path.name, done_in_run, len(order))
                if stop_after is not None and done_in_run >= stop_after:
                    interrupted = True
                    break
        except KeyboardInterrupt:  # keep what was computed: the next run resumes from here
            stitcher.checkpoint()
            raise
        if interrupted:
            stitcher.checkpoint()
            timings.update(inference_s=time.perf_counter() - t, model_s=t_model, stitch_s=t_stitch)
            return {"slide": str(path), "status": "interrupted", "key": key, "tiles_done": stitcher.n_done,
                    "tiles_total": len(tiles), "tiles_run": done_in_run, "output_size": [W, H], "timings": timings}
        if failed and len(failed) > 0.5 * len(order):
            raise SlideError(f"{path}: {len(failed)} of {len(order)} tiles could not be read "
                             f"(first: {failed[0]['error']}); the slide is probably truncated or corrupt; "
                             f"re-export or re-copy it")
        assert stitcher.finished, "every chunk should be final once all tiles are added"
        timings["inference_s"] = time.perf_counter() - t
        timings["model_s"] = t_model
        timings["stitch_s"] = t_stitch

        # -- outputs --------------------------------------------------------------------------------
        t = time.perf_counter()
        counts = stitcher.class_counts()
        run_id = uuid.uuid4().hex[:12]
        outputs = self._write_outputs(slide, path, p, stitcher, tissue, out_mpp, counts, run_id)
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
            "versions": versions(),
        }
        shutil.rmtree(p["work"], ignore_errors=True)
        remove_stale_temporaries(p["dir"])  # left by a killed earlier run; this run holds the lock
        write_run_record(p["record"], record)
        return record

    def _write_outputs(self, slide, path, p, stitcher: Stitcher, tissue, out_mpp: float,
                       counts: np.ndarray, run_id: str) -> dict[str, Path]:
        cfg = self.config
        stem = p["dir"].name
        outputs: dict[str, Path] = {}
        labels = stitcher.labels
        outputs["labels"] = write_label_pyramid(p["labels"], labels, mpp=out_mpp, colors=self.colors,
                                                class_names=self.class_names)
        if cfg.probabilities and stitcher.probs is not None:
            for k, name in enumerate(self.class_names):
                src = _ProbView(stitcher.probs, k)
                desc = f"pathseg probability of {name} (0-255)|MPP = {out_mpp:g}"
                outputs[f"prob-{name}"] = write_pyramid(p["dir"] / f"{stem}.prob-{_safe(name)}.tif", src,
                                                        mpp=out_mpp, description=desc)
        H, W = labels.shape
        step = max(1, int(np.ceil(max(H, W) / MAX_POLYGON_SIDE)))
        small = np.asarray(labels[::step, ::step])
        scale = step * out_mpp / slide.mpp
        feats = label_polygons(small, self.class_names, self.colors, scale=scale, id_prefix=stem,
                               min_area=cfg.min_area_um2 / slide.mpp ** 2, simplify=cfg.simplify / step,
                               multipolygon=cfg.multipolygon, object_type=self.object_type())
        outputs["geojson"] = write_geojson(p["geojson"], feats, properties={"pathseg_run_id": run_id})
        thumb, thumb_mpp = slide.thumbnail(2048)
        tstep = max(1, int(thumb_mpp / out_mpp))
        outputs["overlay"] = write_overlay(p["overlay"], thumb, np.asarray(labels[::tstep, ::tstep]), self.colors,
                                           self.class_names)
        outputs["tissue"] = write_image(p["tissue"], tissue.mask.astype(np.uint8) * 255)
        rows = composition_rows(counts, self.class_names, out_mpp)
        outputs["composition"] = write_composition_csv(p["composition"], rows, mpp=out_mpp, run_id=run_id)
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


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


__all__ = ["NoTissueError", "PredictConfig", "SlidePredictor", "TileDataset"]
