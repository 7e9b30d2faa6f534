"""ONNX export carries the class metadata and gives the same probabilities as PyTorch."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from wsi_fixtures import synthetic_slide  # noqa: E402
from wsi_helpers import tiny_checkpoint  # noqa: E402

from pathseg.errors import DataError  # noqa: E402
from pathseg.inference import OnnxBackend, load_backend  # noqa: E402
from pathseg.inference.onnx import read_onnx_info  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Exported once through the `pathseg export-onnx` command."""
    import typer
    from typer.testing import CliRunner

    from pathseg.cli.slides import register

    d = tmp_path_factory.mktemp("onnx")
    ckpt = tiny_checkpoint(d / "tiny.ckpt", mpp=2.0, num_classes=3)
    app = typer.Typer()
    register(app)
    r = CliRunner().invoke(app, ["export-onnx", str(ckpt), "--out", str(d / "tiny.onnx"), "--tile", "128"])
    assert r.exit_code == 0, r.output
    return ckpt, d / "tiny.onnx"


def test_onnx_matches_torch(exported):
    ckpt, onnx_path = exported
    info = read_onnx_info(onnx_path)
    assert info["class_names"] == ["class0", "class1", "class2"] and info["mpp"] == 2.0
    batch = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    torch_be, onnx_be = load_backend(ckpt, backend="torch"), load_backend(onnx_path)
    assert isinstance(onnx_be, OnnxBackend)
    a, b = torch_be(batch), onnx_be(batch)
    assert a.shape == b.shape == (2, 3, 128, 128)
    np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(b.sum(1), 1.0, atol=1e-5)


def test_onnx_backend_runs_a_slide(exported, tmp_path):
    from pathseg.cli.slides import predict_slides

    _, onnx_path = exported
    slide, _ = synthetic_slide(tmp_path, 1024, seed=1, truth=False)
    rows = predict_slides([slide], onnx_path, tmp_path / "out", tile=128, backend="auto", show_progress=False)
    assert rows[0]["status"] == "done" and rows[0]["backend"] == "openvino"  # "auto" on CPU, openvino installed


def test_missing_model_or_metadata_is_explained(tmp_path):
    import onnx

    with pytest.raises(DataError, match="not found"):
        read_onnx_info(tmp_path / "nope.onnx")
    graph = onnx.helper.make_graph([], "g", [], [])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "bare.onnx"))
    with pytest.raises(DataError, match="pathseg export-onnx"):
        read_onnx_info(tmp_path / "bare.onnx")


def test_onnx_metadata_is_read_without_the_onnx_package_as_onnx_reads_it(exported, tmp_path):
    """The seek-based reader (what the OpenVINO backend uses) against onnx's own parser: the exported model,
    and a model with several entries, non-ASCII values and a graph before and after them."""
    import onnx

    from pathseg.inference.backends import OpenVinoBackend
    from pathseg.inference.onnx import read_onnx_metadata

    _, onnx_path = exported
    want = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert read_onnx_metadata(onnx_path) == want and "pathseg" in want
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []), producer_name="t", model_version=7)
    onnx.helper.set_model_props(model, {"a": "1", "µm/px": "0.5 ü", "long": "x" * 300, "": "empty key"})
    onnx.save(model, str(tmp_path / "props.onnx"))
    assert read_onnx_metadata(tmp_path / "props.onnx") == {"a": "1", "µm/px": "0.5 ü", "long": "x" * 300,
                                                            "": "empty key"}
    with pytest.raises(DataError, match="pathseg export-onnx"):
        OpenVinoBackend(tmp_path / "props.onnx")  # no pathseg entry
    with pytest.raises(DataError, match="not found"):
        OpenVinoBackend(tmp_path / "nope.onnx")
