"""The paper's published numbers (Sabottke & Spieler 2020), transcribed for ``cxr-fast report --compare-paper``.

Values are copied by hand from the paper's Tables 1-3 and its Results text (``/work/shared/paper``); a test
checks that the overlapping cells agree (Table 1's 64 and 320 px columns repeat Table 2; Table 3's "A"
columns repeat Table 2's Mass and Nodule; Table 1's loss weights are negatives/positives in a 20,000-image
subsample of its positive counts), which catches most transcription slips.
"""

from __future__ import annotations

from dataclasses import dataclass

RESOLUTIONS: tuple[int, ...] = (32, 64, 128, 224, 256, 320, 448, 512, 600)
TABLE2_LABELS: tuple[str, ...] = (
    "Emphysema", "Cardiomegaly", "Hernia", "Atelectasis", "Edema", "Effusion", "Mass", "Nodule",
)


@dataclass(frozen=True)
class PaperAuc:
    auc: float
    sd: float
    best: bool = False  # the paper's asterisk: the best resolution for the label


def _col(*cells: str) -> dict[int, PaperAuc]:
    """One column of a table, '0.927 ± 0.006*' strings in RESOLUTIONS order."""
    out: dict[int, PaperAuc] = {}
    for res, cell in zip(RESOLUTIONS, cells, strict=True):
        best = cell.endswith("*")
        auc, sd = cell.rstrip("*").split("±")
        out[res] = PaperAuc(float(auc), float(sd), best)
    return out


# Table 2: ResNet34, 3 epochs, AUC ± DeLong SD, label -> resolution -> value.
TABLE2: dict[str, dict[int, PaperAuc]] = {
    "Emphysema": _col("0.543±0.015", "0.671±0.015", "0.828±0.010", "0.888±0.009", "0.916±0.007",
                      "0.935±0.007", "0.931±0.006", "0.936±0.007*", "0.933±0.007"),
    "Cardiomegaly": _col("0.587±0.013", "0.738±0.011", "0.884±0.007", "0.915±0.006", "0.916±0.006",
                         "0.927±0.006*", "0.922±0.006", "0.894±0.007", "0.882±0.008"),
    "Hernia": _col("0.543±0.045", "0.522±0.054", "0.665±0.037", "0.75±0.040", "0.804±0.038",
                   "0.838±0.032*", "0.812±0.044", "0.687±0.036", "0.75±0.033"),
    "Atelectasis": _col("0.731±0.008", "0.809±0.007", "0.851±0.006", "0.864±0.006", "0.882±0.005",
                        "0.887±0.005", "0.893±0.005*", "0.870±0.006", "0.853±0.006"),
    "Edema": _col("0.814±0.011", "0.836±0.009", "0.900±0.007", "0.912±0.006", "0.917±0.007",
                  "0.924±0.006*", "0.916±0.007", "0.905±0.006", "0.909±0.007"),
    "Effusion": _col("0.591±0.009", "0.825±0.007", "0.884±0.006", "0.903±0.005", "0.913±0.005",
                     "0.913±0.005", "0.919±0.005*", "0.902±0.005", "0.901±0.005"),
    "Mass": _col("0.584±0.010", "0.767±0.008", "0.836±0.007", "0.866±0.007", "0.879±0.006",
                 "0.886±0.006", "0.894±0.006*", "0.862±0.007", "0.847±0.007"),
    "Nodule": _col("0.545±0.010", "0.689±0.009", "0.767±0.008", "0.808±0.007", "0.827±0.007",
                   "0.854±0.006", "0.868±0.006*", "0.836±0.007", "0.833±0.007"),
}

