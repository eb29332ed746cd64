"""The paper's models: one gray channel in, one logit out, ImageNet weights only from local files."""

from __future__ import annotations

import warnings

import pytest
import torch
from torchvision import models as tv

from cxr_fast.errors import CxrError
from cxr_fast.models import ARCHS, GRAY_MEAN, GRAY_STD, Normalize, build_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _no_network_and_empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and any attempt to download fails the test loudly."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def refuse(*args, **kwargs):
        raise AssertionError("build_model tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _net(model: torch.nn.Module) -> torch.nn.Module:
    return model[1]


@pytest.mark.parametrize("arch", ARCHS)
def test_one_channel_in_one_logit_out(arch):
    model = build_model(arch, pretrained=False).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 1)
    with pytest.raises(RuntimeError):  # three-channel input is not accepted: the stem is gray
        model(torch.rand(2, 3, 64, 64))


def test_random_init_warns_once_and_pretrained_false_is_silent():
    with pytest.warns(UserWarning, match="random init"):
        build_model("resnet34")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_model("resnet34", pretrained=False)


def test_resnet34_stem_is_summed_from_a_saved_imagenet_state_dict(tmp_path):
    torch.manual_seed(1)
    reference = tv.resnet34(weights=None).state_dict()
    path = tmp_path / "resnet34-imagenet.pth"
    torch.save(reference, path)
    net = _net(build_model("resnet34", weights=path))
    assert net.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(net.conv1.weight, reference["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(net.layer3[2].conv2.weight, reference["layer3.2.conv2.weight"])
    torch.testing.assert_close(net.bn1.running_var, reference["bn1.running_var"])
    assert net.fc.weight.shape == (1, 512)  # the 1000-way head is dropped, the binary head is new


def test_densenet121_stem_and_old_key_names(tmp_path):
    torch.manual_seed(2)
    reference = tv.densenet121(weights=None).state_dict()
    # torchvision's original DenseNet file spells 'norm1' as 'norm.1' and predates num_batches_tracked.
    old_style = {k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v for k, v in reference.items()
                 if not k.endswith("num_batches_tracked")}
    path = tmp_path / "densenet121-imagenet.pth"
    torch.save(old_style, path)
    net = _net(build_model("densenet121", weights=path))
    torch.testing.assert_close(net.features.conv0.weight, reference["features.conv0.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(net.features.denseblock1.denselayer1.norm1.weight,
                               reference["features.denseblock1.denselayer1.norm1.weight"])
    assert net.classifier.weight.shape == (1, 1024)


def test_weights_from_the_torch_cache_when_present(tmp_path):
    torch.manual_seed(3)
    reference = tv.resnet34(weights=None).state_dict()
    cached = tmp_path / "hub" / "checkpoints" / "resnet34-b627a593.pth"
    cached.parent.mkdir(parents=True)
    torch.save(reference, cached)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no random-init warning: the cache was used
        net = _net(build_model("resnet34"))
    torch.testing.assert_close(net.conv1.weight, reference["conv1.weight"].sum(dim=1, keepdim=True))


def test_bad_weights_are_one_line_errors(tmp_path):
    with pytest.raises(CxrError, match="not found"):
        build_model("resnet34", weights=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CxrError, match="cannot read"):
        build_model("resnet34", weights=junk)
    wrong = tmp_path / "resnet-as-densenet.pth"
    torch.save(tv.resnet34(weights=None).state_dict(), wrong)
    with pytest.raises(CxrError, match="densenet121"):
        build_model("densenet121", weights=wrong)
    with pytest.raises(CxrError, match="unknown architecture"):
        build_model("vgg16", pretrained=False)


def test_normalize_maps_to_gray_imagenet_statistics():
    x = torch.full((1, 1, 4, 4), 0.5)
    torch.testing.assert_close(Normalize()(x), torch.full_like(x, (0.5 - GRAY_MEAN) / GRAY_STD))
