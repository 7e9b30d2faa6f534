"""INT8 models: ONNX Runtime static quantisation of an exported fp32 graph, calibrated on tissue tiles.

:func:`quantize_onnx` turns an fp32 export (:mod:`pathseg.inference.onnx`) into an INT8 one:

1. calibration tiles: tissue tiles read at the model's MPP from slides, or tiles cut from training images
   (:func:`calibration_tiles`), normalised exactly as prediction normalises them;
2. ONNX Runtime's pre-processing (shape inference, graph fusion), then static quantisation in QDQ form:
   weights int8 per output channel, activations uint8 with MinMax ranges from the calibration tiles. The
   softmax and the last convolution (the class head) stay fp32, so probabilities keep their resolution
   and near-ties between classes are not decided by 8-bit rounding. On CPUs with VNNI/AMX int8
   instructions (:func:`int8_instructions`) ONNX Runtime runs the u8·s8 kernels on them; without them the
   weights use 7 bits (``reduce_range``), which avoids the overflow of the plain AVX2 u8·s8 path;
3. the check: the INT8 and fp32 graphs label the calibration tiles, and the share of tissue pixels
   (:func:`tissue_pixels`) given the same class is the *agreement*. Below ``min_agreement`` (default 99%)
   the model is refused (:class:`LowAgreementError`, nothing written) unless ``on_low="warn"``.

The result is an ordinary pathseg .onnx whose metadata says ``precision: "int8"`` and holds the
calibration (sources, tiles, agreement), so ``pathseg predict --checkpoint model.int8.onnx`` runs it and
the run record names the precision. :func:`cached_quantize` makes one per (fp32 model, calibration
sources, settings) and reuses it.

Example:
    >>> fp32 = cached_export("model.ckpt")
    >>> path, report = quantize_onnx(fp32, "model.int8.onnx", calibration_tiles(["slide.svs"], tile=512, mpp=0.5))
    >>> report["agreement"]        # share of tissue pixels labelled as by fp32
    0.997

Shape:
    calibration tiles (N, tile, tile, 3) uint8; agreement over the tissue pixels of those tiles.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.errors import ConfigError, DataError
from pathseg.inference.onnx import (
    InputNormaliser,
    SessionSettings,
    cached_file,
    file_digest,
    open_session,
    read_onnx_info,
    set_info,
)
from pathseg.io.files import atomic_path

MIN_AGREEMENT = 0.99
"""Share of calibration-tile tissue pixels an INT8 model must label as its fp32 model does."""

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class LowAgreementError(DataError):
    """The INT8 model labels too few calibration tissue pixels as the fp32 model does."""


@dataclass(frozen=True)
class QuantizeConfig:
    """Settings of a static INT8 quantisation (recorded in the model's metadata).

    Args:
        tiles: calibration tiles (tissue tiles spread over the sources).
        method: calibration of the activation ranges: "minmax", "entropy" or "percentile".
        per_channel: int8 weights with one scale per output channel (else one per tensor).
        keep_head_fp32: leave the class head (last convolution) and the softmax in fp32.
        min_agreement: refuse a model whose calibration agreement is lower (see the module docstring).
        min_tissue: a calibration tile needs at least this tissue fraction.
    """

    tiles: int = 24
    method: str = "minmax"
    per_channel: bool = True
    keep_head_fp32: bool = True
    min_agreement: float = MIN_AGREEMENT
    min_tissue: float = 0.5

    def __post_init__(self) -> None:
        if self.tiles < 1:
            raise ConfigError(f"calibration needs at least one tile, got tiles={self.tiles}")
        if self.method not in CALIBRATION_METHODS:
            raise ConfigError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, "
                              f"got {self.method!r}")
        if not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"min_agreement is a fraction in [0, 1], got {self.min_agreement}")


def int8_instructions() -> list[str]:
    """The CPU's int8 dot-product instructions that ONNX Runtime's kernels use (empty: none found)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    names = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
    found = [n for n in names if n in flags]
    if not found and platform.machine().lower() in ("arm64", "aarch64") and platform.system() == "Darwin":
        found = ["asimddp"]  # every Apple-silicon core has the Arm dot-product instructions
    return found


# ------------------------------------------------------------------------------------------------
# calibration data
# ------------------------------------------------------------------------------------------------

def tissue_pixels(tiles: np.ndarray) -> np.ndarray:
    """Per-pixel tissue of RGB tiles: the saturation rule of the slide tissue detector (no morphology).

    Shape:
        (N, H, W, 3) uint8 -> (N, H, W) bool.
    """
    from pathseg.io.tissue import SaturationTissueDetector

    det = SaturationTissueDetector()
    return np.stack([det.threshold(np.ascontiguousarray(t)) for t in tiles])


def calibration_tiles(sources: list[str | os.PathLike], *, tile: int, mpp: float, n: int = 24,
                      min_tissue: float = 0.5, mpp_override: float | None = None) -> np.ndarray:
    """``n`` tissue tiles from ``sources``: slides (read at ``mpp``, spread evenly over each slide's tissue grid)
    or images and folders of images (training tiles; cut into ``tile`` px pieces, padded white when smaller).

    Tiles are taken round-robin over the sources, so each contributes. Raises :class:`DataError` when the
    sources hold no tissue tile.

    Shape:
        returns (n', tile, tile, 3) uint8 with n' <= n.
    """
    from pathseg.io.files import IMAGE_SUFFIXES, read_image
    from pathseg.io.slides import OPENSLIDE_SUFFIXES, is_slide_file

    per_source: list[list[np.ndarray]] = []
    for src in map(Path, sources):
        if not src.exists():
            raise DataError(f"{src}: calibration source not found; pass slides, images or folders of them")
        files = sorted(p for p in src.iterdir() if not p.name.startswith(".")) if src.is_dir() else [src]
        if len(files) > n:  # spread over the folder rather than its first files
            files = [files[int(i)] for i in np.argsort(_spread_order(len(files)))]
        got: list[np.ndarray] = []
        for f in files:
            if len(got) >= n:
                break
            if f.is_dir():
                continue
            if is_slide_file(f):
                got += _slide_tiles(f, tile=tile, mpp=mpp, n=n, min_tissue=min_tissue, mpp_override=mpp_override)
            elif f.suffix.lower() in IMAGE_SUFFIXES and not f.name.lower().endswith(OPENSLIDE_SUFFIXES):
                got += _image_tiles(read_image(f), tile=tile, min_tissue=min_tissue)
        per_source.append(got)
    out: list[np.ndarray] = []
    depth = 0
    while len(out) < n and any(depth < len(g) for g in per_source):
        for g in per_source:
            if depth < len(g) and len(out) < n:
                out.append(g[depth])
        depth += 1
    if not out:
        raise DataError(f"no calibration tile with >= {min_tissue:.0%} tissue in {', '.join(map(str, sources))}; "
                        "pass slides or training images that hold tissue (export-onnx --calibration)")
    return np.stack(out)


def _spread_order(m: int) -> np.ndarray:
    """A rank for each of ``m`` positions such that taking them by rank visits 0..m-1 coarse to fine."""
    rank = np.empty(m, np.int64)
    seen: set[int] = set()
    order = []
    step = 1 << max(0, (m - 1).bit_length())
    while step >= 1:
        for i in range(0, m, step):
            if i not in seen:
                seen.add(i)
                order.append(i)
        step //= 2
    rank[np.asarray(order)] = np.arange(m)
    return rank


def _slide_tiles(path: Path, *, tile: int, mpp: float, n: int, min_tissue: float,
                 mpp_override: float | None) -> list[np.ndarray]:
    from pathseg.io.slides import open_slide
    from pathseg.io.tiling import TilingConfig, grid_tiles
    from pathseg.io.tissue import detect_tissue

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_slide(path, mpp_override=mpp_override) as s:
            grid = grid_tiles(s, TilingConfig(tile=tile, overlap=0.0, mpp=mpp, min_tissue=min_tissue),
                              tissue=detect_tissue(s))
            if not grid:
                return []
            pick = [grid[int(i)] for i in np.unique(np.linspace(0, len(grid) - 1, min(n, len(grid))).round())]
            return [s.read_region(t.x0, t.y0, tile, tile, mpp=mpp) for t in pick]


def _image_tiles(img: np.ndarray, *, tile: int, min_tissue: float) -> list[np.ndarray]:
    h, w = img.shape[:2]
    out = []
    for y in range(0, max(h - tile, 0) + 1, tile):
        for x in range(0, max(w - tile, 0) + 1, tile):
            t = np.full((tile, tile, 3), 255, np.uint8)
            part = img[y:y + tile, x:x + tile, :3]
            t[:part.shape[0], :part.shape[1]] = part
            if tissue_pixels(t[None]).mean() >= min_tissue:
                out.append(t)
    return out


# ------------------------------------------------------------------------------------------------
# quantisation
# ------------------------------------------------------------------------------------------------

def _labels(session: Any, x: np.ndarray, batch: int = 4) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0].argmax(1).astype(np.uint8)
                           for i in range(0, len(x), batch)])


