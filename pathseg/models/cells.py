"""Cell classifiers: RCCNet (Basha et al. 2018) and the small-patch ResNet-18 teacher.

Both are registered as whole networks (``create_model("rccnet", num_classes=4, dropout=0.5, in_size=32)``),
so the training driver builds them from ``model.name`` and :func:`pathseg.models.checkpoint.load_model`
rebuilds them from a checkpoint like any segmentation model; ``model.encoder`` is ignored (recorded only).
A classifier maps a batch of patches to one logit vector each, (B, 3, S, S) -> (B, C).

RCCNet, from the published description ("RCCNet: An Efficient Convolutional Neural Network for
Histological Routine Colon Cancer Nuclei Classification", ICARCV 2018): input 32x32x3,

    conv 32 3x3 -> conv 32 3x3 -> maxpool 2 -> conv 64 3x3 -> conv 64 3x3 -> maxpool 2
    -> FC 512 -> FC 512 -> FC C,    ReLU after every hidden layer, dropout before each FC.

The paper gives the total, 1,512,868 learnable parameters for C = 4, but not the padding or the
normalisation. The one layout that reproduces that count exactly is the Keras-style block
"first conv 'same', second conv 'valid'" (32 -> 32 -> 30 -> pool 15 -> 15 -> 13 -> pool 6, so the
flattened map is 64·6·6 = 2304) with batch normalisation after every hidden layer:

    convs  896 + 9,248 + 18,496 + 36,928            =    65,568
    BN     2·(32 + 32 + 64 + 64)                    =       384
    FC     2304·512+512 + 512·512+512 + 512·4+4     = 1,444,868
    BN     2·(512 + 512)                            =     2,048
    total                                           = 1,512,868

(without batch norm the same layers have 1,510,436; with 'valid' convolutions only, 1,149,988).
``tests/methods/test_distill_units.py`` checks the count.

The teacher is a torchvision ResNet-18 adapted to small patches: the 7x7 stride-2 stem and its
max-pool become one 3x3 stride-1 convolution (the usual CIFAR adaptation), so a 32 px patch keeps
32x32 maps in the first stage instead of 8x8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pathseg.errors import ConfigError, WeightsError
from pathseg.models.factory import NETWORKS
from pathseg.registry import Registry, did_you_mean

CLASSIFIERS: Registry = Registry("cell classifier")


@CLASSIFIERS.register("rccnet")
class RCCNet(nn.Module):
    """RCCNet for ``in_size`` x ``in_size`` RGB patches (32 as published).

    Shape:
        x (B, 3, 32, 32) float -> logits (B, num_classes).

    Example:
        >>> sum(p.numel() for p in RCCNet(num_classes=4).parameters())
        1512868
    """

    def __init__(self, num_classes: int = 4, *, dropout: float = 0.5, in_size: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                    nn.Conv2d(cout, cout, 3), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(3, 32), *block(32, 64))
        side = ((in_size - 2) // 2 - 2) // 2
        if side < 1:
            raise ValueError(f"RCCNet needs patches of at least 10 px, got {in_size}")
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Sequential(nn.Linear(64 * side * side, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True))
        self.fc2 = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True))
        self.head = nn.Linear(512, num_classes)
        self.num_classes = num_classes

    def set_dropout(self, p: float) -> None:
        self.drop.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x).flatten(1)
        z = self.fc1(self.drop(z))
        z = self.fc2(self.drop(z))
        return self.head(self.drop(z))


@CLASSIFIERS.register("resnet18_small")
class SmallResNet18(nn.Module):
    """ResNet-18 with a 3x3 stride-1 stem and no stem max-pool, for 16-32 px patches (the teacher).

    Shape:
        x (B, 3, S, S) float -> logits (B, num_classes).
    """

    def __init__(self, num_classes: int = 4, *, dropout: float = 0.0, in_size: int = 32, stem_pool: bool = False) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None, num_classes=num_classes)
        net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        if not stem_pool:  # stem_pool keeps the 3x3 stride-2 max-pool: 4x cheaper, for CPU budgets
            net.maxpool = nn.Identity()
        self.drop = nn.Dropout(dropout)
        net.fc = nn.Sequential(self.drop, nn.Linear(512, num_classes))
        self.net = net
        self.num_classes = num_classes

    def set_dropout(self, p: float) -> None:
        self.drop.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def create_classifier(name: str, num_classes: int, **kw) -> nn.Module:
    """A registered cell classifier by name (``rccnet``, ``resnet18_small``)."""
    return CLASSIFIERS.get(name)(num_classes=num_classes, **kw)


def load_state(model: nn.Module, weights: str | Path) -> nn.Module:
    """Load weights from a pathseg checkpoint (``state_dict``, Lightning's ``model.`` prefix stripped) or a
    plain state dict file into ``model``, strictly (a fine-tuning run starts from its student this way)."""
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found; pass a model.ckpt written by `pathseg train` or "
                           "`pathseg distill`")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if any(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"{path}: these weights do not fit {type(model).__name__} "
                           f"({str(e).splitlines()[0].rstrip(':')}); start from a checkpoint of the same "
                           "classifier, patch size and classes") from None
    return model


def _network(name: str):
    """The ``create_model(name, ...)`` builder of a classifier: ``weights`` a checkpoint to start from."""
    def build(*, encoder: str = "resnet18", num_classes: int = 4, weights: str | Path | None = None,
              **options: Any) -> nn.Module:
        import inspect

        cls = CLASSIFIERS.get(name)
        valid = [p for p in inspect.signature(cls).parameters if p != "num_classes"]
        for key in options:
            if key not in valid:
                raise ConfigError(f"model {name}: unknown option {key!r}.{did_you_mean(key, valid)} "
                                  f"Valid options: {', '.join(valid)}")
        model = cls(num_classes=num_classes, **options)
        model.name, model.encoder_name = name, encoder
        if weights is not None:
            load_state(model, weights)
        return model

    return build


for _name in CLASSIFIERS.names():
    NETWORKS.register(_name, _network(_name))
