"""The layer order of pathseg holds: no import points up the order, no two modules import each other.

Layers, lowest first (docs: shared/STYLE.md, "The house"); a module may import its own layer and the ones below:

    0  base        pathseg.errors, pathseg.registry, pathseg.sample (the sample contract), pathseg.collectives
    1  io          pathseg.io
    2  transforms, metrics, losses
    3  models, data
    4  methods
    5  engine
    6  inference
    7  scale
    8  cli

``pathseg/__init__.py`` (the top-level API) is outside the order: every module may import it (``__version__``),
and it may reach any layer, but only inside functions (a lazy ``__getattr__``), so ``import pathseg.io`` never
pulls in the models or the training stack.

What counts as an import: every ``import`` / ``from ... import`` of a pathseg module anywhere in a file -- at
module level, inside functions, under ``try`` or ``if`` -- and ``importlib.import_module("pathseg....")`` with a
literal name. A lazy import changes when a dependency is paid for, not which layer depends on which, so it
counts; there is no exemption for "optional" features (optional *third-party* packages such as Ray are not
pathseg modules and are not checked). ``from pathseg.a import b`` names the module ``pathseg.a.b`` when that
file exists, else ``pathseg.a``. Dynamic names (``import_module(f"pathseg.cli.{name}")``) are not seen.

Two more rules: sibling packages of one layer (models and data, say) import each other in one direction only,
and cycles are strongly connected components of the module graph.

The checker reads the source with ``ast`` (no import-linter dependency); the planted-module tests below show
that it fails on an upward import, a cycle and an eager top-level import, in a temporary copy of the package.
"""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "pathseg"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("pathseg.errors", "pathseg.registry", "pathseg.sample", "pathseg.collectives", "pathseg.configfile")),
    ("io", ("pathseg.io",)),
    ("transforms/metrics/losses", ("pathseg.transforms", "pathseg.metrics", "pathseg.losses")),
    ("models/data", ("pathseg.models", "pathseg.data")),
    ("methods", ("pathseg.methods",)),
    ("engine", ("pathseg.engine",)),
    ("inference", ("pathseg.inference",)),
    ("scale", ("pathseg.scale",)),
    ("cli", ("pathseg.cli",)),
]
API = "pathseg"  # the root package: see the module docstring

# Upward imports that remain because the file to change is being edited elsewhere. Each says what removes it;
# the test fails when an entry is no longer needed, so the list only shrinks.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

# Import cycles that remain, as the modules of each strongly connected component; a smaller cycle inside one
# passes, a larger or new one fails.
ALLOWED_CYCLES: dict[frozenset[str], str] = {}


# ---------------------------------------------------------------------------------------------- the checker
@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. "pathseg.methods.base"
    target: str  # imported pathseg module
    path: Path  # relative to the folder holding the package, e.g. pathseg/methods/base.py
    line: int
    lazy: bool  # inside a function

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def module_files(root: Path) -> dict[str, tuple[Path, bool]]:
    """``{dotted module name: (file, is package __init__)}`` for every .py file under ``root`` (the package dir)."""
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def _closest(name: str, modules: dict[str, tuple[Path, bool]]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.AST, module: str, is_pkg: bool, modules: dict[str, tuple[Path, bool]], pkg: str) -> list[str]:
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name.split(".")[0] == pkg]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            frm = ".".join(base + ([node.module] if node.module else []))
        else:
            frm = node.module or ""
        if frm.split(".")[0] != pkg:
            return []
        names = [f"{frm}.{a.name}" if f"{frm}.{a.name}" in modules else frm for a in node.names]
    elif isinstance(node, ast.Call):
        f = node.func
        fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if fname in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and node.args[0].value.split(".")[0] == pkg:
            names = [node.args[0].value]
    found = [_closest(n, modules) for n in names]
    return sorted({t for t in found if t and t != module})


