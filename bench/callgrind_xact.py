#!/usr/bin/env python3
"""Instructions a pooler itself executes per transaction (callgrind): Sluice builds, PgBouncer.

    /usr/bin/python3 bench/callgrind_xact.py                       # build/sluice
    /usr/bin/python3 bench/callgrind_xact.py --bin OLD/build/sluice --bin build/sluice
    /usr/bin/python3 bench/callgrind_xact.py --pgbouncer --mode extended   # and PgBouncer
    /usr/bin/python3 bench/callgrind_xact.py --clients 100 --transactions 200
    /usr/bin/python3 bench/callgrind_xact.py --tls      # TLS to clients and to PostgreSQL

A figure a noisy, shared machine cannot move (no PMU in these VMs, so no `perf stat -e
instructions`): each pooler runs under valgrind --tool=callgrind (Sluice with `workers: 1`)
in front of one throwaway PostgreSQL. After a warm-up, two runs are counted, pgbench -S -t
T/5 and -t T, each between a zeroing (callgrind_control -z) and a dump (-d); the
difference of the two totals, divided by the transactions it adds, is the cost of a
transaction with no login in it. The login's cost is shown apart. Both poolers get
PostgreSQL's SCRAM verifier in their auth_file: with a plaintext password PgBouncer
derives one on every login (tens of millions of instructions), Sluice once per password.
User space only: kernel time is not counted (syscalls_xact.py counts the system calls).
Everything listens on 127.0.0.1 and is stopped at exit.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "bench"))

import harness  # noqa: E402
from harness import Postgres  # noqa: E402
from pgbench_compare import DB, PASSWORD, PGBOUNCER, USER, PgBouncer, make_certs  # noqa: E402


def callgrind_total(dump: Path) -> int:
    if not harness.wait_for(dump.exists, 60):
        raise RuntimeError(f"callgrind wrote no dump {dump}")
    time.sleep(1)  # (the dump is written as a whole, but give it a moment)
    return next(int(line.split()[1]) for line in dump.read_text().splitlines()
                if line.startswith("summary:"))


def measure(name: str, proc: subprocess.Popen, port: int, out: Path, clients: int,
            transactions: int, keep: Optional[Path], tls: bool, mode: str,
            as_user=lambda argv: argv) -> dict:
    """Two counted runs, of T/5 and T transactions per client, each after zeroing the
    counters: the difference is T*4/5 transactions per client with no login in it (each
    run logs its clients in once, and a login costs the same in both), so a pooler that
    derives a SCRAM verifier on every login (PgBouncer) is compared on its transactions."""
    env = dict(os.environ, PGPASSWORD=PASSWORD, PGSSLMODE="require" if tls else "disable")
    pgbench = ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-n", "-S",
               "-M", mode, "-c", str(clients), "-j", "2"]
    subprocess.run(pgbench + ["-t", "50", DB], env=env, capture_output=True, timeout=600,
                   check=True)
    short = max(1, transactions // 5)
    totals, failed = [], []
    for part, t in enumerate((short, transactions), start=1):
        subprocess.run(as_user(["callgrind_control", "-z", str(proc.pid)]), capture_output=True,
                       timeout=60, check=True)
        r = subprocess.run(pgbench + ["-t", str(t), DB], env=env, capture_output=True,
                           text=True, timeout=1800, check=True)
        subprocess.run(as_user(["callgrind_control", "-d", str(proc.pid)]), capture_output=True,
                       timeout=60, check=True)
        dump = Path(f"{out}.{part}")
        totals.append(callgrind_total(dump))
        failed += [line for line in r.stdout.splitlines() if "failed transactions" in line]
        if keep and part == 2:  # for callgrind_annotate --inclusive=yes (logins included)
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(dump, keep / f"callgrind.{name}.{clients}"
                                    f"{'.tls' if tls else ''}.{mode}.out")
    counted = clients * (transactions - short)
    per_xact = (totals[1] - totals[0]) / counted
    login = (totals[0] - per_xact * clients * short) / clients
    return {"target": name, "transactions": counted, "instructions": totals[1] - totals[0],
            "per_transaction": per_xact, "per_login": login, "runs": totals,
            "pgbench": failed}


def sluice_target(binary: Path, pg: Postgres, base: Path, tls: Optional[dict]):
    d = base / f"cg-{binary.parent.parent.name}-{time.monotonic_ns()}"
    d.mkdir(parents=True)
    # PostgreSQL's verifier, as PgBouncer gets it below: logins compared on equal terms
    (d / "userlist.txt").write_text(harness.userlist_text({USER: pg.role_secret(USER)}))
    port = harness.free_port()
    (d / "sluice.yaml").write_text(f"""sluice:
  listen_addr: 127.0.0.1
  listen_port: {port}
  unix_socket_dir: ""
  pool_mode: transaction
  default_pool_size: 20
  max_client_conn: 1000
  auth_type: scram-sha-256
  auth_file: {d / 'userlist.txt'}
  workers: 1
  log_connections: false
  log_disconnections: false
