"""TLS: client side (Sluice as a TLS server), server side (Sluice as a TLS client of
PostgreSQL), RELOAD of certificates and of server_tls_*, and auth_type cert.

Real components only: certificates are made by the openssl CLI in a temp dir per session,
a second PostgreSQL runs with ssl=on, clients are psql/libpq, psycopg and Python's ssl
module. Every test asserts the exact outcome it names (handshake result, SQLSTATE,
message, log line, pg_stat_ssl row).

    /usr/bin/python3 -m pytest tests/integration/test_tls.py -q -p no:cacheprovider
"""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psycopg
import psycopg.errors
import pytest

import harness
from harness import (DEADLINE, GSSENC_REQUEST, SSL_REQUEST, PgError, Postgres, RawPg,
                     parse_error_fields, startup_packet, wait_for)
from conftest import ADMIN_PW, APP_PW, DEFAULT_USERS

PSQL = str(harness.PG_BIN / "psql")

TLSONLY_PW = "tlsonly_pw"
CERTUSER_PW = "certuser_pw"  # Sluice's own userlist entry; PostgreSQL authenticates by cert

SSL_REQUEST_BYTES = struct.pack("!II", 8, SSL_REQUEST)
GSSENC_REQUEST_BYTES = struct.pack("!II", 8, GSSENC_REQUEST)


# ---------------------------------------------------------------------------------------
# certificates

@pytest.fixture(scope="session")
def certs():
    d = harness.make_tempdir("sluice-certs-")
    ca = harness.CertAuthority(d, "Sluice Test CA")
    other_ca = harness.CertAuthority(d, "Other Test CA")
    c = SimpleNamespace(dir=d, ca=ca.crt, other_ca=other_ca.crt)
    # Sluice's own certificates
    c.sluice_a = ca.leaf("sluice_a", "sluice-a", "DNS:localhost,IP:127.0.0.1")
    c.sluice_b = ca.leaf("sluice_b", "sluice-b", "DNS:localhost,IP:127.0.0.1")
    c.wrong = ca.leaf("wrong", "wrong.example", "DNS:wrong.example")
    # client certificates
    c.client_app = ca.leaf("client_app", "app")
    c.client_app_other = other_ca.leaf("client_app_other", "app")
    c.client_certuser = ca.leaf("client_certuser", "certuser")
    # PostgreSQL's certificate: the name localhost only, no IP address (its key is owned
    # by the PostgreSQL OS user, 0600, as PostgreSQL demands)
    c.pg = ca.leaf("pg", "pg-localhost", "DNS:localhost")
    c.pg_server_key = c.pg.key
    return c


# ---------------------------------------------------------------------------------------
# a PostgreSQL with ssl=on

TLS_PG_HBA = """\
local all all trust
hostssl all certuser 127.0.0.1/32 cert
hostnossl all certuser 127.0.0.1/32 reject
hostssl all tlsonly 127.0.0.1/32 scram-sha-256
hostnossl all tlsonly 127.0.0.1/32 reject
host all all 127.0.0.1/32 scram-sha-256
"""


@pytest.fixture(scope="session")
def tls_pg(certs):
    p = Postgres(base=harness.make_tempdir("sluice-tlspg-"), extra_conf={
        "ssl": "on",
        "ssl_cert_file": f"'{certs.pg.crt}'",
        "ssl_key_file": f"'{certs.pg_server_key}'",
        "ssl_ca_file": f"'{certs.ca}'",
    })
    # pg_hba.conf rewritten after initdb, before the first start (so no reload race).
    hba = p.data / "pg_hba.conf"
    hba.write_text(TLS_PG_HBA)
    if harness.is_root():
        shutil.chown(hba, harness.PG_OS_USER, harness.PG_OS_USER)
    p.start()
    p.create_role("app", APP_PW)
    p.create_role("tlsonly", TLSONLY_PW)
    p.create_role("certuser", None)
    p.create_database("app", owner="app")
    # the rules PostgreSQL has loaded are the ones we wrote
    rules = p.psql("SELECT type, user_name, auth_method FROM pg_hba_file_rules "
                   "WHERE error IS NULL ORDER BY line_number")
    assert "hostssl|{certuser}|cert" in rules and "hostnossl|{tlsonly}|reject" in rules, rules
    try:
        yield p
    finally:
        p.stop("fast")


def db_at(pgi: Postgres, host) -> dict:
    """config= for make_sluice: database app on PostgreSQL `pgi` at `host` (str or list)."""
    return {"databases": {"app": {"host": host, "port": pgi.port, "dbname": "app"}}}


# ---------------------------------------------------------------------------------------
# client helpers

def ci(**kw) -> str:
    """A libpq conninfo string."""
    def q(v):
        s = str(v)
        if s == "" or any(ch in s for ch in " '\\"):
            return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return s
    kw.setdefault("connect_timeout", 10)
    return " ".join(f"{k}={q(v)}" for k, v in kw.items())


def run_psql(conninfo: str, sql: str, password=None, timeout: float = 40.0):
    return subprocess.run([PSQL, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo,
                           "-c", sql], capture_output=True, text=True, timeout=timeout,
                          env=harness.client_env(password))


def sluice_ci(s, host="127.0.0.1", user="app", db="app", **kw) -> str:
    return ci(host=host, port=s.port, user=user, dbname=db, **kw)


def tls_server(certs, leaf=None, mode="require", **more) -> dict:
    """make_sluice keywords for client-side TLS with Sluice's certificate `leaf`."""
    leaf = leaf or certs.sluice_a
    return dict(client_tls_sslmode=mode, client_tls_cert_file=str(leaf.crt),
                client_tls_key_file=str(leaf.key), **more)


