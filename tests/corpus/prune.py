#!/usr/bin/env python3
"""Keeps a training file apart from the held-out sets: drops from TRAIN every line that a
held-out line duplicates or nearly copies (check.py's masking and threshold), so that the
held-out figures stay figures on unseen messages. The training side gives way; the held-out
files are never edited.

Usage: python3 tests/corpus/prune.py TRAIN [HELDOUT...]
  (default held-out files: heldout.yaml, heldout2.yaml, heldout3.yaml, holdout.yaml)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check  # noqa: E402

HELDOUT = ("heldout.yaml", "heldout2.yaml", "heldout3.yaml", "holdout.yaml")


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    train_path = argv[1]
    here = os.path.dirname(os.path.abspath(__file__))
    held_paths = argv[2:] or [os.path.join(here, h) for h in HELDOUT]
    held = []
    for path in held_paths:
        entries, problems, _ = check.load(path)
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 1
        held += [e for _, e in entries]
    entries, problems, _ = check.load(train_path)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    drop = {n for n, e in entries if check.near_copies([e], held)}
    with open(train_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    kept = [line for n, line in enumerate(lines, 1) if n not in drop]
    with open(train_path, "w", encoding="utf-8") as f:
        f.write("\n".join(kept))
    print(f"{train_path}: dropped {len(drop)} of {len(entries)} lines near held-out ones")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
