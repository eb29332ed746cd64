"""The GPU path never makes the host wait inside a training step (issue 22, findings 1 and 7).

No GPU here: the ``meta`` device stands in for CUDA and ``cxr_fast.syncs.SyncCounter`` counts, per step,
every device-to-host read and every blocking host-to-device copy. Before the fix an augmented batch made
5 blocking uploads, a 4-view TTA batch 18, the cache loader's label lookup one more, and evaluation read
labels and scores in two copies per batch; now a training step makes none and evaluation one per batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_fast.syncs import SyncCounter

META = torch.device("meta")
RECIPES = ("fastai07", "modern")


def _where(c: SyncCounter) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(c.where.items())) or "none"


# ------------------------------------------------------------------------------------------ the counter


def test_counter_sees_every_kind_of_host_wait():
    """Each way of waiting counts once; a non_blocking upload and CPU-only work count nothing."""
    x = torch.empty(8, device=META)
    host = torch.ones(8)
    with SyncCounter() as c:
        float(x.sum())  # .item()
        bool((x > 0).any())
        torch.nonzero(x)
        x.cpu()
        x.tolist()
        x[x > 0]  # a boolean mask goes through nonzero
    assert c.counts["to_host"] == 6, _where(c)
    with SyncCounter() as c:
        host.to(META)  # blocking upload
        x.copy_(host)  # blocking upload
        x[torch.tensor([0, 1])]  # a host index is uploaded inside the op
    assert c.counts["to_device"] == 3, _where(c)
    with SyncCounter() as c:
        host.to(META, non_blocking=True)
        float(host.sum())  # a CPU scalar: no device involved
        x[torch.zeros(2, dtype=torch.long, device=META)] * 2
    assert c.total == 0, _where(c)


def test_unpinned_non_blocking_upload_counts_where_pinning_is_possible(monkeypatch):
    """From pageable memory a non_blocking copy still waits; with a GPU present the source must be pinned."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with SyncCounter() as c:
        torch.ones(4).to(META, non_blocking=True)
    assert c.counts["to_device"] == 1


def test_planner_prices_the_syncs_it_counts():
    """cost.work counts syncs in the same pass as the work, and each costs the profile's ``sync_s``."""
    from cxr_fast.cost import work
    from cxr_fast.cost.devices import resolve
    from cxr_fast.cost.estimate import work_time

    with work._Counter() as c:
        y = torch.empty(4, device=META) * 2
        float(y.sum())
        torch.ones(4).to(META)
    counted = c.work()
    assert counted.syncs == 2
    dev = resolve("h100")
    rate = 1e14
    without = work_time(work.Work(counted.ops, counted.kernels, 0), dev, rate).seconds
    assert work_time(counted, dev, rate).seconds == pytest.approx(without + 2 * dev.sync_s)
    step = work._train_step("resnet34", 32, 8, "fp32", "modern", "sgd", True, True, False)
    assert step.total.syncs == 0  # what is left of a resident-fed step to price: nothing


# ----------------------------------------------------------------------------------- augmentation, TTA


@pytest.mark.parametrize("recipe", RECIPES)
def test_augmented_batch_and_tta_batch_make_no_host_wait(recipe: str):
    from cxr_fast.augment import augment, epoch_generator, tta_views
    from cxr_fast.recipes import augmentation

    cfg = augmentation(recipe)
    images = torch.empty(32, 1, 64, 64, dtype=torch.uint8, device=META)  # 32: every branch is taken
    rows = torch.empty(32, dtype=torch.long, device=META)
    with SyncCounter() as c:
        augment(images, epoch_generator(0, 0), cfg, rows=rows)
    assert c.total == 0, f"augment: {_where(c)}"
    with SyncCounter() as c:
        tta_views(images, 4, 0, cfg)
    assert c.total == 0, f"TTA: {_where(c)}"


