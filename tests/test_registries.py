"""Every registry lists every member whatever was imported first, and one shared test class per registry runs
over all its names, so registering a name adds its tests.

Completeness is checked against two things the registries do not produce themselves: a fresh process that
imports only the module defining the registry (as ``pytest tests/models`` alone, ``load_model`` or a slide
prediction would), compared with one that imports every module of pathseg; and the names written literally in
``<REGISTRY>.register("name")`` calls anywhere in the source (an AST walk).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pathseg
from pathseg.errors import UnknownNameError

PKG = Path(pathseg.__file__).resolve().parent
ROOT = PKG.parent


def _registries() -> dict[str, tuple[str, str]]:
    """``{"module:VAR": (module, VAR)}`` for every ``VAR = Registry(...)`` at the top of a pathseg module."""
    found = {}
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text())
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in tree.body:
            value, targets = (node.value, [node.target]) if isinstance(node, ast.AnnAssign) else \
                (getattr(node, "value", None), getattr(node, "targets", []))
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "Registry":
                for t in targets:
                    if isinstance(t, ast.Name):
                        found[f"{module}:{t.id}"] = (module, t.id)
    return found


def _literal_registrations() -> dict[str, set[str]]:
    """``{VAR: names}`` from every ``VAR.register("literal", ...)`` call (decorator or plain) in the source."""
    out: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register"
                    and isinstance(node.func.value, ast.Name) and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                out.setdefault(node.func.value.id, set()).add(node.args[0].value)
    return out


REGISTRIES = _registries()

_ONLY = """
import importlib, json, sys
found = {}
for key in sys.argv[1:]:
    module, var = key.split(":")
    found[key] = getattr(importlib.import_module(module), var).names()
print(json.dumps(found))
"""

_EVERYTHING = """
import importlib, json, pkgutil, sys
import pathseg
for m in pkgutil.walk_packages(pathseg.__path__, "pathseg."):
    try:
        importlib.import_module(m.name)
    except ModuleNotFoundError as e:  # an optional extra (ray) that is not installed
        if (e.name or "").startswith("pathseg"):
            raise
found = {}
for key in sys.argv[1:]:
    module, var = key.split(":")
    found[key] = getattr(importlib.import_module(module), var).names()
