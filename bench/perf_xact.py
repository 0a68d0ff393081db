#!/usr/bin/env python3
"""Where each pooler's CPU per transaction goes, by symbol (perf record), Sluice builds and PgBouncer.

    /usr/bin/python3 bench/perf_xact.py                             # build/sluice, PgBouncer
    /usr/bin/python3 bench/perf_xact.py --bin OLD/build/sluice --bin build/sluice --rounds 3
    /usr/bin/python3 bench/perf_xact.py --clients 50 --mode extended --json out.json

Each pooler runs in front of one throwaway PostgreSQL, configured as in syscalls_xact.py
(transaction mode, pool 20, PostgreSQL's SCRAM verifier in both auth_files). After a
warm-up, `perf record -e cpu-clock -g` samples the pooler's threads while pgbench -S -t N
runs; the targets take turns, round after round. Each symbol's samples are turned into
microseconds per transaction (samples / frequency / transactions) and averaged over the
rounds. perf's own interrupts slow the pooler down, so compare the targets with each
other, not with pgbench_compare.py's CPU figures. Symbols marked [k] are the kernel's,
[.] user space. Everything listens on 127.0.0.1 and is stopped at exit.
"""
from __future__ import annotations

import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "bench"))

import harness  # noqa: E402
from harness import Postgres  # noqa: E402
from pgbench_compare import DB, PASSWORD, USER  # noqa: E402
from syscalls_xact import PGBENCH_ENV, pgbench_argv, start_targets, target_arguments  # noqa: E402

FREQUENCY = 10000  # samples per second of CPU


def parse_report(text: str, transactions: int) -> Dict[str, float]:
    """perf report --stdio --sort sym: microseconds per transaction by '[k] sym' / '[.] sym'."""
    total = None
    per: Dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        m = re.match(r"#\s*Samples:\s*(\d+(?:\.\d+)?)([KM]?)", line)
        if m:
            total = float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6}[m.group(2)]
            continue
        m = re.match(r"\s+([\d.]+)%\s+\[(.)\]\s+(.*\S)\s*$", line)
        if m and total:
            samples = float(m.group(1)) / 100 * total
            per[f"[{m.group(2)}] {m.group(3)}"] += samples / FREQUENCY * 1e6 / transactions
    if total is None:
        raise RuntimeError("perf report printed no sample count")
    return per


def sample(name: str, port: int, pid: int, base: Path, clients: int, transactions: int,
           mode: str, round_no: int, keep: Optional[Path]) -> Dict[str, float]:
    pgbench = pgbench_argv(port, clients, mode, False)
    subprocess.run(pgbench + ["-t", "100", DB], env=PGBENCH_ENV, capture_output=True,
                   timeout=600, check=True)  # (logins and warm-up stay outside)
    data = base / f"perf-{name.replace('/', '_')}-{round_no}.data"
    err = base / f"perf-{round_no}.err"
    with open(err, "w") as err_file:
        rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", str(FREQUENCY), "-g",
                                "-p", str(pid), "-o", str(data)],
                               stdout=subprocess.DEVNULL, stderr=err_file)
    try:
        # perf says nothing when it has attached: wait until its output file has a header.
        if not harness.wait_for(lambda: data.exists() and data.stat().st_size > 0, 30):
            raise RuntimeError(f"perf record did not start on {name}: {harness.tail(err)}")
        subprocess.run(pgbench + ["-t", str(transactions), DB], env=PGBENCH_ENV,
                       capture_output=True, timeout=1800, check=True)
    finally:
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=120)
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "sym",
                             "--stdio", "-g", "none", "--percent-limit", "0"],
                            capture_output=True, text=True, timeout=600, check=True).stdout
    if keep:  # (for `perf report -i FILE -G` and callers, by hand)
        keep.mkdir(parents=True, exist_ok=True)
        shutil.move(str(data), str(keep / data.name))
    else:
        data.unlink()
    return parse_report(report, clients * transactions)


def main() -> int:
    ap = target_arguments(__doc__, transactions=3000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--top", type=int, default=40, help="symbols shown, largest first")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep each round's perf.data in DIR")
    a = ap.parse_args()
    bins = [b.resolve() for b in (a.bin or [REPO / "build" / "sluice"])]
    base = harness.make_tempdir("sluice-perf-")
    pg = Postgres(base=base)
    started: List = [pg]
    per: Dict[str, Dict[str, float]] = {}
    try:
        pg.start()
        pg.create_role(USER, PASSWORD)
        pg.create_database(DB, owner=USER)
        pg.pgbench_init(DB, USER, scale=1)
        secret = pg.role_secret(USER)
        targets = start_targets(pg, base, bins, 20, secret,
                                not a.no_pgbouncer and a.mode != "prepared", started)
        sums = {name: collections.defaultdict(float) for name, _, _ in targets}
        for r in range(a.rounds):
            for name, port, pid in targets:
                for sym, us in sample(name, port, pid, base, a.clients, a.transactions,
                                      a.mode, r, a.keep).items():
                    sums[name][sym] += us / a.rounds
                print(f"[{time.strftime('%H:%M:%S')}] round {r + 1}/{a.rounds} {name}: "
                      f"{sum(sums[name].values()) * a.rounds / (r + 1):.2f} us/xact sampled so far",
                      flush=True)
        per = {name: dict(v) for name, v in sums.items()}
    finally:
        for x in reversed(started):
            try:
                x.stop()
            except Exception as e:  # keep stopping the others
                print(f"stop failed: {e}", file=sys.stderr)
    names = list(per)
    short = {n: (n.split(":", 1)[1] if n.startswith("sluice:") else n) for n in names}
    print(f"\npgbench -S -M {a.mode} -c {a.clients} -t {a.transactions}, {a.rounds} rounds; "
          f"microseconds of sampled CPU per transaction")
    for n in names:
        kernel = sum(v for k, v in per[n].items() if k.startswith("[k]"))
        total = sum(per[n].values())
        print(f"  {short[n]}: {total:.2f} (kernel {kernel:.2f}, user {total - kernel:.2f})")
    symbols = sorted({k for n in names for k in per[n]},
                     key=lambda k: -max(per[n].get(k, 0.0) for n in names))
    print("\n" + " ".join(f"{'T' + str(i + 1):>8s}" for i in range(len(names))) + "  symbol")
    for i, n in enumerate(names):
        print(f"  T{i + 1} = {short[n]}")
    for k in symbols[:a.top]:
        print(" ".join(f"{per[n].get(k, 0.0):8.3f}" for n in names) + "  " + k[:100])
    if a.json:
        a.json.write_text(json.dumps({"clients": a.clients, "mode": a.mode, "rounds": a.rounds,
                                      "transactions_per_client": a.transactions,
                                      "frequency": FREQUENCY, "us_per_xact": per}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
