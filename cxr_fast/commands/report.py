"""``cxr-fast report``: the paper's Tables 2 and 3 and Figures 2-4 from a study folder."""

from __future__ import annotations

import argparse

HELP = "make the paper's Tables 2-3 (Markdown, CSV) and Figures 2-4 (PNG) from a study folder"
DESCRIPTION = (
    "Read a study folder (from `cxr-fast study`) and write Table 2 and Table 3 as Markdown and CSV (AUC ± DeLong "
    "SD; * where the best resolution of a label beats every other at p < .05, paired DeLong test), Figure 2 "
    "(AUC vs resolution), Figure 3 (32 and 64 px as % of 320 px) and Figure 4 (Mass and Nodule by "
    "architecture) as PNG, plus report.md. Unfinished cells show as —."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", metavar="DIR", help="study folder (holds results.jsonl)")
    parser.add_argument("--out", metavar="DIR", help="where to write the report (default DIR/report)")
    parser.add_argument("--compare-paper", action="store_true",
                        help="put the paper's published numbers beside ours (tables and figures)")


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from cxr_fast.report import make_report

    result = make_report(args.study, args.out, compare=args.compare_paper)
    for t in result.tables:
        print(f"{t.title}\n\n{t.markdown}")
    print("wrote " + ", ".join(str(p) for p in result.files))
    return 0