# Table 3: three variants of Mass and Nodule models. A = ResNet34 3 epochs (Table 2's columns),
# B = ResNet34 10 epochs, C = DenseNet121 10 epochs. The paper marks no best cell in Table 3.
TABLE3_VARIANTS: dict[str, tuple[str, int]] = {"A": ("resnet34", 3), "B": ("resnet34", 10), "C": ("densenet121", 10)}
TABLE3: dict[tuple[str, int], dict[str, dict[int, PaperAuc]]] = {
    ("resnet34", 3): {
        "Mass": _col("0.584±0.010", "0.767±0.008", "0.836±0.007", "0.866±0.007", "0.879±0.006",
                     "0.886±0.006", "0.894±0.006", "0.862±0.007", "0.847±0.007"),
        "Nodule": _col("0.545±0.010", "0.689±0.009", "0.767±0.008", "0.808±0.007", "0.827±0.007",
                       "0.854±0.006", "0.868±0.006", "0.836±0.007", "0.833±0.007"),
    },
    ("resnet34", 10): {
        "Mass": _col("0.582±0.010", "0.735±0.009", "0.863±0.007", "0.879±0.006", "0.905±0.005",
                     "0.908±0.005", "0.911±0.005", "0.898±0.006", "0.904±0.006"),
        "Nodule": _col("0.589±0.009", "0.715±0.009", "0.804±0.008", "0.852±0.007", "0.862±0.006",
                       "0.862±0.006", "0.873±0.006", "0.876±0.006", "0.878±0.006"),
    },
    ("densenet121", 10): {
        "Mass": _col("0.585±0.010", "0.804±0.008", "0.844±0.007", "0.866±0.007", "0.870±0.006",
                     "0.873±0.006", "0.874±0.006", "0.874±0.006", "0.873±0.006"),
        "Nodule": _col("0.528±0.010", "0.664±0.009", "0.761±0.008", "0.806±0.007", "0.818±0.007",
                       "0.829±0.007", "0.835±0.007", "0.842±0.007", "0.831±0.007"),
    },
}


@dataclass(frozen=True)
class PaperTable1Row:
    """One row of the paper's Table 1 (ResNet34, 3 epochs)."""

    positives: int
    single_finding: int
    yao_auc: float  # Yao et al 2017
    rajpurkar_auc: float  # Rajpurkar et al 2017 (CheXNet)
    auc64: PaperAuc
    auc320: PaperAuc
    accuracy320: float  # percent
    loss_weight: float


def _a(cell: str) -> PaperAuc:
    auc, sd = cell.split("±")
    return PaperAuc(float(auc), float(sd))


TABLE1: dict[str, PaperTable1Row] = {
    "Emphysema": PaperTable1Row(2516, 892, 0.829, 0.9371, _a("0.671±0.015"), _a("0.935±0.007"), 85.6, 6.949),
    "Cardiomegaly": PaperTable1Row(2776, 1093, 0.904, 0.9248, _a("0.738±0.011"), _a("0.927±0.006"), 79.2, 6.205),
    "Hernia": PaperTable1Row(227, 110, 0.914, 0.9164, _a("0.522±0.054"), _a("0.838±0.032"), 72.2, 87.105),
    "Atelectasis": PaperTable1Row(11559, 4215, 0.772, 0.8094, _a("0.809±0.007"), _a("0.887±0.005"), 79.9, 0.730),
    "Edema": PaperTable1Row(2303, 628, 0.882, 0.8878, _a("0.836±0.009"), _a("0.924±0.006"), 83.2, 7.684),
    "Effusion": PaperTable1Row(13317, 3955, 0.859, 0.8638, _a("0.825±0.007"), _a("0.913±0.005"), 80.2, 0.502),
    "Mass": PaperTable1Row(5782, 2139, 0.792, 0.8676, _a("0.767±0.008"), _a("0.886±0.006"), 84.0, 2.459),
    "Nodule": PaperTable1Row(6331, 2705, 0.717, 0.7802, _a("0.689±0.009"), _a("0.854±0.006"), 80.1, 2.159),
}


SUBSAMPLE_SIZE = 20_000  # the paper's per-label enriched subsample (Methods)


@dataclass(frozen=True)
class PaperSubsampleRun:
    """A run the paper reports only in its text, without an SD."""

    label: str
    subsample_size: int
    res: int
    auc: float


# Results, on Figure 2: "performance for hernia detection improves to 0.943 AUC at a 256 × 256-pixel
# resolution when the positive sample enrichment is enhanced by further subsampling down to 2000 training
# and testing images". ResNet34, 3 epochs, as every Figure 2 model.
HERNIA_SUBSAMPLE = PaperSubsampleRun("Hernia", 2000, 256, 0.943)


def paper_auc(label: str, res: int, arch: str = "resnet34", epochs: int = 3) -> PaperAuc | None:
    """The paper's AUC for a cell, or None where the paper has no such model."""
    if (arch, epochs) == ("resnet34", 3):
        return TABLE2.get(label, {}).get(res)
    return TABLE3.get((arch, epochs), {}).get(label, {}).get(res)
