"""The paper's models and their initial weights.

Models: one gray channel in; fastai07 gives fastai 0.7's head and a two-way log-softmax, modern one logit.
Weights: chosen explicitly (imagenet or random), from --weights, the torch cache, or torchvision's URL
(served here by a local HTTP server in place of the network); offline stops in one line; the sha256 is
recorded.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models as tv

from cxr_fast import weights as W
from cxr_fast.errors import CxrError
from cxr_fast.models import ARCHS, GRAY_MEAN, GRAY_STD, Normalize, build_model, positive_logit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _private_torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache of the test's own (``$TORCH_HOME/hub``)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def _body(model: nn.Module) -> nn.Module:
    return model[1]


def _head(model: nn.Module) -> nn.Module:
    return model[2].head


# --- the two recipes' models ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_fastai07_head_is_fastai_0_7s_and_outputs_two_way_log_softmax(arch):
    model = build_model(arch, "fastai07").eval()
    head = _head(model)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["ConcatPool", "BatchNorm1d", "Dropout", "Linear", "ReLU",
                     "BatchNorm1d", "Dropout", "Linear", "LogSoftmax"]
    features = 512 if arch == "resnet34" else 1024
    assert head[3].in_features == 2 * features and head[3].out_features == 512 and head[7].out_features == 2
    assert (head[2].p, head[6].p) == (0.25, 0.5)
    assert not head[3].bias.detach().any() and not head[7].bias.detach().any()  # fastai's cond_init
    with torch.no_grad():
        out = model(torch.rand(3, 1, 64, 64))
    assert out.shape == (3, 2)
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(3))
    torch.testing.assert_close(positive_logit(out), out[:, 1] - out[:, 0])
    with pytest.raises(RuntimeError):  # three-channel input is not accepted: the stem is gray
        model(torch.rand(2, 3, 64, 64))


def test_fastai07_densenet_body_ends_in_norm5_without_relu_and_resnet_is_cut_after_layer4():
    dense = _body(build_model("densenet121", "fastai07"))
    assert type(list(dense.children())[-1]).__name__ == "BatchNorm2d"  # fastai's dn121 = densenet121().features
    res = _body(build_model("resnet34", "fastai07"))
    assert [type(m).__name__ for m in res][-2:] == ["Sequential", "Sequential"] and len(res) == 8


def test_concat_pool_is_max_then_mean():
    x = torch.arange(8.0).view(1, 2, 2, 2)
    out = _head(build_model("resnet34", "fastai07"))[0](x)
    torch.testing.assert_close(out, torch.tensor([[3.0, 7.0, 1.5, 5.5]]))


@pytest.mark.parametrize("arch", ARCHS)
def test_modern_recipe_outputs_one_logit(arch):
    model = build_model(arch, "modern").eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 1)
    torch.testing.assert_close(positive_logit(out), out.view(-1))


def test_head_runs_in_float32_under_bf16_autocast():
    model = build_model("resnet34", "fastai07").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 1, 32, 32))
    assert out.dtype == torch.float32


def test_positive_logit_keeps_the_order_where_a_sigmoid_underflows():
    logits = torch.tensor([-340.0, -230.0, -300.0])
    assert torch.all(torch.sigmoid(logits) == 0)  # the bug: every probability is exactly 0
    two_way = torch.stack([torch.zeros(3), logits], dim=1).log_softmax(dim=1)
    torch.testing.assert_close(positive_logit(two_way), logits)
    assert positive_logit(two_way).argsort().tolist() == [0, 2, 1]


# --- ImageNet state dicts ------------------------------------------------------------------------------------

def test_resnet34_stem_is_summed_from_a_saved_imagenet_state_dict(tmp_path):
    torch.manual_seed(1)
    reference = tv.resnet34(weights=None).state_dict()
    path = tmp_path / "resnet34-imagenet.pth"
    torch.save(reference, path)
    body = _body(build_model("resnet34", "fastai07", weights=path))
    assert body[0].weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(body[0].weight, reference["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(body[6][2].conv2.weight, reference["layer3.2.conv2.weight"])
    torch.testing.assert_close(body[1].running_var, reference["bn1.running_var"])


def test_densenet121_stem_and_old_key_names(tmp_path):
    torch.manual_seed(2)
    reference = tv.densenet121(weights=None).state_dict()
    # torchvision's original DenseNet file spells 'norm1' as 'norm.1' and predates num_batches_tracked.
    old_style = {k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v for k, v in reference.items()
                 if not k.endswith("num_batches_tracked")}
    path = tmp_path / "densenet121-imagenet.pth"
    torch.save(old_style, path)
    features = _body(build_model("densenet121", "modern", weights=path)).features
    torch.testing.assert_close(features.conv0.weight, reference["features.conv0.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(features.denseblock1.denselayer1.norm1.weight,
                               reference["features.denseblock1.denselayer1.norm1.weight"])


def test_bad_weights_are_one_line_errors(tmp_path):
    with pytest.raises(CxrError, match="not found"):
        build_model("resnet34", weights=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CxrError, match="cannot read"):
        build_model("resnet34", weights=junk)
    # A file that is not a safe tensor pickle: torch's reason, never its advice to load with weights_only=False.
    text = tmp_path / "notes.pth"
    text.write_text('{"a": 1}\n')
    with pytest.raises(CxrError) as err:
        build_model("resnet34", weights=text)
    message = str(err.value)
    assert "not a tensor file torch.load reads safely" in message and "weights_only" not in message
    assert "\n" not in message and "torchvision ImageNet state dict" in message
    wrong = tmp_path / "resnet-as-densenet.pth"
    torch.save(tv.resnet34(weights=None).state_dict(), wrong)
    with pytest.raises(CxrError, match="densenet121"):
        build_model("densenet121", weights=wrong)
    with pytest.raises(CxrError, match="unknown architecture"):
        build_model("vgg16")
    with pytest.raises(CxrError, match="unknown recipe"):
        build_model("resnet34", "fastai2")


def test_normalize_maps_to_gray_imagenet_statistics():
    x = torch.full((1, 1, 4, 4), 0.5)
    torch.testing.assert_close(Normalize()(x), torch.full_like(x, (0.5 - GRAY_MEAN) / GRAY_STD))


# --- choosing the init -----------------------------------------------------------------------------------------

def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_random_init_reads_nothing_and_records_itself():
    choice = W.resolve_init("resnet34", "random")
    assert choice.record() == {"init": "random", "weights_file": None, "weights_sha256": None}
    with pytest.raises(CxrError, match="contradicts"):
        W.resolve_init("resnet34", "random", weights="some.pth")


def test_weights_file_is_hashed(tmp_path):
    path = tmp_path / "mine.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    choice = W.resolve_init("resnet34", "imagenet", weights=path)
    assert choice.weights_sha256 == _sha(path) and choice.weights_file == str(path.resolve())


def test_cached_torchvision_file_is_used_and_checked_against_its_name(tmp_path):
    cache = W.cache_path(W.imagenet_url("resnet34"))
    assert str(cache).startswith(str(tmp_path / "torch")) and cache.name == "resnet34-b627a593.pth"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not the real file")
    with pytest.raises(CxrError, match="damaged"):  # sha256 does not start with b627a593
        W.resolve_init("resnet34", "imagenet", download=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_with_no_cached_file_stops_in_one_line_naming_both_ways_out(monkeypatch):
    monkeypatch.setattr(W, "imagenet_url", lambda arch: f"http://127.0.0.1:{_closed_port()}/resnet34-b627a593.pth")
    with pytest.raises(CxrError) as err:
        W.resolve_init("resnet34", "imagenet", progress=False)
    message = str(err.value)
    assert "\n" not in message and "--weights PATH" in message and "--init random" in message


@pytest.fixture
def weights_server(tmp_path):
    """A local HTTP server holding a torchvision-format densenet121 state dict named as torchvision names it."""
    torch.manual_seed(5)
    staging = tmp_path / "served" / "staging.pth"
    staging.parent.mkdir()
    torch.save(tv.densenet121(weights=None).state_dict(), staging)
    name = f"densenet121-{_sha(staging)[:8]}.pth"
    staging.rename(staging.parent / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(staging.parent))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{name}", staging.parent / name
    server.shutdown()


def test_download_goes_to_the_torch_cache_once_and_is_recorded(weights_server, monkeypatch):
    url, served = weights_server
    monkeypatch.setattr(W, "imagenet_url", lambda arch: url)
    first = W.resolve_init("densenet121", "imagenet", progress=False)
    assert first.source == "downloaded" and first.weights_sha256 == _sha(served)
    assert Path(first.weights_file) == W.cache_path(url) and Path(first.weights_file).is_file()
    second = W.resolve_init("densenet121", "imagenet", download=False)  # no network needed any more
    assert second.source == "torch cache" and second.weights_sha256 == first.weights_sha256
    model = build_model("densenet121", "fastai07", weights=second.weights_file)
    reference = torch.load(served, weights_only=True)
    torch.testing.assert_close(_body(model).conv0.weight, reference["features.conv0.weight"].sum(1, keepdim=True))
