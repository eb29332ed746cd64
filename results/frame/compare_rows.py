"""Compare two studies' results.jsonl row by row, leaving out what a rerun changes (times and the date).

    python results/frame/compare_rows.py BEFORE/results.jsonl AFTER/results.jsonl

Prints each pair that differs and exits 1 when any does; with matching rows, says so and exits 0.
"""

import json
import sys

TIMES = {"wall_s", "train_images_per_s", "finished_at"}


def rows(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [json.dumps({k: v for k, v in json.loads(line).items() if k not in TIMES}) for line in fh if line.strip()]


def main(before: str, after: str) -> int:
    a, b = rows(before), rows(after)
    print(f"{len(a)} rows vs {len(b)} rows")
    for x, y in zip(a, b):
        if x != y:
            print(f"differ:\n  {x}\n  {y}")
    same = a == b
    print("identical apart from times" if same else "DIFFERENT")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
