"""Shared behaviour of the SecFlow stand-in programs used by the tests.

Each stand-in is named like the real tool, accepts the arguments the built-in tool
definitions render (an unknown flag is an error, exit 2, as the real tools do) and prints
output in the tool's real format, derived from its input. None of them touches the network.

Environment:
  STANDIN_SLEEP=SECONDS  sleep this long before doing anything (to test timeouts)
  STANDIN_GARBAGE=1      print malformed output instead
"""

import os
import sys
import time


def start():
    """Applies STANDIN_SLEEP; returns whether STANDIN_GARBAGE asks for malformed output."""
    delay = os.environ.get("STANDIN_SLEEP")
    if delay:
        time.sleep(float(delay))
    return os.environ.get("STANDIN_GARBAGE") == "1"


def die(message):
    """Exits with status 2 and `message` on stderr, like a CLI refusing its arguments."""
    print(f"{os.path.basename(sys.argv[0])}: {message}", file=sys.stderr)
    sys.exit(2)


def parse(argv, with_value, switches):
    """Splits `argv` into {flag: [values]}, a set of switches and positional arguments."""
    values, seen, positional = {}, set(), []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in with_value:
            if i + 1 >= len(argv):
                die(f"flag {arg} needs a value")
            values.setdefault(arg, []).append(argv[i + 1])
            i += 2
        elif arg in switches:
            seen.add(arg)
            i += 1
        elif arg.startswith("-") and arg != "-":
            die(f"unknown flag {arg}")
        else:
            positional.append(arg)
            i += 1
    return values, seen, positional


def first(values, *flags):
    """The first value given to any of `flags`, or None."""
    for flag in flags:
        if values.get(flag):
            return values[flag][0]
    return None


def read_lines(path):
    """The non-empty, stripped lines of the file at `path` (exit 2 if it is missing)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        die(f"cannot read {path}: {e}")
    return []


def csv(values, *flags):
    """Every comma-separated item given to any of `flags`."""
    out = []
    for flag in flags:
        for value in values.get(flag, []):
            out.extend(v for v in value.split(",") if v)
    return out
