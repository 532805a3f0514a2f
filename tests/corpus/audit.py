#!/usr/bin/env python3
"""How reproducible the held-out labels are: compares the labels of heldout.yaml, heldout2.yaml
and heldout3.yaml with those of two independent annotators (heldout-audit.tsv), and, when given
the worker binary, with the classifier's answers.

The annotators labelled every held-out message blind: from the class definitions and look-alike
rules of the training files' header only, without the file's label, the classifier's answer or
each other's answers. Each row of heldout-audit.tsv names a held-out line by file and line
number and carries a hash of its message, so an edited held-out file is reported, not silently
compared.

Usage: python3 tests/corpus/audit.py [--worker target/debug/worker]
"""

import collections
import hashlib
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# The action each class calls for, as the classifier's report groups them.
ACTION = {"transient": "retry", "resource": "retry", "unknown": "retry once", "cancelled": "cancel",
          "validation": "fail fast", "permanent": "fail fast", "security": "security alert"}


def load_rows():
    """(file, line, hash, annotator a, annotator b) of every audited held-out line."""
    rows = []
    with open(os.path.join(HERE, "heldout-audit.tsv"), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.startswith("#") or not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                raise SystemExit(f"heldout-audit.tsv:{n}: expected 5 tab-separated fields")
            rows.append((parts[0], int(parts[1]), parts[2], parts[3], parts[4]))
    return rows


def classify(worker, entries):
    """The classifier's class for each entry, through `worker classify --stdin --json`."""
    fields = ("message", "exit_code", "signal", "http_status", "io_kind")
    lines = "".join(json.dumps({k: e[k] for k in fields if k in e}) + "\n" for e in entries)
    out = subprocess.run([worker, "classify", "--stdin", "--json"], input=lines,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    if len(out) != len(entries):
        raise SystemExit(f"{worker} answered {len(out)} lines for {len(entries)} messages")
    return [json.loads(o)["class"] for o in out]


def pct(n, d):
    return f"{n}/{d} ({100 * n / d:.1f}%)" if d else "0/0"


def main(argv):
    worker = None
    if argv[1:2] == ["--worker"] and len(argv) == 3:
        worker = argv[2]
    elif len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    rows = load_rows()
    files = {}
    for name in sorted({r[0] for r in rows}):
        entries, problems, _ = check.load(os.path.join(HERE, name))
        if problems:
            raise SystemExit("\n".join(problems))
        files[name] = dict(entries)
    items = []
    for name, line, digest, a, b in rows:
        e = files[name].get(line)
        if e is None or hashlib.sha256(e["message"].encode()).hexdigest()[:12] != digest:
            raise SystemExit(f"{name}:{line}: the held-out line changed since the audit")
        items.append((e, a, b))
    total = sum(len(v) for v in files.values())
    if len(items) != total:
        raise SystemExit(f"the audit covers {len(items)} of the {total} held-out lines")
    label = [e["class"] for e, _, _ in items]
    a = [x for _, x, _ in items]
    b = [x for _, _, x in items]
    n = len(items)
    print(f"{n} held-out messages")
    print(f"annotator a = annotator b:  {pct(sum(x == y for x, y in zip(a, b)), n)}")
    print(f"annotator a = file label:   {pct(sum(x == y for x, y in zip(a, label)), n)}")
    print(f"annotator b = file label:   {pct(sum(x == y for x, y in zip(b, label)), n)}")
    for who, said in (("a", a), ("b", b)):
        print(f"annotator {who} = file label by action: "
              f"{pct(sum(ACTION[x] == ACTION[y] for x, y in zip(said, label)), n)}")
    both = collections.Counter((y, x) for x, z, y in zip(a, b, label) if x == z != y)
    print(f"both annotators against the file label: {sum(both.values())}")
    for (was, said), count in both.most_common():
        print(f"  file {was:<10} annotators {said:<10} {count}")
    answers = classify(worker, [e for e, _, _ in items]) if worker else None
    if answers:
        print(f"classifier = file label:    {pct(sum(x == y for x, y in zip(answers, label)), n)}")
        print(f"classifier = file label by action: "
              f"{pct(sum(ACTION[x] == ACTION[y] for x, y in zip(answers, label)), n)}")
        agreed = [i for i in range(n) if a[i] == b[i]]
        print(f"classifier = both annotators, where they agree: "
              f"{pct(sum(answers[i] == a[i] for i in agreed), len(agreed))}")
    print("per file label (how many of its messages each gave that label):")
    for cls in check.CLASSES:
        idx = [i for i in range(n) if label[i] == cls]
        row = f"  {cls:<11} {len(idx):>4}  a {sum(a[i] == cls for i in idx):>4}  " \
              f"b {sum(b[i] == cls for i in idx):>4}"
        if answers:
            row += f"  classifier {sum(answers[i] == cls for i in idx):>4}"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
