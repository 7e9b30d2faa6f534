"""Joint segmentation + classification network and loss (Ciga & Martel 2021), checked against
independent computations: layer shapes, nearest upsampling, the image head by hand, gradient flow."""

import pytest
import torch
import torch.nn.functional as F

import pathseg.methods  # noqa: F401  (registers model, method and dataset)
from pathseg.models.checkpoint import load_model, save_model_checkpoint
from pathseg.methods.segcls import SegCls, inverse_frequency_weights
from pathseg.models import SegModel, create_model
from pathseg.models.segcls import segcls_forward

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("segcls", encoder="resnet18", num_classes=3).eval()


def test_published_shape_and_both_heads(model):
    assert isinstance(model, SegModel) and model.name == "segcls" and model.encoder_name == "resnet18"
    x = torch.randn(2, 3, 64, 64)
    assert model.encode(x)[-1].shape == (2, 256, 4, 4)  # ResNet-18 cut after layer3: stride 16
    assert not hasattr(model.encoder, "layer4")
    conv = model.decoder.block[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (256, 64, (3, 3), None)
    assert (model.classifier.in_channels, model.classifier.out_channels) == (64, 3) and model.classifier.bias is not None
    head = model.decoder.image_head
    assert (head.fc1.in_channels, head.fc1.out_channels, head.fc1.bias) == (3, 8, None)
    assert (head.fc2.in_channels, head.fc2.out_channels, head.fc2.bias) == (8, 3, None)
    with torch.no_grad():
        low, cls = segcls_forward(model, x, full_size=False)
        full, cls2 = segcls_forward(model, x)
        out = model(x)
    assert low.shape == (2, 3, 8, 8) and cls.shape == (2, 3) and full.shape == out.shape == (2, 3, 64, 64)
    # the published output is the low-resolution logits upsampled by nearest neighbour (pixel replication)
    rep = low.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    torch.testing.assert_close(out, rep, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, rep)
    # the image head by hand: global mean of the segmentation output -> 1x1 conv -> BN (eval) -> ReLU -> 1x1 conv
    bn = head.bn
    h = low.mean((2, 3)) @ head.fc1.weight[:, :, 0, 0].T
    h = torch.relu((h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias)
    torch.testing.assert_close(cls, h @ head.fc2.weight[:, :, 0, 0].T, atol=1e-5, rtol=1e-5)


def test_classification_module_convs_have_no_bias(model):
    # Table A.2: both 1x1 convolutions of the classification module are bias-free (BN follows the first)
    head = model.decoder.image_head
    assert head.fc1.bias is None and head.fc2.bias is None
    assert not [n for n, _ in head.named_parameters() if n.endswith("bias") and not n.startswith("bn.")]


def test_widths_are_configurable():
    m = create_model("segcls", encoder="resnet34", num_classes=4, depth=3, decoder_channels=16, head_channels=4)
    low, cls = segcls_forward(m.eval(), torch.randn(2, 3, 64, 64), full_size=False)
    assert low.shape == (2, 4, 16, 16) and cls.shape == (2, 4)  # cut after layer2 (stride 8), x2 -> stride 4
    assert m.decoder.block[0].in_channels == 128 and m.feature_channels == 16


def test_classification_loss_reaches_and_changes_the_segmentation(model):
    m = create_model("segcls", encoder="resnet18", num_classes=3)
    x = torch.randn(4, 3, 64, 64)
    m.eval()
    with torch.no_grad():
        before = m(x).clone()
    m.train()
    _, cls = segcls_forward(m, x)
    F.cross_entropy(cls, torch.tensor([1, 2, 1, 2])).backward()
    for p in (m.decoder.block[0].weight, m.classifier.weight, m.encoder.layer3[0].conv1.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    with torch.no_grad():
        for p in m.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    m.eval()
    with torch.no_grad():
        assert (m(x) - before).abs().max() > 1e-4


def test_checkpoint_round_trip(model, tmp_path):
    path = save_model_checkpoint(tmp_path / "m.ckpt", model, ["bg", "benign", "malignant"])
    loaded, info = load_model(path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert info["model"] == "segcls"


def test_losses_on_a_mixed_batch_match_hand_computation():
    torch.manual_seed(1)
    m = create_model("segcls", encoder="resnet18", num_classes=3)
    method = SegCls(m, class_names=["bg", "a", "b"], class_weights=[0.5, 1.0, 2.0], channels_last=False)
    x = torch.randn(4, 3, 32, 32)
    mask = torch.full((4, 32, 32), 255, dtype=torch.int64)
    mask[0, :16] = 0
    mask[0, 16:] = 1
    mask[1] = 2
    labels = torch.zeros(4, 3)
    labels[2, 1] = labels[3, 2] = 1  # samples 2 and 3: classification only
    losses = method.training_losses({"image": x, "mask": mask, "labels": labels})
    low, cls = segcls_forward(m, x, full_size=False)  # train mode: same BN batch statistics
    up = low.repeat_interleave(8, 2).repeat_interleave(8, 3)
    logp = F.log_softmax(up, 1)
    w = torch.tensor([0.5, 1.0, 2.0])
    num = den = 0.0
    for b in (0, 1):
        t = mask[b]
        num = num - (w[t] * logp[b].gather(0, t[None])[0]).sum()
        den = den + w[t].sum()
    torch.testing.assert_close(losses["loss/seg"], num / den, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(losses["loss/cls"], F.cross_entropy(cls[2:], torch.tensor([1, 2])), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses["loss"], losses["loss/seg"] + losses["loss/cls"])
    only_cls = method.training_losses({"image": x[2:], "mask": mask[2:], "labels": labels[2:]})
    assert only_cls["loss/seg"] == 0 and torch.isfinite(only_cls["loss"])


def test_cls_loss_weighted_by_inverse_label_frequency():
    from types import SimpleNamespace

    import numpy as np

    def sample(mask, label=None):
        labels = np.zeros(3, np.float32)
        if label is not None:
            labels[label] = 1.0
        return {"image": np.zeros((8, 8, 3), np.uint8), "mask": mask, "labels": labels}

    seg = np.zeros((10, 40), np.int64)  # 400 labelled pixels: 300 of class 0, 100 of class 1
    seg[:, 30:] = 1
    cls = np.full((8, 8), 255, np.int64)  # no labelled pixel: a classification sample
    train = [sample(seg), sample(cls, 1), sample(cls, 1), sample(cls, 2), sample(cls, 1)]
    torch.manual_seed(2)
    method = SegCls(create_model("segcls", encoder="resnet18", num_classes=3), class_names=["bg", "a", "b"],
                    channels_last=False)
    method.trainer = SimpleNamespace(train_dataloader=SimpleNamespace(dataset=train))
    method.on_train_start()
    # w_c = N / (K' n_c) over the K' classes present, 1 for an absent class
    assert method.label_counts == [0, 3, 1] and method.pixel_counts == [300, 100, 0]
    assert method.cls_weights.tolist() == pytest.approx([1.0, 4 / (2 * 3), 4 / (2 * 1)])
    assert method.seg_weights.tolist() == pytest.approx([400 / (2 * 300), 400 / (2 * 100), 1.0])

    x = torch.randn(3, 3, 32, 32)
    mask = torch.full((3, 32, 32), 255, dtype=torch.int64)
    labels = torch.zeros(3, 3)
    labels[0, 1] = labels[1, 2] = labels[2, 1] = 1  # targets 1, 2, 1
    losses = method.training_losses({"image": x, "mask": mask, "labels": labels})
    _, logits = segcls_forward(method.model, x, full_size=False)  # train mode: same BN batch statistics
    nll = -F.log_softmax(logits, 1)
    w1, w2 = 2 / 3, 2.0
    by_hand = (w1 * nll[0, 1] + w2 * nll[1, 2] + w1 * nll[2, 1]) / (w1 + w2 + w1)
    torch.testing.assert_close(losses["loss/cls"], by_hand, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(losses["loss/cls"], nll[[0, 1, 2], [1, 2, 1]].mean())  # the weights matter here


def test_inverse_frequency_weights():
    w = inverse_frequency_weights([600, 200, 0, 200])
    assert w.tolist() == pytest.approx([1000 / 1800, 1000 / 600, 1.0, 1000 / 600])


def test_wrong_model_is_a_clear_error():
    from pathseg.errors import ConfigError

    with pytest.raises(ConfigError, match="model.name=segcls"):
        SegCls(create_model("unet", num_classes=2), class_names=["a", "b"])
