"""The model registries are complete whatever was imported first: every model family registers in pathseg.models,
so ``pytest tests/models`` alone, ``load_model`` and slide prediction see the same names as a training run."""

from __future__ import annotations

import json
import subprocess
import sys

_NAMES = """
import json, sys
from pathseg.models.factory import DECODERS, ENCODER_FAMILIES, ENCODERS, NETWORKS

def names():
    return [DECODERS.names(), ENCODERS.names(), NETWORKS.names(), ENCODER_FAMILIES.names()]

first = names()
light = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning") or
               m.startswith("pathseg.methods"))
import pathseg.methods  # noqa: F401  (every training method)
print(json.dumps({"first": first, "after_methods": names(), "training_modules": light}))
"""


def test_every_model_family_is_registered_without_the_training_methods():
    run = subprocess.run([sys.executable, "-c", _NAMES], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["training_modules"] == []
    assert got["first"] == got["after_methods"]
    decoders, _, networks, families = got["first"]
    assert {"unet", "unet_tconv", "unetplusplus_tconv", "cam", "unet_gated", "segcls"} <= set(decoders)
    assert networks == ["hooknet", "rccnet", "resnet18_small"] and families == ["vit"]  # + the cell classifiers