def console(s):
    """The admin console over Sluice's unix socket (no TLS there, whatever the mode)."""
    return psycopg.connect(ci(host=str(s.dir), port=s.port, user="admin", password=ADMIN_PW,
                              dbname="pgbouncer"), autocommit=True, prepare_threshold=None)


def show(s, what):
    with console(s) as c:
        cur = c.execute(f"SHOW {what}")
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def client_ctx(certs, alpn=None, cert=None, ca=None) -> ssl.SSLContext:
    return harness.tls_client_context(ca or certs.ca, alpn=alpn, cert=cert)


def raw_tls(s, ctx, direct=False, hostname="localhost", timeout=10.0) -> RawPg:
    return harness.raw_tls(s.port, ctx, direct=direct, hostname=hostname, timeout=timeout)


def peer_cn(s, certs) -> str:
    """CN of the certificate Sluice presents in a fresh handshake (verified against CA)."""
    rp = raw_tls(s, client_ctx(certs))
    try:
        cert = rp.sock.getpeercert()
    finally:
        rp.close()
    return dict(x[0] for x in cert["subject"])["commonName"]


def read_raw_until_eof(sock, timeout: float = 10.0) -> bytes:
    """Every byte until EOF (a TLS close or EOF, or a reset, counts as EOF)."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout(f"no EOF within {timeout}s; got {data!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
            return data
        if not chunk:
            return data
        data += chunk


def backend_ssl(conn):
    """(pid, ssl, version, cipher, client_dn) of the PostgreSQL backend serving conn."""
    return conn.execute("SELECT pid, ssl, version, cipher, client_dn FROM pg_stat_ssl "
                        "WHERE pid = pg_backend_pid()").fetchone()


def pg_ssl_of(pgi: Postgres, pid: int) -> str:
    """usename|ssl of backend `pid`, as PostgreSQL's superuser sees it."""
    return pgi.psql(f"SELECT a.usename, s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a "
                    f"USING (pid) WHERE pid = {int(pid)}")


def pg_pids(pgi: Postgres, user: str = "app") -> set:
    out = pgi.psql(f"SELECT pid FROM pg_stat_activity WHERE usename = '{user}' "
                   f"AND backend_type = 'client backend'")
    return {int(x) for x in out.split()} if out else set()


def app_conn(s, user="app", password=None, **kw):
    if password is None:
        password = s.users.get(user, "")
    return psycopg.connect(sluice_ci(s, user=user, password=password, **kw), autocommit=True)


def log_has(s, text: str) -> bool:
    return text in s.log_text()


# ---------------------------------------------------------------------------------------
# 3. client side: verify-full through Sluice, SHOW CLIENTS tls, login log


def test_verify_full_client_and_show_clients_tls(make_sluice, certs):
    s = make_sluice(**tls_server(certs))
    for host in ["localhost", "127.0.0.1"]:
        r = run_psql(sluice_ci(s, host=host, sslmode="verify-full", sslrootcert=certs.ca),
                     "SELECT 1", APP_PW)
        assert r.returncode == 0 and r.stdout.strip() == "1", (host, r.stderr)

    with psycopg.connect(sluice_ci(s, host="localhost", password=APP_PW, sslmode="verify-full",
                                   sslrootcert=certs.ca, application_name="tls_libpq"),
                         autocommit=True) as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("SELECT 1").fetchone() == (1,)
        rp = raw_tls(s, client_ctx(certs))
        rp.login("app", APP_PW, "app", {"application_name": "tls_raw"})
        try:
            rows = {r["application_name"]: r for r in show(s, "CLIENTS")}
            assert rows["tls_libpq"]["tls"] and rows["tls_libpq"]["tls"].startswith("TLSv1."), rows
            # exactly the protocol/cipher this client negotiated
            assert rows["tls_raw"]["tls"] == f"{rp.sock.version()}/{rp.sock.cipher()[0]}", rows
            # the console's own unix-socket connection is plaintext: empty or NULL
            console_rows = [r for r in rows.values() if r["database"] == "pgbouncer"]
            assert console_rows and all(not r["tls"] for r in console_rows), console_rows
        finally:
            rp.terminate()
    assert wait_for(lambda: log_has(s, "login attempt: db=app user=app tls=TLSv1.")), \
        s.log_tail()


# ---------------------------------------------------------------------------------------
# 4. require: plaintext TCP refused, unix socket exempt, TLS accepted


def test_require_refuses_plaintext_tcp_but_not_unix_socket(make_sluice, certs):
    s = make_sluice(**tls_server(certs, mode="require"))
    r = run_psql(sluice_ci(s, sslmode="disable"), "SELECT 1", APP_PW)
    assert r.returncode != 0 and "SSL required" in r.stderr, r.stderr

    rp = RawPg("127.0.0.1", s.port)
    with pytest.raises(PgError) as ei:
        rp.login("app", APP_PW, "app")
    assert (ei.value.sqlstate, ei.value.message) == ("28000", "SSL required")
    assert rp.read_until_close() == []
    rp.close()

    r = run_psql(ci(host=str(s.dir), port=s.port, user="app", dbname="app"),
                 "SELECT 1", APP_PW)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
    assert wait_for(lambda: log_has(s, "login attempt: db=app user=app tls=no")), s.log_tail()

    r = run_psql(sluice_ci(s, sslmode="require"), "SELECT 1", APP_PW)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr


def test_unix_socket_ssl_request_is_answered_n(make_sluice, certs):
    s = make_sluice(**tls_server(certs, mode="require"))
    sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sk.settimeout(10)
    sk.connect(str(s.dir / f".s.PGSQL.{s.port}"))
    rp = RawPg.__new__(RawPg)
    rp.sock, rp.buf, rp.params, rp.backend_key, rp.txn_status = sk, b"", {}, None, None
    assert rp.ssl_request() == b"N"
    rp.login("app", APP_PW, "app")
    assert rp.query("SELECT 1") == ([["1"]], None)
    rp.terminate()