def test_device_path_gives_the_cpu_path_pixels():
    """Packing the parameters into one copy changed where they travel, not the picture."""
    from cxr_fast.augment import FASTAI07, MODERN, apply, draw_params

    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (16, 1, 24, 24), dtype=torch.uint8, generator=gen)
    for cfg in (FASTAI07, MODERN):
        p = draw_params(16, torch.Generator().manual_seed(5), cfg)
        fused = apply(images, p)
        torch_path = apply(images, p, fused=False)
        assert torch.allclose(fused, torch_path, atol=2e-3)


# ------------------------------------------------------------------------------ training steps per loader


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory):
    from imagesets import make_dataset

    from cxr_fast.data.sets.nih import read_nih_folder

    root, ids, labels = make_dataset(tmp_path_factory.mktemp("syncs") / "data", n=12, size=64)
    return read_nih_folder(root), np.array(ids), labels


def _spec(data, recipe: str, train: bool, device: torch.device = META):
    from cxr_fast.loaders.base import LoaderSpec

    from cxr_fast.recipes import augmentation

    ds, ids, labels = data
    return LoaderSpec(dataset=ds, image_ids=ids, targets=labels, res=32, batch_size=4, train=train, device=device,
                      seed=1, num_workers=0, augmentation=augmentation(recipe))


def _meta_step(recipe: str):
    from cxr_fast.models import build_model
    from cxr_fast.step import TrainStep, make_optimizer

    with torch.device("meta"):
        model = build_model("resnet34", recipe)
    step = TrainStep(model, make_optimizer(model, "sgd"), pos_weight=2.0, precision="fp32", device=META,
                     recipe=recipe)
    return step


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("loader", ["resident", "cache", "pil"])
def test_training_step_makes_no_host_wait(loader: str, recipe: str, small_data):
    """Loader batch + TrainStep, then the loop's per-batch bookkeeping (and its progress read), after warm-up."""
    from cxr_fast.feed import make_loader

    feed = make_loader(loader, _spec(small_data, recipe, train=True))
    step = _meta_step(recipe)
    batches = iter(feed)
    step(*next(batches))  # warm-up: first batch, optimizer state created
    for _ in range(2):
        with SyncCounter() as c:
            images, labels = next(batches)
            loss = step(images, labels)
        assert c.total == 0, f"{loader}/{recipe}: {_where(c)}"
        assert images.device == META and labels.device == META

    from cxr_fast.runtime import LatestValue
    from cxr_fast.train.loop import EpochTotals

    totals, shown = EpochTotals(META), LatestValue(META)
    with SyncCounter() as c:
        totals.add(images, labels, loss)
        shown.post(loss)
        shown.read()
    assert c.total == 0, f"bookkeeping: {_where(c)}"


def test_dali_label_lookup_makes_no_host_wait(small_data):
    """DALI's reader hands its index to the host: the labels are looked up there, not uploaded and gathered."""
    pytest.importorskip("nvidia.dali")
    from cxr_fast.feed import make_loader

    batches = iter(make_loader("dali", _spec(small_data, "modern", train=True)))
    next(batches)
    with SyncCounter() as c:
        images, labels = next(batches)
    assert c.total == 0, _where(c)
    assert labels.device == META and labels.shape == (4,)


@pytest.mark.parametrize("recipe", RECIPES)
def test_evaluation_reads_once_per_batch(recipe: str, small_data):
    """Plain view plus 4 TTA views: labels and scores come back in one read per batch, nothing uploads."""
    from cxr_fast.augment import augment_config
    from cxr_fast.feed import make_loader
    from cxr_fast.train.loop import predict

    feed = make_loader("resident", _spec(small_data, recipe, train=False))
    step = _meta_step(recipe)
    with SyncCounter() as c:
        y, plain, tta = predict(step, feed, tta=4, seed=0, augmentation=augment_config(recipe))
    assert c.counts["to_host"] == len(feed) == 3, _where(c)
    assert c.counts["to_device"] == 0, _where(c)
    assert y.shape == plain.shape == tta.shape == (12,)