def label_agreement(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Share of pixels (within ``mask`` when given) where label maps ``a`` and ``b`` agree."""
    same = np.asarray(a) == np.asarray(b)
    if mask is not None:
        mask = np.asarray(mask, bool)
        return float(same[mask].mean()) if mask.any() else float(same.mean())
    return float(same.mean())


def quantize_onnx(fp32_path: str | os.PathLike, out_path: str | os.PathLike, tiles: np.ndarray, *,
                  config: QuantizeConfig | None = None, sources: list[str] | None = None,
                  on_low: str = "raise", threads: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the INT8 model of ``fp32_path`` to ``out_path`` (atomically); returns (path, report).

    ``tiles``: calibration tiles (see :func:`calibration_tiles`). The report holds the agreement over
    tissue pixels and over all pixels of those tiles, the settings and the int8 instructions found; it is
    stored in the model's metadata under ``calibration``. ``on_low``: "raise" (default) refuses a model
    below ``config.min_agreement`` with :class:`LowAgreementError`; "warn" keeps it and warns.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    cfg = config or QuantizeConfig()
    if on_low not in ("raise", "warn"):
        raise ConfigError(f"on_low must be 'raise' or 'warn', got {on_low!r}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    info = read_onnx_info(fp32_path)
    if info.get("precision", "fp32") != "fp32":
        raise ConfigError(f"{fp32_path}: already a {info['precision']} model; quantise the fp32 export")
    tiles = np.asarray(tiles)
    if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8 or not len(tiles):
        raise DataError(f"calibration tiles: expected (N, H, W, 3) uint8 with N >= 1, got {tiles.shape} {tiles.dtype}")
    if info.get("stain"):  # the model sees stain-normalised tiles; so does its calibration
        from pathseg.transforms.stain import normalizer_from_state

        norm = normalizer_from_state(info["stain"], fp32_path, fallback="identity")
        tiles = np.stack([norm.transform(t) for t in tiles])
    x = InputNormaliser(info.get("mean", (0, 0, 0)), info.get("std", (1, 1, 1)))(tiles)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= len(x):
                return None
            self.i += 1
            return {"image": x[self.i - 1:self.i]}

    instructions = int8_instructions()
    work = Path(tempfile.mkdtemp(prefix="pathseg-quantize-"))
    try:
        pre = work / "pre.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:  # in the work folder: where symbolic shape inference gives up, it saves its partial graph to the cwd
                with contextlib.chdir(work):
                    quant_pre_process(str(fp32_path.resolve()), str(pre))
            except Exception:  # noqa: BLE001  it gives up on some graphs (a ViT's position embeddings resampled to
                # the tile inside the graph); ONNX's own shape inference is enough for those
                quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            graph = onnx.load(str(pre), load_external_data=False).graph
            exclude = [nd.name for nd in graph.node if nd.op_type == "Softmax"]
            if cfg.keep_head_fp32:
                exclude += [nd.name for nd in graph.node if nd.op_type == "Conv"][-1:]
            method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                      "percentile": CalibrationMethod.Percentile}[cfg.method]
            quantize_static(str(pre), str(work / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=cfg.per_channel, reduce_range=not instructions,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                            calibrate_method=method, extra_options={"ActivationSymmetric": False})
        settings = SessionSettings(threads=threads)
        ref, _ = open_session(fp32_path, settings)
        q = _session(work / "int8.onnx", settings)
        want, got = _labels(ref, x), _labels(q, x)
        del ref, q
        mask = tissue_pixels(tiles)
        report = {
            "agreement": label_agreement(want, got, mask),
            "agreement_all_pixels": label_agreement(want, got),
            "tiles": len(tiles),
            "tissue_pixels": int(mask.sum()),
            "sources": [str(s) for s in (sources or [])],
            "config": asdict(cfg),
            "format": "QDQ, weights int8 per-channel" if cfg.per_channel else "QDQ, weights int8 per-tensor",
            "int8_instructions": instructions,
            "reduce_range": not instructions,
            "fp32_model": fp32_path.name,
        }
        if report["agreement"] < cfg.min_agreement:
            msg = (f"{fp32_path.name}: the INT8 model labels {report['agreement']:.2%} of the calibration tiles' "
                   f"tissue pixels as the fp32 model does (needs >= {cfg.min_agreement:.0%}, {len(tiles)} tiles); "
                   "calibrate on more or more typical tissue tiles, or predict in fp32 (--precision fp32)")
            if on_low == "raise":
                raise LowAgreementError(msg + "; no INT8 model written")
            warnings.warn(msg, stacklevel=2)
            report["warning"] = msg
        proto = onnx.load(str(work / "int8.onnx"))
        set_info(proto, {**info, "precision": "int8", "calibration": report})
        proto.producer_name = "pathseg"
        with atomic_path(out_path) as tmp:
            onnx.save(proto, str(tmp))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_path, report


def _session(path: Path, settings: SessionSettings) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), settings.options(), providers=["CPUExecutionProvider"])


def _sources_key(sources: list[str | os.PathLike]) -> list[list[Any]]:
    out = []
    for s in map(Path, sources):
        st = s.stat()
        out.append([str(s.resolve()), st.st_size, int(st.st_mtime)])
    return out


def cached_quantize(fp32_path: str | os.PathLike, sources: list[str | os.PathLike], *, tile: int, mpp: float,
                    config: QuantizeConfig | None = None, cache_dir: str | os.PathLike | None = None,
                    on_low: str = "warn", mpp_override: float | None = None,
                    log: Any = None) -> Path:
    """The INT8 model of ``fp32_path`` calibrated on ``sources`` (see :func:`calibration_tiles`), made once and
    reused: keyed by the fp32 model's content, the sources (path, size, mtime) and the settings.

    ``on_low="warn"`` (the default here, for ``pathseg predict --precision int8``) keeps a model below the
    agreement threshold with a warning that also goes into each run record; ``"raise"`` refuses it.
    """
    cfg = config or QuantizeConfig()
    fp32_path = Path(fp32_path)
    blob = json.dumps({"model": file_digest(fp32_path), "sources": _sources_key(sources), "tile": tile, "mpp": mpp,
                       "config": asdict(cfg), "mpp_override": mpp_override}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:12]
    stem = fp32_path.stem

    def make(target: Path) -> Path:
        if log is not None:
            log(f"INT8: calibrating {stem} on {cfg.tiles} tissue tiles of {len(sources)} source(s), once "
                f"(cached as {target.name})")
        tiles = calibration_tiles(list(sources), tile=tile, mpp=mpp, n=cfg.tiles, min_tissue=cfg.min_tissue,
                                  mpp_override=mpp_override)
        path, report = quantize_onnx(fp32_path, target, tiles, config=cfg, sources=[str(s) for s in sources],
                                     on_low=on_low)
        if log is not None:
            log(f"INT8: label agreement with fp32 on the calibration tiles {report['agreement']:.2%} of tissue pixels")
        return path

    return cached_file(f"{stem}-int8-{key}.onnx", make, cache_dir=cache_dir)


__all__ = [
    "CALIBRATION_METHODS",
    "MIN_AGREEMENT",
    "LowAgreementError",
    "QuantizeConfig",
    "cached_quantize",
    "calibration_tiles",
    "int8_instructions",
    "label_agreement",
    "quantize_onnx",
    "tissue_pixels",
]