# ---------------------------------------------------------------------------------------
# 5. the certificate's name is checked by verify-full clients only


def test_wrong_name_certificate(make_sluice, certs):
    s = make_sluice(**tls_server(certs, leaf=certs.wrong))
    r = run_psql(sluice_ci(s, host="localhost", sslmode="verify-full", sslrootcert=certs.ca),
                 "SELECT 1", APP_PW)
    assert r.returncode != 0
    assert 'server certificate for "wrong.example" does not match host name "localhost"' \
        in r.stderr, r.stderr
    r = run_psql(sluice_ci(s, host="localhost", sslmode="verify-ca", sslrootcert=certs.ca),
                 "SELECT 1", APP_PW)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr


# ---------------------------------------------------------------------------------------
# 6. bytes behind an SSLRequest (CVE-2021-23214 class)


@pytest.mark.parametrize("mode", ["prefer", "require"])
def test_plaintext_after_ssl_request_is_refused(make_sluice, certs, mode):
    s = make_sluice(**tls_server(certs, mode=mode))
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sk:
        sk.sendall(SSL_REQUEST_BYTES + startup_packet("app", "app"))
        data = read_raw_until_eof(sk)
    assert data[:1] == b"E", data  # not 'S': no handshake on top of injected bytes
    (length,) = struct.unpack("!I", data[1:5])
    fields = parse_error_fields(data[5:1 + length])
    assert (fields.get("C"), fields.get("M")) == \
        ("08P01", "received unencrypted data after SSL request"), fields
    assert len(data) == 1 + length, data  # nothing after the error: then EOF


# ---------------------------------------------------------------------------------------
# 7. GSSENCRequest


def test_gssenc_request_answered_n_then_startup(make_sluice, certs):
    s = make_sluice(**tls_server(certs, mode="prefer"))
    rp = RawPg("127.0.0.1", s.port)
    rp.send(GSSENC_REQUEST_BYTES)
    assert rp.read_byte() == b"N"
    rp.send(startup_packet("app", "app"))
    m = rp.read_msg()
    assert m is not None and m[0] == b"R", m
    (code,) = struct.unpack("!I", m[1][:4])
    assert code == 10, code  # SASL (auth_type scram-sha-256)
    rp.close()

    # the full login after 'N', in plaintext ...
    rp = RawPg("127.0.0.1", s.port)
    rp.send(GSSENC_REQUEST_BYTES)
    assert rp.read_byte() == b"N"
    rp.login("app", APP_PW, "app")
    assert rp.query("SELECT 1") == ([["1"]], None)
    rp.terminate()

    # ... and libpq's fallback order: GSSENCRequest 'N', SSLRequest 'S', TLS, login
    rp = RawPg("127.0.0.1", s.port)
    rp.send(GSSENC_REQUEST_BYTES)
    assert rp.read_byte() == b"N"
    assert rp.ssl_request() == b"S"
    rp.sock = client_ctx(certs).wrap_socket(rp.sock, server_hostname="localhost")
    rp.login("app", APP_PW, "app")
    assert rp.query("SELECT 1") == ([["1"]], None)
    rp.terminate()


# ---------------------------------------------------------------------------------------
# 8. direct TLS (PostgreSQL 17 style)


def test_direct_tls_with_alpn_postgresql(make_sluice, certs):
    s = make_sluice(**tls_server(certs, mode="require", auth_type="plain"))
    rp = raw_tls(s, client_ctx(certs, alpn=["postgresql"]), direct=True)
    assert rp.sock.selected_alpn_protocol() == "postgresql"
    rp.send(startup_packet("app", "app"))
    m = rp.read_msg()
    assert m is not None and m[0] == b"R" and struct.unpack("!I", m[1][:4])[0] == 3, m
    rp.send(harness.message(b"p", APP_PW.encode() + b"\0"))
    while True:
        m = rp.read_msg()
        assert m is not None and m[0] != b"E", m and parse_error_fields(m[1])
        if m[0] == b"Z":
            break
    rp.send(harness.message(b"Q", b"SELECT 1\0"))
    kinds = []
    rows = []
    while True:
        m = rp.read_msg()
        assert m is not None, kinds
        kinds.append(m[0])
        if m[0] == b"D":
            rows.append(harness.parse_data_row(m[1]))
        if m[0] == b"Z":
            break
    assert rows == [["1"]], kinds
    rp.terminate()
    assert wait_for(lambda: log_has(s, "login attempt: db=app user=app tls=TLSv1.")), \
        s.log_tail()


def test_direct_tls_with_other_alpn_fails_handshake(make_sluice, certs):
    s = make_sluice(**tls_server(certs))
    with pytest.raises(ssl.SSLError) as ei:
        raw_tls(s, client_ctx(certs, alpn=["http/1.1"]), direct=True)
    assert "alert no application protocol" in str(ei.value), ei.value


def test_direct_tls_without_alpn_is_closed_silently(make_sluice, certs):
    s = make_sluice(**tls_server(certs))
    rp = raw_tls(s, client_ctx(certs), direct=True)
    assert rp.sock.selected_alpn_protocol() is None
    try:
        rp.sock.sendall(startup_packet("app", "app"))
    except OSError:
        pass  # already closed: fine, what matters is that nothing comes back
    assert read_raw_until_eof(rp.sock) == b""
    rp.close()
    assert wait_for(lambda: log_has(s, "direct TLS connection without ALPN postgresql")), \
        s.log_tail()


