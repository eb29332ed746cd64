"""The DALI backend's order and its GPU graph (issue 22, findings 3 and 8), checked without a GPU.

Order: the loader owns it. Each pass reads ``epoch_order(seed, epoch)`` (the order every store-backed
backend uses) from a fresh pipeline seeded by (seed, epoch), so two seeds give two orders, ``set_epoch``
and a resumed run get that epoch's batches, and a ``max_batches`` cut leaves nothing for the next epoch.
These run DALI's CPU pipeline (``device_id=None``).

Graph: ``dali_graph`` builds the CPU and the GPU graph from one function. Without a GPU the GPU graph
can still be *defined* (a ``Pipeline`` with ``device_id=0`` is never built), and its operators, arguments
and wiring are held to the CPU graph's, which runs against the reference in ``tests/test_loaders.py``:
only the decoder's placement and the operators' devices may differ, and every argument input must be on
the host. The last tests run the GPU pipeline for real and are skipped without one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from cxr_fast.loaders.base import LoaderSpec
from cxr_fast.loaders.common import epoch_order
from imagesets import HEADER, make_dataset
from PIL import Image

from cxr_fast.augment import FASTAI07, MODERN, AugmentConfig
from cxr_fast.data.sets.nih import read_nih_folder
from cxr_fast.feed import make_loader

pytest.importorskip("nvidia.dali")

from cxr_fast.loaders.dali import dali_graph

N = 12
CPU = torch.device("cpu")
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory):
    """N small pictures; each one's target is its position in the spec, so the labels spell the order."""
    root, ids, _ = make_dataset(tmp_path_factory.mktemp("dali") / "data", n=N, size=64)
    return read_nih_folder(root), np.array(ids), np.arange(N, dtype=np.float32)


def _spec(data, seed: int = 0, augment: bool = False, train: bool = True, res: int = 32,
          device: torch.device = CPU, cfg: AugmentConfig = MODERN) -> LoaderSpec:
    ds, ids, targets = data
    return LoaderSpec(dataset=ds, image_ids=ids, targets=targets, res=res, batch_size=4, train=train,
                      device=device, seed=seed, augment=augment, num_workers=1, augmentation=cfg)


def _collect(loader) -> tuple[torch.Tensor, list[int], int]:
    xs, ys, n = [], [], 0
    for x, y in loader:
        xs.append(x.cpu())
        ys += [int(v) for v in y.cpu()]
        n += 1
    return torch.cat(xs), ys, n


# --- finding 3: the order -------------------------------------------------------------------------


def test_two_seeds_give_two_orders_and_each_is_the_shared_epoch_order(images):
    one, two = _spec(images, seed=1), _spec(images, seed=2)
    _, first, _ = _collect(make_loader("dali", one))
    _, second, _ = _collect(make_loader("dali", two))
    assert sorted(first) == sorted(second) == list(range(N))
    assert first != second, "the seed must reach DALI's order"
    assert first == epoch_order(N, one, 0).tolist() and second == epoch_order(N, two, 0).tolist()


def test_set_epoch_changes_the_order_and_a_resumed_run_continues_it(images):
    spec = _spec(images, seed=5, augment=True)
    run = make_loader("dali", spec)
    seen = {}
    for epoch in range(3):
        run.set_epoch(epoch)
        seen[epoch] = _collect(run)
        assert seen[epoch][1] == epoch_order(N, spec, epoch).tolist(), f"epoch {epoch}"
    assert len({tuple(order) for _, order, _ in seen.values()}) == 3
    again = _collect(run)  # the same epoch twice: the same batches, augmentation included
    assert again[1] == seen[2][1] and torch.equal(again[0], seen[2][0])

    resumed = make_loader("dali", spec)  # a run resumed at epoch 2: a new process, a new loader
    resumed.set_epoch(2)
    x, order, _ = _collect(resumed)
    assert order == seen[2][1], "a resumed run replayed another epoch's order"
    assert torch.equal(x, seen[2][0]), "a resumed run drew other augmentations than epoch 2's"


