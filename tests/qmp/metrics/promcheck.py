#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Strict check of a Prometheus text exposition (format 0.0.4) read from stdin.

Every line is a HELP, TYPE or comment line, or a sample matching the grammar
name{label="value",...} value [timestamp]; label values use only the escapes \\\\, \\" and
\\n. HELP and TYPE (one each per family) come before the family's first sample, a family's
samples are contiguous, counters are named *_total and are non-negative, and no series
(name + label set) appears twice. Histogram families (TYPE histogram) have only
NAME_bucket (with an `le` label), NAME_sum and NAME_count samples; per label set the buckets
come in increasing `le` order, ending with le="+Inf", their counts are cumulative
(non-decreasing), and NAME_count equals the +Inf bucket. No family is named *_created,
*_bucket, *_sum, *_count or *_info unless it is what OpenMetrics reserves the suffix for (an
_info family is a gauge). Prints "OK: F families, S samples"
or one line per problem (exit 1)."""
import math
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
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def family_of(name, types):
    """The family a sample belongs to: its own name, or a histogram/summary it suffixes."""
    for kind, suffixes in SUFFIXES.items():
        for suffix in suffixes:
            if name.endswith(suffix) and types.get(name[: -len(suffix)]) == kind:
                return name[: -len(suffix)], suffix
    return name, ""


def parse_float(v):
    return float(v.replace("Inf", "inf"))


def check(text):
    errors = []
    if text and not text.endswith("\n"):
        errors.append("the exposition does not end with a newline")
    helps, types, seen, done = {}, {}, set(), set()
    current = None
    samples = 0
    hist = {}   # (family, labels without le) -> {"buckets": [(le, value, line)], "sum", "count"}
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
            if line.startswith("# TYPE "):
                reserved = [x for x in ("_created", "_bucket", "_sum", "_count") if fam.endswith(x)]
                if reserved:
                    err(f"family {fam} ends in OpenMetrics' reserved suffix {reserved[0]}")
                if fam.endswith("_info") and m.group(2) != "gauge":
                    err(f"info family {fam} is not a gauge")
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            err("not a valid sample line")
            continue
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        samples += 1
        fam, suffix = family_of(name, types)
        if fam != current:
            if fam in done:
                err(f"samples of {fam} are not contiguous")
            if current:
                done.add(current)
            current = fam
        if fam not in helps or fam not in types:
            err(f"sample of {name} before its HELP and TYPE")
        kind = types.get(fam)
        if kind == "counter":
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
        if kind == "histogram":
            if not suffix:
                err(f"histogram sample {name} is not _bucket, _sum or _count")
                continue
            le = [v[1:-1] for k, v in pairs if k == "le"]
            rest = tuple(sorted(p for p in pairs if p[0] != "le"))
            h = hist.setdefault((fam, rest), {"buckets": [], "sum": None, "count": None, "line": no})
            if suffix == "_bucket":
                if not le:
                    err("bucket without le label")
                    continue
                try:
                    bound = parse_float(le[0])
                except ValueError:
                    err(f"le={le[0]!r} is not a number")
                    continue
                if h["sum"] is not None or h["count"] is not None:
                    err("bucket after the series' _sum/_count")
                h["buckets"].append((bound, parse_float(value), no))
            else:
                if le:
                    err(f"{suffix} sample with an le label")
                if value.startswith("-") or value == "NaN":
                    err(f"negative {suffix}")
                h[suffix[1:]] = parse_float(value)
    for (fam, rest), h in hist.items():
        series = f"histogram {fam}{{{','.join(f'{k}={v}' for k, v in rest)}}}"
        where = f"line {h['line']}: {series}"
        b = h["buckets"]
        if not b or not math.isinf(b[-1][0]):
            errors.append(f"{where}: no le=\"+Inf\" bucket last")
        for (b0, v0, _), (b1, v1, no1) in zip(b, b[1:]):
            if not b1 > b0:
                errors.append(f"line {no1}: {series}: le not increasing ({b0} then {b1})")
            if v1 < v0:
                errors.append(f"line {no1}: {series}: bucket counts not cumulative ({v0} then {v1})")
        if h["sum"] is None or h["count"] is None:
            errors.append(f"{where}: _sum or _count missing")
        elif b and h["count"] != b[-1][1]:
            errors.append(f"{where}: _count {h['count']} != +Inf bucket {b[-1][1]}")
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
