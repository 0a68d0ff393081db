#!/usr/bin/env python3
"""Instructions Sluice itself executes per transaction (callgrind), for one or two builds.

    /usr/bin/python3 bench/callgrind_xact.py                       # build/sluice
    /usr/bin/python3 bench/callgrind_xact.py --bin OLD/build/sluice --bin build/sluice
    /usr/bin/python3 bench/callgrind_xact.py --clients 100 --transactions 200
    /usr/bin/python3 bench/callgrind_xact.py --tls      # TLS to clients and to PostgreSQL

A figure a noisy, shared machine cannot move (no PMU in these VMs, so no `perf stat -e
instructions`): Sluice runs under valgrind --tool=callgrind with `workers: 1` in front of
a throwaway PostgreSQL; after a warm-up the counters are zeroed (callgrind_control -z),
pgbench -S -t N runs, the counters are dumped (-d), and the dump's total is divided by the
transactions. pgbench's connections fall inside the window: use enough transactions per
client (the defaults) that the logins stay a few percent. Kernel time is not counted.
Everything listens on 127.0.0.1 and is stopped at exit.
"""
from __future__ import annotations

import argparse
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
from pgbench_compare import make_certs  # noqa: E402

USER, PASSWORD, DB = "app", "app_pw", "app"


def measure(binary: Path, pg: Postgres, base: Path, clients: int, transactions: int,
            keep: Optional[Path] = None, tls: Optional[dict] = None) -> dict:
    d = base / f"cg-{binary.parent.parent.name}-{time.monotonic_ns()}"
    d.mkdir(parents=True)
    (d / "userlist.txt").write_text(harness.userlist_text({USER: PASSWORD}))
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
    try:
        if not harness.wait_port(port, timeout=120, proc=proc):
            raise RuntimeError(f"sluice did not start under valgrind: {harness.tail(d / 'valgrind.log')}")
        env = dict(os.environ, PGPASSWORD=PASSWORD, PGSSLMODE="require" if tls else "disable")
        pgbench = ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-n", "-S",
                   "-c", str(clients), "-j", "2"]
        subprocess.run(pgbench + ["-t", "50", DB], env=env, capture_output=True, timeout=600,
                       check=True)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True,
                       timeout=60, check=True)
        r = subprocess.run(pgbench + ["-t", str(transactions), DB], env=env,
                           capture_output=True, text=True, timeout=1800, check=True)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True,
                       timeout=60, check=True)
        dump = Path(f"{out}.1")
        if not harness.wait_for(dump.exists, 60):
            raise RuntimeError("callgrind wrote no dump")
        time.sleep(1)  # (the dump is written as a whole, but give it a moment)
        total = next(int(line.split()[1]) for line in dump.read_text().splitlines()
                     if line.startswith("summary:"))
        failed = [line for line in r.stdout.splitlines() if "failed transactions" in line]
        if keep:  # for callgrind_annotate --inclusive=yes
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(dump, keep / f"callgrind.{binary.parent.parent.name}.{clients}"
                                    f"{'.tls' if tls else ''}.out")
    finally:
        harness._kill(proc, 15, grace=10)
    n = clients * transactions
    return {"bin": str(binary), "transactions": n, "instructions": total,
            "per_transaction": total / n, "pgbench": failed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", action="append", type=Path,
                    help="a Sluice binary (repeatable; default build/sluice)")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--transactions", type=int, default=300, help="pgbench -t, per client")
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
    pg = Postgres(base=base, extra_conf={"ssl": "on", "ssl_cert_file": f"'{tls['cert']}'",
                                         "ssl_key_file": f"'{tls['key']}'"} if tls else None)
    try:
        pg.start()
        pg.create_role(USER, PASSWORD)
        pg.create_database(DB, owner=USER)
        pg.pgbench_init(DB, USER, scale=1)
        for b in bins:
            r = measure(b, pg, base, a.clients, a.transactions, a.keep, tls)
            print(f"{r['bin']}: {r['per_transaction']:.0f} instructions per transaction "
                  f"({r['instructions']} over {r['transactions']}, pgbench -S -c {a.clients} "
                  f"-t {a.transactions}{' sslmode=require' if tls else ''}; {'; '.join(r['pgbench'])})", flush=True)
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