def test_a_max_batches_cut_leaves_nothing_for_the_next_epoch(images):
    spec = _spec(images, seed=3)
    loader = make_loader("dali", spec)
    batches = iter(loader)
    next(batches)  # the training loop stops here under max_batches=1
    del batches
    loader.set_epoch(1)
    _, order, n = _collect(loader)
    assert n == len(loader) == 3, "the next epoch started where the cut one stopped"
    assert order == epoch_order(N, spec, 1).tolist()


def test_eval_mode_keeps_the_spec_order_every_pass(images):
    loader = make_loader("dali", _spec(images, train=False))
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        assert _collect(loader)[1] == list(range(N))


# --- finding 8: the GPU graph's definition against the CPU one ---------------------------------------


def _graph(gpu: bool, train: bool, augment: bool, cfg: AugmentConfig) -> list[dict]:
    """The graph's operators in a fixed topological order: schema, device, arguments (the origin trace
    aside), and per input the producing operator's position, which output, and its device."""
    from nvidia.dali import Pipeline

    pipe = Pipeline(batch_size=2, num_threads=1, device_id=0 if gpu else None, exec_dynamic=True)
    with pipe:  # defined, never built: no GPU is needed for device_id=0
        outputs = dali_graph(["a.jpg", "b.jpg"], [0, 1], 32, train, augment, gpu, cfg=cfg)
        pipe.set_outputs(*outputs)
    ops: list = []
    where: dict[str, tuple[int, int]] = {}  # output name -> (operator position, output index)

    def visit(op) -> None:
        if any(o is op for o in ops):
            return
        for node in op.inputs:
            visit(node.source)
        spec = op.spec
        for j in range(spec.NumOutput()):
            where[spec.OutputName(j)] = (len(ops), j)
        ops.append(op)

    for node in outputs:
        visit(node.source)
    return [_record(op.spec, where) for op in ops]


def _record(spec, where: dict[str, tuple[int, int]]) -> dict:
    text = str(spec).splitlines()
    args = dict(line.strip().split(": ", 1) for line in text[text.index("  Arguments:") + 1:] if ": " in line)
    return {
        "schema": text[0].removeprefix("OpSpec for ").rstrip(":"),
        "device": args.pop("device"),
        "args": {k: v for k, v in args.items() if not k.startswith("_") and k != "preserve_name"},
        "regular": spec.NumRegularInput(),
        "inputs": [where[spec.InputName(i)] for i in range(spec.NumInput())],
        "input_devices": [spec.InputDevice(i) for i in range(spec.NumInput())],
    }


GRAPHS = {"eval": (False, False, MODERN), "train, no augmentation": (True, False, MODERN),
          "modern": (True, True, MODERN), "fastai07": (True, True, FASTAI07),
          "fastai07 padded": (True, True, dataclasses.replace(FASTAI07, max_pad=0.1))}


@pytest.mark.parametrize("case", list(GRAPHS))
def test_the_gpu_graph_is_the_cpu_graph_with_only_devices_moved(case: str):
    train, augment, cfg = GRAPHS[case]
    cpu, gpu = _graph(False, train, augment, cfg), _graph(True, train, augment, cfg)

    def placement_free(ops: list[dict]) -> list[tuple]:
        return [(o["schema"], o["args"], o["regular"], o["inputs"]) for o in ops]

    assert placement_free(gpu) == placement_free(cpu), "the GPU graph computes something else than the CPU one"
    assert all(o["device"] == "cpu" and set(o["input_devices"]) <= {"cpu"} for o in cpu)
    on_device = {"cpu": "cpu", "mixed": "gpu", "gpu": "gpu"}
    for o in gpu:
        if o["schema"] == "decoders__Image":
            assert o["device"] == "mixed", "the GPU graph must decode with nvJPEG"
        image_in = [on_device[gpu[p]["device"]] for p, _ in o["inputs"][: o["regular"]]]
        # An operator follows its image input; the reader and the random draws stay on the host.
        assert o["device"] in ({"gpu"} if "gpu" in image_in else {"cpu", "mixed"}), o["schema"]
        # Argument inputs (draws, the lighting centre) must live on the host: a GPU one is a build error.
        assert set(o["input_devices"][o["regular"]:]) <= {"cpu"}, o["schema"]
    images = gpu[-1] if gpu[-1]["schema"] != "readers__File" else gpu[-2]
    assert images["device"] == "gpu"


