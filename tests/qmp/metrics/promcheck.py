#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Strict check of a Prometheus text exposition (format 0.0.4) read from stdin.

Every line is a HELP, TYPE or comment line, or a sample matching the grammar
name{label="value",...} value [timestamp]; label values use only the escapes \\\\, \\" and
\\n. HELP and TYPE (one each per family) come before the family's first sample, a family's
samples are contiguous, counters are named *_total and are non-negative, and no series
(name + label set) appears twice. Prints "OK: F families, S samples" or one line per
problem (exit 1)."""
import re
import sys

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
NUMBER = r"[+-]?(?:Inf|NaN|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
SAMPLE = re.compile(rf"^({NAME})(?:\{{((?:{LABEL}={VALUE}(?:,{LABEL}={VALUE})*,?)?)\}})? ({NUMBER})(?: (-?\d+))?$")
PAIR = re.compile(rf"({LABEL})=({VALUE})")
HELP = re.compile(rf"^# HELP ({NAME}) (.*)$")
TYPE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")


def check(text):
    errors = []
    if text and not text.endswith("\n"):
        errors.append("the exposition does not end with a newline")
    helps, types, seen, done = {}, {}, set(), set()
    current = None
    samples = 0
    for no, line in enumerate(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), 1):
        def err(msg):
            errors.append(f"line {no}: {msg}: {line!r}")
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            m = (HELP if line.startswith("# HELP ") else TYPE).match(line)
            if not m:
                err("malformed HELP/TYPE line")
                continue
            fam, table = m.group(1), (helps if line.startswith("# HELP ") else types)
            if fam in table:
                err(f"second {line[2:6]} for {fam}")
            if fam in done or fam == current:
                err(f"{line[2:6]} for {fam} after its samples")
            table[fam] = m.group(2)
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            err("not a valid sample line")
            continue
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        samples += 1
        if name != current:
            if name in done:
                err(f"samples of {name} are not contiguous")
            if current:
                done.add(current)
            current = name
        if name not in helps or name not in types:
            err(f"sample of {name} before its HELP and TYPE")
        if types.get(name) == "counter":
            if not name.endswith("_total"):
                err(f"counter {name} does not end in _total")
            if value.startswith("-") or value == "NaN":
                err("negative counter")
        pairs = PAIR.findall(labels)
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            err("duplicate label name")
        if any(k.startswith("__") for k in keys):
            err("reserved label name")
        series = (name, tuple(sorted(pairs)))
        if series in seen:
            err("duplicate series")
        seen.add(series)
    for fam in types:
        if fam not in helps:
            errors.append(f"{fam} has TYPE but no HELP")
    return errors, len(types), samples


def main():
    errors, families, samples = check(sys.stdin.read())
    for e in errors:
        print(e)
    if errors:
        sys.exit(1)
    print(f"OK: {families} families, {samples} samples")


if __name__ == "__main__":
    main()
