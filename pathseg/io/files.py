"""Reading single images with clear errors, and atomic writes (temporary file, then rename)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: Part of every temporary file name :func:`atomic_path` makes (``.<name>.<random>.tmp<suffix>``).
TMP_MARK = ".tmp"


def current_umask() -> int:
    """The process umask: from /proc where it is shown (no change to the process), else set-and-restore."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_path` writer left in ``folder`` (not recursive).

    Only names of :func:`atomic_path`'s own pattern (hidden, ``.tmp`` before the suffix) are touched;
    call it when no writer of that folder is running (e.g. after a slide's run finished under its lock).
    """
    folder = Path(folder)
    gone = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and p.name.startswith(".") and TMP_MARK in p.name[1:] and not p.name.endswith(".lock"):
                stem = p.name[1:].split(".tmp", 1)[0]
                if "." in stem:  # .<name>.<random> -- the atomic_path shape
                    p.unlink(missing_ok=True)
                    gone.append(p)
    return gone


def read_image(path: str | os.PathLike, *, mode: str | None = "RGB") -> np.ndarray:
    """Read an image file into a numpy array.

    ``mode="RGB"`` gives uint8 (H, W, 3); ``mode=None`` keeps the stored channels and depth (label maps).
    Raises :class:`DataError` naming the file when it is missing or cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path or the dataset root")
    try:
        with Image.open(path) as im:
            im.load()
            if mode is not None and im.mode != mode:
                im = im.convert(mode)
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        # Pillow does not read every TIFF (e.g. some compressions); try tifffile before giving up.
        if path.suffix.lower() in (".tif", ".tiff"):
            try:
                import tifffile

                arr = tifffile.imread(path)
                if mode == "RGB":
                    if arr.ndim == 2:
                        arr = np.repeat(arr[..., None], 3, axis=2)
                    arr = arr[..., :3]
                return np.asarray(arr)
            except Exception:
                pass
        raise DataError(f"{path}: cannot read this image ({e}); the file may be corrupt or truncated, re-export it") from e


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    An interrupted write leaves the old file (or nothing), never a half-written file. The file gets the
    mode a plain ``open(path, "w")`` would give (0666 less the umask), not ``mkstemp``'s private 0600, so
    colleagues and viewers running as other users can read the results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_MARK + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_image(path: str | os.PathLike, array: np.ndarray, *, png_level: int | None = None) -> Path:
    """Write a PNG/TIFF/JPEG atomically; format from the suffix. ``png_level``: zlib level of a PNG (0-9;
    None: Pillow's default, 6); the pixels are the same at every level, only size and time change."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(path.suffix.lower(), "PNG")
        kw = {"compress_level": int(png_level)} if fmt == "PNG" and png_level is not None else {}
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format=fmt, **kw)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files in ``folder`` (sorted, not recursive)."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