def test_direct_tls_when_client_tls_is_off_is_closed(make_sluice, certs):
    s = make_sluice()  # client_tls_sslmode disable
    with pytest.raises(OSError):  # ssl.SSLError / SSLEOFError / reset: no handshake
        raw_tls(s, client_ctx(certs, alpn=["postgresql"]), direct=True)
    assert wait_for(lambda: log_has(s, "direct TLS connection but client TLS is off")), \
        s.log_tail()
    # and a plaintext client is still served
    r = run_psql(sluice_ci(s, sslmode="disable"), "SELECT 1", APP_PW)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr


def test_ssl_request_when_client_tls_is_off_is_answered_n(make_sluice, certs):
    s = make_sluice()
    rp = RawPg("127.0.0.1", s.port)
    assert rp.ssl_request() == b"N"
    rp.login("app", APP_PW, "app")
    assert rp.query("SELECT 1") == ([["1"]], None)
    rp.terminate()
    r = run_psql(sluice_ci(s, sslmode="require"), "SELECT 1", APP_PW)
    assert r.returncode != 0 and "server does not support SSL" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------
# client certificates requested by client_tls_ca_file, and client_tls_protocols


def test_client_ca_file_requests_and_checks_client_certificates(make_sluice, certs):
    s = make_sluice(**tls_server(certs, mode="require", client_tls_ca_file=str(certs.ca)))
    base = dict(sslmode="require", sslrootcert=certs.ca)
    # optional under require: no certificate is fine
    r = run_psql(sluice_ci(s, **base), "SELECT 1", APP_PW)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
    # one signed by the CA is fine
    r = run_psql(sluice_ci(s, sslcert=certs.client_app.crt, sslkey=certs.client_app.key, **base),
                 "SELECT 1", APP_PW)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
    # one from another CA must not be accepted
    r = run_psql(sluice_ci(s, sslcert=certs.client_app_other.crt,
                           sslkey=certs.client_app_other.key, **base), "SELECT 1", APP_PW)
    assert r.returncode != 0 and "unknown ca" in r.stderr, r.stderr


def test_verify_ca_makes_client_certificate_mandatory(make_sluice, certs):
    s = make_sluice(**tls_server(certs, mode="verify-ca", client_tls_ca_file=str(certs.ca)))
    base = dict(sslmode="verify-full", sslrootcert=certs.ca, host="localhost")
    r = run_psql(sluice_ci(s, **base), "SELECT 1", APP_PW)
    assert r.returncode != 0 and "certificate required" in r.stderr, r.stderr
    r = run_psql(sluice_ci(s, sslcert=certs.client_app.crt, sslkey=certs.client_app.key, **base),
                 "SELECT 1", APP_PW)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr


def test_client_tls_protocols_tlsv12_only(make_sluice, certs):
    s = make_sluice(**tls_server(certs, client_tls_protocols="tlsv1.2"))
    rp = raw_tls(s, client_ctx(certs))
    assert rp.sock.version() == "TLSv1.2"
    rp.login("app", APP_PW, "app")
    assert rp.query("SELECT 1") == ([["1"]], None)
    rp.terminate()
    ctx13 = client_ctx(certs)
    ctx13.minimum_version = ssl.TLSVersion.TLSv1_3
    with pytest.raises(ssl.SSLError):
        raw_tls(s, ctx13)


# ---------------------------------------------------------------------------------------
# 9. server side: Sluice -> PostgreSQL over TLS


@pytest.mark.parametrize("mode,host,ca", [
    ("verify-full", "localhost", "ca"),
    ("verify-full", ["127.0.0.1", "localhost"], "ca"),
    ("verify-ca", "127.0.0.1", "ca"),
    ("require", "127.0.0.1", None),
    ("prefer", "127.0.0.1", None),
], ids=["verify-full-localhost", "verify-full-hostlist", "verify-ca-ip", "require-ip",
        "prefer-ip"])
def test_server_tls_login(make_sluice, tls_pg, certs, mode, host, ca):
    extra = {"server_tls_ca_file": str(certs.ca)} if ca else {}
    s = make_sluice(server_tls_sslmode=mode, config=db_at(tls_pg, host), **extra)
    with app_conn(s, sslmode="disable") as c:
        pid, on, version, cipher, _ = backend_ssl(c)
        assert on is True, (pid, on)
        assert pg_ssl_of(tls_pg, pid) == "app|t"
        servers = [r for r in show(s, "SERVERS") if r["remote_pid"] == pid]
        assert len(servers) == 1, show(s, "SERVERS")
        assert servers[0]["tls"] == f"{version}/{cipher}", servers
    if isinstance(host, list):
        # the first host was skipped for its name, like a host that is down
        assert wait_for(lambda: log_has(
            s, f"TLS handshake with server 127.0.0.1:{tls_pg.port} failed: "
               f"certificate verify failed: IP address mismatch")), s.log_tail()


@pytest.mark.parametrize("mode,host,ca,reason", [
    ("verify-full", "127.0.0.1", "ca", "IP address mismatch"),
    # PostgreSQL (ssl_ca_file set) sends its chain up to the CA; that CA is not trusted
    ("verify-ca", "127.0.0.1", "other_ca", "self-signed certificate in certificate chain"),
], ids=["verify-full-ip", "verify-ca-wrong-ca"])
def test_server_tls_verify_failure(make_sluice, tls_pg, certs, mode, host, ca, reason):
    s = make_sluice(server_tls_sslmode=mode, server_tls_ca_file=str(getattr(certs, ca)),
                    config=db_at(tls_pg, host))
    before = pg_pids(tls_pg)
    with pytest.raises(psycopg.OperationalError):
        app_conn(s, sslmode="disable")
    line = (f"TLS handshake with server {host}:{tls_pg.port} failed: "
            f"certificate verify failed: {reason}")
    assert wait_for(lambda: log_has(s, line)), s.log_tail()
    assert pg_pids(tls_pg) <= before  # no backend was logged in for this client


