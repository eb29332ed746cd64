"""``cxr-fast fetch nih DIR``: download NIH ChestX-ray14's archives (and place its metadata) into a data folder."""

from __future__ import annotations

import argparse

from cxr_fast.schema.flags import number_flag

HELP = "download NIH ChestX-ray14 (12 images_NNN.tar.gz, about 42 GB) into a data folder, resumable and checked"
DESCRIPTION = (
    "Download the 12 image archives of NIH ChestX-ray14 (images_001.tar.gz ... images_012.tar.gz, about 42 GB) from "
    "the NIH Clinical Center's static Box links, the ones NIH's batch_download_zips.py lists (kept as data in "
    "cxr_fast/data/resources/nih_links.json), with progress (bytes, rate, time left). A dropped connection resumes "
    "with an HTTP range request and is retried with backoff; a killed run resumes from its .part file; a file gets "
    "its final name only when whole. NIH publishes no checksums: each archive's gzip CRC and length are checked as "
    "it arrives, and its size and sha256 go into DIR/fetch.json, checked again on every rerun (a changed or cut "
    "file is refused by name). The metadata has no static link: the Data_Entry_2017_v2020.csv.gz bundled with "
    "cxr-fast is copied into DIR (NIH's train_val_list.txt / test_list.txt, for --split official, are not fetched). "
    "Nothing is extracted: DIR is a data folder as it stands (verify and prepare stream the archives), so next run "
    "`cxr-fast verify DIR`, then `cxr-fast prepare DIR ...` or `cxr-fast study configs/paper.yaml --data DIR`. "
    "The Kaggle packaging of the same data (nih-chest-xrays/data: images_001/images/... folders beside "
    "Data_Entry_2017.csv) is already read as a data folder: no fetch needed, point DATA or --data at it."
)

_DAY_S = 86400.0  # the most a wait or a timeout may be, in seconds


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", choices=["nih"], help="the dataset: nih (ChestX-ray14)")
    p.add_argument("dir", metavar="DIR", help="data folder to fetch into (made if absent; a rerun resumes and checks)")
    p.add_argument("--parts", default=None, metavar="N,N-M",
                   help="only these archives, e.g. 1,2 or 1-3 (default: all 12); the metadata always")
    p.add_argument("--dry-run", action="store_true", help="print what would be fetched, and fetch nothing")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--mirror", metavar="URL", help="fetch every file by its name from URL instead (URL/images_001.tar.gz ...)")
    where.add_argument("--links", metavar="FILE", help="a links file of your own, in the format of nih_links.json")
    number_flag(p, "--retries", int, ge=0, le=1000, default=8,
                help="attempts in a row that get no further toward the whole file before giving up")
    number_flag(p, "--backoff", ge=0, le=_DAY_S, default=2.0, metavar="SECONDS",
                help="first wait before a retry; it doubles each time (at most 2 minutes)")
    # a socket takes no NaN, and no 1e30 s
    number_flag(p, "--timeout", gt=0, le=_DAY_S, default=60.0, metavar="SECONDS", help="network timeout per read")
    p.add_argument("--adopt", action="store_true",
                   help="record files already in DIR that no fetch.json vouches for, as they are, instead of refusing them")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cxr_fast.data.download import Policy
    from cxr_fast.data.fetch import RECORD, describe, fetch, make_plan, parse_parts
    from cxr_fast.errors import CxrError
    plan = make_plan(args.links, args.mirror, parse_parts(args.parts) if args.parts else None)
    root = Path(args.dir)
    if root.exists() and not root.is_dir():
        raise CxrError(f"{root} is a file, not a data folder")
    if args.dry_run:
        print("\n".join(describe(plan, root)))
        return 0
    record = fetch(plan, root, Policy(args.retries, args.backoff, 120.0, args.timeout), adopt=args.adopt,
                   quiet=args.quiet)
    done = [i.name for i in plan.items if i.name in record["files"]]
    print(f"{root}: {len(done)} file(s) here, whole and checked (sizes and sha256 in {root / RECORD}); "
          f"next: cxr-fast verify {root}")
    return 0
