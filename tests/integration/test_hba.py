"""auth_type hba: pg_hba.conf rules (auth_hba_file) and pg_ident.conf maps (auth_ident_file).

One hba file (HBA below) picks the method by connection type, database, user, address and
TLS; every rule has a test that connects the way the rule is meant to match and asserts the
exact outcome: the authentication request Sluice sends (raw StartupMessage, first 'R':
0 = Ok, 3 = cleartext, 5 = MD5, 10 = SASL), the login with the right password (psql or
psycopg), and the SQLSTATE and text of each refusal in PostgreSQL's wording. The expected
texts were checked against a real PostgreSQL 15 with the same kind of rules (for example the
unix-socket host is "[local]", and a clientcert=verify-full rule whose CN does not match
asks for the password first and then fails with 28P01).

Real components only: PostgreSQL 15, psql/libpq, psycopg, certificates from the openssl CLI,
the unix socket's SO_PEERCRED; network on 127.0.0.1 and ::1 only.

    /usr/bin/python3 -m pytest tests/integration/test_hba.py -q -p no:cacheprovider
"""
from __future__ import annotations

import hashlib
import os
import pwd
import re
import socket
import struct
import subprocess
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest

import harness
from harness import PgError, RawPg, parse_error_fields, startup_packet, wait_for
from conftest import ADMIN_PW, APP_PW, DEFAULT_USERS, MD5_PW, STATS_PW

PSQL = str(harness.PG_BIN / "psql")

AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL = 0, 3, 5, 10

OS_USER = pwd.getpwuid(os.geteuid()).pw_name  # the OS user psql runs as (root here)


def ipv6_usable() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
            s6.bind(("::1", 0))
        return True
    except OSError:
        return False


HAVE_IPV6 = ipv6_usable()

# ---------------------------------------------------------------------------------------
# the rules

HBA = """\
# Sluice test pg_hba.conf: the first matching line wins, no match is a rejection.
# TYPE    DATABASE    USER        ADDRESS                    METHOD
local     app         app,admin                              peer map=osmap
local     app         md5user                                peer
local     reports     all                                    reject

host	pgbouncer	admin	127.0.0.1/32	scram-sha-256

hostssl   app         app         127.0.0.1/32               scram-sha-256
hostnossl app         app         127.0.0.1/32               reject
host      app         md5user     127.0.0.1/32               md5
host      app         +stats      127.0.0.1/32               password
host      sameuser    all         127.0.0.1/32               trust   # db named like the user
host      @dbs.txt    admin       127.0.0.1/32               scram-sha-256
host      app,reports all         ::1/128                    scram-sha-256
host      all         all         10.0.0.0/8                 trust
host      other       app,stats   127.0.0.1 255.255.255.255  md5
host      other       admin       127.0.0.2 255.255.255.255  trust

hostssl   certdb      app         127.0.0.1/32               scram-sha-256 clientcert=verify-full
hostssl   certdb      md5user     127.0.0.1/32               md5 clientcert=verify-ca
hostssl   certdb      stats       127.0.0.1/32               cert
hostssl   certdb      admin       127.0.0.1/32               cert map=certmap

# a permissive rule last: it must not rescue a connection an earlier line rejected
host      app         all         127.0.0.1/32               trust
"""

DBS_TXT = """\
# databases of the @dbs.txt rule
reports, archive
"""

IDENT = f"""\
# MAPNAME  SYSTEM-USERNAME  PG-USERNAME
osmap      {OS_USER}        app
certmap    app              admin
"""

# Every name a rule uses is a Sluice database in front of PostgreSQL's database app.
ALIASES = ["admin", "reports", "archive", "other", "certdb"]


def hba_line(text: str, start: str) -> int:
    """1-based number of the first line of `text` that starts with `start`."""
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith(start):
            return i
    raise AssertionError(f"no line starts with {start!r}")


# ---------------------------------------------------------------------------------------
# certificates (openssl CLI)

@pytest.fixture(scope="session")
def certs():
    ca = harness.CertAuthority(harness.make_tempdir("sluice-hba-certs-"), "Sluice HBA Test CA")
    return SimpleNamespace(
        ca=ca.crt,
        server=ca.leaf("server", "sluice-hba", "DNS:localhost,IP:127.0.0.1"),
        app=ca.leaf("client_app", "app"),
        stats=ca.leaf("client_stats", "stats"))


# ---------------------------------------------------------------------------------------
# Sluice with the rules

def databases(pg) -> dict:
    dbs = {"app": {"host": "127.0.0.1", "port": pg.port, "dbname": "app"}}
    for name in ALIASES:
        dbs[name] = {"host": "127.0.0.1", "port": pg.port, "dbname": "app"}
    return dbs