def test_server_tls_hostname_mismatch(make_sluice, tls_pg, certs):
    """verify-full to a host name that is not in PostgreSQL's certificate."""
    # 'localhost' is the only name; reach the same server as '127.0.0.1' through a name
    # that is not in the certificate: the machine's own host name, when it resolves to a
    # loopback address.
    name = socket.gethostname()
    try:
        addrs = {a[4][0] for a in socket.getaddrinfo(name, None, socket.AF_INET)}
    except OSError:
        addrs = set()
    if addrs != {"127.0.0.1"} or name == "localhost":
        pytest.skip(f"host name {name!r} does not resolve to 127.0.0.1 only ({addrs})")
    s = make_sluice(server_tls_sslmode="verify-full", server_tls_ca_file=str(certs.ca),
                    config=db_at(tls_pg, name))
    with pytest.raises(psycopg.OperationalError):
        app_conn(s, sslmode="disable")
    assert wait_for(lambda: log_has(
        s, f"TLS handshake with server {name}:{tls_pg.port} failed: "
           f"certificate verify failed: hostname mismatch")), s.log_tail()


def test_server_tls_require_against_plain_pg_fails(make_sluice, pg):
    s = make_sluice(server_tls_sslmode="require")
    with pytest.raises(psycopg.OperationalError):
        app_conn(s, sslmode="disable")
    assert wait_for(lambda: log_has(
        s, f"server 127.0.0.1:{pg.port} does not accept TLS, and server_tls_sslmode is "
           f"require")), s.log_tail()


def test_server_tls_prefer_against_plain_pg_is_plaintext(make_sluice, pg):
    s = make_sluice(server_tls_sslmode="prefer")
    with app_conn(s, sslmode="disable") as c:
        pid, on, _, _, _ = backend_ssl(c)
        assert on is False
        assert pg_ssl_of(pg, pid) == "app|f"
        servers = [r for r in show(s, "SERVERS") if r["remote_pid"] == pid]
        assert len(servers) == 1 and not servers[0]["tls"], servers


def test_server_tls_allow_retries_with_tls_for_hostssl_only_user(make_sluice, tls_pg):
    users = {**DEFAULT_USERS, "tlsonly": TLSONLY_PW}
    s = make_sluice(server_tls_sslmode="allow", users=users, config=db_at(tls_pg, "127.0.0.1"))
    # app: plaintext is accepted, so allow stays plaintext
    with app_conn(s, sslmode="disable") as c:
        pid, on, _, _, _ = backend_ssl(c)
        assert on is False and pg_ssl_of(tls_pg, pid) == "app|f"
    # tlsonly: PostgreSQL refuses plaintext (28000), the second try is TLS
    with app_conn(s, user="tlsonly", sslmode="disable") as c:
        pid, on, _, _, _ = backend_ssl(c)
        assert on is True
        assert pg_ssl_of(tls_pg, pid) == "tlsonly|t"


def test_server_tls_disable_fails_for_hostssl_only_user(make_sluice, tls_pg):
    users = {**DEFAULT_USERS, "tlsonly": TLSONLY_PW}
    s = make_sluice(server_tls_sslmode="disable", users=users, config=db_at(tls_pg, "127.0.0.1"))
    with pytest.raises(psycopg.OperationalError):
        app_conn(s, user="tlsonly", sslmode="disable")
    assert wait_for(lambda: 'user "tlsonly", database "app", no encryption'
                    in Path(tls_pg.log).read_text(errors="replace")), \
        harness.tail(tls_pg.log)
    # and app, whom PostgreSQL accepts in plaintext, is served in plaintext
    with app_conn(s, sslmode="disable") as c:
        pid, on, _, _, _ = backend_ssl(c)
        assert on is False and pg_ssl_of(tls_pg, pid) == "app|f"


# ---------------------------------------------------------------------------------------
# 10. Sluice presents a client certificate to PostgreSQL


def test_server_client_certificate_cert_auth_at_postgres(make_sluice, tls_pg, certs):
    users = {**DEFAULT_USERS, "certuser": CERTUSER_PW}
    s = make_sluice(server_tls_sslmode="verify-full", server_tls_ca_file=str(certs.ca),
                    server_tls_cert_file=str(certs.client_certuser.crt),
                    server_tls_key_file=str(certs.client_certuser.key), users=users,
                    config=db_at(tls_pg, "localhost"))
    with app_conn(s, user="certuser", sslmode="disable") as c:
        assert c.execute("SELECT current_user").fetchone() == ("certuser",)
        pid, on, _, _, dn = backend_ssl(c)
        assert on is True and dn == "/CN=certuser", (on, dn)
        assert pg_ssl_of(tls_pg, pid) == "certuser|t"


def test_server_without_client_certificate_fails_cert_auth_at_postgres(make_sluice, tls_pg,
                                                                       certs):
    users = {**DEFAULT_USERS, "certuser": CERTUSER_PW}
    s = make_sluice(server_tls_sslmode="verify-full", server_tls_ca_file=str(certs.ca),
                    users=users, config=db_at(tls_pg, "localhost"))
    with pytest.raises(psycopg.OperationalError):
        app_conn(s, user="certuser", sslmode="disable")
    assert wait_for(lambda: 'connection requires a valid client certificate'
                    in Path(tls_pg.log).read_text(errors="replace")), \
        harness.tail(tls_pg.log)


# ---------------------------------------------------------------------------------------
# 11. RELOAD with a new certificate


