#!/usr/bin/env python3
"""Checks the labelled error corpus: tests/corpus/train.yaml and a held-out file
(tests/corpus/heldout.yaml unless told otherwise).

Validates every line (fields, classes, io_kind names), refuses duplicate messages and held-out
messages that are near-copies of training ones, checks the balance of classes and sources and
the coverage of the error-handling specification's phrases, and prints the counts. Exits 1 on
any problem. Standard library only: the files use one flow mapping per line, read by the small
parser below (PyYAML, when installed, is used as a cross-check only).

With `--apart-from OTHER` (repeatable), the held-out file must also stay apart from OTHER (another
held-out set): OTHER is read and validated the same way, and any held-out message that duplicates
or is a near-copy of one of its lines is refused, by the same masking and threshold as for
training lines.

Usage: python3 tests/corpus/check.py [TRAIN HELDOUT [--apart-from OTHER]...]
  e.g. python3 tests/corpus/check.py tests/corpus/train.yaml tests/corpus/heldout2.yaml \
           --apart-from tests/corpus/heldout.yaml
"""

import collections
import difflib
import os
import re
import sys

CLASSES = ("transient", "resource", "validation", "permanent", "security")
FIELDS = ("class", "source", "message", "exit_code", "signal", "http_status", "io_kind")
# std::io::ErrorKind names in snake_case.
IO_KINDS = {
    "not_found", "permission_denied", "connection_refused", "connection_reset",
    "host_unreachable", "network_unreachable", "connection_aborted", "not_connected",
    "addr_in_use", "addr_not_available", "network_down", "broken_pipe", "already_exists",
    "would_block", "not_a_directory", "is_a_directory", "directory_not_empty",
    "read_only_filesystem", "filesystem_loop", "stale_network_file_handle", "invalid_input",
    "invalid_data", "timed_out", "write_zero", "storage_full", "not_seekable",
    "quota_exceeded", "file_too_large", "resource_busy", "executable_file_busy", "deadlock",
    "crosses_devices", "too_many_links", "invalid_filename", "argument_list_too_long",
    "interrupted", "unsupported", "unexpected_eof", "out_of_memory", "in_progress", "other",
}
# The error-handling specification's phrases, by the class they stand for.
PHRASES = {
    "transient": ("connection reset", "timeout", "temporary failure",
                  "resource temporarily unavailable"),
    "resource": ("out of memory", "no space left", "gpu memory", "resource exhausted"),
    "validation": ("invalid input", "schema validation", "type error", "constraint violation"),
    "permanent": ("model not found", "permission denied", "invalid configuration",
                  "unsupported operation"),
}
MIN_TRAIN, MIN_HELDOUT = 800, 350
MIN_SOURCES, MIN_SOURCE_TRAIN, MIN_SOURCE_HELDOUT = 35, 10, 4
MIN_CLASS_SHARE, MIN_SECURITY_SHARE, MAX_SHARE_GAP = 0.12, 0.08, 0.05
MIN_PHRASE = 2
NEAR_COPY = 0.9  # similarity of masked texts above which a held-out line is a near-copy

ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "0": "\0", "e": "\x1b",
           "a": "\x07", "b": "\b", "f": "\f", "v": "\v", " ": " "}


class ParseError(Exception):
    """A line that is not a one-line flow mapping of the corpus format."""


def parse_quoted(line, i):
    """Reads a double-quoted YAML scalar starting at line[i] == '"'; returns (text, next i)."""
    out, i = [], i + 1
    while i < len(line):
        c = line[i]
        if c == '"':
            return "".join(out), i + 1
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(line):
            break
        e = line[i + 1]
        if e in ESCAPES:
            out.append(ESCAPES[e])
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = line[i + 2:i + 2 + width]
            if len(digits) != width or not re.fullmatch(r"[0-9a-fA-F]+", digits):
                raise ParseError(f"bad \\{e} escape at column {i + 1}")
            out.append(chr(int(digits, 16)))
            i += 2 + width
        else:
            raise ParseError(f"unknown escape \\{e} at column {i + 1}")
    raise ParseError("unterminated string")


def parse_line(line):
    """Parses `- {key: value, ...}`; returns a dict (ints for numeric plain values)."""
    if not (line.startswith("- {") and line.rstrip().endswith("}")):
        raise ParseError("expected a line `- {class: ..., source: ..., message: \"...\"}`")
    entry, i = {}, 3
    while True:
        while i < len(line) and line[i] == " ":
            i += 1
        m = re.compile(r"([a-z_]+): ").match(line, i)
        if not m:
            raise ParseError(f"expected `key: ` at column {i + 1}")
        key, i = m.group(1), m.end()
        if key in entry:
            raise ParseError(f"field `{key}` given twice")
        if line[i:i + 1] == '"':
            value, i = parse_quoted(line, i)
        else:
            m = re.compile(r"[^,}\"']+").match(line, i)
            if not m:
                raise ParseError(f"expected a value for `{key}` at column {i + 1}")
            raw, i = m.group(0).strip(), m.end()
            value = int(raw) if re.fullmatch(r"-?[0-9]+", raw) else raw
        entry[key] = value
        if line[i:i + 1] == ",":
            i += 1
            continue
        if line[i:].rstrip() == "}":
            return entry
        raise ParseError(f"expected `,` or `}}` at column {i + 1}")