def import_graph(root: Path = PACKAGE_ROOT) -> list[Import]:
    """Every import of a package module by a package module under ``root``, lazy ones included."""
    modules = module_files(root)
    edges: list[Import] = []
    for module, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(root.parent)

        def visit(node: ast.AST, lazy: bool) -> None:
            for child in ast.iter_child_nodes(node):
                inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, (ast.Import, ast.ImportFrom, ast.Call)):
                    for t in _targets(child, module, is_pkg, modules, root.name):
                        edges.append(Import(module, t, rel, child.lineno, lazy))
                visit(child, inner)

        visit(tree, False)
    return edges


def layer_of(module: str) -> int | None:
    """Index in LAYERS of ``module``'s layer; None for the root package and for modules no layer names."""
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def unplaced_modules(edges: list[Import], root: Path = PACKAGE_ROOT) -> list[str]:
    return sorted(m for m in module_files(root) if m != API and layer_of(m) is None)


def upward_imports(edges: list[Import]) -> list[Import]:
    """Imports of a higher layer (the root package's own imports are checked by :func:`eager_api_imports`)."""
    out = []
    for e in edges:
        src, dst = layer_of(e.source), layer_of(e.target)
        if e.source != API and src is not None and dst is not None and dst > src:
            out.append(e)
    return out


def eager_api_imports(edges: list[Import]) -> list[Import]:
    """Module-level imports in the root package's __init__ (it must import lazily)."""
    return [e for e in edges if e.source == API and not e.lazy]


