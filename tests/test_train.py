"""Training: the step learns, AMP paths run on the CPU, the run folder is complete and resumable.

Run-folder tests swap ResNet34 for a tiny CNN (same one-channel contract and the recipe's output: a
two-way log-softmax for fastai07, one logit for modern) so that two epochs cost well under a second on
a 2-core CPU; the real ResNet34 is exercised by the step tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from cxr_fast.cli import main
from cxr_fast.config import to_dict
from cxr_fast.errors import CxrError
from cxr_fast.io import read_jsonl
from cxr_fast.models import Normalize, build_model
from cxr_fast.step import TrainStep, autocast_dtype, device_precision, make_optimizer, resolve_device
from cxr_fast.schema.run import RunConfig, load_run_config
from cxr_fast.train import run_training

REPO_CONFIG = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "train.yaml"


def _tiny_model(arch: str = "resnet34", recipe: str = "fastai07", weights=None,
                head_bn_init: str = "ones") -> nn.Module:
    out = [nn.Linear(16, 2), nn.LogSoftmax(dim=1)] if recipe == "fastai07" else [nn.Linear(16, 1)]
    return nn.Sequential(
        Normalize(), nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), *out,
    )


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_net(monkeypatch):
    monkeypatch.setattr("cxr_fast.models.build_model", _tiny_model)


def _cfg(data, out, **kw) -> RunConfig:
    # "No Finding" is about half the phantom's rows, so a 13-image validation set holds both classes.
    base = dict(label="No Finding", res=32, epochs=2, batch_size=8, lr=1e-2, loader="resident", data=str(data),
                out=str(out), init="random", tta=2, workers=1, device="cpu")
    base.update(kw)
    return RunConfig(**base)


# --- the step ------------------------------------------------------------------------------------------

def test_a_tiny_model_overfits_a_tiny_batch():
    # A small CNN (one-channel, one logit, as the real models) must memorise 8 random images through
    # TrainStep: weighted loss, backward, step and zero_grad all have to work for the loss to collapse.
    torch.manual_seed(0)
    model = nn.Sequential(Normalize(), nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 16 * 16, 1))
    step = TrainStep(model, make_optimizer(model, "adam", lr=1e-3), pos_weight=2.0, precision="fp32", device="cpu",
                     recipe="modern")
    images = torch.rand(8, 1, 32, 32)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1], dtype=torch.float32)
    losses = [float(step(images, labels)) for _ in range(60)]
    assert losses[-1] < 0.05 * losses[0], losses
    assert ((step.predict(images) > 0).float() == labels).all()  # predict gives log-odds


def test_resnet34_loss_falls_on_a_tiny_batch():
    torch.manual_seed(0)
    model = build_model("resnet34", "fastai07")
    step = TrainStep(model, make_optimizer(model, "adam", lr=1e-3), pos_weight=1.0, precision="fp32", device="cpu")
    images = torch.rand(4, 1, 32, 32)
    labels = torch.tensor([0, 1, 0, 1], dtype=torch.float32)
    losses = [float(step(images, labels)) for _ in range(4)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_bf16_autocast_runs_on_cpu():
    torch.manual_seed(0)
    model = build_model("resnet34", "fastai07")
    step = TrainStep(model, make_optimizer(model), pos_weight=3.0, precision="bf16", device="cpu")
    assert step.dtype == torch.bfloat16 and step.scaler is None
    seen, head_in = [], []
    conv1, last = model[1][0], model[2].head[7]
    hook = conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    hook2 = last.register_forward_hook(lambda m, i, o: head_in.append(o.dtype))
    before = last.weight.detach().clone()
    loss = step(torch.rand(4, 1, 32, 32), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    hook.remove(), hook2.remove()
    assert seen == [torch.bfloat16]  # the convolution really ran in bf16 ...
    assert head_in == [torch.float32]  # ... and the head in float32
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert not torch.equal(before, last.weight)  # and the optimizer stepped
    assert last.weight.grad is None  # zero_grad(set_to_none=True)
    assert conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_grad_scaler_only_for_fp16_on_cuda():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
    for precision in ("fp32", "bf16", "fp16"):
        assert TrainStep(model, make_optimizer(model), 1.0, precision, "cpu", recipe="modern").scaler is None
    loss = TrainStep(model, make_optimizer(model), 1.0, "fp16", "cpu", channels_last=False, recipe="modern")(
        torch.rand(2, 1, 2, 2), torch.tensor([0.0, 1.0]))
    assert torch.isfinite(loss)


def test_precision_and_device_resolution():
    cpu = torch.device("cpu")
    assert device_precision("auto", cpu) == "fp32"
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("fp16", "cpu") == torch.float16
    assert resolve_device("cpu") == cpu
    with pytest.raises(CxrError):
        device_precision("fp8", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(CxrError, match="no CUDA"):
            resolve_device("cuda")


def test_optimizers():
    net = nn.Linear(2, 1)
    sgd = make_optimizer(net, "sgd", lr=5e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9 and sgd.defaults["lr"] == 5e-4
    assert isinstance(make_optimizer(net, "adam"), torch.optim.Adam)
    with pytest.raises(CxrError):
        make_optimizer(net, "lamb")


def test_fused_adam_takes_the_same_steps_and_the_run_records_it():
    from cxr_fast.step import optimizer_impl

    torch.manual_seed(0)
    fused_net, loop_net = nn.Linear(8, 3), nn.Linear(8, 3)
    loop_net.load_state_dict(fused_net.state_dict())
    fused = make_optimizer(fused_net, "adam", lr=1e-2)
    loop = torch.optim.Adam(loop_net.parameters(), lr=1e-2, betas=(0.9, 0.999), foreach=False)
    assert optimizer_impl(fused) == "fused" and optimizer_impl(loop) == "for-loop"
    assert optimizer_impl(make_optimizer(fused_net, "sgd")) == "for-loop"  # PyTorch's CPU default, kept
    x = torch.randn(16, 8)
    for _ in range(5):
        for net, opt in ((fused_net, fused), (loop_net, loop)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(fused_net.parameters(), loop_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.device("meta"):  # no fused kernels there (the planner counts work on meta): PyTorch's default
        assert optimizer_impl(make_optimizer(nn.Linear(2, 1), "adam")) == "for-loop"
    with pytest.raises(CxrError):
        make_optimizer(net, "sgd", lr=0)


def test_modern_recipe_pos_weight_weights_positive_errors():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
    one = TrainStep(model, make_optimizer(model, lr=1e-9), 1.0, "fp32", "cpu", channels_last=False, recipe="modern")
    five = TrainStep(model, make_optimizer(model, lr=1e-9), 5.0, "fp32", "cpu", channels_last=False, recipe="modern")
    x = torch.zeros(2, 1, 2, 2)
    y = torch.tensor([1.0, 0.0])
    # logit 0: per-image loss log 2; the positive counts 5x -> mean (5 + 1) / 2 * log 2.
    assert float(one(x, y)) == pytest.approx(np.log(2))
    assert float(five(x, y)) == pytest.approx(3 * np.log(2))


def test_fastai07_loss_is_class_weighted_nll_normalised_by_the_batch_weights():
    # A fixed two-way output for 4 images, 1 positive and 3 negatives, loss weight w = 7.
    torch.manual_seed(0)
    logits = torch.randn(4, 2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2), nn.LogSoftmax(dim=1))
    step = TrainStep(model, make_optimizer(model, lr=1e-9), 7.0, "fp32", "cpu", channels_last=False)
    log_p = logits.log_softmax(dim=1)
    y = torch.tensor([1, 0, 0, 0])
    # By hand: sum_i w[y_i] * -log p_i[y_i] / sum_i w[y_i], with w = [1, 7].
    w = [7.0 if t == 1 else 1.0 for t in y.tolist()]
    by_hand = sum(wi * -float(log_p[i, t]) for i, (wi, t) in enumerate(zip(w, y.tolist()))) / sum(w)
    assert float(step.loss_fn(log_p, y.float())) == pytest.approx(by_hand, rel=1e-6)
    # ... which is not the batch mean the modern recipe takes: the two recipes weigh a batch differently.
    batch_mean = sum(wi * -float(log_p[i, t]) for i, (wi, t) in enumerate(zip(w, y.tolist()))) / 4
    assert by_hand != pytest.approx(batch_mean)


# --- config ----------------------------------------------------------------------------------------------

def test_shipped_config_equals_the_defaults_and_flags_override(tmp_path):
    assert to_dict(load_run_config(REPO_CONFIG)) == to_dict(RunConfig())
    custom = tmp_path / "c.yaml"
    custom.write_text("res: 128\nepochs: 5\n")
    cfg = load_run_config(custom, epochs=None, res=64, precision="bf16")
    assert (cfg.res, cfg.epochs, cfg.precision, cfg.lr) == (64, 5, "bf16", 5e-4)
    custom.write_text("resolution: 128\n")
    with pytest.raises(CxrError, match="resolution"):
        load_run_config(custom)


# --- the run folder ----------------------------------------------------------------------------------------

class Killed(Exception):
    pass


def test_run_folder_and_resume_after_a_kill(tiny_phantom, tmp_path, tiny_net):
    def kill_after_first(row):
        if row["epoch"] == 1:
            raise Killed

    out = tmp_path / "run"
    with pytest.raises(Killed):
        run_training(_cfg(tiny_phantom, out), progress=False, on_epoch=kill_after_first)
    assert (out / "checkpoint.pt").is_file() and (out / "config.yaml").is_file()
    assert not (out / "metrics.json").exists()
    assert [r["epoch"] for r in read_jsonl(out / "log.jsonl")] == [1]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1

    epochs_run = []
    resumed = run_training(_cfg(tiny_phantom, out), progress=False, resume=True,
                           on_epoch=lambda row: epochs_run.append(row["epoch"]))
    assert epochs_run == [2]  # only the missing epoch was trained
    log = read_jsonl(out / "log.jsonl")
    assert [r["epoch"] for r in log] == [1, 2]
    assert set(log[0]) >= {"epoch", "loss", "auc", "images_per_s", "peak_memory_mb"}
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 2
    assert resumed["epochs"] == 2

    # The same run without the kill gives the same model: the checkpoint carried weights, optimizer and RNG.
    straight = run_training(_cfg(tiny_phantom, tmp_path / "straight"), progress=False)
    assert straight["auc"] == pytest.approx(resumed["auc"], abs=1e-6)
    a = np.load(out / "predictions.npz")
    b = np.load(tmp_path / "straight" / "predictions.npz")
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)

    # metrics.json and predictions.npz are consistent with each other and with the paper's definitions.
    from cxr_fast.metrics import accuracy, delong_auc_variance

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("label", "res", "arch", "auc", "auc_sd", "accuracy", "n_pos", "n_neg", "wall_s",
                "train_images_per_s", "epochs"):
        assert key in metrics
    assert list(a["image_ids"]) and len(a["image_ids"]) == len(a["labels"]) == len(a["scores"])
    auc, var = delong_auc_variance(a["labels"], a["scores"])
    assert metrics["auc"] == pytest.approx(auc) and metrics["auc_sd"] == pytest.approx(np.sqrt(var))
    assert metrics["accuracy"] == pytest.approx(accuracy(a["labels"], a["scores"], threshold=0.0))  # log-odds
    assert (metrics["n_pos"], metrics["n_neg"]) == (int(a["labels"].sum()), int((1 - a["labels"]).sum()))
    assert 0 < metrics["n_pos"] and 0 < metrics["n_neg"]
    assert metrics["tta"] == 2 and "auc_plain" in metrics  # TTA scores differ from the plain view's
    assert not np.allclose(a["scores"], a["scores_plain"])


def test_finished_run_is_reused_and_a_changed_config_is_refused(tiny_phantom, tmp_path, tiny_net):
    out = tmp_path / "run"
    first = run_training(_cfg(tiny_phantom, out, epochs=1, tta=0), progress=False)
    stamp = (out / "checkpoint.pt").stat().st_mtime_ns
    again = run_training(_cfg(tiny_phantom, out, epochs=1, tta=0), progress=False, resume=True)
    assert again == first and (out / "checkpoint.pt").stat().st_mtime_ns == stamp
    with pytest.raises(CxrError, match="another config"):
        run_training(_cfg(tiny_phantom, out, epochs=1, tta=0, lr=0.5), progress=False, resume=True)
    # A run saved before a setting existed (its config.yaml lacks it) ran with that setting's default: reused.
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in saved.items()
                                                     if k not in ("graphs", "head_bn_init")}))
    assert run_training(_cfg(tiny_phantom, out, epochs=1, tta=0), progress=False, resume=True) == first
    with pytest.raises(CxrError, match="head_bn_init: 'ones' -> 'uniform'"):
        run_training(_cfg(tiny_phantom, out, epochs=1, tta=0, head_bn_init="uniform"), progress=False, resume=True)
    # More epochs on a finished run continue from its checkpoint; if that is killed, the old
    # 1-epoch metrics must not be mistaken for the 3-epoch run's.
    with pytest.raises(Killed):
        run_training(_cfg(tiny_phantom, out, epochs=3, tta=0), progress=False, resume=True,
                     on_epoch=lambda row: (_ for _ in ()).throw(Killed()))
    assert not (out / "metrics.json").exists()
    more = run_training(_cfg(tiny_phantom, out, epochs=3, tta=0), progress=False, resume=True)
    assert more["epochs"] == 3 and [r["epoch"] for r in read_jsonl(out / "log.jsonl")] == [1, 2, 3]


def test_one_class_validation_is_an_error_before_training(tiny_phantom, tmp_path, tiny_net):
    # A 2% validation split of 64 images is one image: one class, so no AUC can exist.
    with pytest.raises(CxrError, match="validation set has no"):
        run_training(_cfg(tiny_phantom, tmp_path / "run", val_fraction=0.02), progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_max_batches_caps_an_epoch(tiny_phantom, tmp_path, tiny_net):
    m = run_training(_cfg(tiny_phantom, tmp_path / "run", epochs=1, tta=0, max_batches=2), progress=False)
    assert m["n_train"] > 16  # more than two batches exist ...
    # ... but the logged throughput counts only the 16 images of the two batches trained.
    log = read_jsonl(tmp_path / "run" / "log.jsonl")
    assert log[0]["images_per_s"] * log[0]["train_s"] == pytest.approx(16, rel=1e-6)


def test_cli_train_prints_one_line_and_errors_are_one_line(tiny_phantom, tmp_path, tiny_net, capsys):
    out = tmp_path / "cli-run"
    code = main(["train", "--label", "No Finding", "--res", "32", "--epochs", "1", "--data", str(tiny_phantom),
                 "--out", str(out), "--loader", "resident", "--tta", "0", "--init", "random", "--device", "cpu",
                 "--precision", "bf16", "--no-channels-last", "--lr", "0.01", "--quiet"])
    text = capsys.readouterr().out
    assert code == 0 and "AUC" in text and "bf16" in text and str(out) in text
    saved = (out / "config.yaml").read_text()
    assert "precision: bf16" in saved and "channels_last: false" in saved
    assert main(["train", "--res", "0", "--out", str(tmp_path / "x")]) == 2
    assert "resolution 0 is out of range" in capsys.readouterr().err


# --- lr-find -------------------------------------------------------------------------------------------------

def test_lr_suggestion_on_a_known_curve():
    from cxr_fast.lr_find import suggest

    lrs = list(np.logspace(-7, 1, 81))
    smoothed = [(np.log10(lr) + 3) ** 2 for lr in lrs]  # lowest at 1e-3
    s = suggest(lrs, smoothed)
    assert s["lr_min_loss"] == pytest.approx(1e-3) and s["suggested_lr"] == pytest.approx(1e-4)
    assert s["lr_steepest"] < 1e-3
    # An early noisy dip is skipped, and the suggestion never goes below the first lr tried.
    noisy = [0.1] + smoothed[1:]
    assert suggest(lrs, noisy)["lr_min_loss"] == pytest.approx(1e-3)
    flat_then_up = [1.0] * 5 + [2.0, 3.0]  # never falls: nothing to suggest (issue 19)
    assert suggest(lrs[:7], flat_then_up)["suggested_lr"] is None


def test_cli_lr_find(tiny_phantom, tmp_path, tiny_net, capsys):
    code = main(["lr-find", "--label", "No Finding", "--res", "32", "--data", str(tiny_phantom), "--loader",
                 "resident", "--device", "cpu", "--num-iter", "12", "--out", str(tmp_path / "lr"), "--quiet",
                 "--init", "random"])
    # 12 steps from random init: the smoothed loss falls by less than its noise, so nothing is suggested.
    assert code == 1 and "no learning rate suggested" in capsys.readouterr().err
    assert (tmp_path / "lr" / "lr_find.png").is_file() and (tmp_path / "lr" / "lr_find.json").is_file()
    assert main(["lr-find", "--start-lr", "1", "--end-lr", "0.1", "--data", str(tiny_phantom), "--res", "32",
                 "--label", "No Finding", "--loader", "resident", "--out", str(tmp_path / "bad"), "--quiet",
                 "--init", "random"]) == 2
    assert "start_lr" in capsys.readouterr().err


def test_lr_find_writes_plot_and_json_and_restores_the_model(tiny_phantom, tmp_path, tiny_net):
    from cxr_fast.lr_find import lr_range_test, run_lr_find

    r = run_lr_find(_cfg(tiny_phantom, None), out=tmp_path / "lr", start_lr=1e-5, end_lr=1e3, num_iter=40,
                    progress=False)
    assert (tmp_path / "lr" / "lr_find.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert saved["lrs"] == r["lrs"] and np.all(np.diff(saved["lrs"]) > 0)
    assert r["lrs"][0] == pytest.approx(1e-5) and r["suggested_lr"] is None and r["no_suggestion"]  # within noise
    # SGD at lr up to 1000 diverges: the sweep stops before its 40 steps.
    assert r["stopped_on_divergence"] and len(r["lrs"]) < 40

    model = _tiny_model()
    step = TrainStep(model, make_optimizer(model), 1.0, "fp32", "cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.rand(4, 1, 16, 16), torch.tensor([0.0, 1.0, 0.0, 1.0]))] * 3
    lr_range_test(step, batches, start_lr=1e-4, end_lr=1.0, num_iter=5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_the_run_weighs_positives_by_table_1s_subsample_weight(real_metadata, tiny_phantom, tmp_path, tiny_net):
    # The paper's Table 1 weight is negatives/positives of the whole 20,000-image subsample, not of its
    # training part: on the real metadata they differ (Hernia 87.106 against 85.957).
    from cxr_fast.data.sets.nih import read_metadata
    from cxr_fast.data.sampling import subsample
    from cxr_fast.train.parts import build_parts

    hernia = subsample(read_metadata(real_metadata), "Hernia", seed=0)
    assert round(hernia.pos_weight, 3) == 87.106 and round(hernia.train_pos_weight, 3) != 87.106
    cfg = _cfg(tiny_phantom, tmp_path / "run")
    parts = build_parts(cfg, torch.device("cpu"), "fp32", quiet=True)
    assert parts.pos_weight == pytest.approx(parts.sub.pos_weight)
    assert parts.pos_weight != pytest.approx(parts.sub.train_pos_weight)
    assert parts.step.pos_weight == pytest.approx(parts.pos_weight)