def load(path):
    """Reads a corpus file; returns (entries with their line numbers, problems, header)."""
    entries, problems, header = [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.startswith("#"):
                if not entries:
                    header.append(line)
                continue
            try:
                entries.append((n, parse_line(line)))
            except ParseError as e:
                problems.append(f"{path}:{n}: {e}")
    return entries, problems, header


def cross_check_yaml(path, entries, problems):
    """When PyYAML is installed, the file must read the same through it."""
    try:
        import yaml  # noqa: PLC0415 - optional
    except ImportError:
        return
    with open(path, encoding="utf-8") as f:
        docs = yaml.safe_load(f) or []
    if [e for _, e in entries] != docs:
        problems.append(f"{path}: PyYAML reads the file differently from the corpus parser")


def check_entry(path, n, e, problems):
    """Field names, types and values of one entry."""
    where = f"{path}:{n}"
    for key in e:
        if key not in FIELDS:
            problems.append(f"{where}: unknown field `{key}` (fields: {', '.join(FIELDS)})")
    for key in ("class", "source", "message"):
        if not isinstance(e.get(key), str) or not e.get(key):
            problems.append(f"{where}: `{key}` is missing or not a non-empty string")
    if e.get("class") not in CLASSES:
        problems.append(f"{where}: class `{e.get('class')}` is not one of {', '.join(CLASSES)}")
    if isinstance(e.get("source"), str) and not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", e["source"]):
        problems.append(f"{where}: source `{e['source']}` must be a short lower-case id")
    msg = e.get("message")
    if isinstance(msg, str) and msg != msg.strip():
        problems.append(f"{where}: message has leading or trailing white space")
    for key, lo, hi in (("exit_code", 1, 255), ("signal", 1, 64), ("http_status", 100, 599)):
        if key in e and not (isinstance(e[key], int) and lo <= e[key] <= hi):
            problems.append(f"{where}: `{key}` {e[key]!r} is not an integer in {lo}..={hi}")
    if "io_kind" in e and e["io_kind"] not in IO_KINDS:
        problems.append(f"{where}: io_kind `{e['io_kind']}` is not a std::io::ErrorKind name "
                        "in snake_case")


def mask(text):
    """The text with case, numbers, hex ids and example hosts masked, for near-copy checks."""
    t = text.lower()
    t = re.sub(r"\b[a-z0-9-]+(\.[a-z0-9-]+)*\.example\.(com|org|net)\b", "<host>", t)
    t = re.sub(r"\bexample\.(com|org|net)\b", "<host>", t)
    t = re.sub(r"\b(0x)?[0-9a-f]*[0-9][0-9a-f]*\b", "#", t)
    return re.sub(r"[0-9]+", "#", t)


def normalise(text):
    """Lower case with camelCase, `_` and `-` split into words, for phrase matching."""
    t = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    return re.sub(r"[_\-\s]+", " ", t.lower())


def phrase_counts(entries):
    """{phrase: (in its class normalised, in its class literal, in other classes)}."""
    counts = {}
    for cls, phrases in PHRASES.items():
        for p in phrases:
            own = [e for e in entries if e["class"] == cls]
            other = [e for e in entries if e["class"] != cls]
            counts[p] = (sum(p in normalise(e["message"]) for e in own),
                         sum(p in e["message"].lower() for e in own),
                         sum(p in normalise(e["message"]) for e in other))
    return counts


def near_copies(train, held):
    """Held-out messages whose masked text equals, or is very close to, a training one."""
    found = []
    masked_train = [(mask(e["message"]), e["message"]) for e in train]
    exact = {m: msg for m, msg in masked_train}
    for e in held:
        m = mask(e["message"])
        if m in exact:
            found.append((e["message"], exact[m], 1.0))
            continue
        sm = difflib.SequenceMatcher(None, autojunk=False)
        sm.set_seq2(m)
        for tm, msg in masked_train:
            sm.set_seq1(tm)
            if sm.real_quick_ratio() >= NEAR_COPY and sm.quick_ratio() >= NEAR_COPY \
                    and sm.ratio() >= NEAR_COPY:
                found.append((e["message"], msg, sm.ratio()))
                break
    return found


def short(text, width=90):
    """The first line of a message, cut to `width` characters."""
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= width else first[:width - 1] + "…"


def report(name, entries, problems, minimum):
    """Prints a file's counts per class and checks its size and class balance."""
    total = len(entries)
    print(f"\n== {name}: {total} messages, "
          f"{len({e['source'] for e in entries})} sources")
    if total < minimum:
        problems.append(f"{name}: {total} messages, fewer than {minimum}")
    by_class = collections.Counter(e["class"] for e in entries)
    for cls in CLASSES:
        share = by_class[cls] / total if total else 0
        print(f"  {cls:<11} {by_class[cls]:>4}  {100 * share:5.1f}%")
        floor = MIN_SECURITY_SHARE if cls == "security" else MIN_CLASS_SHARE
        if share < floor:
            problems.append(f"{name}: class {cls} is {100 * share:.1f}% of the file, "
                            f"under {100 * floor:.0f}%")
    return by_class


def parse_args(argv):
    """(TRAIN and HELDOUT paths, --apart-from paths), or None when the arguments are wrong."""
    positional, apart, i = [], [], 1
    while i < len(argv):
        if argv[i] == "--apart-from":
            if i + 1 >= len(argv):
                return None
            apart.append(argv[i + 1])
            i += 2
        else:
            positional.append(argv[i])
            i += 1
    if len(positional) not in (0, 2) or (apart and not positional):
        return None
    if not positional:
        here = os.path.dirname(os.path.abspath(__file__))
        positional = [os.path.join(here, "train.yaml"), os.path.join(here, "heldout.yaml")]
    return positional, apart


def main(argv):
    """Runs every check; returns the process exit code."""
    args = parse_args(argv)
    if args is None:
        print("usage: check.py [TRAIN HELDOUT [--apart-from OTHER]...]")
        return 2
    paths, apart_paths = args
    problems, files = [], []
    for path in paths + apart_paths:
        try:
            entries, parse_problems, header = load(path)
        except OSError as e:
            print(f"cannot read {path}: {e.strerror}")
            return 1
        problems += parse_problems
        if not header:
            problems.append(f"{path}: no header comment explaining the labelling and fields")
        for n, e in entries:
            check_entry(path, n, e, problems)
        if not parse_problems:
            cross_check_yaml(path, entries, problems)
        files.append((os.path.basename(path), entries))
    seen = {}
    for name, entries in files:
        for n, e in entries:
            msg = e.get("message")
            if msg in seen:
                problems.append(f"{name}:{n}: duplicate message (first at {seen[msg]}): "
                                f"{short(msg)}")
            else:
                seen[msg] = f"{name}:{n}"
    if problems:
        print("\n".join(problems))
        print(f"\n{len(problems)} problem(s): fix the lines above before the counts")
        return 1
    (train_name, train), (held_name, held) = [(n, [e for _, e in es]) for n, es in files[:2]]
    apart = [(n, [e for _, e in es]) for n, es in files[2:]]
    train_classes = report(train_name, train, problems, MIN_TRAIN)
    held_classes = report(held_name, held, problems, MIN_HELDOUT)
    for cls in CLASSES:
        if not train or not held:
            break
        gap = abs(train_classes[cls] / len(train) - held_classes[cls] / len(held))
        if gap > MAX_SHARE_GAP:
            problems.append(f"class {cls}: its share differs by {100 * gap:.1f} points "
                            "between the files")

    print(f"\n== sources (train / held-out, held-out per training message)")
    train_src = collections.Counter(e["source"] for e in train)
    held_src = collections.Counter(e["source"] for e in held)
    for src in sorted(set(train_src) | set(held_src)):
        t, h = train_src[src], held_src[src]
        classes = sorted({e["class"] for e in train + held if e["source"] == src})
        print(f"  {src:<14} {t:>4} / {h:>3}  {h / t if t else 0:4.2f}  {' '.join(classes)}")
        if t < MIN_SOURCE_TRAIN or h < MIN_SOURCE_HELDOUT:
            problems.append(f"source {src}: {t} training and {h} held-out messages, under "
                            f"{MIN_SOURCE_TRAIN} and {MIN_SOURCE_HELDOUT}")
    if len(train_src) < MIN_SOURCES:
        problems.append(f"{len(train_src)} sources, fewer than {MIN_SOURCES}")

    print("\n== the specification's phrases, in messages of their class "
          "(normalised / literal; in other classes)")
    for name, entries in ((train_name, train), (held_name, held)):
        for phrase, (own, literal, other) in phrase_counts(entries).items():
            cls = next(c for c, ps in PHRASES.items() if phrase in ps)
            print(f"  {name:<13} {cls:<10} {phrase:<34} {own:>3} / {literal:>3}; {other:>3}")
            if own < MIN_PHRASE:
                problems.append(f"{name}: phrase \"{phrase}\" in {own} {cls} message(s), "
                                f"fewer than {MIN_PHRASE}")

    for held_msg, train_msg, ratio in near_copies(train, held):
        problems.append(f"held-out message is a near-copy ({ratio:.2f}) of a training one:\n"
                        f"    held-out: {short(held_msg)}\n    training: {short(train_msg)}")
    for other_name, other in apart:
        copies = near_copies(other, held)
        print(f"\n== {held_name} apart from {other_name}: {len(other)} messages compared, "
              f"{len(copies)} near-copies")
        for held_msg, other_msg, ratio in copies:
            problems.append(f"held-out message is a near-copy ({ratio:.2f}) of a line of "
                            f"{other_name}:\n    held-out: {short(held_msg)}\n"
                            f"    {other_name}: {short(other_msg)}")
    if problems:
        print("\n" + "\n".join(problems))
        print(f"\n{len(problems)} problem(s)")
        return 1
    print("\nno problems")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