print(json.dumps(found))
"""


def _names(script: str, *keys: str) -> dict[str, list[str]]:
    run = subprocess.run([sys.executable, "-c", script, *keys], capture_output=True, text=True, timeout=600,
                         cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_walk_finds_the_registries_named_in_the_house():
    names = {key.split(":")[1] for key in REGISTRIES}
    assert {"DECODERS", "ENCODERS", "NETWORKS", "ENCODER_FAMILIES", "METHODS", "DATASETS", "TRANSFORMS",
            "STAIN_NORMALIZERS", "READERS", "TISSUE_DETECTORS", "BACKENDS", "BLENDS"} <= names


@pytest.mark.slow
def test_every_registry_is_complete_whatever_is_imported_first():
    everything = _names(_EVERYTHING, *REGISTRIES)
    alone = {}
    for key in REGISTRIES:  # one fresh process per registry, importing only its module
        alone.update(_names(_ONLY, key))
    short = {key: sorted(set(everything[key]) - set(alone[key])) for key in REGISTRIES}
    assert not {k: v for k, v in short.items() if v}, f"names registered only when another module is imported: {short}"
    literal = _literal_registrations()
    for key, (_, var) in REGISTRIES.items():
        missing = literal.get(var, set()) - set(everything[key])
        assert not missing, f"{key}: {sorted(missing)} are registered in the source but not listed"


@pytest.mark.parametrize("key", sorted(REGISTRIES))
def test_every_registry_rejects_a_misspelt_name_listing_the_valid_ones(key):
    import importlib

    module, var = REGISTRIES[key]
    registry = getattr(importlib.import_module(module), var)
    assert len(registry) > 0 and list(registry) == registry.names()
    name = registry.names()[0]
    assert name in registry and registry.get(name) is not None
    with pytest.raises(UnknownNameError) as err:
        registry.get(name + "x")
    msg = str(err.value)
    assert f"{name + 'x'!r}" in msg and "Did you mean '" in msg
    assert msg.split("names: ", 1)[1].split(", ") == registry.names()


# -- datasets ----------------------------------------------------------------------------------------------------

from pathseg.data import DATASETS, SegmentationDataset  # noqa: E402


@pytest.mark.parametrize("name", DATASETS.names())
class TestEveryDataset:
    def test_name_resolves_to_a_dataset_that_takes_a_split(self, name):
        import inspect

        cls = DATASETS.get(name)
        assert issubclass(cls, SegmentationDataset)
        assert "split" in inspect.signature(cls).parameters

    def test_registered_name_is_the_class_name_attribute(self, name):
        cls = DATASETS.get(name)
        assert cls.name == name


def test_datasets_from_the_methods_are_registered_in_the_data_layer():
    assert DATASETS.get("nuclei_patches").__module__ == "pathseg.data.nuclei_patches"
    assert DATASETS.get("pseudo_masks").__module__ == "pathseg.data.pseudo_masks"


def test_pseudo_mask_scores_match_a_hand_count(tmp_path):
    """score_pseudo_masks reads each layer's label maps and scores them against the dataset's masks."""
    from pathseg.data.pseudo_masks import LAYERS, score_pseudo_masks
    from pathseg.io.files import write_image

    class Two(SegmentationDataset):
        name, class_names, ids = "two", ["background", "gland"], ["a", "b"]

        def __init__(self):
            self.root = None

        def load(self, i):
            from pathseg.sample import make_sample

            mask = np.array([[0, 1], [1, 1]]) if i == 0 else np.array([[0, 0], [0, 1]])
            return make_sample(np.zeros((2, 2, 3), np.uint8), mask, id=self.ids[i], num_classes=2)

    for layer in LAYERS:  # every layer predicts everything as gland
        for sid in ("a", "b"):
            write_image(tmp_path / layer / f"{sid}.png", np.ones((2, 2), np.uint8))
    scores = score_pseudo_masks(Two(), tmp_path)
    assert set(scores) == set(LAYERS)
    # 8 pixels: 4 gland truth all right, 4 background truth all wrong -> IoU gland 4/8, background 0
    assert scores["final"]["IoU/gland"] == pytest.approx(0.5) and scores["final"]["accuracy"] == pytest.approx(0.5)


# -- models ------------------------------------------------------------------------------------------------------

from pathseg.models import NETWORKS, create_model  # noqa: E402


from pathseg.errors import ConfigError  # noqa: E402
from pathseg.models.cells import CLASSIFIERS  # noqa: E402


@pytest.mark.parametrize("name", [n for n in NETWORKS.names() if n not in CLASSIFIERS.names()])
class TestEveryNetwork:
    """Whole networks (not a SegModel): builds, and in eval mode maps a 64 px image to (1, K, 64, 64) logits."""

    def test_builds_and_segments_a_64_px_image(self, name):
        import torch

        torch.manual_seed(0)
        net = create_model(name, encoder="resnet18", num_classes=3, tile=64).eval()
        assert (net.name, net.num_classes) == (name, 3)
        with torch.no_grad():
            out = net(torch.rand(1, 3, 64, 64))
        assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", CLASSIFIERS.names())
class TestEveryCellClassifier:
    """The cell classifiers, registered as networks too: a 32 px patch in, (1, K) class logits out."""

    def test_builds_and_classifies_a_32_px_patch(self, name):
        import torch

        assert name in NETWORKS.names()  # the driver builds them with create_model like any model
        torch.manual_seed(0)
        net = create_model(name, num_classes=3).eval()
        with torch.no_grad():
            out = net(torch.rand(2, 3, 32, 32))
        assert out.shape == (2, 3) and torch.isfinite(out).all()
        with pytest.raises(ConfigError, match="unknown option 'tile'"):
            create_model(name, num_classes=3, tile=64)


# -- methods -----------------------------------------------------------------------------------------------------

def _method_configs() -> dict[str, Path]:
    """``{method name: first config file under configs/ that trains it}``, read with the library's loader."""
    from pathseg.engine.config import load_config
    from pathseg.errors import ConfigError

    out: dict[str, Path] = {}
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        try:
            cfg = load_config(path)
        except ConfigError:  # not a training config (e.g. the cell-distillation grid)
            continue
        out.setdefault(cfg.method.name, path)
    return out


from pathseg.methods import METHODS  # noqa: E402

CONFIGS = _method_configs()
#: Methods whose training Config is built in code rather than read from configs/ (each says where); the test
#: below builds every other method from its file, and fails when a listed method is no longer registered.
CONFIG_IN_CODE = {"cell_classifier": "pathseg.engine.distill.stage_config, from configs/distill/cells.yaml's grid"}


def test_the_methods_configured_in_code_are_registered():
    assert set(CONFIG_IN_CODE) <= set(METHODS.names())


@pytest.mark.parametrize("name", METHODS.names())
class TestEveryMethod:
    def test_has_a_config_and_builds_from_it(self, name):
        from pathseg.engine.config import load_config
        from pathseg.engine.pretrain import SSL_METHODS, build_pretrain_method
        from pathseg.engine.train import build_method
        from pathseg.methods import Method

        if name in CONFIG_IN_CODE:
            pytest.skip(f"{name}: its Config is built by {CONFIG_IN_CODE[name]}")
        assert name in CONFIGS, f"method {name!r}: no config under configs/ trains it"
        overrides = ["model.weights=null", "trainer.max_steps=10"]
        cfg = load_config(CONFIGS[name], overrides)
        if "context_weights" in cfg.model.options:
            cfg.model.options["context_weights"] = None
        if name in SSL_METHODS:
            method = build_pretrain_method(cfg)
        else:
            method = build_method(cfg, ["background", "first", "second"], mpp=0.5)
            assert method.model.num_classes == 3
        assert isinstance(method, METHODS.get(name)) and isinstance(method, Method)