@pytest.mark.parametrize("how", ["new-paths-sighup", "same-paths-console-reload"])
def test_reload_presents_new_certificate_and_keeps_old_clients(make_sluice, certs, how):
    if how.startswith("same-paths"):
        d = harness.make_tempdir("sluice-swapcert-")
        crt, key = d / "server.crt", d / "server.key"
        shutil.copyfile(certs.sluice_a.crt, crt)
        shutil.copyfile(certs.sluice_a.key, key)
        os.chmod(key, 0o600)
        s = make_sluice(client_tls_sslmode="require", client_tls_cert_file=str(crt),
                        client_tls_key_file=str(key))
    else:
        s = make_sluice(**tls_server(certs, leaf=certs.sluice_a))
    assert peer_cn(s, certs) == "sluice-a"

    old = psycopg.connect(sluice_ci(s, host="localhost", password=APP_PW, sslmode="verify-full",
                                    sslrootcert=certs.ca), autocommit=True)
    try:
        assert old.execute("SELECT 1").fetchone() == (1,)
        old_rp = raw_tls(s, client_ctx(certs))
        old_rp.login("app", APP_PW, "app")

        if how.startswith("same-paths"):
            # overwrite in place: write to temp names, then rename over the old files
            shutil.copyfile(certs.sluice_b.crt, d / "server.crt.new")
            shutil.copyfile(certs.sluice_b.key, d / "server.key.new")
            os.chmod(d / "server.key.new", 0o600)
            os.replace(d / "server.key.new", key)
            os.replace(d / "server.crt.new", crt)
            with console(s) as c:
                c.execute("RELOAD")
        else:
            s.update(client_tls_cert_file=str(certs.sluice_b.crt),
                     client_tls_key_file=str(certs.sluice_b.key))
            s.reload()

        assert wait_for(lambda: peer_cn(s, certs) == "sluice-b"), peer_cn(s, certs)
        # a brand-new libpq client verifies the new certificate too
        r = run_psql(sluice_ci(s, host="localhost", sslmode="verify-full", sslrootcert=certs.ca),
                     "SELECT 1", APP_PW)
        assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
        # connections made before the reload keep working, still over TLS
        assert old.execute("SELECT 1").fetchone() == (1,)
        assert old.pgconn.ssl_in_use
        assert old_rp.sock.getpeercert()["subject"] == ((("commonName", "sluice-a"),),)
        assert old_rp.query("SELECT 2") == ([["2"]], None)
        old_rp.terminate()
    finally:
        old.close()


# ---------------------------------------------------------------------------------------
# 13. RELOAD of server_tls_*: old server connections are not reused


def test_reload_server_tls_closes_old_servers_when_released(make_sluice, tls_pg, certs):
    s = make_sluice(server_tls_sslmode="disable", config=db_at(tls_pg, "127.0.0.1"))
    held = app_conn(s, sslmode="disable", application_name="held")
    try:
        held_pid, on, _, _, _ = backend_ssl(held)
        assert on is False
        # a second server, released to the pool before the reload (idle)
        with app_conn(s, sslmode="disable") as c:
            idle_pid, on, _, _, _ = backend_ssl(c)
            assert on is False and idle_pid != held_pid
        assert wait_for(lambda: any(r["remote_pid"] == idle_pid and r["state"] == "idle"
                                    for r in show(s, "SERVERS"))), show(s, "SERVERS")

        s.update(server_tls_sslmode="require")
        s.reload()
        assert wait_for(lambda: any(r["key"] == "server_tls_sslmode" and r["value"] == "require"
                                    for r in show(s, "CONFIG"))), "reload not applied"

        # the idle old server is not handed out again; it goes away
        with app_conn(s, sslmode="disable") as c:
            new_pid, on, _, _, _ = backend_ssl(c)
            assert new_pid not in (held_pid, idle_pid)
            assert on is True and pg_ssl_of(tls_pg, new_pid) == "app|t"
        assert wait_for(lambda: idle_pid not in pg_pids(tls_pg)), pg_pids(tls_pg)

        # the held client keeps its server until it lets it go
        pid, on, _, _, _ = backend_ssl(held)
        assert pid == held_pid and on is False
    finally:
        held.close()
    assert wait_for(lambda: held_pid not in pg_pids(tls_pg)), pg_pids(tls_pg)
    with app_conn(s, sslmode="disable") as c:
        pid, on, _, _, _ = backend_ssl(c)
        assert pid not in (held_pid, idle_pid) and on is True
    remaining = {r["remote_pid"] for r in show(s, "SERVERS")}
    assert not remaining & {held_pid, idle_pid}, remaining


# ---------------------------------------------------------------------------------------
# more: protocol violations inside TLS, unix-socket servers, volume, concurrency, cancel


def test_second_ssl_request_inside_tls_is_refused(make_sluice, certs):
    s = make_sluice(**tls_server(certs))
    rp = raw_tls(s, client_ctx(certs))
    rp.sock.sendall(SSL_REQUEST_BYTES)
    msgs = rp.read_until_close()
    assert len(msgs) == 1 and msgs[0][0] == b"E", msgs
    fields = parse_error_fields(msgs[0][1])
    assert (fields.get("C"), fields.get("M")) == \
        ("08P01", "encryption negotiation after TLS is established"), fields
    rp.close()


def test_server_tls_never_over_unix_socket_host(make_sluice, tls_pg, certs):
    """verify-full applies to TCP hosts; a unix-socket host is used without TLS (as
    PostgreSQL never does TLS there), so the login works."""
    s = make_sluice(server_tls_sslmode="verify-full", server_tls_ca_file=str(certs.ca),
                    config=db_at(tls_pg, str(tls_pg.sockdir)))
    with app_conn(s, sslmode="disable") as c:
        pid, on, _, _, _ = backend_ssl(c)
        assert on is False
        assert tls_pg.psql(f"SELECT client_port FROM pg_stat_activity WHERE pid = {pid}") \
            == "-1"  # a unix-socket backend
        servers = [r for r in show(s, "SERVERS") if r["remote_pid"] == pid]
        assert len(servers) == 1 and not servers[0]["tls"], servers