def test_evaluation_keeps_labels_with_their_scores(small_data):
    """The one packed read per batch still returns each image's own label and score, in order (CPU)."""
    from cxr_fast.feed import make_loader
    from cxr_fast.train.loop import predict

    class MeanStep:  # the image's mean pixel as its score: known, and tied to the image
        model = torch.nn.Identity()

        def predict(self, images):
            return images.mean(dim=(1, 2, 3))

    feed = make_loader("cache", _spec(small_data, "modern", train=False, device=torch.device("cpu")))
    y, plain, _ = predict(MeanStep(), feed, tta=0, seed=0, augmentation=feed.cfg)
    assert np.array_equal(y, np.asarray(small_data[2], dtype=np.float64))
    expected = torch.cat([x.mean(dim=(1, 2, 3)) for x, _ in feed]).double().numpy()
    assert np.array_equal(plain, expected)


# ------------------------------------------------------------------------------------ cudnn.benchmark


def test_cudnn_benchmark_on_for_fixed_shapes_off_in_the_batch_search(monkeypatch):
    """Training and bench set it (one shape per run); the batch search clears it (a new shape every try)."""
    from cxr_fast.bench import batch_search, throughput

    from cxr_fast.runtime import fixed_shapes

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    fixed_shapes("cpu")
    assert torch.backends.cudnn.benchmark is False  # not a GPU: left alone
    fixed_shapes("cuda:0")
    assert torch.backends.cudnn.benchmark is True

    seen: list[bool] = []

    class Trainer:
        device = torch.device("cuda")
        channels_last = True

        def __call__(self, images, labels):
            seen.append(torch.backends.cudnn.benchmark)

    monkeypatch.setattr(throughput, "sync", lambda device: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 0)
    torch.backends.cudnn.benchmark = False
    batches = iter([(torch.zeros(2, 1, 4, 4), torch.zeros(2))] * 4)
    throughput._timed(Trainer(), batches, warmup=1, iters=2, batch_size=2)
    assert seen and all(seen), "bench steps must run with cudnn.benchmark on"

    import cxr_fast.models

    class Probed(Exception):
        pass

    def build_model(*args, **kwargs):  # the search's try starts here: what does cuDNN think now?
        seen.append(torch.backends.cudnn.benchmark)
        raise Probed

    seen.clear()
    monkeypatch.setattr(cxr_fast.models, "build_model", build_model)
    monkeypatch.setattr(batch_search, "fixed_shapes", lambda dev, fixed=True: fixed_shapes("cuda", fixed))
    torch.backends.cudnn.benchmark = True  # left on by a bench section before the search
    probe = batch_search.cuda_try_batch("resnet34", 32, precision="fp32", device="cpu")
    with pytest.raises(Probed):
        probe(2)
    assert seen == [False], "a batch-search try must run with cudnn.benchmark off"


def test_training_sets_cudnn_benchmark(monkeypatch):
    """train_epochs says 'fixed shapes' once, before its first step (here its call is observed on the CPU)."""
    from cxr_fast.train import loop

    calls: list[tuple] = []
    monkeypatch.setattr(loop, "fixed_shapes", lambda device, fixed=True: calls.append((str(device), fixed)))

    class Stop(Exception):
        pass

    class Loader:
        def __len__(self):
            return 1

        def set_epoch(self, epoch):
            raise Stop

    class Parts:
        class step:
            device = torch.device("cpu")

        train_loader = Loader()

    class Cfg:
        max_batches = None
        epochs = 1
        graphs = compile = False

    with pytest.raises(Stop):
        loop.train_epochs(Cfg(), type("Plan", (), {"out": Path(".")})(), Parts(), 0, loop.Clock(0.0), False, None)
    assert calls == [("cpu", True)]
