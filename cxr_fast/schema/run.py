"""The settings of one training run, declared once: type, allowed values, range, default, help and role.

This one declaration is all of these (nothing else lists the fields):
- the ``cxr-fast train`` and ``lr-find`` flags, and ``study``'s and ``plan``'s overrides (``schema.flags``);
- the keys a study's ``train:`` block and each grid's ``train:`` override may hold (``cxr_fast.study``);
- the validation, one line naming the key and the file (or study cell) for any refused value;
- what a run's ``config.yaml`` records (``RunConfig.record``), in this order;
- which settings change only speed (a cell's fingerprint leaves them out), which the grids set, and which a
  resumed run may change.

pydantic v2 (``extra="forbid"``, strict types), chosen by trying it beside tyro and jsonargparse: it is the
one of the three that validates a YAML mapping (a study's blocks) as well as flags, and its errors are data
that ``schema.fields.explain`` turns into the project's one-line messages; a 60-line generator gives the
argparse flags. DESIGN.md says more.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from cxr_fast.errors import CxrError
from cxr_fast.schema.fields import PathText, explain, extra, setting
from cxr_fast.vocabulary import (AUTO, DEFAULT_RECIPE, SEED_BOUNDS, Arch, BlankPolicy, DatasetChoice, HeadBnInit, Init,
                                 LabelSource, LoaderChoice, Optimizer, PrecisionChoice, Recipe, Split, UncertainPolicy, ViewPolicy,
                                 Vote, check_res)


# Where the mapping being validated came from (a file, a study cell), for the one-line error.
_SOURCE: ContextVar[str] = ContextVar("settings_source", default="config")


class SettingsError(CxrError):
    """A refused setting: one line naming the file (or cell) and the key."""


class RunConfig(BaseModel):
    """One training run: one label, one resolution, one architecture, the paper's recipe by default."""

    # allow_inf_nan=False: a NaN or infinite float (``lr: .inf``) is refused here, not after an epoch of training.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=False, allow_inf_nan=False)

    label: str = setting("Nodule", "finding to detect, e.g. Nodule", metavar="LABEL", grid=True, per_model=True)
    res: int = setting(224, "input resolution in pixels", metavar="PX", grid=True)
    arch: Arch = setting("resnet34", "architecture", noun="architecture", grid=True)
    recipe: Recipe = setting(
        DEFAULT_RECIPE, "fastai07: the paper's fastai 0.7 head, class-weighted cross-entropy and transforms; "
        "modern: one logit, weighted BCE, stronger lighting and zoom-out", noun="recipe")
    init: Init = setting("imagenet", "imagenet: ImageNet weights (--weights FILE, else torchvision's file from the "
                         "torch cache, downloaded there once when online); random: torch's random init",
                         noun="init", per_model=True)
    weights: PathText | None = setting(
        None, "a torchvision ImageNet state dict file (with init imagenet)", metavar="PATH", resume_free=True,
        per_model=True, shown_default="torchvision's own file")
    weights_sha256: str | None = setting(
        None, "the sha256 the weights file must have (a run's config.yaml records it, so a replay checks it)",
        metavar="SHA256", per_model=True, shown_default="not pinned")
    head_bn_init: HeadBnInit = setting(
        "ones", "fastai07 head's BatchNorm1d weights: ones (today's PyTorch) or uniform, U(0,1) as PyTorch drew them "
        "when fastai 0.7 ran (DESIGN.md, 'What the paper leaves open'; the modern head has none)",
        noun="head BatchNorm init")
    epochs: int = setting(3, "epochs", metavar="N", grid=True, resume_free=True, ge=1)
    batch_size: int = setting(8, "batch size (the paper's: 8)", metavar="N", ge=1)
    lr: float = setting(5e-4, "fixed learning rate (the paper's, from a range test: cxr-fast lr-find)",
                        metavar="LR", gt=0)
    optimizer: Optimizer = setting("sgd", "sgd (momentum, fastai 0.7's and the paper's) or adam", noun="optimizer")
    momentum: float = setting(0.9, "SGD momentum (Adam: its beta1)", metavar="M", ge=0, lt=1)
    precision: PrecisionChoice = setting(
        AUTO, "auto is bf16 autocast on a GPU of compute capability 8.0+, fp16 (with a gradient scaler) on "
        "older GPUs, fp32 on the CPU; fp32 is true fp32 (TF32 off); tf32: fp32 with TF32 tensor cores (8.0+)",
        noun="precision")
    channels_last: bool = setting(True, "channels-last memory format", speed_only=True)
    compile: bool = setting(False, "torch.compile the model (pays a compile time up front)", speed_only=True)
    graphs: bool = setting(False, "CUDA graphs: capture the whole training step (forward, backward, optimizer) and "
                           "the evaluation forward once, then replay them, a batch of 8 being bound by kernel "
                           "launches; other batch shapes run eager; bf16, tf32 or fp32 (fp16's scaler reads the "
                           "host); on a CPU it does nothing and says so (cxr_fast.graphs)", speed_only=True)
    loader: LoaderChoice = setting(
        AUTO, "loader backend: auto is resident, or on a GPU where its uint8 split would not fit beside the "
        "predicted training step, cache (the run records why); on a CPU the fastest available",
        noun="loader", speed_only=True)
    data: PathText | None = setting(None, "data folder (any dataset cxr-fast reads: --dataset), or a phantom spec "
                                    "(phantom:n=...)", metavar="DIR", shown_default="the built-in phantom")
    dataset: DatasetChoice = setting(AUTO, "which dataset the data folder holds: nih, chexpert, mimic, padchest, vindr, "
                                     "rsna or csv (a cxr-dataset.yaml naming the columns); auto detects the layout",
                                     noun="dataset")
    uncertain: UncertainPolicy = setting(
        "ignore", "CheXpert's and MIMIC's uncertain (-1) labels (Irvin et al. 2019): ignore leaves the image out of that "
        "label's subsample, zero counts it negative, one positive", noun="uncertain-label policy")
    blank: BlankPolicy = setting("zero", "CheXpert's and MIMIC's blank labels (not mentioned): zero counts the image "
                                 "negative, ignore leaves it out of that label's subsample", noun="blank-label policy")
    views: ViewPolicy = setting("frontal", "frontal: PA and AP views only (the paper's data); all: laterals too",
                                noun="views policy")
    label_source: LabelSource = setting("physician", "PadChest: physician-labelled images only, or all (the rest "
                                        "labelled by its RNN from the reports)", noun="label source")
    vote: Vote = setting("majority", "VinDr-CXR training images (three radiologists each): positive when a majority "
                         "say so, or any one", noun="vote")
    store: PathText | None = setting(None, "prepared store from `cxr-fast prepare`, for backends that read one",
                                     metavar="DIR", speed_only=True, per_model=True,
                                     shown_default="one in the cache folder")
    out: PathText | None = setting(None, "run folder", metavar="RUN", grid=True, speed_only=True, resume_free=True,
                                   per_model=True, shown_default="runs/<label>-<arch>-<res>")
    subsample_size: int = setting(20_000, "images per label subsample: all positives plus random negatives",
                                  metavar="N", per_model=True, ge=1)
    val_fraction: float = setting(0.2, "share of the subsample for validation", metavar="F", per_model=True, gt=0, lt=1)
    split: Split = setting("image", "validation split: by image (the paper), by patient, or NIH's official lists",
                           noun="split", per_model=True)
    seed: int = setting(0, "seed for sampling, init and augmentation", metavar="N", per_model=True, **SEED_BOUNDS)
    augment: bool = setting(True, "the recipe's training augmentation")
    tta: int = setting(4, "augmented test-time views averaged with the plain one (0: plain only)", metavar="N", ge=0)
    device: str = setting(AUTO, "auto, cpu, cuda or cuda:N", metavar="DEVICE", speed_only=True)
    max_batches: int | None = setting(None, "cap on training batches per epoch, for smoke runs (evaluation is "
                                            "full)", metavar="N", ge=1, shown_default="no cap")
    workers: int | None = setting(None, "loader worker processes", metavar="N", speed_only=True, resume_free=True,
                                  ge=0, shown_default="all cores")

    def __init__(self, **data: Any) -> None:
        """Keyword construction from Python validates like a file does and fails in one line."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise SettingsError(explain(exc, _SOURCE.get(), type(self).model_fields)) from None

    @field_validator("label")
    @classmethod
    def _known_label(cls, value: str) -> str:
        from cxr_fast.data.labels import canonical_label

        try:
            canonical_label(value)
        except CxrError as exc:
            raise ValueError(str(exc)) from None
        return value  # as given: the run folder and its rows keep the user's spelling

    @field_validator("res")
    @classmethod
    def _resolution(cls, value: int) -> int:
        try:
            return check_res(value, "res")
        except CxrError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        """Spelled right before any work (a missing GPU is found by ``study.decide`` and ``train`` before they
        write); ``tpu`` or ``gpu`` would otherwise fail only once a study had written its folder."""
        if value != AUTO and not re.fullmatch(r"cpu|cuda(:\d+)?", value):
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _init_and_weights_agree(self) -> "RunConfig":
        if self.init == "random" and (self.weights or self.weights_sha256):
            raise ValueError("weights are given but init is random; drop one of them")
        return self

    @model_validator(mode="after")
    def _head_bn_init_has_a_head(self) -> "RunConfig":
        if self.head_bn_init != "ones" and self.recipe != "fastai07":
            raise ValueError(f"head_bn_init {self.head_bn_init} is for the fastai07 head; the {self.recipe} head has no "
                             "batch norm")
        return self

    @model_validator(mode="after")
    def _graphs_can_hold_the_step(self) -> "RunConfig":
        """Refused before any work, as ``graphs.off_reason`` would refuse them at the first step: two capture
        mechanisms on one model, and fp16's host-side overflow check (``auto`` is decided on the device)."""
        if self.graphs and self.compile:
            raise ValueError("graphs and compile together: choose one")
        if self.graphs and self.precision == "fp16":
            raise ValueError("graphs with precision fp16: its GradScaler reads an overflow flag on the host every "
                             "step, which a CUDA graph cannot hold; use bf16, tf32 or fp32")
        return self

    # ------------------------------------------------------------------------------------------ making one

    @classmethod
    def parse(cls, data: Mapping[str, Any], source: str = "config") -> "RunConfig":
        """Validate a mapping (a YAML file, a study cell, flags); a refused value is one line naming ``source``."""
        if not isinstance(data, Mapping):
            raise SettingsError(f"{source}: expected a mapping of settings")
        odd = sorted(str(k) for k in data if not isinstance(k, str))
        if odd:
            raise SettingsError(f"{source}: unknown setting(s) {', '.join(odd)}; known: {', '.join(sorted(cls.names()))}")
        token = _SOURCE.set(source)
        try:
            return cls(**data)
        finally:
            _SOURCE.reset(token)

    def replace(self, **changes: Any) -> "RunConfig":
        """This config with resolved values put in (a device, a weights file): no second validation."""
        return self.model_copy(update=changes)

    def record(self) -> dict[str, Any]:
        """What ``config.yaml`` holds: every field, in declaration order, as plain YAML values."""
        return self.model_dump(mode="python")

    # ------------------------------------------------------------------------------------------ its images

    def draw_subsample(self, dataset: Any) -> Any:
        """The label's subsample these settings train on (``data.sampling``): the one place the settings
        are read for it, whether ``train`` draws it, or a study (once, for a label's store and runs)."""
        from cxr_fast.data.sampling import subsample

        return subsample(dataset.metadata, self.label, size=self.subsample_size, seed=self.seed,
                         val_fraction=self.val_fraction, split=self.split, official_split=dataset.official_split)

    def dataset_options(self) -> Any:
        """How the data folder is read (``data.sets.base.DatasetOptions``): the policies these settings name."""
        from cxr_fast.data.sets.base import DatasetOptions

        return DatasetOptions(**{name: getattr(self, name) for name in DatasetOptions.names()})

    def read_dataset(self, data: Any, quiet: bool = True) -> Any:
        """``data`` (the folder these settings name, or the one their store was made from; None: the built-in
        phantom) as the dataset these settings say, read under their policies."""
        from cxr_fast.data.source import resolve_dataset

        return resolve_dataset(data, quiet=quiet, dataset=self.dataset, options=self.dataset_options())

    def check_subsample(self, sub: Any) -> None:
        """Refuse a subsample drawn for other settings than these (a caller's bookkeeping error)."""
        from cxr_fast.data.labels import canonical_label

        want = (canonical_label(self.label), self.subsample_size, self.seed, self.split, self.val_fraction)
        got = (sub.label, sub.size, sub.seed, sub.split, sub.val_fraction)
        if want != got:
            raise CxrError(f"internal error: a subsample drawn for {got} was given to a run of {want}")

    # ------------------------------------------------------------------------------------------ roles

    @classmethod
    def names(cls, role: str | None = None) -> tuple[str, ...]:
        """Field names in declaration order; with ``role`` (grid, speed_only, resume_free, per_model), those that have
        it."""
        return tuple(n for n, f in cls.model_fields.items() if role is None or extra(f, role))


# The roles as tuples, derived from the declarations above.
GRID_FIELDS = RunConfig.names("grid")  # label, res, arch, epochs, out: the grids set them per cell
SPEED_ONLY = RunConfig.names("speed_only")  # out of a cell's fingerprint: a study may finish on another machine
RESUME_FREE = RunConfig.names("resume_free")  # a resumed run may differ in these (weights: its sha256 is compared)
PER_MODEL = RunConfig.names("per_model")  # the runs of one packed step may differ in these, and in nothing else
# Which dataset a data folder is and how it is read: flags of every command that opens data.
DATASET_FIELDS = ("dataset", "uncertain", "blank", "views", "label_source", "vote")


def load_run_config(path: str | Path | None = None, **overrides: Any) -> RunConfig:
    """Defaults, then the YAML file's settings, then every override that is not None (flags not given are None
    or absent). A refused value is one line naming the file."""
    from cxr_fast.config import load_yaml

    data = load_yaml(path) if path is not None else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    return RunConfig.parse({**data, **given}, source=str(path or "config"))
