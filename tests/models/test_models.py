"""Every registered decoder x encoder builds, keeps the input size and trains one step.

One shared test class, parametrised over the registry: adding a model adds its tests.
"""

import pytest
import torch

from pathseg.errors import UnknownNameError, WeightsError
from pathseg.models import DECODERS, ENCODERS, create_model

torch.set_num_threads(2)


# every decoder over resnet18, every encoder under two decoders (deep encoders are slow on CPU)
COMBOS = sorted({(d, "resnet18") for d in DECODERS.names()} | {(d, e) for e in ENCODERS.names() for d in ("unet", "deeplabv3plus")})


@pytest.mark.parametrize(("name", "encoder"), COMBOS)
class TestEveryModel:
    def test_builds_and_trains_one_step(self, name, encoder):
        torch.manual_seed(0)
        model = create_model(name, encoder=encoder, num_classes=3).to(memory_format=torch.channels_last)
        x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 3, (2, 64, 64))
        logits = model(x)
        assert logits.shape == (2, 3, 64, 64)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        before = model.classifier.weight.detach().clone()
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        assert not torch.equal(before, model.classifier.weight), "one SGD step must change the classifier"

    def test_stages_compose_to_forward(self, name, encoder):
        model = create_model(name, encoder=encoder, num_classes=2).eval()
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            z = model.decode(model.encode(x))
            assert z.shape[1] == model.feature_channels
            staged = torch.nn.functional.interpolate(model.classify(z), size=(64, 64), mode="bilinear",
                                                     align_corners=False)
            torch.testing.assert_close(staged, model(x))


def test_unknown_names_list_valid_ones():
    with pytest.raises(UnknownNameError, match="Did you mean 'unet'") as e:
        create_model("unte")
    assert "deeplabv3plus" in str(e.value)
    with pytest.raises(UnknownNameError, match="resnet18"):
        create_model("unet", encoder="resnet19")


def test_local_weights_file_roundtrip(tmp_path):
    from safetensors.torch import save_file

    src = create_model("unet", encoder="resnet18")
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in src.encoder.state_dict().items()}}, tmp_path / "enc.pth")
    save_file({k: v.contiguous() for k, v in src.encoder.state_dict().items()}, str(tmp_path / "enc.safetensors"))
    for f in ("enc.pth", "enc.safetensors"):
        dst = create_model("deeplabv3plus", encoder="resnet18", weights=str(tmp_path / f))
        torch.testing.assert_close(dst.encoder.conv1.weight, src.encoder.conv1.weight)


def test_bad_weights_give_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        create_model("unet", weights=str(tmp_path / "missing.pth"))
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="none of its"):
        create_model("unet", weights=str(tmp_path / "other.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot read"):
        create_model("unet", weights=str(tmp_path / "junk.pth"))


def test_imagenet_offline_says_how_to_pass_a_file(monkeypatch):
    import segmentation_models_pytorch as smp

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(smp.encoders, "get_encoder", offline)
    with pytest.raises(WeightsError, match="weights=/path/to/encoder.pth"):
        create_model("unet", weights="imagenet")