def _sccs(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(comp)
    return out


def import_cycles(edges: list[Import]) -> list[set[str]]:
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    return sorted(_sccs(graph), key=sorted)


def sibling_cycles(edges: list[Import]) -> list[set[str]]:
    """Packages of one layer (e.g. models and data) that import each other, at package level."""
    def package(m: str) -> str:
        return ".".join(m.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for e in edges:
        a, b = package(e.source), package(e.target)
        if a != b and layer_of(e.source) is not None and layer_of(e.source) == layer_of(e.target):
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
    return _sccs(graph)


def _describe(e: Import) -> str:
    src, dst = layer_of(e.source), layer_of(e.target)
    return (f"{e.where()}: {e.source} ({LAYERS[src][0]}) imports {e.target} ({LAYERS[dst][0]}), a higher layer"
            f"{' (inside a function)' if e.lazy else ''}")


def _cycle_text(comp: set[str], edges: list[Import]) -> str:
    inner = sorted({f"{e.source} -> {e.target} ({e.where()})" for e in edges if e.source in comp and e.target in comp})
    return "cycle of " + ", ".join(sorted(comp)) + ":\n    " + "\n    ".join(inner)


def _unallowed_cycles(cycles: list[set[str]]) -> list[set[str]]:
    return [c for c in cycles if not any(c <= allowed for allowed in ALLOWED_CYCLES)]


# ---------------------------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def edges() -> list[Import]:
    return import_graph(PACKAGE_ROOT)


def test_every_module_has_a_layer(edges):
    missing = unplaced_modules(edges)
    assert not missing, f"modules in no layer (add their package to LAYERS in {__file__}): {missing}"


def test_no_import_points_up_the_layer_order(edges):
    bad = [e for e in upward_imports(edges) if (e.source, e.target) not in ALLOWED_UPWARD]
    assert not bad, "imports against the layer order " + " < ".join(n for n, _ in LAYERS) + ":\n" + \
        "\n".join(_describe(e) for e in bad)


def test_no_import_cycles(edges):
    bad = _unallowed_cycles(import_cycles(edges))
    assert not bad, "\n".join(_cycle_text(c, edges) for c in bad)


def test_sibling_packages_import_one_way(edges):
    bad = sibling_cycles(edges)
    assert not bad, f"packages of one layer that import each other: {[sorted(c) for c in bad]}"


def test_top_level_api_imports_lazily(edges):
    bad = eager_api_imports(edges)
    assert not bad, ("pathseg/__init__.py imports at module level (import inside __getattr__ instead, so "
                     "`import pathseg.io` stays light): " + ", ".join(f"{e.target} ({e.where()})" for e in bad))


def test_allowed_lists_hold_only_what_remains(edges):
    up = {(e.source, e.target) for e in upward_imports(edges)}
    stale = [k for k in ALLOWED_UPWARD if k not in up]
    cycles = import_cycles(edges)
    stale_cycles = [sorted(a) for a in ALLOWED_CYCLES if not any(c <= a for c in cycles)]
    assert not stale and not stale_cycles, (f"fixed -- remove from ALLOWED_UPWARD: {stale}; "
                                            f"from ALLOWED_CYCLES: {stale_cycles}")


# ---------------------------------------------------------------------------------------------- the checker fails
@pytest.fixture
def copy(tmp_path) -> Path:
    """A temporary copy of the package's sources, to plant modules in."""
    dst = tmp_path / "pathseg"
    shutil.copytree(PACKAGE_ROOT, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def test_the_copy_passes_like_the_package(copy):
    e = import_graph(copy)
    assert not [x for x in upward_imports(e) if (x.source, x.target) not in ALLOWED_UPWARD]
    assert not _unallowed_cycles(import_cycles(e)) and not eager_api_imports(e)


def test_a_planted_upward_import_fails(copy):
    (copy / "io" / "planted.py").write_text(
        "def read():\n"
        "    from pathseg.engine.train import train  # lazy, still an upward import\n"
        "    return train\n")
    (copy / "losses" / "planted_rel.py").write_text("from ..methods import base\n")
    (copy / "models" / "planted_pkg.py").write_text("import pathseg.inference.writers\n")
    found = {(x.source, x.target, x.line, x.lazy) for x in upward_imports(import_graph(copy))}
    assert ("pathseg.io.planted", "pathseg.engine.train", 2, True) in found
    assert ("pathseg.losses.planted_rel", "pathseg.methods.base", 1, False) in found
    assert ("pathseg.models.planted_pkg", "pathseg.inference.writers", 1, False) in found
    with pytest.raises(AssertionError, match=r"planted\.py:2: pathseg\.io\.planted \(io\) imports "
                                             r"pathseg\.engine\.train \(engine\)"):
        test_no_import_points_up_the_layer_order(import_graph(copy))


def test_a_planted_cycle_fails(copy):
    (copy / "models" / "planted_a.py").write_text("from pathseg.models.planted_b import B\nA = 1\n")
    (copy / "models" / "planted_b.py").write_text("def f():\n    from pathseg.models import planted_a\nB = 2\n")
    assert {"pathseg.models.planted_a", "pathseg.models.planted_b"} in import_cycles(import_graph(copy))
    with pytest.raises(AssertionError, match="cycle of pathseg.models.planted_a, pathseg.models.planted_b"):
        test_no_import_cycles(import_graph(copy))


def test_the_cycle_allow_list_passes_only_what_it_names(tmp_path, monkeypatch):
    """ALLOWED_CYCLES is empty today; its mechanism still works: a listed cycle passes, a cycle grown past the
    listed modules fails, and an entry no cycle needs any more is reported as stale. (In a two-module package,
    so that what the real package holds does not matter here.)"""
    copy = tmp_path / "pathseg"
    (copy / "models").mkdir(parents=True)
    for init in (copy / "__init__.py", copy / "models" / "__init__.py"):
        init.write_text("")
    (copy / "models" / "planted_a.py").write_text("from pathseg.models.planted_b import B\nA = 1\n")
    (copy / "models" / "planted_b.py").write_text("from pathseg.models import planted_a\nB = 2\n")
    pair = frozenset({"pathseg.models.planted_a", "pathseg.models.planted_b"})
    monkeypatch.setitem(ALLOWED_CYCLES, pair, "planted")
    test_no_import_cycles(import_graph(copy))  # listed: passes
    (copy / "models" / "planted_b.py").write_text("from pathseg.models import planted_a, planted_c\nB = 2\n")
    (copy / "models" / "planted_c.py").write_text("from pathseg.models.planted_a import A\n")
    with pytest.raises(AssertionError, match="cycle of pathseg.models.planted_a, pathseg.models.planted_b, "
                                             "pathseg.models.planted_c"):
        test_no_import_cycles(import_graph(copy))
    with pytest.raises(AssertionError, match=r"from ALLOWED_CYCLES: \[\['pathseg.models.planted_a'"):
        test_allowed_lists_hold_only_what_remains(import_graph(PACKAGE_ROOT))


def test_a_planted_sibling_cycle_fails(copy):
    (copy / "data" / "planted.py").write_text("from pathseg.models.factory import create_model\n")
    (copy / "models" / "planted.py").write_text("from pathseg.data.base import DATASETS\n")
    assert {"pathseg.data", "pathseg.models"} in sibling_cycles(import_graph(copy))


def test_a_planted_module_outside_the_layers_fails(copy):
    (copy / "planted.py").write_text("X = 1\n")
    assert unplaced_modules(import_graph(copy), copy) == ["pathseg.planted"]


def test_an_eager_top_level_import_fails_and_a_lazy_one_passes(copy):
    init = copy / "__init__.py"
    init.write_text(init.read_text() + "\nfrom pathseg.models import create_model\n")
    assert [e.target for e in eager_api_imports(import_graph(copy))] == ["pathseg.models"]
    init.write_text(init.read_text().replace(
        "\nfrom pathseg.models import create_model\n",
        "\ndef __getattr__(name):\n    from pathseg.models import create_model\n    return create_model\n"))
    e = import_graph(copy)
    assert not eager_api_imports(e) and not upward_imports([x for x in e if x.source == "pathseg"])


# ---------------------------------------------------------------------------------------------- what predicting imports
TRAINING_STACK = ("lightning", "pytorch_lightning", "lightning_fabric", "pathseg.methods", "pathseg.engine.train",
                  "pathseg.engine.config", "pathseg.engine.data", "pathseg.engine.distributed",
                  "pathseg.engine.pretrain")

_PREDICT = """
import json, sys
from pathseg.inference.backends import load_backend
from pathseg.inference.predictor import PredictConfig, SlidePredictor

slide, out, ckpts = sys.argv[1], sys.argv[2], sys.argv[3:]
for i, ckpt in enumerate(ckpts):
    config = PredictConfig(tile=128, overlap=0.0, batch_size=2, min_tissue=0.0)
    backend = load_backend(ckpt, backend="torch", device="cpu", threads=1)
    rec = SlidePredictor(backend, config).predict(slide, f"{out}/{i}")
    assert rec["status"] == "done", rec
stack = %r
print(json.dumps(sorted(m for m in sys.modules if any(m == s or m.startswith(s + ".") for s in stack))))
""" % (TRAINING_STACK,)


def test_predicting_a_slide_imports_no_training_code(tmp_path):
    """A slide predicted from checkpoints of the families once registered by methods/ (unet_tconv) or defined
    beside their method (hooknet) loads neither Lightning nor a training method, in a fresh interpreter."""
    import json
    import subprocess
    import sys

    import torch

    from pathseg.data.synth import write_synthetic_slide
    from pathseg.models import create_model
    from pathseg.models.checkpoint import save_model_checkpoint

    torch.manual_seed(0)
    slide = write_synthetic_slide(tmp_path / "slide.tif", 256, mpp=2.0, seed=0, tile=128)
    ckpts = [save_model_checkpoint(tmp_path / f"{name}.ckpt", create_model(name, num_classes=2, **opts),
                                   ["background", "tissue"], mpp=2.0)
             for name, opts in (("unet_tconv", {}), ("hooknet", {"ratio": 2, "tile": 128}))]
    run = subprocess.run([sys.executable, "-c", _PREDICT, str(slide), str(tmp_path / "out"), *map(str, ckpts)],
                         capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []
