"""What the paper leaves open (DESIGN.md, "What the paper leaves open"), held where it is code or arithmetic.

- The fastai07 head's BatchNorm1d weights: ``head_bn_init="uniform"`` draws them from U(0, 1) as the paper's
  PyTorch (0.3/0.4) did; the default stays today's ones and draws nothing new.
- Grey input: the paper's per-channel ImageNet statistics on three copies are a one-channel convolution plus a
  border map; in the interior that map is a per-filter constant, which a training-mode BatchNorm removes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cxr_fast.errors import CxrError
from cxr_fast.models import GRAY_MEAN, GRAY_STD, HEAD_BN_INITS, Normalize, build_model

pytestmark = pytest.mark.usefixtures("one_thread")

# fastai 0.7's imagenet_stats (old/fastai/transforms.py, commit c752c9f, l. 711), applied per channel.
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)


def _head_norms(model: nn.Module) -> list[nn.BatchNorm1d]:
    return [m for m in model[2].head if isinstance(m, nn.BatchNorm1d)]


# --- the head's BatchNorm1d weights ---------------------------------------------------------------------------

def test_uniform_head_bn_init_draws_weights_in_0_1_that_are_not_all_one():
    torch.manual_seed(0)
    norms = _head_norms(build_model("resnet34", "fastai07", head_bn_init="uniform"))
    assert len(norms) == 2
    for bn in norms:
        w = bn.weight.detach()
        assert float(w.min()) >= 0.0 and float(w.max()) < 1.0
        assert 0.45 < float(w.mean()) < 0.55  # U(0, 1) over 512 or 1024 weights, not a constant
        assert len(torch.unique(w)) > 0.9 * w.numel()
        assert not bn.bias.detach().any()  # the bias stays 0, as PyTorch 0.3 set it


def test_default_head_bn_init_is_todays_ones():
    assert HEAD_BN_INITS[0] == "ones"
    for bn in _head_norms(build_model("densenet121", "fastai07")):
        assert torch.equal(bn.weight.detach(), torch.ones_like(bn.weight))


def test_uniform_head_bn_init_changes_only_the_head_batch_norm_weights():
    """Drawn after everything else: the default model of a seed is what it always was, and the uniform model
    of the same seed differs from it in the two BatchNorm1d weights and nothing else."""
    torch.manual_seed(3)
    default = build_model("resnet34", "fastai07").state_dict()
    torch.manual_seed(3)
    ones = build_model("resnet34", "fastai07", head_bn_init="ones").state_dict()
    torch.manual_seed(3)
    uniform = build_model("resnet34", "fastai07", head_bn_init="uniform").state_dict()
    assert all(torch.equal(default[k], ones[k]) for k in default)
    changed = sorted(k for k in default if not torch.equal(default[k], uniform[k]))
    assert changed == ["2.head.1.weight", "2.head.5.weight"]


def test_head_bn_init_refuses_an_unknown_value_and_the_modern_recipe():
    with pytest.raises(CxrError, match="'zeros'"):
        build_model("resnet34", "fastai07", head_bn_init="zeros")
    with pytest.raises(CxrError, match="modern"):
        build_model("resnet34", "modern", head_bn_init="uniform")


# --- grey input and per-channel statistics ----------------------------------------------------------------------

def _paper_stem(gray: torch.Tensor, w3: torch.Tensor, padding: int) -> torch.Tensor:
    """fastai 0.7: the grey PNG read as three equal channels, normalised per channel, an RGB stem."""
    return F.conv2d((gray.expand(-1, 3, -1, -1) - MEAN) / STD, w3, stride=2, padding=padding)


def test_per_channel_statistics_on_three_copies_are_a_grey_conv_minus_a_border_map():
    """sum_c W_c * (g - m_c) / s_c = (sum_c W_c / s_c) * g - (sum_c W_c m_c / s_c) * 1_inside, exactly: the
    zero padding pads the normalised channels, so the constant term is a convolution of the image's support."""
    gen = torch.Generator().manual_seed(0)
    w3 = torch.randn(64, 3, 7, 7, generator=gen, dtype=torch.float64) * 0.1
    gray = torch.rand(2, 1, 32, 32, generator=gen, dtype=torch.float64)
    w_gray = (w3 / STD).sum(dim=1, keepdim=True)
    w_const = (w3 * MEAN / STD).sum(dim=1, keepdim=True)
    folded = (F.conv2d(gray, w_gray, stride=2, padding=3)
              - F.conv2d(torch.ones_like(gray), w_const, stride=2, padding=3))
    torch.testing.assert_close(folded, _paper_stem(gray, w3, 3), rtol=0, atol=1e-6)


def test_in_the_interior_a_folded_grey_stem_and_a_training_batch_norm_give_the_papers_output():
    """With cxr-fast's Normalize (averaged statistics) and the stem folded as s_bar * sum_c W_c / s_c, the stem
    differs from the paper's by one constant per filter away from the border, which a training-mode
    BatchNorm2d (bn1, right after conv1) subtracts. cxr-fast's own fold, sum_c W_c, is not this one."""
    gen = torch.Generator().manual_seed(1)
    w3 = torch.randn(16, 3, 7, 7, generator=gen, dtype=torch.float64) * 0.1
    gray = torch.rand(4, 1, 40, 40, generator=gen, dtype=torch.float64)
    w_folded = GRAY_STD * (w3 / STD).sum(dim=1, keepdim=True)
    ours = F.conv2d(Normalize()(gray), w_folded, stride=2)  # padding 0: the interior only
    paper = _paper_stem(gray, w3, 0)
    shift = (paper - ours).mean(dim=(0, 2, 3), keepdim=True)
    torch.testing.assert_close(paper - ours, shift.expand_as(paper), rtol=0, atol=1e-9)
    assert float(shift.abs().max()) > 1e-3  # a real constant, which only the batch norm removes
    bn = nn.BatchNorm2d(16).double().train()
    summed = F.conv2d(Normalize()(gray), w3.sum(dim=1, keepdim=True), stride=2)
    with torch.no_grad():
        torch.testing.assert_close(bn(ours), bn(paper), rtol=0, atol=1e-6)
        assert float((bn(summed) - bn(paper)).abs().max()) > 1e-4
    assert abs(GRAY_MEAN - float(MEAN.mean())) < 1e-12 and abs(GRAY_STD - float(STD.mean())) < 1e-12


def test_head_bn_init_is_a_run_setting_refused_for_the_modern_head_and_used_by_a_run():
    from cxr_fast.schema.run import RunConfig
    from cxr_fast.train.parts import build_parts

    with pytest.raises(CxrError, match="head_bn_init uniform is for the fastai07 head") as err:
        RunConfig(recipe="modern", head_bn_init="uniform")
    assert "\n" not in str(err.value)
    cfg = RunConfig(head_bn_init="uniform", init="random", res=32, data="phantom:n=40,size=64,seed=0",
                    subsample_size=40, device="cpu", loader="resident", tta=0)
    assert cfg.record()["head_bn_init"] == "uniform"
    parts = build_parts(cfg, torch.device("cpu"), "fp32", quiet=True)
    weights = [m.weight for m in parts.model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(weights) == 2 and all(((w >= 0) & (w < 1)).all() and not torch.all(w == 1) for w in weights)
