"""The study's finding names, spelled once: ChestX-ray14's fourteen findings and No Finding, the paper's
eight, and the phantom's negative control.

Every dataset (``cxr_fast.data.sets``) maps its own label names to these through a table written in its
module, so that a study names ``Effusion`` whether the images come from NIH ("Effusion"), CheXpert
("Pleural Effusion") or PadChest ("pleural effusion"). A dataset that has no such label says so in one line,
naming the labels it has (``Metadata.has``).
"""

from __future__ import annotations

from cxr_fast.errors import CxrError

FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NO_FINDING = "No Finding"
ALL_LABELS: tuple[str, ...] = FINDINGS + (NO_FINDING,)
# The eight labels the paper models, in the order of its Table 1.
PAPER_LABELS: tuple[str, ...] = (
    "Emphysema", "Cardiomegaly", "Hernia", "Atelectasis", "Edema", "Effusion", "Mass", "Nodule",
)

# The phantom's negative control (``cxr_fast.data.phantom``): assigned at random, no pixels drawn, so any AUC
# away from 0.5 is leakage or a bug. Not a ChestX-ray14 finding: only phantom folders carry it.
NULL_LABEL = "Null_Control"
CONTROL_LABELS: tuple[str, ...] = (NULL_LABEL,)
PHANTOM_MARKER = ".phantom.json"  # written by make_phantom: the folder's settings, and its licence for controls

_ALIASES = {name.lower().replace("_", " "): name for name in ALL_LABELS + CONTROL_LABELS}
_ALIASES["infiltrate"] = "Infiltration"  # the spelling used in NIH's BBox_List_2017.csv


def canonical_label(name: str) -> str:
    """``'nodule'``, ``'Pleural Thickening'`` -> the study's spelling; unknown names are an error.

    ``NULL_LABEL`` is known here (a study may name it); whether a dataset carries it is ``Metadata.has``'s call.
    """
    key = name.strip().lower().replace("_", " ")
    if key not in _ALIASES:
        raise CxrError(f"unknown label {name!r}; known labels: {', '.join(ALL_LABELS)} "
                       f"(and {', '.join(CONTROL_LABELS)} in phantom folders)")
    return _ALIASES[key]