def bounded(fn, timeout: float = DEADLINE):
    """Runs fn() in a daemon thread: ("ok", value), ("error", exc) or ("hang", None) when
    it has not returned within `timeout` (the test's Sluice is stopped at teardown, which
    frees the thread)."""
    res = {}

    def run():
        try:
            res["v"] = ("ok", fn())
        except Exception as e:  # noqa: BLE001
            res["v"] = ("error", e)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout)
    return res.get("v", ("hang", None))


def tls_both_sides(make_sluice, tls_pg, certs):
    return make_sluice(**tls_server(certs), server_tls_sslmode="verify-full",
                       server_tls_ca_file=str(certs.ca), config=db_at(tls_pg, "localhost"))


def tls_client(s, certs):
    c = psycopg.connect(sluice_ci(s, host="localhost", password=APP_PW, sslmode="verify-full",
                                  sslrootcert=certs.ca), autocommit=True)
    assert c.pgconn.ssl_in_use
    return c


def test_large_downloads_over_tls_both_sides(make_sluice, tls_pg, certs):
    s = tls_both_sides(make_sluice, tls_pg, certs)
    with tls_client(s, certs) as c:
        assert backend_ssl(c)[1] is True
        # one 8 MB value
        (v,) = c.execute("SELECT repeat('x', 8000000)").fetchone()
        assert v == "x" * 8000000
        # 200k rows
        rows = c.execute("SELECT g, md5(g::text) FROM generate_series(1, 200000) g").fetchall()
        assert len(rows) == 200000
        assert all(m == hashlib.md5(str(g).encode()).hexdigest() for g, m in rows)
        # COPY TO STDOUT
        out = bytearray()
        with c.cursor().copy("COPY (SELECT g, 'row-' || g FROM generate_series(1, 50000) g) "
                             "TO STDOUT") as cp:
            for chunk in cp:
                out += chunk
        assert out.count(b"\n") == 50000 and out.endswith(b"50000\trow-50000\n")