HBA_DIR = "auth"  # under Sluice's directory (its config's and its working directory)


def hba_sluice(make_sluice, pg, certs, hba: str = HBA, dbs_txt: str = DBS_TXT,
               ident: str = IDENT, start: bool = True, **general):
    """A Sluice with auth_type hba; pg_hba.conf, pg_ident.conf and dbs.txt in the
    subdirectory auth/ of its config's directory (paths in the config relative to it, the
    @file name relative to the hba file's directory), TLS optional for clients (prefer; a
    client certificate is requested and verified when presented) and listening on ::1 too
    when this machine has it."""
    settings = dict(auth_type="hba", auth_hba_file=f"{HBA_DIR}/pg_hba.conf",
                    auth_ident_file=f"{HBA_DIR}/pg_ident.conf",
                    listen_addr=["127.0.0.1", "::1"] if HAVE_IPV6 else "127.0.0.1",
                    client_tls_sslmode="prefer",
                    client_tls_cert_file=str(certs.server.crt),
                    client_tls_key_file=str(certs.server.key),
                    client_tls_ca_file=str(certs.ca))
    settings.update(general)
    s = make_sluice(config={"databases": databases(pg)}, start=False, **settings)
    (s.dir / HBA_DIR).mkdir()
    s.hba_path = s.dir / HBA_DIR / "pg_hba.conf"
    s.dbs_path = s.dir / HBA_DIR / "dbs.txt"
    s.hba_path.write_text(hba)
    s.dbs_path.write_text(dbs_txt)
    (s.dir / HBA_DIR / "pg_ident.conf").write_text(ident)
    if start:
        s.start()
    return s


@pytest.fixture
def sl(make_sluice, pg, certs):
    return hba_sluice(make_sluice, pg, certs)


# ---------------------------------------------------------------------------------------
# clients

def raw_tcp(s, host="127.0.0.1") -> RawPg:
    return RawPg(host, s.port)