@pytest.mark.parametrize("cfg", [MODERN, FASTAI07], ids=["modern", "fastai07"])
def test_both_graphs_light_around_each_image_mean(cfg: AugmentConfig):
    """The reference lights each image around its own mean; a constant centre (mid-grey) is another recipe."""
    for gpu in (False, True):
        ops = _graph(gpu, True, True, cfg)
        (light,) = [o for o in ops if o["schema"] == "BrightnessContrast"]
        assert "contrast_center" not in light["args"], f"a constant lighting centre (gpu={gpu})"
        centre = ops[light["inputs"][-1][0]]
        assert centre["schema"] == "reductions__Mean" and light["input_devices"][-1] == "cpu"
        assert light["inputs"][0] == centre["inputs"][0], "the mean of another picture than the lit one"


# --- the same, run: on the CPU here, on a GPU when there is one ---------------------------------------


@pytest.fixture(scope="module")
def grey(tmp_path_factory: pytest.TempPathFactory):
    """Uniform pictures at 60/255, far from mid-grey: lit around their own mean they stay uniform at
    ``brightness * 60``; around 128, the contrast would move them as well."""
    root = tmp_path_factory.mktemp("grey") / "data"
    (root / "images").mkdir(parents=True)
    lines, ids = [HEADER], []
    for i in range(16):
        name = f"{i + 1:08d}_000.png"
        Image.fromarray(np.full((32, 32), 60, dtype=np.uint8), mode="L").save(root / "images" / name)
        ids.append(name)
        lines.append(f"{name},No Finding,0,{i + 1},50,M,PA,32,32,0.143,0.143")
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    return read_nih_folder(root), np.array(ids), np.zeros(16, dtype=np.float32)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=GPU)])
def test_modern_lighting_keeps_a_uniform_picture_uniform_within_its_brightness(grey, device: str):
    cfg = dataclasses.replace(MODERN, p_affine=0.0, p_lighting=1.0)  # every view lit, none rotated or padded
    x, _, _ = _collect(make_loader("dali", _spec(grey, seed=4, augment=True, device=torch.device(device),
                                                 cfg=cfg)))
    tol = 1.5 / 255
    assert float((x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).max()) <= tol
    ratio = x.mean(dim=(1, 2, 3)) / (60 / 255)
    assert float(ratio.min()) >= 0.8 - 0.02 and float(ratio.max()) <= 1.2 + 0.02, ratio
    assert float(ratio.max() - ratio.min()) > 0.1  # and it was lit


@GPU
def test_gpu_graph_matches_the_reference_pixels(images):
    """nvJPEG decode and GPU resize, held to the CPU graph's bounds (``tests/test_loaders.py``)."""
    from cxr_fast.loaders.reference import reference_batch
    from test_loaders import TOLERANCE

    ds, ids, _ = images
    for res in (32, 224, 600):
        x, order, _ = _collect(make_loader("dali", _spec(images, train=False, res=res,
                                                         device=torch.device("cuda"))))
        assert order == list(range(N))
        err = (x - reference_batch(ds, ids, res)).abs()
        assert float(err.max()) <= TOLERANCE["dali"]["max"], f"{res}px max {float(err.max()) * 255:.2f}/255"
        assert float(err.mean()) <= TOLERANCE["dali"]["mean"], f"{res}px mean {float(err.mean()) * 255:.2f}/255"


@GPU
def test_gpu_pipeline_runs_both_recipes_and_keeps_the_order(images):
    for cfg in (MODERN, FASTAI07):
        spec = _spec(images, seed=6, augment=True, device=torch.device("cuda"), cfg=cfg)
        loader = make_loader("dali", spec)
        loader.set_epoch(1)
        x, order, _ = _collect(loader)
        assert order == epoch_order(N, spec, 1).tolist()
        assert x.shape == (N, 1, 32, 32) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