@pytest.mark.parametrize("size", [20000, 1000000])
def test_large_upload_parameter_over_tls(make_sluice, tls_pg, certs, size):
    """A client message bigger than one TLS record (16 KB), sent by libpq in one go."""
    s = tls_both_sides(make_sluice, tls_pg, certs)
    with tls_client(s, certs) as c:
        big = secrets.token_hex(size // 2)
        outcome = bounded(lambda: c.execute("SELECT length(%s::text), md5(%s::text)",
                                            (big, big)).fetchone())
        assert outcome == ("ok", (len(big), hashlib.md5(big.encode()).hexdigest())), \
            (outcome, s.log_tail(5))


def test_large_upload_simple_query_psql_over_tls(make_sluice, tls_pg, certs):
    s = tls_both_sides(make_sluice, tls_pg, certs)
    sql_file = s.dir / "big.sql"
    sql_file.write_text("SELECT length('" + "y" * 200000 + "');\n")
    try:
        r = subprocess.run([PSQL, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d",
                            sluice_ci(s, host="localhost", sslmode="verify-full",
                                      sslrootcert=certs.ca), "-f", str(sql_file)],
                           capture_output=True, text=True, timeout=DEADLINE,
                           env=harness.client_env(APP_PW))
    except subprocess.TimeoutExpired:
        pytest.fail(f"psql got no answer to a 200 kB query over TLS within {DEADLINE}s")
    assert r.returncode == 0 and r.stdout.strip() == "200000", r.stderr[-500:]


def test_large_upload_raw_tls_one_write(make_sluice, certs):
    """Python's ssl: one sendall() of a 50 kB Query (four TLS records in a row), five times
    on the same connection; every one must be answered."""
    s = make_sluice(**tls_server(certs))
    rp = raw_tls(s, client_ctx(certs))
    rp.login("app", APP_PW, "app")
    rp.sock.settimeout(DEADLINE)
    for i in range(5):
        try:
            rows, err = rp.query("SELECT length('" + "z" * 50000 + f"') + {i}")
        except socket.timeout:
            pytest.fail(f"round {i}: no answer to a 50 kB query over TLS within {DEADLINE}s")
        assert (rows, err) == ([[str(50000 + i)]], None)
    rp.terminate()


def test_copy_from_stdin_over_tls(make_sluice, tls_pg, certs):
    s = tls_both_sides(make_sluice, tls_pg, certs)
    with tls_client(s, certs) as c:
        c.execute("CREATE TEMP TABLE t (a int, b text)")

        def copy_in():
            with c.cursor().copy("COPY t FROM STDIN") as cp:
                for i in range(50000):
                    cp.write_row((i, f"row-{i}"))
            return c.execute("SELECT count(*), sum(a) FROM t").fetchone()

        outcome = bounded(copy_in)
        assert outcome == ("ok", (50000, 1249975000)), (outcome, s.log_tail(5))


@pytest.mark.parametrize("pool_mode,pool_size", [("session", 20), ("transaction", 3)])
def test_concurrent_tls_clients(make_sluice, tls_pg, certs, pool_mode, pool_size):
    """16 TLS clients at once, TLS servers; in transaction mode 3 servers are shared by all
    clients (and by both workers)."""
    s = make_sluice(**tls_server(certs), default_pool_size=pool_size, pool_mode=pool_mode,
                    server_tls_sslmode="require", config=db_at(tls_pg, "127.0.0.1"))
    errors = []

    def worker(i):
        try:
            with psycopg.connect(sluice_ci(s, host="localhost", password=APP_PW,
                                           sslmode="verify-full", sslrootcert=certs.ca),
                                 autocommit=True) as c:
                for j in range(20):
                    got = c.execute("SELECT %s::int * 1000 + %s::int", (i, j)).fetchone()[0]
                    if got != i * 1000 + j:
                        errors.append((i, j, got))
                if backend_ssl(c)[1] is not True:
                    errors.append((i, "server link not TLS"))
        except Exception as e:  # noqa: BLE001
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(DEADLINE)
    assert not any(th.is_alive() for th in threads), "clients did not finish"
    assert errors == []


def test_cancel_request_for_tls_client(make_sluice, pg, certs):
    """libpq (15) sends CancelRequest in plaintext on a new TCP connection: under
    client_tls_sslmode require it must still cancel the TLS client's query."""
    s = make_sluice(**tls_server(certs, mode="require"))
    conn = psycopg.connect(sluice_ci(s, host="localhost", password=APP_PW,
                                     sslmode="verify-full", sslrootcert=certs.ca),
                           autocommit=True)
    result = {}

    def run():
        try:
            conn.execute("SELECT pg_sleep(60) /* tls-cancel */")
            result["r"] = "finished"
        except psycopg.Error as e:
            result["r"] = e

    try:
        th = threading.Thread(target=run, daemon=True)
        th.start()
        assert wait_for(lambda: pg.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND query LIKE 'SELECT pg_sleep(60) /* tls-cancel */%'") == "1")
        conn.cancel()
        th.join(DEADLINE)
        assert not th.is_alive(), "query was not cancelled"
        assert isinstance(result.get("r"), psycopg.errors.QueryCanceled), result
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------
# 12. auth_type cert (may land after the TLS part: these run last)


def cert_sluice(make_sluice, certs, mode="verify-full"):
    return make_sluice(**tls_server(certs, mode=mode, client_tls_ca_file=str(certs.ca),
                                    auth_type="cert"))


def cert_ci(s, certs, leaf=None, user="app"):
    kw = dict(host="localhost", user=user, sslmode="verify-full", sslrootcert=certs.ca)
    if leaf is not None:
        kw.update(sslcert=leaf.crt, sslkey=leaf.key)
    return sluice_ci(s, **kw)


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_cert_auth_logs_in_by_common_name(make_sluice, certs, mode):
    s = cert_sluice(make_sluice, certs, mode=mode)
    # no password given: the certificate is the credential
    r = run_psql(cert_ci(s, certs, certs.client_app), "SELECT current_user")
    assert r.returncode == 0 and r.stdout.strip() == "app", (r.stderr, s.log_tail())


def test_cert_auth_other_ca_fails_handshake(make_sluice, certs):
    s = cert_sluice(make_sluice, certs)
    r = run_psql(cert_ci(s, certs, certs.client_app_other), "SELECT current_user")
    assert r.returncode != 0 and "unknown ca" in r.stderr, r.stderr
    assert wait_for(lambda: log_has(s, "closing because: TLS handshake failed")), s.log_tail()


def test_cert_auth_without_certificate_fails(make_sluice, certs):
    s = cert_sluice(make_sluice, certs)
    r = run_psql(cert_ci(s, certs, None), "SELECT current_user", APP_PW)
    assert r.returncode != 0 and "certificate required" in r.stderr, r.stderr
    assert wait_for(lambda: log_has(s, "closing because: TLS handshake failed")), s.log_tail()


def test_cert_auth_common_name_must_match_user(make_sluice, certs):
    s = cert_sluice(make_sluice, certs)
    # a valid certificate for CN=app does not log in as stats
    rp = raw_tls(s, client_ctx(certs, cert=certs.client_app))
    with pytest.raises(PgError) as ei:
        rp.login("stats", "whatever", "app")
    assert (ei.value.sqlstate, ei.value.message) == \
        ("28000", 'certificate authentication failed for user "stats"'), ei.value.fields
    rp.close()
    r = run_psql(cert_ci(s, certs, certs.client_app, user="stats"), "SELECT current_user")
    assert r.returncode != 0 and "stats" not in r.stdout, (r.stdout, r.stderr)


def test_cert_auth_over_unix_socket_fails(make_sluice, certs):
    """No TLS on the unix socket, hence no certificate: auth_type cert cannot succeed."""
    s = cert_sluice(make_sluice, certs)
    r = run_psql(ci(host=str(s.dir), port=s.port, user="app", dbname="app"),
                 "SELECT current_user", APP_PW)
    assert r.returncode != 0 and r.stdout.strip() == "", (r.stdout, r.stderr)


@pytest.mark.timeout(240)
def test_tls_client_that_does_not_read_gets_every_byte_in_order(make_sluice, certs, pg):
    """Over TLS, Sluice's send to a full client socket stops inside OpenSSL (WANT_WRITE)
    and the rest is written later: OpenSSL must be offered the same bytes from the same
    byte on (other bytes would break the record stream). Every row arrives, in order,
    once the client reads."""
    s = make_sluice(pool_mode="transaction", default_pool_size=1, workers=1,
                    **tls_server(certs))
    c = RawPg("127.0.0.1", s.port, timeout=10)
    c.send(SSL_REQUEST_BYTES)
    assert c.sock.recv(1) == b"S"
    c.sock = ssl.create_default_context(cafile=str(certs.ca)).wrap_socket(
        c.sock, server_hostname="localhost")
    c.login("app", APP_PW, "app")
    su = psycopg.connect(host=str(pg.sockdir), port=pg.port, user="postgres", dbname="app",
                         autocommit=True, connect_timeout=10)
    try:
        harness.full_client_gets_every_row(c, su)
    finally:
        su.close()
        c.sock.close()
