// Writes the seed corpora in fuzz/corpus/<target>/ from the codec's own writer, a real
// SCRAM exchange against the fuzz targets' fixed verifier, and the example configurations.
// Run by `scripts/fuzz.sh --seed`; the output is committed, so seeds change only when this
// program does. Usage: seed_corpus CORPUS_DIR
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "scram_fixture.hpp"
#include "sluice/auth/md5.hpp"
#include "sluice/protocol/codec.hpp"

namespace fs = std::filesystem;
namespace p = sluice::protocol;
namespace a = sluice::auth;

namespace {

fs::path root;

void put(const std::string& target, const std::string& name, const std::string& bytes) {
    fs::create_directories(root / target);
    std::ofstream(root / target / name, std::ios::binary) << bytes;
}

template <class F>
std::string msg(F&& f) {
    std::string out;
    p::writer w(out);
    f(w);
    return out;
}

// A byte literal with embedded NULs, without its terminating NUL.
template <std::size_t N>
std::string bin(const char (&s)[N]) {
    return std::string(s, N - 1);
}

std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void codec() {
    using w_t = p::writer;
    put("codec", "authentication_ok", msg([](w_t& w) { w.authentication_ok(); }));
    put("codec", "authentication_md5", msg([](w_t& w) { w.authentication_md5({1, 2, 3, 4}); }));
    put("codec", "authentication_sasl", msg([](w_t& w) { w.authentication_sasl("SCRAM-SHA-256"); }));
    put("codec", "authentication_sasl_continue", msg([](w_t& w) {
            w.authentication_sasl_continue("r=abc,s=QUJD,i=4096");
        }));
    put("codec", "authentication_sasl_final",
        msg([](w_t& w) { w.authentication_sasl_final("v=c2lnbmF0dXJl"); }));
    put("codec", "parameter_status", msg([](w_t& w) { w.parameter_status("TimeZone", "UTC"); }));
    put("codec", "backend_key_data", msg([](w_t& w) { w.backend_key_data(4242, 0xdeadbeef); }));
    put("codec", "ready_for_query", msg([](w_t& w) { w.ready_for_query('T'); }));
    put("codec", "error_response", msg([](w_t& w) {
            w.error_response("53400", "rate limit exceeded", "retry after 20 ms", "ERROR",
                             "tenant acme");
        }));
    put("codec", "notice_response", msg([](w_t& w) { w.notice_response("01000", "note"); }));
    put("codec", "negotiate_protocol_version",
        msg([](w_t& w) { w.negotiate_protocol_version(0, {"_pq_.compression", "_pq_.x"}); }));
    put("codec", "row_description",
        msg([](w_t& w) { w.row_description({"database", "cl_active"}, {25, 23}); }));
    put("codec", "data_row", msg([](w_t& w) { w.data_row({"app", std::nullopt, ""}); }));
    put("codec", "command_complete", msg([](w_t& w) { w.command_complete("SELECT 1"); }));
    put("codec", "password", msg([](w_t& w) { w.password("md5abcdef"); }));
    put("codec", "sasl_initial_response", msg([](w_t& w) {
            w.sasl_initial_response("SCRAM-SHA-256", "n,,n=,r=rOprNGfwEbeRWgbNEkqO");
        }));
    put("codec", "sasl_response", msg([](w_t& w) { w.sasl_response("c=biws,r=x,p=eA=="); }));
    put("codec", "query", msg([](w_t& w) { w.query("SELECT 1"); }));
    put("codec", "parse", msg([](w_t& w) { w.parse("s1", "SELECT $1"); }));
    put("codec", "close", msg([](w_t& w) { w.close('S', "s1"); }));
    // Parse with parameter types, Bind with formats/NULL/values, Describe, Execute: raw
    // bodies, as the writer has no builder for them.
    put("codec", "parse_with_types",
        msg([](w_t& w) { w.raw('P', bin("s2\0SELECT $1\0\0\1\0\0\0\x17")); }));
    put("codec", "bind", msg([](w_t& w) {
            w.raw('B', bin("p\0s1\0\0\1\0\0\0\2\xff\xff\xff\xff\0\0\0\1x\0\1\0\1"));
        }));
    put("codec", "describe", msg([](w_t& w) { w.raw('D', bin("Ps1\0")); }));
    put("codec", "extended_batch", msg([](w_t& w) {
            w.parse("", "SELECT 1");
            w.raw('B', bin("\0\0\0\0\0\0\0\0"));
            w.raw('D', bin("P\0"));
            w.raw('E', bin("\0\0\0\0\0"));
            w.sync();
        }));
    put("codec", "backend_stream", msg([](w_t& w) {
            w.authentication_ok();
            w.parameter_status("server_version", "16.2");
            w.backend_key_data(1, 2);
            w.ready_for_query('I');
            w.row_description({"?column?"}, {23});
            w.data_row({"1"});
            w.command_complete("SELECT 1");
            w.ready_for_query('I');
        }));
    put("codec", "empty_and_terminate", msg([](w_t& w) {
            w.empty_query_response();
            w.parse_complete();
            w.close_complete();
            w.terminate();
        }));
}

void startup() {
    put("startup", "startup", msg([](p::writer& w) {
            w.startup({{"user", "app"}, {"database", "app"}, {"application_name", "psql"}});
        }));
    put("startup", "startup_protocol_options", msg([](p::writer& w) {
            w.startup({{"user", "u"}, {"_pq_.compression", "on"}});
        }));
    put("startup", "startup_no_parameters", msg([](p::writer& w) { w.startup({}); }));
    put("startup", "cancel", msg([](p::writer& w) { w.cancel(4242, 0xdeadbeef); }));
    put("startup", "ssl_request", bin("\0\0\0\x08\x04\xd2\x16\x2f"));
    put("startup", "gssenc_request", bin("\0\0\0\x08\x04\xd2\x16\x30"));
    // Protocol 3.2 (a newer minor: answered with NegotiateProtocolVersion) and 2.0 (refused).
    put("startup", "startup_v3_2", bin("\0\0\0\x10\0\3\0\2user\0u\0\0"));
    put("startup", "startup_v2", bin("\0\0\0\x09\0\2\0\0\0"));
}

void scram() {
    using namespace scram_fixture;
    // An honest exchange against the fuzz target's server, recorded.
    auto c = a::scram_client::with_password(std::string(password));
    c.set_username("alice");
    c.set_nonce_for_test("rOprNGfwEbeRWgbNEkqO");
    a::scram_server s(verifier(), iterations);
    s.set_nonce_for_test(std::string(server_nonce));
    const std::string client_first = c.client_first();
    const std::string server_first = *s.client_first(client_first);
    const std::string client_final = *c.server_first(server_first);
    const std::string server_final = *s.client_final(client_final);
    put("scram", "server_exchange", "S" + client_first + "\n" + client_final);
    put("scram", "server_channel_binding_flag",
        "S" + std::string("y,,n=,r=abc") + "\n" + "c=eSws,r=abc" + std::string(server_nonce) +
            ",p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    put("scram", "server_extensions", "Sn,,n=bob,r=xyz,x=ext\nc=biws,r=xyz" +
                                          std::string(server_nonce) + ",x=1,p=AAAA");
    put("scram", "unknown_user", "U" + client_first + "\n" + client_final);

    // The client side: a server answering scram_client's fixed nonce.
    auto c2 = a::scram_client::with_keys(client_key(), secret().server_key);
    c2.set_nonce_for_test(std::string(client_nonce));
    a::scram_server s2(verifier(), iterations);
    s2.set_nonce_for_test(std::string(server_nonce));
    const std::string sf2 = *s2.client_first(c2.client_first());
    const std::string cf2 = *c2.server_first(sf2);
    put("scram", "client_exchange", "C" + sf2 + "\n" + *s2.client_final(cf2));
    put("scram", "client_server_error", "C" + sf2 + "\ne=invalid-proof");

    put("scram", "exchange", "Xalice\nrOprNGfwEbeRWgbNEkqO");
    put("scram", "exchange_escaped_name", "Xa=b,c\nnonce");

    put("scram", "secret_scram", "P" + verifier());
    put("scram", "secret_md5", "P" + a::md5_stored("pencil", "alice"));
    put("scram", "userlist", "P\"alice\" \"" + verifier() + "\"\n;comment\n\"bo\"\"b\" \"md5" +
                                 std::string(32, 'a') + "\"\n\"carol\" \"plain\"\n");
    (void)server_final;
}

void config() {
    const fs::path src = SLUICE_SOURCE_DIR;
    put("config", "sluice.yaml", read_file(src / "conf" / "sluice.yaml"));
    put("config", "pgbouncer-example.ini", read_file(src / "conf" / "pgbouncer-example.ini"));
    put("config", "minimal.yaml",
        "sluice:\n  listen_port: 6432\n  pool_mode: transaction\ndatabases:\n"
        "  app: \"host=127.0.0.1 port=5432 dbname='my db'\"\n  \"*\": {host: localhost}\n");
    put("config", "errors.yaml",
        "sluice:\n  listen_port: 70000\n  pool_mode: sometimes\n  bogus: 1\n"
        "  query_timeout: -2s\n  listen_addr: [a, [b]]\nrate_limits:\n  backend: redis\n"
        "  redis_url: redis://:p@[::1:x\n  tenants:\n    acme: {queries_per_second: -1}\n");
    put("config", "anchors.yaml",
        "x: &a {pool_size: 5}\ndatabases:\n  a: *a\n  b: *a\nusers:\n  u: {pool_mode: session}\n");
    put("config", "minimal.ini",
        "[databases]\napp = host=127.0.0.1 port=5432\n* = host=/tmp\n\n[pgbouncer]\n"
        "listen_port = 6432\n  auth_type = md5\n; comment\n# comment\nlisten_port = 6433\n"
        "server_idle_timeout = 2m\n[users]\nbatch = pool_mode=session\n");
    put("config", "errors.ini",
        "listen_port = 1\n[pgbouncer\n[unknown]\nx = 1\n[pgbouncer]\nnovalue\n%include x.ini\n"
        "= empty\nmax_packet_size = 3\n");
    put("config", "rate_limits.yaml",
        "rate_limits:\n  backend: local\n  tenant_key: startup:options\n  default:\n"
        "    queries_per_second: 10.5\n    action: delay\n    max_delay: 250ms\n");
    put("config", "sentinel.yaml",
        "rate_limits:\n  backend: redis\n  redis_sentinels: [127.0.0.1:26379, '[::1]:26380']\n"
        "  redis_sentinel_master: mymaster\n  redis_sentinel_password: pw\n"
        "  redis_url: rediss://:pw@mymaster/1\n");
}

void hba() {
    using namespace std::string_literals;
    put("hba", "rules",
        "# comment\nlocal all all peer map=os\nhostssl app,@dbs app 127.0.0.1/32 scram-sha-256 "
        "clientcert=verify-full\nhostnossl sameuser +grp 10.0.0.0 255.0.0.0 md5\n"
        "host \"all\" all ::1/128 reject\nhost all /^a.*$ all password\n"
        "hostssl all all all cert map=certs\nhost replication all 0.0.0.0/0 trust \\\n  # x\n"
        "\0127.0.0.1\0app\0app\0root\0\x02"s);
    put("hba", "ident", "os root app\ncerts /^(.*)@example\\.com$ \\1\ncerts \"a b\" +grp\n"
                        "\0\0\0bob\0bob@example.com\0\x01"s);
    put("hba", "errors", "host all all 10.0.0.0/33 md5\nlocal all\nhost all all ::1 ldap\n"
                         "host all all 1.2.3.4/8 md5 map=x\n\0::ffff:10.1.2.3\0a\0b\0\0"s);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    root = argv[1];
    codec();
    startup();
    scram();
    config();
    hba();
    return 0;
}
