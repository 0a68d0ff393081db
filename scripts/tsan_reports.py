#!/usr/bin/env python3
"""Collects ThreadSanitizer reports from logs and writes each distinct one once.

    scripts/tsan_reports.py OUT FILE_OR_DIR...

A report runs from "WARNING: ThreadSanitizer: <kind>" to "SUMMARY: ThreadSanitizer: ...".
Two reports are the same when they have the same kind and the same first project frame
(file:line in src/ or include/) in each of their stacks: the same race seen from many
tests or many times. OUT lists every distinct report with how often and where it was seen,
its stack heads, and one full report. Prints "tsan: N reports, D distinct" and exits 1 when
there is any report (0 when none), so that a caller can turn it into a verdict.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict, List, Tuple

FRAME = re.compile(r"^\s*#\d+\s+(?P<fn>.*?)\s+(?P<loc>/\S+?:\d+)(?::\d+)?(?:\s|$)")


PROJECT_PATH = re.compile(r"/((?:src|include/sluice|tests|fuzz|bench)/[^/].*)$")


def project_frame(lines: List[str]) -> str:
    """The first frame of a stack that points into the project's own code."""
    if not lines:
        return "(stack not restored)"
    fallback = ""
    for line in lines:
        m = FRAME.match(line)
        if not m:
            continue
        loc = m.group("loc")
        if not fallback:
            fallback = f"{m.group('fn')} {loc}"
        m2 = PROJECT_PATH.search(loc)
        if m2 and not loc.startswith("/usr/"):
            # Relative to the checkout, so that reports from two checkouts (worktrees)
            # of the same code are the same report.
            return f"{m.group('fn')} {m2.group(1)}"
    return fallback


def clean_heading(h: str) -> str:
    """A stack's heading without what differs between runs (addresses, thread ids)."""
    h = re.sub(r" of size \d+| at 0x[0-9a-f]+| by (main )?thread T\d+.*| M\d+|:$", "", h)
    return h.strip()


ANY_FRAME = re.compile(r"^\s+#\d+ ")  # also frames without a file:line (libtsan, <null>)
ACCESS = re.compile(r"^(Previous )?(atomic )?(read|write)|^(Read|Write|Atomic)", re.I)
HEADING = re.compile(r"^  [A-Z]")  # "  Write of size 8 ...", "  Previous read ...", "  Location is ..."


def split_stacks(block: List[str]) -> List[Tuple[str, List[str]]]:
    """(heading, frames) for each stack of a report, in order. Sluice's own log lines may be
    interleaved (stdout and stderr go to one file, from several threads): they are neither
    headings (two spaces, a capital) nor frames (#N), and are skipped."""
    stacks: List[Tuple[str, List[str]]] = []
    for line in block[1:]:
        if FRAME.match(line):
            if stacks:
                stacks[-1][1].append(line)
        elif HEADING.match(line):
            stacks.append((line.strip(), []))
    # The two conflicting accesses come first; an access whose stack TSAN could not restore
    # (history too short) is kept, frameless, so that it is not replaced by "Location is".
    return [s for s in stacks if s[1] or ACCESS.match(s[0])]


def condensed(block: List[str], frames_per_stack: int = 8, width: int = 240) -> List[str]:
    """The report without interleaved log lines, each stack cut to its first frames."""
    out, n = [block[0]], 0
    for line in block[1:]:
        if HEADING.match(line) or line.startswith("SUMMARY"):
            out.append(line)
            n = 0
        elif ANY_FRAME.match(line):
            n += 1
            if n <= frames_per_stack:
                out.append(line if len(line) <= width else line[:width] + " ...")
            elif n == frames_per_stack + 1:
                out.append("      ...")
    return out


def reports(text: str) -> List[List[str]]:
    out, cur = [], None
    for line in text.splitlines():
        if "WARNING: ThreadSanitizer:" in line:
            cur = [line]
        elif cur is not None:
            cur.append(line)
            if line.startswith("SUMMARY: ThreadSanitizer:"):
                out.append(cur)
                cur = None
    if cur:
        out.append(cur)
    return out


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    out_path = Path(sys.argv[1])
    files: List[Path] = []
    for arg in sys.argv[2:]:
        p = Path(arg)
        files += sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]

    seen: Dict[Tuple, dict] = {}
    total = 0
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        for block in reports(text):
            total += 1
            kind = block[0].split("WARNING: ThreadSanitizer:", 1)[1].strip()
            kind = re.sub(r"\s*\(pid=\d+\)", "", kind)
            stacks = split_stacks(block)
            heads = tuple(f"{clean_heading(h)}: {project_frame(fr)}" for h, fr in stacks[:2])
            # The same race reported from either side (write first or read first) is one.
            key = (kind, tuple(sorted(h.split(": ", 1)[1] for h in heads)))
            entry = seen.setdefault(key, {"kind": kind, "heads": heads, "count": 0,
                                          "where": set(), "example": block})
            entry["count"] += 1
            entry["where"].add(f.name)

    with open(out_path, "w") as o:
        o.write(f"{total} ThreadSanitizer reports, {len(seen)} distinct\n")
        for i, e in enumerate(sorted(seen.values(), key=lambda e: -e["count"]), 1):
            o.write(f"\n=== {i}. {e['kind']}  (seen {e['count']}x in {len(e['where'])} logs: "
                    f"{', '.join(sorted(e['where'])[:5])}{' ...' if len(e['where']) > 5 else ''})\n")
            for h in e["heads"]:
                o.write(f"    {h}\n")
            o.write("  --- first report:\n")
            o.write("".join(f"  {line}\n" for line in condensed(e["example"])))
    print(f"tsan: {total} reports, {len(seen)} distinct (written to {out_path})")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