""" + (f"""  client_tls_sslmode: require
  client_tls_cert_file: {tls['cert']}
  client_tls_key_file: {tls['key']}
""" if tls else "") + f"""databases:
  {DB}:
    host: 127.0.0.1
    port: {pg.port}
    dbname: {DB}
""")
    out = d / "cg.out"
    proc = harness.spawn(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                          str(binary), str(d / "sluice.yaml")], log_path=d / "valgrind.log")
    if not harness.wait_port(port, timeout=120, proc=proc):
        harness._kill(proc, 15, grace=10)
        raise RuntimeError(f"sluice did not start under valgrind: {harness.tail(d / 'valgrind.log')}")
    return proc, port, out, (lambda argv: argv)


def pgbouncer_target(pg: Postgres, base: Path, tls: Optional[dict]):
    """PgBouncer configured as pgbench_compare.py configures it (server_tls_sslmode
    prefer, as Sluice's default), under callgrind as the PostgreSQL OS user."""
    # PostgreSQL's own verifier, not the plaintext password: PgBouncer would otherwise
    # derive one (PBKDF2, tens of millions of instructions) on every login, and the
    # login's cost, though differenced out, would drown the transactions in noise.
    pb = PgBouncer(base, pg, 20, 1000, tls, "prefer", pg.role_secret(USER))
    out = pb.dir / "cg.out"
    proc = harness.spawn(harness.as_pg_user(["valgrind", "--tool=callgrind",
                                             f"--callgrind-out-file={out}", PGBOUNCER,
                                             str(pb.ini)]),
                         log_path=pb.dir / "valgrind.log")
    if not harness.wait_port(pb.port, timeout=120, proc=proc):
        harness._kill(proc, 15, grace=10)
        raise RuntimeError(f"pgbouncer did not start under valgrind: "
                           f"{harness.tail(pb.dir / 'valgrind.log')} {harness.tail(pb.log)}")
    # (vgdb, behind callgrind_control, finds the process by its user's FIFOs in /tmp)
    return proc, pb.port, out, harness.as_pg_user


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", action="append", type=Path,
                    help="a Sluice binary (repeatable; default build/sluice)")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--transactions", type=int, default=300, help="pgbench -t, per client")
    ap.add_argument("--pgbouncer", action="store_true",
                    help="also count PgBouncer's instructions, configured the same")
    ap.add_argument("--mode", choices=["simple", "extended", "prepared"], default="simple",
                    help="pgbench -M")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path,
                    help="copy each callgrind dump into this directory (callgrind_annotate)")
    ap.add_argument("--tls", action="store_true",
                    help="clients connect with sslmode=require (client_tls_sslmode: require), and "
                         "PostgreSQL runs with ssl=on (server_tls_sslmode: prefer, the default)")
    a = ap.parse_args()
    bins = [b.resolve() for b in (a.bin or [REPO / "build" / "sluice"])]
    base = harness.make_tempdir("sluice-cg-")
    # --tls: PostgreSQL with ssl=on as well, so that Sluice's server_tls_sslmode (prefer,
    # its default) makes the server leg TLS too, as in pgbench_compare.py --tls.
    tls = make_certs(base / "certs") if a.tls else None
    results = []
    pg = Postgres(base=base, extra_conf={"ssl": "on", "ssl_cert_file": f"'{tls['cert']}'",
                                         "ssl_key_file": f"'{tls['key']}'"} if tls else None)
    try:
        pg.start()
        pg.create_role(USER, PASSWORD)
        pg.create_database(DB, owner=USER)
        pg.pgbench_init(DB, USER, scale=1)
        targets = [(f"sluice:{b}", b.parent.parent.name, lambda b=b: sluice_target(b, pg, base, tls))
                   for b in bins]
        if a.pgbouncer:
            targets.append(("pgbouncer", "pgbouncer", lambda: pgbouncer_target(pg, base, tls)))
        for label, name, start in targets:
            proc, port, out, as_user = start()
            try:
                r = measure(name, proc, port, out, a.clients, a.transactions, a.keep,
                            bool(tls), a.mode, as_user)
            finally:
                harness._kill(proc, 15, grace=10)
            results.append(dict(r, target=label))
            print(f"{label}: {r['per_transaction']:.0f} instructions per transaction, "
                  f"{r['per_login']:.0f} per login ({r['instructions']} over {r['transactions']} "
                  f"transactions: pgbench -S -M {a.mode} -c {a.clients} -t {a.transactions} "
                  f"less -t {max(1, a.transactions // 5)}{' sslmode=require' if tls else ''}; "
                  f"{'; '.join(r['pgbench'])})", flush=True)
    finally:
        pg.stop()
    if a.json:
        a.json.write_text(json.dumps({"clients": a.clients, "mode": a.mode, "tls": bool(tls),
                                      "transactions_per_client": a.transactions,
                                      "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