def raw_unix(s) -> RawPg:
    """A RawPg on Sluice's unix socket (unix_socket_dir/.s.PGSQL.PORT)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    sock.connect(str(Path(s.config["sluice"]["unix_socket_dir"]) / f".s.PGSQL.{s.port}"))
    rp = RawPg.__new__(RawPg)
    rp.sock, rp.buf, rp.params, rp.backend_key, rp.txn_status = sock, b"", {}, None, None
    return rp


def raw_tls(s, certs, cert=None) -> RawPg:
    """A RawPg over TLS (SSLRequest, 'S', handshake verifying Sluice's certificate),
    presenting the client certificate `cert` if given."""
    return harness.raw_tls(s.port, harness.tls_client_context(certs.ca, cert=cert))


def first_auth(rp: RawPg, user: str, db: str):
    """Sends a StartupMessage; returns ('R', code) for the first authentication message,
    or ('E', fields) for an ErrorResponse. Closes the connection."""
    try:
        rp.send(startup_packet(user, db))
        m = rp.read_msg()
        assert m is not None, "Sluice closed the connection without an answer"
        kind, body = m
        if kind == b"R":
            return "R", struct.unpack("!I", body[:4])[0]
        assert kind == b"E", (kind, body)
        return "E", parse_error_fields(body)
    finally:
        rp.close()


def auth_code(rp: RawPg, user: str, db: str) -> int:
    kind, v = first_auth(rp, user, db)
    assert kind == "R", f"expected an authentication request, got the error {v}"
    return v


def refusal(rp: RawPg, user: str, password, db: str) -> PgError:
    """Logs in (answering whatever is asked) and returns the ErrorResponse."""
    try:
        with pytest.raises(PgError) as ei:
            rp.login(user, password, db)
        return ei.value
    finally:
        rp.close()


def assert_error(err: PgError, sqlstate: str, text: str) -> None:
    assert (err.sqlstate, err.message) == (sqlstate, text), err.fields
    assert err.fields.get("S") == "FATAL", err.fields


def logs_in(rp: RawPg, user: str, password, db: str) -> list:
    """Logs in and returns [current_user, current_database()] from PostgreSQL."""
    try:
        rp.login(user, password, db)
        rows, err = rp.query("SELECT current_user, current_database()")
        assert err is None, err
        return rows[0]
    finally:
        rp.terminate()


def ci(**kw) -> str:
    def q(v):
        v = str(v)
        if v == "" or any(ch in v for ch in " '\\"):
            return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return v
    kw.setdefault("connect_timeout", 10)
    return " ".join(f"{k}={q(v)}" for k, v in kw.items())


def psql(conninfo: str, password=None, sql="SELECT current_user || '@' || current_database()"):
    return subprocess.run([PSQL, "-X", "-At", "-w", "-v", "ON_ERROR_STOP=1", "-d", conninfo,
                           "-c", sql], capture_output=True, text=True, timeout=40,
                          env=harness.client_env(password))


def tcp_ci(s, user, db, host="127.0.0.1", sslmode="disable", **kw) -> str:
    return ci(host=host, port=s.port, user=user, dbname=db, sslmode=sslmode, **kw)


def unix_ci(s, user, db) -> str:
    return ci(host=s.config["sluice"]["unix_socket_dir"], port=s.port, user=user, dbname=db)


def ok(r, expected: str) -> None:
    assert (r.returncode, r.stdout.strip()) == (0, expected), r.stderr


def log_has(s, text: str) -> bool:
    return wait_for(lambda: text in s.log_text())


def no_entry(host, user, db, enc="no encryption") -> str:
    return f'no pg_hba.conf entry for host "{host}", user "{user}", database "{db}", {enc}'


def rejects(host, user, db, enc="no encryption") -> str:
    return f'pg_hba.conf rejects connection for host "{host}", user "{user}", database "{db}", {enc}'


def console(s):
    """The admin console over TCP (line `host pgbouncer admin ... scram-sha-256`)."""
    return psycopg.connect(s.dsn("admin", ADMIN_PW, "pgbouncer"), autocommit=True,
                           prepare_threshold=None)


# =======================================================================================
# 1. host/hostssl/hostnossl for the same user and database

def test_hostssl_line_asks_scram_and_logs_in(sl, certs):
    assert auth_code(raw_tls(sl, certs), "app", "app") == AUTH_SASL
    assert logs_in(raw_tls(sl, certs), "app", APP_PW, "app") == ["app", "app"]
    ok(psql(tcp_ci(sl, "app", "app", sslmode="require"), APP_PW), "app@app")


def test_hostssl_line_wrong_password_is_28p01(sl, certs):
    err = refusal(raw_tls(sl, certs), "app", "not-" + APP_PW, "app")
    assert_error(err, "28P01", 'password authentication failed for user "app"')
    assert log_has(sl, 'closing because: password authentication failed for user app'), \
        sl.log_tail()


def test_hostnossl_line_rejects_plaintext(sl):
    kind, fields = first_auth(raw_tcp(sl), "app", "app")
    assert kind == "E", f"a plaintext app@app login was asked for method {fields}"
    assert_error(PgError(fields), "28000", rejects("127.0.0.1", "app", "app"))
    r = psql(tcp_ci(sl, "app", "app"), APP_PW)
    assert r.returncode == 2 and "FATAL:  " + rejects("127.0.0.1", "app", "app") in r.stderr, \
        r.stderr
    assert log_has(sl, "closing because: " + rejects("127.0.0.1", "app", "app")), sl.log_tail()


def test_first_match_wins_later_trust_does_not_rescue_a_reject(sl):
    # the last line (host app all 127.0.0.1/32 trust) matches app@app too, but the
    # hostnossl reject comes first
    err = refusal(raw_tcp(sl), "app", APP_PW, "app")
    assert_error(err, "28000", rejects("127.0.0.1", "app", "app"))
    # a user no earlier line names reaches that last line: trust, no password asked
    assert auth_code(raw_tcp(sl), "admin", "app") == AUTH_OK
    assert logs_in(raw_tcp(sl), "admin", None, "app") == ["admin", "app"]


# 2. methods by user -------------------------------------------------------------------

def test_md5_line_asks_md5(sl):
    assert auth_code(raw_tcp(sl), "md5user", "app") == AUTH_MD5
    assert logs_in(raw_tcp(sl), "md5user", MD5_PW, "app") == ["md5user", "app"]
    ok(psql(tcp_ci(sl, "md5user", "app"), MD5_PW), "md5user@app")
    err = refusal(raw_tcp(sl), "md5user", "wrong", "app")
    assert_error(err, "28P01", 'password authentication failed for user "md5user"')


def test_plus_group_line_matches_the_role_of_that_name_with_cleartext(sl, certs):
    assert auth_code(raw_tcp(sl), "stats", "app") == AUTH_CLEARTEXT
    assert logs_in(raw_tcp(sl), "stats", STATS_PW, "app") == ["stats", "app"]
    ok(psql(tcp_ci(sl, "stats", "app"), STATS_PW), "stats@app")
    # host (not hostnossl) matches TLS connections too
    assert auth_code(raw_tls(sl, certs), "stats", "app") == AUTH_CLEARTEXT
    err = refusal(raw_tcp(sl), "stats", "wrong", "app")
    assert_error(err, "28P01", 'password authentication failed for user "stats"')


def test_two_field_address_and_mask_and_user_list(sl):
    # host other app,stats 127.0.0.1 255.255.255.255 md5
    assert auth_code(raw_tcp(sl), "app", "other") == AUTH_MD5
    assert auth_code(raw_tcp(sl), "stats", "other") == AUTH_MD5
    assert logs_in(raw_tcp(sl), "app", APP_PW, "other") == ["app", "app"]
    # host other admin 127.0.0.2 255.255.255.255 trust: not 127.0.0.1, nothing else matches
    err = refusal(raw_tcp(sl), "admin", ADMIN_PW, "other")
    assert_error(err, "28000", no_entry("127.0.0.1", "admin", "other"))


# 3. database keywords ------------------------------------------------------------------

def test_sameuser_matches_the_database_named_like_the_user(sl):
    assert auth_code(raw_tcp(sl), "admin", "admin") == AUTH_OK
    ok(psql(tcp_ci(sl, "admin", "admin")), "admin@app")  # Sluice's admin -> PostgreSQL's app
    # md5user is not "admin": sameuser does not match, nor does any later line
    err = refusal(raw_tcp(sl), "md5user", MD5_PW, "admin")
    assert_error(err, "28000", no_entry("127.0.0.1", "md5user", "admin"))


def test_at_file_lists_the_databases(sl):
    for db in ("reports", "archive"):
        assert auth_code(raw_tcp(sl), "admin", db) == AUTH_SASL, db
        assert logs_in(raw_tcp(sl), "admin", ADMIN_PW, db) == ["admin", "app"], db
    ok(psql(tcp_ci(sl, "admin", "archive"), ADMIN_PW), "admin@app")
    err = refusal(raw_tcp(sl), "admin", "wrong", "reports")
    assert_error(err, "28P01", 'password authentication failed for user "admin"')
    # the comment line of dbs.txt is not a database name
    err = refusal(raw_tcp(sl), "admin", ADMIN_PW, "databases")
    assert_error(err, "28000", no_entry("127.0.0.1", "admin", "databases"))


# 4. addresses --------------------------------------------------------------------------

def test_rule_for_10_0_0_0_8_does_not_match_loopback(sl, certs):
    # stats@reports: only "host all all 10.0.0.0/8 trust" names it, and 127.0.0.1 is not in
    # 10.0.0.0/8: no entry (a match would have been trust, an AuthenticationOk at once)
    kind, fields = first_auth(raw_tcp(sl), "stats", "reports")
    assert kind == "E", f"stats@reports was asked for method {fields}"
    assert_error(PgError(fields), "28000", no_entry("127.0.0.1", "stats", "reports"))
    assert log_has(sl, "closing because: " + no_entry("127.0.0.1", "stats", "reports")), \
        sl.log_tail()
    r = psql(tcp_ci(sl, "stats", "reports"), STATS_PW)
    assert r.returncode == 2 and \
        "FATAL:  " + no_entry("127.0.0.1", "stats", "reports") in r.stderr, r.stderr
    # the same over TLS says so
    err = refusal(raw_tls(sl, certs), "stats", STATS_PW, "reports")
    assert_error(err, "28000", no_entry("127.0.0.1", "stats", "reports", "SSL encryption"))


@pytest.mark.skipif(not HAVE_IPV6, reason="::1 cannot be bound on this machine (no IPv6 "
                                          "loopback), so Sluice cannot listen there")
def test_ipv6_rule(sl):
    # over 127.0.0.1 app@app is rejected (hostnossl); over ::1 the ::1/128 line asks SCRAM
    assert auth_code(raw_tcp(sl, "::1"), "app", "app") == AUTH_SASL
    assert logs_in(raw_tcp(sl, "::1"), "app", APP_PW, "app") == ["app", "app"]
    ok(psql(tcp_ci(sl, "app", "reports", host="::1"), APP_PW), "app@app")
    err = refusal(raw_tcp(sl, "::1"), "app", "wrong", "app")
    assert_error(err, "28P01", 'password authentication failed for user "app"')
    # archive is not in "app,reports" and no IPv4 line matches ::1
    err = refusal(raw_tcp(sl, "::1"), "stats", STATS_PW, "archive")
    assert_error(err, "28000", no_entry("::1", "stats", "archive"))
    # nor does the IPv6 line match 127.0.0.1: stats@reports has no entry there
    err = refusal(raw_tcp(sl), "stats", STATS_PW, "reports")
    assert_error(err, "28000", no_entry("127.0.0.1", "stats", "reports"))


# 5. the unix socket: local lines, peer and ident maps ---------------------------------

def test_local_peer_with_ident_map(sl):
    # OS user OS_USER is mapped to app by osmap: no password
    assert auth_code(raw_unix(sl), "app", "app") == AUTH_OK
    ok(psql(unix_ci(sl, "app", "app")), "app@app")


def test_local_peer_map_without_the_user_fails(sl):
    # osmap maps OS_USER to app only, not to admin
    err = refusal(raw_unix(sl), "admin", ADMIN_PW, "app")
    assert_error(err, "28000", 'Peer authentication failed for user "admin"')
    assert log_has(sl, f'closing because: peer OS user "{OS_USER}" is not user "admin"'), \
        sl.log_tail()
    r = psql(unix_ci(sl, "admin", "app"), ADMIN_PW)
    assert r.returncode == 2 and 'FATAL:  Peer authentication failed for user "admin"' \
        in r.stderr, r.stderr


def test_local_peer_without_map_needs_the_os_user_name(sl):
    err = refusal(raw_unix(sl), "md5user", MD5_PW, "app")
    assert_error(err, "28000", 'Peer authentication failed for user "md5user"')
    assert log_has(sl, f'closing because: peer OS user "{OS_USER}" is not user "md5user"'), \
        sl.log_tail()


def test_local_reject(sl):
    err = refusal(raw_unix(sl), "app", APP_PW, "reports")
    assert_error(err, "28000", rejects("[local]", "app", "reports"))


def test_local_no_entry(sl):
    # stats@app over the socket: no local line names stats, host lines do not apply
    err = refusal(raw_unix(sl), "stats", STATS_PW, "app")
    assert_error(err, "28000", no_entry("[local]", "stats", "app"))


def test_host_lines_do_not_match_the_unix_socket(sl):
    # over TCP admin@admin is trust (sameuser); over the socket no local line matches
    err = refusal(raw_unix(sl), "admin", ADMIN_PW, "admin")
    assert_error(err, "28000", no_entry("[local]", "admin", "admin"))


# 6. client certificates ----------------------------------------------------------------

def test_clientcert_verify_full_with_the_users_certificate(sl, certs):
    # hostssl certdb app ... scram-sha-256 clientcert=verify-full: certificate and password
    assert auth_code(raw_tls(sl, certs, certs.app), "app", "certdb") == AUTH_SASL
    assert logs_in(raw_tls(sl, certs, certs.app), "app", APP_PW, "certdb") == ["app", "app"]
    ok(psql(tcp_ci(sl, "app", "certdb", sslmode="require", sslcert=certs.app.crt,
                   sslkey=certs.app.key), APP_PW), "app@app")
    err = refusal(raw_tls(sl, certs, certs.app), "app", "wrong", "certdb")
    assert_error(err, "28P01", 'password authentication failed for user "app"')


def test_clientcert_verify_full_without_a_certificate(sl, certs):
    err = refusal(raw_tls(sl, certs), "app", APP_PW, "certdb")
    assert_error(err, "28000", "connection requires a valid client certificate")
    r = psql(tcp_ci(sl, "app", "certdb", sslmode="require"), APP_PW)
    assert r.returncode == 2 and "FATAL:  connection requires a valid client certificate" \
        in r.stderr, r.stderr
    # without TLS the hostssl line does not match at all
    err = refusal(raw_tcp(sl), "app", APP_PW, "certdb")
    assert_error(err, "28000", no_entry("127.0.0.1", "app", "certdb"))


def test_clientcert_verify_full_with_another_users_certificate(sl, certs):
    # PostgreSQL 15 on such a line asks for the password, then refuses the login as a
    # password failure (it logs "certificate validation (clientcert=verify-full) failed
    # for user "app": CN mismatch")
    rp = raw_tls(sl, certs, certs.stats)
    assert auth_code(rp, "app", "certdb") == AUTH_SASL
    err = refusal(raw_tls(sl, certs, certs.stats), "app", APP_PW, "certdb")
    assert_error(err, "28P01", 'password authentication failed for user "app"')


def test_clientcert_verify_ca_accepts_any_certificate_of_the_ca(sl, certs):
    # hostssl certdb md5user ... md5 clientcert=verify-ca: CN=app is fine for md5user
    assert auth_code(raw_tls(sl, certs, certs.app), "md5user", "certdb") == AUTH_MD5
    ok(psql(tcp_ci(sl, "md5user", "certdb", sslmode="require", sslcert=certs.app.crt,
                   sslkey=certs.app.key), MD5_PW), "md5user@app")
    err = refusal(raw_tls(sl, certs), "md5user", MD5_PW, "certdb")
    assert_error(err, "28000", "connection requires a valid client certificate")


def test_cert_method(sl, certs):
    # hostssl certdb stats ... cert: the certificate's CN is the user, no password
    assert auth_code(raw_tls(sl, certs, certs.stats), "stats", "certdb") == AUTH_OK
    ok(psql(tcp_ci(sl, "stats", "certdb", sslmode="require", sslcert=certs.stats.crt,
                   sslkey=certs.stats.key)), "stats@app")
    err = refusal(raw_tls(sl, certs, certs.app), "stats", None, "certdb")
    assert_error(err, "28000", 'certificate authentication failed for user "stats"')
    assert log_has(sl, 'closing because: certificate CN "app" is not user "stats"'), \
        sl.log_tail()
    err = refusal(raw_tls(sl, certs), "stats", None, "certdb")
    assert_error(err, "28000", "connection requires a valid client certificate")


def test_cert_method_with_ident_map(sl, certs):
    # hostssl certdb admin ... cert map=certmap; certmap maps CN app to admin
    assert auth_code(raw_tls(sl, certs, certs.app), "admin", "certdb") == AUTH_OK
    ok(psql(tcp_ci(sl, "admin", "certdb", sslmode="require", sslcert=certs.app.crt,
                   sslkey=certs.app.key)), "admin@app")
    # CN stats is not mapped to admin
    err = refusal(raw_tls(sl, certs, certs.stats), "admin", None, "certdb")
    assert_error(err, "28000", 'certificate authentication failed for user "admin"')


# 7. secrets of the auth file under the methods ----------------------------------------

def md5_secret(user: str, password: str) -> str:
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def test_md5_line_with_a_scram_secret_is_scram(make_sluice, pg, certs):
    # userlist: app's SCRAM verifier as PostgreSQL stores it (Sluice logs in to
    # PostgreSQL with the client's keys)
    users = dict(DEFAULT_USERS)
    users["app"] = pg.role_secret("app")
    assert users["app"].startswith("SCRAM-SHA-256$"), users["app"]
    s = hba_sluice(make_sluice, pg, certs, start=False)
    s.write_config(users=users)
    s.start()
    # host other app,stats 127.0.0.1 255.255.255.255 md5
    assert auth_code(raw_tcp(s), "app", "other") == AUTH_SASL
    assert logs_in(raw_tcp(s), "app", APP_PW, "other") == ["app", "app"]
    err = refusal(raw_tcp(s), "app", "wrong", "other")
    assert_error(err, "28P01", 'password authentication failed for user "app"')
    # stats (plaintext in the userlist) on the same line still gets md5
    assert auth_code(raw_tcp(s), "stats", "other") == AUTH_MD5


def test_scram_auth_type_refuses_an_md5_secret(make_sluice):
    # md5user's PostgreSQL role has an md5 password, so Sluice can log in with the hash
    users = dict(DEFAULT_USERS, md5user=md5_secret("md5user", MD5_PW))
    s = make_sluice(users=users, auth_type="scram-sha-256")
    assert auth_code(raw_tcp(s), "md5user", "app") == AUTH_SASL
    err = refusal(raw_tcp(s), "md5user", MD5_PW, "app")
    assert_error(err, "28P01", 'password authentication failed for user "md5user"')
    assert log_has(s, "user md5user has an md5 secret"), s.log_tail()
    line = next(ln for ln in s.log_text().splitlines() if "has an md5 secret" in ln)
    assert re.search(r" warn(ing)? ", line), line  # logged as a warning
    r = psql(tcp_ci(s, "md5user", "app"), MD5_PW)
    assert r.returncode == 2 and \
        'FATAL:  password authentication failed for user "md5user"' in r.stderr, r.stderr


def test_md5_auth_type_accepts_the_same_md5_secret(make_sluice):
    users = dict(DEFAULT_USERS, md5user=md5_secret("md5user", MD5_PW))
    s = make_sluice(users=users, auth_type="md5")
    assert auth_code(raw_tcp(s), "md5user", "app") == AUTH_MD5
    assert logs_in(raw_tcp(s), "md5user", MD5_PW, "app") == ["md5user", "app"]
    ok(psql(tcp_ci(s, "md5user", "app"), MD5_PW), "md5user@app")
    assert "has an md5 secret" not in s.log_text()


def test_hba_scram_line_refuses_an_md5_secret(make_sluice, pg, certs):
    # the same under hba: hostssl app app ... scram-sha-256 is SCRAM whatever the secret
    hba = HBA.replace("host      app         md5user     127.0.0.1/32               md5",
                      "host      app         md5user     127.0.0.1/32               "
                      "scram-sha-256")
    assert hba != HBA
    s = hba_sluice(make_sluice, pg, certs, hba=hba, start=False)
    s.write_config(users=dict(DEFAULT_USERS, md5user=md5_secret("md5user", MD5_PW)))
    s.start()
    assert auth_code(raw_tcp(s), "md5user", "app") == AUTH_SASL
    err = refusal(raw_tcp(s), "md5user", MD5_PW, "app")
    assert_error(err, "28P01", 'password authentication failed for user "md5user"')
    assert log_has(s, "user md5user has an md5 secret"), s.log_tail()


# 8. RELOAD -----------------------------------------------------------------------------

def test_reload_applies_changed_rules_to_new_logins(sl):
    before = psycopg.connect(sl.dsn("admin", ADMIN_PW, "reports"), autocommit=True)
    try:
        assert before.execute("SELECT current_user").fetchone()[0] == "admin"
        new = (HBA
               .replace("hostnossl app         app         127.0.0.1/32               reject",
                        "hostnossl app         app         127.0.0.1/32               md5")
               .replace("host      @dbs.txt    admin       127.0.0.1/32               "
                        "scram-sha-256",
                        "host      @dbs.txt    admin       127.0.0.1/32               reject"))
        assert new.count("reject") == HBA.count("reject"), "both replacements must apply"
        sl.hba_path.write_text(new)
        sl.dbs_path.write_text(DBS_TXT + "other\n")  # @file contents are re-read
        with console(sl) as c:
            c.execute("RELOAD")
        # app@app over plaintext: was rejected, now md5
        assert auth_code(raw_tcp(sl), "app", "app") == AUTH_MD5
        assert logs_in(raw_tcp(sl), "app", APP_PW, "app") == ["app", "app"]
        # admin@reports: was SCRAM, now rejected; admin@other: was no entry, now rejected
        err = refusal(raw_tcp(sl), "admin", ADMIN_PW, "reports")
        assert_error(err, "28000", rejects("127.0.0.1", "admin", "reports"))
        err = refusal(raw_tcp(sl), "admin", ADMIN_PW, "other")
        assert_error(err, "28000", rejects("127.0.0.1", "admin", "other"))
        # a session authenticated under the old rules goes on
        assert before.execute("SELECT 2").fetchone()[0] == 2
    finally:
        before.close()


def test_reload_with_a_broken_hba_file_keeps_the_old_rules(sl):
    bad = HBA + "host all all 10.0.0.0/33 trust\n"
    lineno = len(bad.splitlines())
    sl.hba_path.write_text(bad)
    with console(sl) as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute("RELOAD")
        e = ei.value
        assert e.sqlstate == "F0000", (e.sqlstate, str(e))
        text = (e.diag.message_primary or "") + "\n" + (e.diag.message_detail or "")
        assert f"{sl.hba_path}:{lineno}:" in text, text
        assert 'invalid CIDR mask in address "10.0.0.0/33"' in text, text
        # the old rules are in force
        err = refusal(raw_tcp(sl), "app", APP_PW, "app")
        assert_error(err, "28000", rejects("127.0.0.1", "app", "app"))
        assert auth_code(raw_tcp(sl), "admin", "reports") == AUTH_SASL
        assert auth_code(raw_tcp(sl), "stats", "app") == AUTH_CLEARTEXT
        # once fixed, a RELOAD succeeds
        sl.hba_path.write_text(HBA.replace(
            "hostnossl app         app         127.0.0.1/32               reject",
            "hostnossl app         app         127.0.0.1/32               trust"))
        c.execute("RELOAD")
    assert auth_code(raw_tcp(sl), "app", "app") == AUTH_OK
    assert sl.alive()


def test_sighup_applies_changed_rules(sl):
    assert auth_code(raw_tcp(sl), "stats", "app") == AUTH_CLEARTEXT
    sl.hba_path.write_text(HBA.replace(
        "host      app         +stats      127.0.0.1/32               password",
        "host      app         +stats      127.0.0.1/32               scram-sha-256"))
    sl.reload()
    assert wait_for(lambda: auth_code(raw_tcp(sl), "stats", "app") == AUTH_SASL), \
        sl.log_tail()
    assert logs_in(raw_tcp(sl), "stats", STATS_PW, "app") == ["stats", "app"]


def test_reload_with_a_missing_at_file_keeps_the_old_rules(sl):
    # PostgreSQL does not load a pg_hba.conf whose @file cannot be opened
    sl.dbs_path.unlink()
    with console(sl) as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute("RELOAD")
        e = ei.value
        assert e.sqlstate == "F0000", (e.sqlstate, str(e))
        text = (e.diag.message_primary or "") + "\n" + (e.diag.message_detail or "")
        assert f"{sl.hba_path}:{hba_line(HBA, 'host      @dbs.txt')}:" in text, text
        assert "dbs.txt" in text.split(str(sl.hba_path), 1)[1], text
    assert auth_code(raw_tcp(sl), "admin", "reports") == AUTH_SASL
    assert auth_code(raw_tcp(sl), "admin", "archive") == AUTH_SASL
    assert sl.alive()


def test_reload_applies_a_changed_ident_map(sl):
    ident_path = sl.dir / HBA_DIR / "pg_ident.conf"
    ok(psql(unix_ci(sl, "app", "app")), "app@app")
    ident_path.write_text(IDENT.replace(f"{OS_USER}        app", f"{OS_USER}        admin"))
    with console(sl) as c:
        c.execute("RELOAD")
    ok(psql(unix_ci(sl, "admin", "app")), "admin@app")
    err = refusal(raw_unix(sl), "app", APP_PW, "app")
    assert_error(err, "28000", 'Peer authentication failed for user "app"')


def test_reload_with_a_broken_ident_file_keeps_the_old_map(sl):
    ident_path = sl.dir / HBA_DIR / "pg_ident.conf"
    ident_path.write_text(IDENT + "osmap only-two-fields\n")
    with console(sl) as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute("RELOAD")
        e = ei.value
        assert e.sqlstate == "F0000", (e.sqlstate, str(e))
        text = (e.diag.message_primary or "") + "\n" + (e.diag.message_detail or "")
        assert f"{ident_path}:{len(IDENT.splitlines()) + 1}:" in text, text
    ok(psql(unix_ci(sl, "app", "app")), "app@app")
    assert sl.alive()


# 9. --check and start-up ---------------------------------------------------------------

def check(s) -> subprocess.CompletedProcess:
    return subprocess.run([str(harness.sluice_bin()), "--check", str(s.config_path)],
                          capture_output=True, text=True, timeout=30)


def test_check_accepts_the_rules(make_sluice, pg, certs):
    s = hba_sluice(make_sluice, pg, certs, start=False)
    r = check(s)
    assert r.returncode == 0, (r.stdout, r.stderr)


@pytest.mark.parametrize("line, token, message", [
    ("host all all 10.0.0.0/33 trust", "10.0.0.0/33",
     'invalid CIDR mask in address "10.0.0.0/33"'),
    ("host all all ::1/129 trust", "::1/129", 'invalid CIDR mask in address "::1/129"'),
    ("host all all 127.0.0.1/32 ldap", "ldap", 'authentication method "ldap" is not supported'),
    # the rest in PostgreSQL 15's words (its pg_hba_file_rules.error for the same lines)
    ("host all all 127.0.0.1/32 peer", "peer",
     "peer authentication is only supported on local sockets"),
    ("host all all 127.0.0.1/32 cert", "cert",
     "cert authentication is only supported on hostssl connections"),
    ("host all all 127.0.0.1/32 md5 clientcert=verify-ca", "clientcert",
     'clientcert can only be configured for "hostssl" rows'),
    ("hostssl all all 127.0.0.1/32 cert clientcert=verify-ca", "clientcert",
     'clientcert can only be set to "verify-full" when using "cert" authentication'),
    ("host all all 127.0.0.1/32 trust foo=bar", "foo",
     'unrecognized authentication option name: "foo"'),
    ("local all all 127.0.0.1/32 trust", "127.0.0.1/32",
     'invalid authentication method "127.0.0.1/32"'),
    ("host all all 127.0.0.1/32", None, "end-of-line before authentication method"),
], ids=["cidr-v4", "cidr-v6", "ldap", "peer-on-host", "cert-on-host", "clientcert-on-host",
        "cert-verify-ca", "unknown-option", "local-with-address", "no-method"])
def test_check_refuses_a_broken_hba_file(make_sluice, pg, certs, line, token, message):
    bad = HBA.replace("# a permissive rule last", line + "\n# a permissive rule last")
    lineno = hba_line(bad, line)
    col = line.index(token) + 1 if token else len(line) + 1
    s = hba_sluice(make_sluice, pg, certs, hba=bad, start=False)
    r = check(s)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"{s.hba_path}:{lineno}:{col}: {message}" in r.stderr, r.stderr


def test_startup_refuses_a_broken_hba_file(make_sluice, pg, certs):
    bad = HBA + "host all all 127.0.0.1/32 ldap\n"
    s = hba_sluice(make_sluice, pg, certs, hba=bad, start=False)
    # run it directly: it must exit by itself, nonzero, without listening
    r = subprocess.run([str(harness.sluice_bin()), str(s.config_path)], capture_output=True,
                       text=True, timeout=30, cwd=str(s.dir))
    assert r.returncode not in (0, None), (r.returncode, r.stdout, r.stderr)
    out = r.stdout + r.stderr
    assert f'{s.hba_path}:{len(bad.splitlines())}:27: authentication method "ldap" is not ' \
           f'supported' in out, out
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=1).close()
