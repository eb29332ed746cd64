"""``cxr-fast report``: the paper's tables, figures and other results from a study folder."""

from __future__ import annotations

import argparse

from cxr_fast.report.noninferior import ALPHA, ALPHA_BOUNDS, MARGIN, MARGIN_BOUNDS, REFERENCE_BOUNDS
from cxr_fast.schema.flags import number_flag

HELP = "make the paper's Tables 1-3 (Markdown, CSV), Figures 2-4 (PNG) and its other results from a study folder"
DESCRIPTION = (
    "Read a study folder (from `cxr-fast study`) and write, as Markdown and CSV: Tables 2 and 3 (AUC ± DeLong SD; "
    "* on each label's highest AUC, as in the paper; † where the best is significantly higher by the paper's "
    "unpaired z-test, ‡ by the paired DeLong test, p < .05), whether each label's best beats all others under "
    "each test, Table 3's architectures compared, Table 1 (AUC and accuracy at 64 and 320 px, loss weight), the "
    "Hernia run on a 2,000-image subsample, and the share of validation images whose patient is in training; "
    "Figures 2-4 as PNG; and report.md with all of it. Every table names its cells' init and recipe, and cells of "
    "different inits are refused in one table unless --mixed-init. Unfinished cells show as — or 'not run'. "
    "A study with control labels (the null label Null_Control, or Nodule and Mass on the phantom: "
    "configs/control.yaml) gets a 'controls' section that answers, with the numbers, whether the small lesion "
    "loses significantly more AUC at low resolution than the large one, and whether the null label stays within "
    "2 SD of 0.5 at every resolution. --json PATH writes every cell (label, resolution, architecture, AUC, DeLong "
    "SD, paired DeLong p against the label's highest resolution) and those answers for machines. "
    "'What resolution is needed' names, per label, the smallest resolution non-inferior to a reference fixed in "
    "advance (--reference, default the grid's largest): one-sided paired DeLong tests, (ΔAUC + --margin) / SE > "
    "z(1 − --alpha), made downward from the reference and stopped at the first that does not pass, with the "
    "across-seed SD and what that resolution costs beside it."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", metavar="DIR", help="study folder (holds results.jsonl)")
    parser.add_argument("--out", metavar="DIR", help="where to write the report (default DIR/report)")
    parser.add_argument("--compare-paper", action="store_true",
                        help="put the paper's published numbers beside ours (tables, sections and figures)")
    parser.add_argument("--mixed-init", action="store_true",
                        help="allow cells of different inits (imagenet, random, other weights) in one table, "
                             "or beside each other with --against, each marked, instead of refusing")
    parser.add_argument("--json", metavar="PATH", dest="json_path",
                        help="also write every cell and the controls' answers as JSON to PATH")
    parser.add_argument("--against", metavar="DIR",
                        help="a second study folder to set beside this one, cell by cell, with the z-test "
                             "(e.g. the patient-wise split of configs/paper-patients.yaml); every setting that "
                             "differs is stated, and different inits are refused unless --mixed-init")
    number_flag(parser, "--margin", float, **MARGIN_BOUNDS, default=MARGIN,
                help="non-inferiority margin in AUC: a resolution passes when its AUC is shown to be no more than "
                     "this below the reference's")
    number_flag(parser, "--alpha", float, **ALPHA_BOUNDS, default=ALPHA,
                help="one-sided level of each non-inferiority test, and of the whole sequence")
    number_flag(parser, "--reference", int, **REFERENCE_BOUNDS, default=None, metavar="PX",
                help="the reference resolution, fixed before looking (default: the largest of each label's grid)")


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from cxr_fast.report.build import make_report

    result = make_report(args.study, args.out, compare=args.compare_paper, mixed_init=args.mixed_init,
                         against=args.against, json_path=args.json_path, margin=args.margin, alpha=args.alpha,
                         reference=args.reference)
    for t in result.tables:
        init = next((n for n in t.notes if n.startswith("Init")), "")
        print(f"{t.title}\n\n{t.markdown}\n{init}\n")
    controls = next((s for s in result.sections if s.name == "controls"), None)
    if controls is not None:
        print(f"{controls.title}\n\n{controls.markdown}")
    needed = next((s for s in result.sections if s.name == "noninferiority"), None)
    if needed is not None:
        print(f"{needed.title}\n\n{needed.markdown}")
    against = next((s for s in result.sections if s.name == "against"), None)
    if against is not None:
        print(f"{against.title}\n\n{against.markdown}")
    print("wrote " + ", ".join(str(p) for p in result.files))
    return 0
