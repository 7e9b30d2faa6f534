"""One of each (issue 16): the ImageNet normalisation constants are written once, and GeoJSON files are parsed
in one place; a planted copy is caught. (The one pyramid writer: tests/io/test_pyramid_callers.py; the one
overlay renderer: tests/io/test_overlay_callers.py.)"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("pathseg", "scripts", "benchmarks")
IMAGENET = {(0.485, 0.456, 0.406): "mean", (0.229, 0.224, 0.225): "std"}


def _py_files(root: Path = ROOT):
    for folder in FOLDERS:
        yield from sorted((root / folder).rglob("*.py"))


def constant_copies(root: Path = ROOT) -> dict[str, list[str]]:
    """``{"mean" | "std": ["path:line", ...]}``: every tuple or list of the three ImageNet numbers in code
    (docstrings and comments are text, not constants, and do not count)."""
    out: dict[str, list[str]] = {"mean": [], "std": []}
    for path in _py_files(root):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in node.elts):
                key = tuple(e.value for e in node.elts)
                if key in IMAGENET:
                    out[IMAGENET[key]].append(f"{path.relative_to(root).as_posix()}:{node.lineno}")
    return out


def geojson_parsers(root: Path = ROOT) -> list[str]:
    """Modules that turn a GeoJSON file into features themselves: they both load JSON and look for the
    GeoJSON structure ("FeatureCollection" / "features")."""
    found = []
    for path in _py_files(root):
        text = path.read_text()
        if "json.load" in text and ('"FeatureCollection"' in text or "'FeatureCollection'" in text) \
                and ('.get("features")' in text or '["features"]' in text):
            found.append(path.relative_to(root).as_posix())
    return found


def test_imagenet_mean_and_std_are_written_once():
    found = constant_copies()
    assert found == {"mean": [found["mean"][0]], "std": [found["std"][0]]}, found
    assert all(v[0].startswith("pathseg/transforms/paired.py:") for v in found.values()), found


def test_geojson_files_are_parsed_in_one_place():
    assert geojson_parsers() == ["pathseg/io/annotations.py"]


def test_planted_copies_are_found(tmp_path):
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "pathseg" / "a.py").write_text("MEAN = (0.485, 0.456, 0.406)\nSTD = [0.229, 0.224, 0.225]\n")
    (tmp_path / "benchmarks" / "b.py").write_text('"""(0.485, 0.456, 0.406) in a docstring"""\n'
                                                  "x = (0.485, 0.456, 0.406)\n")
    assert constant_copies(tmp_path) == {"mean": ["pathseg/a.py:1", "benchmarks/b.py:2"], "std": ["pathseg/a.py:2"]}
    (tmp_path / "scripts" / "c.py").write_text(
        "import json\n\ndef read(p):\n    d = json.loads(open(p).read())\n"
        "    return d.get(\"features\") if d.get(\"type\") == \"FeatureCollection\" else [d]\n")
    assert geojson_parsers(tmp_path) == ["scripts/c.py"]
