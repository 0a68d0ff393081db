// Configuration loader: the example files, PgBouncer's defaults, both formats giving one
// model, and every error kind reported at its exact line and column.
#include "sluice/config/config.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "sluice/config/loader.hpp"
#include "sluice/config/settings.hpp"

namespace sluice::config {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

// tests/unit/config/config_test.cpp -> the repository root.
fs::path repo_root() {
    return fs::path(__FILE__).parent_path().parent_path().parent_path().parent_path();
}

load_result yaml(const std::string& text) {
    return load_string(text, "/etc/sluice/sluice.yaml");
}
load_result ini(const std::string& text) {
    return load_string(text, "/etc/sluice/pgbouncer.ini");
}

std::string all_errors(const load_result& r) {
    std::string out;
    for (const auto& e : r.errors) out += e.to_string() + "\n";
    return out;
}

// Expects exactly one error, at line:col, whose message contains `fragment`.
void expect_one_error(const load_result& r, int line, int col, const std::string& fragment) {
    EXPECT_FALSE(r.cfg.has_value());
    ASSERT_EQ(r.errors.size(), 1u) << all_errors(r);
    EXPECT_EQ(r.errors[0].line, line) << all_errors(r);
    EXPECT_EQ(r.errors[0].column, col) << all_errors(r);
    EXPECT_NE(r.errors[0].message.find(fragment), std::string::npos) << all_errors(r);
}

// ---------------------------------------------------------------------------------------
// The example files shipped in conf/

TEST(ConfigExample, YamlLoads) {
    auto r = load_file((repo_root() / "conf/sluice.yaml").string());
    ASSERT_TRUE(r.ok()) << all_errors(r);
    const config& c = *r.cfg;
    EXPECT_EQ(c.sluice.listen_addr, std::vector<std::string>{"127.0.0.1"});
    EXPECT_EQ(c.sluice.listen_port, 6432);
    EXPECT_EQ(c.sluice.unix_socket_dir, "");
    EXPECT_EQ(c.sluice.pool_mode_, pool_mode::transaction);
    EXPECT_EQ(c.sluice.default_pool_size, 20);
    EXPECT_EQ(c.sluice.max_client_conn, 1000);
    EXPECT_EQ(c.sluice.auth_type_, auth_type::scram_sha_256);
    EXPECT_EQ(c.sluice.auth_file, (repo_root() / "conf/userlist.txt").lexically_normal().string());
    EXPECT_EQ(c.sluice.admin_users, std::vector<std::string>{"admin"});
    EXPECT_EQ(c.sluice.stats_users, std::vector<std::string>{"stats"});
    EXPECT_EQ(c.sluice.metrics_listen, "127.0.0.1:9127");
    ASSERT_EQ(c.databases.count("app"), 1u);
    EXPECT_EQ(c.databases.at("app").host, std::vector<std::string>{"127.0.0.1"});
    EXPECT_EQ(c.databases.at("app").port, 5432);
    ASSERT_EQ(c.users.count("batch"), 1u);
    EXPECT_EQ(c.users.at("batch").mode, pool_mode::session);
    EXPECT_TRUE(c.limits.enabled);
    EXPECT_EQ(c.limits.backend, rl_backend::redis);
    EXPECT_EQ(c.limits.redis_url, "redis://127.0.0.1:6379/0");
    EXPECT_EQ(c.limits.tenant_key, "user");
    EXPECT_EQ(c.limits.defaults, rate_limit{});
    ASSERT_EQ(c.limits.tenants.count("batch"), 1u);
    EXPECT_EQ(c.limits.tenants.at("batch").queries_per_second, 100);
    EXPECT_EQ(c.limits.tenants.at("batch").max_delay, 1s);  // inherited from default
}

TEST(ConfigExample, IniMatchesYaml) {
    auto y = load_file((repo_root() / "conf/sluice.yaml").string());
    auto i = load_file((repo_root() / "conf/pgbouncer-example.ini").string());
    ASSERT_TRUE(y.ok()) << all_errors(y);
    ASSERT_TRUE(i.ok()) << all_errors(i);
    EXPECT_EQ(y.cfg->sluice, i.cfg->sluice);
    EXPECT_EQ(y.cfg->databases, i.cfg->databases);
    EXPECT_EQ(y.cfg->users, i.cfg->users);
}

// ---------------------------------------------------------------------------------------
// Defaults and the model

TEST(ConfigDefaults, EqualPgBouncers) {
    for (auto r : {yaml(""), ini("")}) {
        ASSERT_TRUE(r.ok()) << all_errors(r);
        const general& g = r.cfg->sluice;
        EXPECT_EQ(g, general{});
        EXPECT_EQ(g.pool_mode_, pool_mode::session);
        EXPECT_EQ(g.listen_port, 6432);
        EXPECT_EQ(g.unix_socket_dir, "/tmp");
        EXPECT_EQ(g.unix_socket_mode, 0777);
        EXPECT_EQ(g.default_pool_size, 20);
        EXPECT_EQ(g.max_client_conn, 100);
        EXPECT_EQ(g.reserve_pool_timeout, 5s);
        EXPECT_EQ(g.max_prepared_statements, 200);
        EXPECT_EQ(g.server_reset_query, "DISCARD ALL");
        EXPECT_EQ(g.server_lifetime, 3600s);
        EXPECT_EQ(g.server_idle_timeout, 600s);
        EXPECT_EQ(g.server_connect_timeout, 15s);
        EXPECT_EQ(g.server_login_retry, 15s);
        EXPECT_EQ(g.client_login_timeout, 60s);
        EXPECT_EQ(g.query_timeout, 0s);
        EXPECT_EQ(g.query_wait_timeout, 120s);
        EXPECT_EQ(g.cancel_wait_timeout, 10s);
        EXPECT_EQ(g.suspend_timeout, 10s);
        EXPECT_EQ(g.auth_type_, auth_type::md5);
        EXPECT_EQ(g.client_tls_sslmode, "disable");
        EXPECT_EQ(g.server_tls_sslmode, "prefer");
        EXPECT_EQ(g.max_packet_size, 2147483647);
        EXPECT_EQ(g.pkt_buf, 4096);
        EXPECT_EQ(g.track_extra_parameters, std::vector<std::string>{"IntervalStyle"});
        EXPECT_FALSE(r.cfg->limits.enabled);
        EXPECT_EQ(r.cfg->limits.backend, rl_backend::local);
    }
}

TEST(ConfigModel, ToString) {
    EXPECT_STREQ(to_string(pool_mode::transaction), "transaction");
    EXPECT_STREQ(to_string(auth_type::scram_sha_256), "scram-sha-256");
    EXPECT_STREQ(to_string(rl_failure_policy::closed), "closed");
}

TEST(ConfigModel, StarDatabaseIsTheFallback) {
    auto r = yaml("databases:\n  app: {port: 5433}\n  '*': {host: db.internal}\n");
    ASSERT_TRUE(r.ok()) << all_errors(r);
    const config& c = *r.cfg;
    ASSERT_NE(c.find_database("app"), nullptr);
    EXPECT_EQ(c.find_database("app")->port, 5433);
    ASSERT_NE(c.find_database("other"), nullptr);
    EXPECT_EQ(c.find_database("other")->name, "*");
    EXPECT_EQ(c.find_database("other")->host, std::vector<std::string>{"db.internal"});

    auto no_star = yaml("databases:\n  app: {}\n");
    ASSERT_TRUE(no_star.ok());
    EXPECT_EQ(no_star.cfg->find_database("other"), nullptr);
    EXPECT_EQ(no_star.cfg->find_user("nobody"), nullptr);
}

TEST(ConfigModel, PrecedenceUserOverDatabaseOverGeneral) {
    auto r = yaml(
        "sluice: {pool_mode: statement, default_pool_size: 7}\n"
        "databases:\n"
        "  plain: {}\n"
        "  tuned: {pool_mode: transaction, pool_size: 11}\n"
        "users:\n"
        "  batch: {pool_mode: session, pool_size: 3}\n"
        "  other: {}\n");
    ASSERT_TRUE(r.ok()) << all_errors(r);
    const config& c = *r.cfg;
    const database* plain = c.find_database("plain");
    const database* tuned = c.find_database("tuned");
    const user* batch = c.find_user("batch");
    const user* other = c.find_user("other");
    EXPECT_EQ(c.mode_for(plain, other), pool_mode::statement);
    EXPECT_EQ(c.pool_size_for(plain, other), 7);
    EXPECT_EQ(c.mode_for(tuned, other), pool_mode::transaction);
    EXPECT_EQ(c.pool_size_for(tuned, nullptr), 11);
    EXPECT_EQ(c.mode_for(tuned, batch), pool_mode::session);
    EXPECT_EQ(c.pool_size_for(tuned, batch), 3);
    EXPECT_EQ(c.mode_for(nullptr, nullptr), pool_mode::statement);
}

TEST(ConfigModel, RelativePathsResolveAgainstTheConfigDirectory) {
    auto r = yaml(
        "sluice:\n"
        "  auth_file: userlist.txt\n"
        "  auth_hba_file: ./hba/pg_hba.conf\n"
        "  logfile: ../log/sluice.log\n"
        "  pidfile: /run/sluice.pid\n");
    ASSERT_TRUE(r.ok()) << all_errors(r);
    EXPECT_EQ(r.cfg->sluice.auth_file, "/etc/sluice/userlist.txt");
    EXPECT_EQ(r.cfg->sluice.auth_hba_file, "/etc/sluice/hba/pg_hba.conf");
    EXPECT_EQ(r.cfg->sluice.logfile, "/etc/log/sluice.log");
    EXPECT_EQ(r.cfg->sluice.pidfile, "/run/sluice.pid");

    // Through a real file in a temporary directory too.
    fs::path dir = fs::temp_directory_path() / ("sluice_config_test_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    std::ofstream(dir / "s.yml") << "sluice:\n  auth_file: users.txt\n";
    auto f = load_file((dir / "s.yml").string());
    ASSERT_TRUE(f.ok()) << all_errors(f);
    EXPECT_EQ(f.cfg->sluice.auth_file, (dir / "users.txt").string());
    fs::remove_all(dir);
}

TEST(ConfigModel, ListsBooleansModesAndConnstrings) {
    auto r = yaml(
        "sluice:\n"
        "  listen_addr: '127.0.0.1, ::1'\n"
        "  admin_users: [alice, bob]\n"
        "  stats_users: carol,dave\n"
        "  ignore_startup_parameters: extra_float_digits\n"
        "  so_reuseport: yes\n"
        "  server_round_robin: off\n"
        "  log_connections: 0\n"
        "  syslog: FALSE\n"
        "  unix_socket_mode: 0700\n"
        "  metrics_listen: '[::1]:9127'\n"
        "databases:\n"
        "  a: {host: [h1, h2], port: 6000}\n"
        "  b: 'host=h1,h2 port=6000 dbname=''my db'' pool_mode=statement'\n"
        "  c: host=/var/run/postgresql dbname=c user=app password='p w\\'d'\n"
        "  '*':\n");
    ASSERT_TRUE(r.ok()) << all_errors(r);
    const config& c = *r.cfg;
    EXPECT_EQ(c.sluice.listen_addr, (std::vector<std::string>{"127.0.0.1", "::1"}));
    EXPECT_EQ(c.sluice.admin_users, (std::vector<std::string>{"alice", "bob"}));
    EXPECT_EQ(c.sluice.stats_users, (std::vector<std::string>{"carol", "dave"}));
    EXPECT_EQ(c.sluice.ignore_startup_parameters, std::vector<std::string>{"extra_float_digits"});
    EXPECT_TRUE(c.sluice.so_reuseport);
    EXPECT_FALSE(c.sluice.server_round_robin);
    EXPECT_FALSE(c.sluice.log_connections);
    EXPECT_FALSE(c.sluice.syslog);
    EXPECT_EQ(c.sluice.unix_socket_mode, 0700);
    EXPECT_EQ(c.sluice.metrics_listen, "[::1]:9127");
    EXPECT_EQ(c.databases.at("a").host, (std::vector<std::string>{"h1", "h2"}));
    EXPECT_EQ(c.databases.at("b").host, c.databases.at("a").host);
    EXPECT_EQ(c.databases.at("b").port, 6000);
    EXPECT_EQ(c.databases.at("b").dbname, "my db");
    EXPECT_EQ(c.databases.at("b").mode, pool_mode::statement);
    EXPECT_EQ(c.databases.at("c").host, std::vector<std::string>{"/var/run/postgresql"});
    EXPECT_EQ(c.databases.at("c").password, "p w'd");
    EXPECT_EQ(c.databases.at("*").port, 5432);

    auto empty_listen = yaml("sluice: {listen_addr: '', unix_socket_dir: /tmp}\n");
    ASSERT_TRUE(empty_listen.ok()) << all_errors(empty_listen);
    EXPECT_TRUE(empty_listen.cfg->sluice.listen_addr.empty());
}

TEST(ConfigModel, IniAndYamlGiveTheSameModel) {
    auto y = yaml(
        "sluice:\n"
        "  listen_addr: [127.0.0.1, 10.0.0.1]\n"
        "  listen_port: 7432\n"
        "  unix_socket_mode: '0770'\n"
        "  pool_mode: transaction\n"
        "  default_pool_size: 15\n"
        "  max_client_conn: 500\n"
        "  server_lifetime: 1h\n"
        "  query_timeout: 2.5\n"
        "  client_idle_timeout: 250ms\n"
        "  auth_type: md5\n"
        "  auth_file: users.txt\n"
        "  admin_users: [admin, root]\n"
        "  server_reset_query: DISCARD ALL\n"
        "  tcp_keepalive: no\n"
        "databases:\n"
        "  app:\n"
        "    host: [db1, db2]\n"
        "    port: 5433\n"
        "    dbname: application\n"
        "    user: app\n"
        "    password: secret\n"
        "    pool_size: 10\n"
        "    pool_mode: session\n"
        "    server_lifetime: 30\n"
        "  '*': {host: fallback}\n"
        "users:\n"
        "  batch: {pool_mode: statement, pool_size: 5, query_timeout: 1m}\n");
    auto i =
        ini("; PgBouncer style\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1,10.0.0.1\n"
            "listen_port = 7432\n"
            "unix_socket_mode = 0770\n"
            "pool_mode = transaction\n"
            "default_pool_size = 15\n"
            "max_client_conn = 500\n"
            "server_lifetime = 3600\n"
            "query_timeout = 2.5\n"
            "client_idle_timeout = 0.25\n"
            "auth_type = md5\n"
            "auth_file = users.txt\n"
            "admin_users = admin, root\n"
            "server_reset_query = DISCARD ALL\n"
            "tcp_keepalive = 0\n"
            "# no effect in Sluice, known to PgBouncer: named in the start-up warning\n"
            "dns_max_ttl = 15\n"
            "\n"
            "[databases]\n"
            "app = host=db1,db2 port=5433 dbname=application user=app password=secret "
            "pool_size=10 pool_mode=session server_lifetime=30\n"
            "* = host=fallback\n"
            "[users]\n"
            "batch = pool_mode=statement pool_size=5 query_timeout=60\n");
    ASSERT_TRUE(y.ok()) << all_errors(y);
    ASSERT_TRUE(i.ok()) << all_errors(i);
    EXPECT_EQ(i.cfg->no_op_settings, std::vector<std::string>{"dns_max_ttl"});
    i.cfg->no_op_settings.clear();
    i.cfg->path = y.cfg->path;
    EXPECT_EQ(y.cfg->sluice, i.cfg->sluice);
    EXPECT_EQ(y.cfg->databases, i.cfg->databases);
    EXPECT_EQ(y.cfg->users, i.cfg->users);
    EXPECT_EQ(*y.cfg, *i.cfg);
    EXPECT_EQ(y.cfg->sluice.client_idle_timeout, 250ms);
    EXPECT_EQ(y.cfg->users.at("batch").query_timeout, 60s);
}

TEST(ConfigModel, RateLimits) {
    auto r = yaml(
        "rate_limits:\n"
        "  tenants:\n"
        "    acme: {queries_per_second: 100, query_burst: 20}\n"
        "    slow: {action: delay, max_delay: 500ms, shadow: true}\n"
        "  default: {queries_per_second: 5.5, max_connections: 3}\n"
        "  tenant_key: startup:x_tenant\n"
        "  on_redis_failure: closed\n"
        "  redis_timeout: 20ms\n"
        "  lease_size: 10\n");
    ASSERT_TRUE(r.ok()) << all_errors(r);
    const rate_limits& rl = r.cfg->limits;
    EXPECT_TRUE(rl.enabled);
    EXPECT_EQ(rl.backend, rl_backend::local);
    EXPECT_EQ(rl.tenant_key, "startup:x_tenant");
    EXPECT_EQ(rl.on_redis_failure, rl_failure_policy::closed);
    EXPECT_EQ(rl.redis_timeout, 20ms);
    EXPECT_EQ(rl.lease_size, 10);
    EXPECT_EQ(rl.defaults.queries_per_second, 5.5);
    EXPECT_EQ(rl.tenants.at("acme").queries_per_second, 100);
    EXPECT_EQ(rl.tenants.at("acme").max_connections, 3);  // from default, though listed after
    EXPECT_EQ(rl.tenants.at("slow").action, rl_action::delay);
    EXPECT_EQ(rl.tenants.at("slow").max_delay, 500ms);
    EXPECT_TRUE(rl.tenants.at("slow").shadow);

    auto empty = yaml("rate_limits:\n");
    ASSERT_TRUE(empty.ok()) << all_errors(empty);
    EXPECT_TRUE(empty.cfg->limits.enabled);
}

TEST(ConfigRedisUrl, Forms) {
    auto a = parse_redis_url("redis://127.0.0.1:6379/0");
    ASSERT_TRUE(a);
    EXPECT_FALSE(a->tls);
    EXPECT_EQ(a->host, "127.0.0.1");
    EXPECT_EQ(a->port, 6379);
    EXPECT_EQ(a->db, 0);
    auto b = parse_redis_url("rediss://:s%40cret@cache.internal/3");
    ASSERT_TRUE(b);
    EXPECT_TRUE(b->tls);
    EXPECT_EQ(b->username, "");
    EXPECT_EQ(b->password, "s@cret");
    EXPECT_EQ(b->port, 6379);
    EXPECT_EQ(b->db, 3);
    auto c = parse_redis_url("redis://sluice:pw@[::1]:7000");
    ASSERT_TRUE(c);
    EXPECT_EQ(c->username, "sluice");
    EXPECT_EQ(c->host, "::1");
    EXPECT_EQ(c->port, 7000);
    for (const char* bad :
         {"http://h", "redis://", "redis://h:0", "redis://h:99999", "redis://h/x", "redis://h:/1",
          "redis://pw@h", "redis://h/1?x=1", "redis://[::1", "redis://:p@/0"})
        EXPECT_FALSE(parse_redis_url(bad)) << bad;
}

TEST(ConfigRedisUrl, PercentEscapesAreTwoHexDigits) {
    auto a = parse_redis_url("redis://:%41%7e%7E@h");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->password, "A~~");
    // "%-1" once decoded to the byte 0xff (from_chars takes a sign).
    for (const char* bad : {"redis://:%-1@h", "redis://:%+1@h", "redis://:%4@h", "redis://:%g0@h",
                            "redis://:% 1@h", "redis://%-1:p@h"})
        EXPECT_FALSE(parse_redis_url(bad)) << bad;
}

// ---------------------------------------------------------------------------------------
// rate_limits: Redis behind Sentinel

TEST(ConfigSentinel, ListOrCommaStringAndTheOtherKeys) {
    auto r = yaml(
        "rate_limits:\n"
        "  backend: redis\n"
        "  redis_sentinels: [127.0.0.1:26379, 'sentinel-2.internal:26380', '[::1]:26381']\n"
        "  redis_sentinel_master: mymaster\n"
        "  redis_sentinel_password: s3cret\n"
        "  redis_url: rediss://:pw@mymaster/2\n");
    ASSERT_TRUE(r.ok()) << all_errors(r);
    const rate_limits& rl = r.cfg->limits;
    EXPECT_EQ(rl.redis_sentinels, (std::vector<std::string>{"127.0.0.1:26379",
                                                            "sentinel-2.internal:26380",
                                                            "[::1]:26381"}));
    EXPECT_EQ(rl.redis_sentinel_master, "mymaster");
    EXPECT_EQ(rl.redis_sentinel_password, "s3cret");

    auto comma = yaml(
        "rate_limits:\n  backend: redis\n  redis_sentinel_master: m\n"
        "  redis_sentinels: '127.0.0.1:1, 127.0.0.1:2,127.0.0.1:3'\n");
    ASSERT_TRUE(comma.ok()) << all_errors(comma);
    EXPECT_EQ(comma.cfg->limits.redis_sentinels,
              (std::vector<std::string>{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}));
    // No redis_url at all: the sentinels give the address, nothing else is needed.
    EXPECT_TRUE(comma.cfg->limits.redis_url.empty());
}

TEST(ConfigSentinel, BadValuesAtTheirPosition) {
    const std::string head = "rate_limits:\n  backend: redis\n  redis_sentinel_master: m\n";
    // In a YAML list, the bad item itself.
    expect_one_error(yaml(head + "  redis_sentinels: [127.0.0.1:1, nope, 127.0.0.1:3]\n"), 4, 34,
                     "expected host:port");
    expect_one_error(yaml(head + "  redis_sentinels:\n    - 127.0.0.1:1\n    - h:0\n"), 6, 7,
                     "got 'h:0'");
    // In a comma string, the string.
    expect_one_error(yaml(head + "  redis_sentinels: '127.0.0.1:1, ::1:5'\n"), 4, 20,
                     "got '::1:5'");
    expect_one_error(yaml(head + "  redis_sentinels: []\n"), 4, 20, "at least one sentinel");
    expect_one_error(yaml(head + "  redis_sentinels: {a: 1}\n"), 4, 20, "expected a list");
    expect_one_error(yaml("rate_limits:\n  backend: redis\n  redis_sentinels: [h:1]\n"
                          "  redis_sentinel_master: 'two words'\n"),
                     4, 26, "one word");
}

TEST(ConfigSentinel, ContradictionsAreRefused) {
    // Sentinels without the master's name.
    expect_one_error(yaml("rate_limits:\n  backend: redis\n  redis_sentinels: [h:1]\n"), 3, 20,
                     "redis_sentinel_master is not");
    // The master's name or the sentinel password without sentinels.
    expect_one_error(yaml("rate_limits:\n  backend: redis\n  redis_url: redis://h:1\n"
                          "  redis_sentinel_master: m\n"),
                     4, 26, "redis_sentinel_master is set but redis_sentinels is not");
    expect_one_error(yaml("rate_limits:\n  backend: redis\n  redis_url: redis://h:1\n"
                          "  redis_sentinel_password: x\n"),
                     4, 28, "redis_sentinel_password is set but redis_sentinels is not");
    // Sentinels with the local backend.
    expect_one_error(yaml("rate_limits:\n  redis_sentinels: [h:1]\n  redis_sentinel_master: m\n"),
                     2, 20, "backend is not redis");
    // redis_url naming an address of its own: which one was meant?
    const std::string head =
        "rate_limits:\n  backend: redis\n  redis_sentinels: [h:1]\n  redis_sentinel_master: m\n";
    expect_one_error(yaml(head + "  redis_url: redis://10.0.0.5:6379/0\n"), 5, 14,
                     "write the master's name 'm' as the host and no port");
    expect_one_error(yaml(head + "  redis_url: redis://m:6379/0\n"), 5, 14, "and no port");
    auto ok = yaml(head + "  redis_url: redis://user:pw@m/3\n");
    ASSERT_TRUE(ok.ok()) << all_errors(ok);
    // The message never echoes the URL (it may hold a password).
    auto bad = yaml(head + "  redis_url: redis://:hunter2@elsewhere/0\n");
    ASSERT_EQ(bad.errors.size(), 1u) << all_errors(bad);
    EXPECT_EQ(bad.errors[0].message.find("hunter2"), std::string::npos);
    // backend redis with neither an address nor sentinels: the old error, still.
    expect_one_error(yaml("rate_limits:\n  backend: redis\n"), 2, 12, "redis_url is not set");
}

TEST(ConfigHostPort, Forms) {
    auto a = parse_host_port("127.0.0.1:26379");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->host, "127.0.0.1");
    EXPECT_EQ(a->port, 26379);
    auto b = parse_host_port("[::1]:7");
    ASSERT_TRUE(b);
    EXPECT_EQ(b->host, "::1");
    EXPECT_EQ(b->port, 7);
    for (const char* bad : {"", "h", "h:", ":1", "h:0", "h:65536", "::1:5", "[::1]", "[::1]:",
                            "[::1]5", "h:1x"})
        EXPECT_FALSE(parse_host_port(bad)) << bad;
}

// ---------------------------------------------------------------------------------------
// The settings rule (config/settings.hpp): a setting works, or is refused at its position,
// or has no effect and is named in the start-up warning. settings_rule_test.cpp walks the
// whole table; these are the cases spelled out.

TEST(ConfigRule, RefusedSettingsAreErrorsAtTheirKey) {
    expect_one_error(ini("[pgbouncer]\nlisten_port = 6432\n  tcp_socket_buffer = 0\n"), 3, 3,
                     "setting tcp_socket_buffer is not supported: Sluice leaves socket");
    expect_one_error(yaml("sluice:\n  peer_id: 1\n"), 2, 3, "setting peer_id is not supported");
    expect_one_error(ini("[pgbouncer]\nresolv_conf = /etc/alt.conf\n"), 2, 1,
                     "setting resolv_conf is not supported");
    // Whatever the value, even PgBouncer's default: the setting is not read at all.
    expect_one_error(yaml("sluice:\n  disable_pqexec: 0\n"), 2, 3,
                     "setting disable_pqexec is not supported");
    // Every mistake is still reported, refused settings included.
    auto r = ini("[pgbouncer]\nunix_socket_group = pg\nlisten_port = 0\nsyslog_facility = x\n");
    ASSERT_EQ(r.errors.size(), 3u) << all_errors(r);
    EXPECT_EQ(r.errors[0].to_string(),
              "/etc/sluice/pgbouncer.ini:2:1: setting unix_socket_group is not supported: "
              "Sluice does not change the group of its Unix socket; make unix_socket_dir a "
              "directory of the wanted group, or use unix_socket_mode");
}

TEST(Config, SyslogAndUserSettings) {
    auto c = ini("[pgbouncer]\nsyslog = 1\nsyslog_ident = pgb-eu\nsyslog_facility = LOCAL3\n"
                 "user = postgres\n");
    ASSERT_TRUE(c.ok()) << all_errors(c);
    EXPECT_TRUE(c.cfg->sluice.syslog);
    EXPECT_EQ(c.cfg->sluice.syslog_ident, "pgb-eu");
    EXPECT_EQ(c.cfg->sluice.syslog_facility, "local3");
    EXPECT_EQ(c.cfg->sluice.user, "postgres");
    auto d = yaml("sluice:\n  listen_port: 6432\n");
    ASSERT_TRUE(d.ok()) << all_errors(d);
    EXPECT_FALSE(d.cfg->sluice.syslog);
    EXPECT_EQ(d.cfg->sluice.syslog_ident, "sluice");
    EXPECT_EQ(d.cfg->sluice.syslog_facility, "daemon");
    EXPECT_EQ(d.cfg->sluice.user, "");
    auto bad = yaml("sluice:\n  syslog_facility: kern\n");
    ASSERT_EQ(bad.errors.size(), 1u);
    EXPECT_NE(bad.errors[0].to_string().find("syslog_facility"), std::string::npos)
        << bad.errors[0].to_string();
}

// These were accepted at their default only; each now works at every value.
TEST(ConfigRule, FormerlyDefaultOnlySettingsTakeEveryValue) {
    auto ok = ini(
        "[pgbouncer]\nserver_round_robin = 0\nsyslog = off\nserver_fast_close = 0\n"
        "application_name_add_host = no\n[databases]\napp = host=a,b load_balance_hosts=disable\n");
    ASSERT_TRUE(ok.ok()) << all_errors(ok);
    EXPECT_EQ(ok.cfg->databases.at("app").load_balance_hosts, "disable");
    EXPECT_TRUE(ok.cfg->no_op_settings.empty());
    auto rr = ini("[pgbouncer]\nserver_round_robin = 1\n[databases]\n"
                  "app = host=x connect_query='SET search_path = app'\n");
    ASSERT_TRUE(rr.ok()) << all_errors(rr);
    EXPECT_TRUE(rr.cfg->sluice.server_round_robin);
    EXPECT_EQ(rr.cfg->databases.at("app").connect_query, "SET search_path = app");
    auto on = yaml("sluice:\n  server_fast_close: 1\n  application_name_add_host: 1\n");
    ASSERT_TRUE(on.ok()) << all_errors(on);
    EXPECT_TRUE(on.cfg->sluice.server_fast_close);
    EXPECT_TRUE(on.cfg->sluice.application_name_add_host);
}

TEST(ConfigHosts, HostListsTargetSessionAttrsAndLagGuard) {
    auto r = ini("[databases]\n"
                 "app = host=a,b target_session_attrs=read-write\n"
                 "app_ro = host=a,b target_session_attrs=prefer-standby max_replica_lag=5 "
                 "load_balance_hosts=disable\n"
                 "plain = host=a\n");
    ASSERT_TRUE(r.ok()) << all_errors(r);
    const auto& app = r.cfg->databases.at("app");
    EXPECT_EQ(app.host, (std::vector<std::string>{"a", "b"}));
    EXPECT_EQ(app.target_session_attrs, "read-write");
    EXPECT_EQ(app.load_balance_hosts, "round-robin");  // PgBouncer's default
    EXPECT_FALSE(app.max_replica_lag);
    const auto& ro = r.cfg->databases.at("app_ro");
    EXPECT_EQ(ro.target_session_attrs, "prefer-standby");
    EXPECT_EQ(ro.load_balance_hosts, "disable");
    EXPECT_EQ(ro.max_replica_lag, std::chrono::seconds(5));
    EXPECT_EQ(r.cfg->databases.at("plain").target_session_attrs, "any");

    auto y = yaml("databases:\n  app_ro:\n    host: [127.0.0.1, 127.0.0.2]\n"
                  "    target_session_attrs: standby\n    max_replica_lag: 2s\n");
    ASSERT_TRUE(y.ok()) << all_errors(y);
    EXPECT_EQ(y.cfg->databases.at("app_ro").max_replica_lag, std::chrono::seconds(2));

    expect_one_error(ini("[databases]\napp = load_balance_hosts=random\n"), 2, 26,
                     "not one of round-robin, disable");
    expect_one_error(ini("[databases]\napp = host=a target_session_attrs=readwrite\n"), 2, 35,
                     "not one of any, read-write, read-only, primary, standby, prefer-standby");
}

TEST(ConfigRule, ReservePoolIsAnOldNameForReservePoolSize) {
    auto r = ini("[databases]\napp = host=x reserve_pool=3\nb = host=x reserve_pool_size=4\n");
    ASSERT_TRUE(r.ok()) << all_errors(r);
    EXPECT_EQ(r.cfg->databases.at("app").reserve_pool_size, 3);
    EXPECT_EQ(r.cfg->databases.at("b").reserve_pool_size, 4);
    expect_one_error(ini("[databases]\napp = reserve_pool=-1\n"), 2, 20, "must not be negative");
}

TEST(ConfigRule, NoOpSettingsAreValidatedKeptAndNamedOnce) {
    auto r = ini(
        "[pgbouncer]\ndns_max_ttl = 30\npkt_buf = 8192\nlisten_port = 6433\n"
        "tcp_defer_accept = 1\n");
    ASSERT_TRUE(r.ok()) << all_errors(r);
    EXPECT_EQ(r.cfg->no_op_settings,
              (std::vector<std::string>{"dns_max_ttl", "pkt_buf", "tcp_defer_accept"}));
    EXPECT_EQ(no_op_warning(*r.cfg),
              "settings with no effect in Sluice: dns_max_ttl, pkt_buf, tcp_defer_accept "
              "(see README \"Settings with no effect\")");
    EXPECT_EQ(r.cfg->sluice.dns_max_ttl, 30s);  // kept, for SHOW CONFIG
    EXPECT_EQ(r.cfg->sluice.pkt_buf, 8192);
    auto y = yaml("sluice:\n  dns_nxdomain_ttl: 2\n  sbuf_loopcnt: 10\n");
    ASSERT_TRUE(y.ok()) << all_errors(y);
    EXPECT_EQ(no_op_warning(*y.cfg),
              "settings with no effect in Sluice: dns_nxdomain_ttl, sbuf_loopcnt "
              "(see README \"Settings with no effect\")");
    auto none = ini("[pgbouncer]\nlisten_port = 6433\n");
    ASSERT_TRUE(none.ok());
    EXPECT_EQ(no_op_warning(*none.cfg), "");
    expect_one_error(ini("[pgbouncer]\ndns_max_ttl = soon\n"), 2, 15, "expected a duration");
    expect_one_error(yaml("sluice:\n  pkt_buf: 10\n"), 2, 12, "out of range 512..");
}

TEST(ConfigRule, TlsModesAreLibpqWords) {
    auto r = ini("[pgbouncer]\nclient_tls_sslmode = Require\nserver_tls_sslmode = verify-full\n");
    ASSERT_TRUE(r.ok()) << all_errors(r);
    EXPECT_EQ(r.cfg->sluice.client_tls_sslmode, "require");
    EXPECT_EQ(r.cfg->sluice.server_tls_sslmode, "verify-full");
    expect_one_error(yaml("sluice:\n  client_tls_sslmode: on\n"), 2, 23,
                     "'on' is not one of disable, allow, prefer, require, verify-ca, verify-full");
}

// ---------------------------------------------------------------------------------------
// Durations

TEST(ConfigDuration, AllForms) {
    EXPECT_EQ(parse_duration("5"), duration{5s});
    EXPECT_EQ(parse_duration("0"), duration{0});
    EXPECT_EQ(parse_duration("0.5"), duration{500ms});
    EXPECT_EQ(parse_duration("1.5s"), duration{1500ms});
    EXPECT_EQ(parse_duration("250ms"), duration{250ms});
    EXPECT_EQ(parse_duration("100us"), duration{100us});
    EXPECT_EQ(parse_duration("2m"), duration{120s});
    EXPECT_EQ(parse_duration("1h"), duration{3600s});
    EXPECT_EQ(parse_duration("1d"), duration{86400s});
    EXPECT_EQ(parse_duration(" 3 s "), duration{3s});
    EXPECT_EQ(parse_duration("0.000001"), duration{1us});
    for (const char* bad : {"", "-1", "-1s", "+1", "abc", "5x", "1.2.3", ".", "ms", "1e3", "s5",
                            "99999999999999999999h", "nan", "inf"})
        EXPECT_FALSE(parse_duration(bad)) << bad;
}

TEST(ConfigDuration, InYamlAndIni) {
    auto y = yaml(
        "sluice:\n  query_timeout: 2.5\n  server_lifetime: 2m\n  client_idle_timeout: '250ms'\n");
    ASSERT_TRUE(y.ok()) << all_errors(y);
    EXPECT_EQ(y.cfg->sluice.query_timeout, 2500ms);
    EXPECT_EQ(y.cfg->sluice.server_lifetime, 120s);
    EXPECT_EQ(y.cfg->sluice.client_idle_timeout, 250ms);
    auto i = ini("[pgbouncer]\nquery_timeout = 1.5\nserver_lifetime = 1h\n");
    ASSERT_TRUE(i.ok()) << all_errors(i);
    EXPECT_EQ(i.cfg->sluice.query_timeout, 1500ms);
    EXPECT_EQ(i.cfg->sluice.server_lifetime, 3600s);
}

// ---------------------------------------------------------------------------------------
// Errors: each kind at its exact line and column

TEST(ConfigErrors, UnknownKeys) {
    expect_one_error(yaml("sluice:\n  listen_prot: 6432\n"), 2, 3, "unknown setting 'listen_prot'");
    expect_one_error(yaml("databases:\n  app:\n    hots: x\n"), 3, 5, "unknown setting 'hots'");
    expect_one_error(yaml("users:\n  u: {pool_mod: session}\n"), 2, 7,
                     "unknown setting 'pool_mod'");
    expect_one_error(yaml("rate_limits:\n  default:\n    qps: 1\n"), 3, 5, "unknown setting 'qps'");
    expect_one_error(yaml("\nsluicee:\n  a: 1\n"), 2, 1, "unknown section 'sluicee'");
    expect_one_error(ini("[pgbouncer]\nlisten_port = 6432\nfrobnicate = 1\n"), 3, 1,
                     "unknown setting 'frobnicate'");
    expect_one_error(ini("[pgbouncer]\n[peers]\n1 = host=x\n"), 2, 1,
                     "section [peers] is not supported");
    expect_one_error(ini("[pgbouncer]\n[peer]\n"), 2, 1, "unknown section [peer]");
    expect_one_error(ini("[databases]\napp = host=x  bogus=1\n"), 2, 15, "unknown setting 'bogus'");
}

TEST(ConfigErrors, WrongTypes) {
    expect_one_error(yaml("sluice:\n  listen_port: [1, 2]\n"), 2, 16, "expected a single value");
    expect_one_error(yaml("sluice:\n  listen_port: abc\n"), 2, 16, "expected an integer");
    expect_one_error(yaml("sluice:\n  so_reuseport: maybe\n"), 2, 17, "expected a boolean");
    expect_one_error(yaml("sluice:\n  query_timeout: soon\n"), 2, 18, "expected a duration");
    expect_one_error(yaml("sluice:\n  admin_users: {a: 1}\n"), 2, 16, "expected a list");
    expect_one_error(yaml("sluice: 5\n"), 1, 9, "expected a mapping");
    expect_one_error(yaml("databases:\n  app: [1]\n"), 2, 8, "expected a mapping or a connection");
    expect_one_error(yaml("sluice:\n  unix_socket_mode: 0789\n"), 2, 21, "octal");
    expect_one_error(ini("[pgbouncer]\nmax_client_conn = lots\n"), 2, 19, "expected an integer");
}

TEST(ConfigErrors, ImpossibleValues) {
    expect_one_error(yaml("sluice:\n  listen_port: 70000\n"), 2, 16, "out of range 1..65535");
    expect_one_error(yaml("sluice:\n  listen_port: 0\n"), 2, 16, "out of range 1..65535");
    expect_one_error(yaml("sluice:\n  default_pool_size: -5\n"), 2, 22, "must not be negative");
    expect_one_error(yaml("sluice:\n  pool_mode: sesion\n"), 2, 14,
                     "not one of session, transaction, statement");
    expect_one_error(yaml("sluice:\n  auth_type: password\n"), 2, 14, "not one of trust");
    expect_one_error(yaml("sluice:\n  metrics_listen: 127.0.0.1\n"), 2, 19, "host:port");
    expect_one_error(yaml("databases:\n  app: {port: 99999}\n"), 2, 15, "out of range");
    expect_one_error(yaml("databases:\n  app: 'host=x port=-1'\n"), 2, 21, "out of range");
    expect_one_error(yaml("users:\n  u: {pool_size: -1}\n"), 2, 18, "must not be negative");
    expect_one_error(ini("[databases]\napp = host=x pool_mode=bogus\n"), 2, 24,
                     "not one of session");
    expect_one_error(yaml("sluice:\n  listen_addr: ''\n  unix_socket_dir: ''\n"), 2, 16,
                     "nothing to listen on");
}

TEST(ConfigErrors, RateLimitValues) {
    expect_one_error(yaml("rate_limits:\n  default: {queries_per_second: -1}\n"), 2, 33,
                     "must not be negative");
    expect_one_error(yaml("rate_limits:\n  default:\n    query_burst: lots\n"), 3, 18,
                     "expected a number");
    expect_one_error(yaml("rate_limits:\n  tenant_key: tenant\n"), 2, 15, "not one of user");
    expect_one_error(yaml("rate_limits:\n  tenant_key: 'startup:'\n"), 2, 15, "not one of user");
    expect_one_error(yaml("rate_limits:\n  on_redis_failure: retry\n"), 2, 21,
                     "not one of local, open, closed");
    expect_one_error(yaml("rate_limits:\n  backend: memcached\n"), 2, 12,
                     "not one of local, redis");
    expect_one_error(yaml("rate_limits:\n  tenants:\n    acme: {action: drop}\n"), 3, 20,
                     "not one of reject, delay");
    expect_one_error(yaml("rate_limits:\n  backend: redis\n  redis_url: http://x:6379\n"), 3, 14,
                     "expected redis://");
    expect_one_error(yaml("rate_limits:\n  backend: redis\n  redis_url: redis://h:6379/zero\n"), 3,
                     14, "expected redis://");
    expect_one_error(yaml("rate_limits:\n  backend: redis\n"), 2, 12, "redis_url is not set");
    expect_one_error(yaml("rate_limits:\n  expected_instances: 0\n"), 2, 23, "out of range");
}

TEST(ConfigErrors, YamlSyntaxHasAPosition) {
    auto r = yaml("sluice:\n  listen_port: [6432\n  pool_mode: session\n");
    EXPECT_FALSE(r.cfg);
    ASSERT_EQ(r.errors.size(), 1u) << all_errors(r);
    EXPECT_GT(r.errors[0].line, 1);
    EXPECT_GT(r.errors[0].column, 0);

    auto tab = yaml("sluice:\n\tlisten_port: 1\n");
    EXPECT_FALSE(tab.cfg);
    ASSERT_EQ(tab.errors.size(), 1u);
    EXPECT_EQ(tab.errors[0].line, 2);
}

TEST(ConfigErrors, IniSyntax) {
    expect_one_error(ini("listen_port = 1\n"), 1, 1, "outside any section");
    expect_one_error(ini("[pgbouncer]\n  listen_port 1\n"), 2, 3, "expected 'key = value'");
    expect_one_error(ini("[pgbouncer\n"), 1, 1, "malformed section header");
    expect_one_error(ini("[databases]\napp = host='unterminated\n"), 2, 12, "unterminated");
}

TEST(ConfigIni, TheLastOccurrenceOfAKeyWins) {
    // As PgBouncer: tools append overrides to a file.
    auto r = ini("[pgbouncer]\nlisten_port = 1\npool_mode = session\nlisten_port = 2\n"
                 "[databases]\napp = host=a dbname=one\nother = host=b\napp = host=c dbname=two\n"
                 "[pgbouncer]\nLISTEN_PORT = 3\n");
    ASSERT_TRUE(r.ok()) << all_errors(r);
    EXPECT_EQ(r.cfg->sluice.listen_port, 3);
    EXPECT_EQ(r.cfg->sluice.pool_mode_, pool_mode::session);
    EXPECT_EQ(r.cfg->databases.at("app").dbname, "two");
    EXPECT_EQ(r.cfg->databases.at("app").host, std::vector<std::string>{"c"});
    EXPECT_EQ(r.cfg->databases.size(), 2u);
    // An error in a replaced value is not reported: it never takes effect.
    EXPECT_TRUE(ini("[pgbouncer]\nlisten_port = 99999\nlisten_port = 6432\n").ok());
}

TEST(ConfigIni, IncludeReadsAFileInPlace) {
    namespace fs = std::filesystem;
    fs::path dir = fs::temp_directory_path() / ("sluice-include-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    auto write = [&](const char* name, const std::string& text) {
        std::ofstream(dir / name) << text;
        return (dir / name).string();
    };
    std::string dbs = write("databases.ini", "[databases]\napp = host=db1 dbname=app\n");
    std::string more = write("more.ini", "listen_port = 7000\n");  // the section goes on
    std::string bad = write("bad.ini", "[pgbouncer]\n\nlisten_port = 99999\n");
    auto r = ini("[pgbouncer]\npool_mode = transaction\n%include " + more + "\n%include " +
                 dbs + "\n[pgbouncer]\nlisten_port = 7001\n");
    ASSERT_TRUE(r.ok()) << all_errors(r);
    EXPECT_EQ(r.cfg->sluice.listen_port, 7001);  // after the include: the last one wins
    EXPECT_EQ(r.cfg->databases.at("app").host, std::vector<std::string>{"db1"});
    // An error in an included file names that file, line and column.
    auto e = ini("[pgbouncer]\n%include " + bad + "\n");
    ASSERT_EQ(e.errors.size(), 1u) << all_errors(e);
    EXPECT_EQ(e.errors[0].file, bad);
    EXPECT_EQ(e.errors[0].line, 3);
    EXPECT_EQ(e.errors[0].column, 15);
    expect_one_error(ini("[pgbouncer]\n%include " + (dir / "missing.ini").string() + "\n"), 2, 1,
                     "cannot open");
    expect_one_error(ini("%include\n"), 1, 1, "needs a file name");
    expect_one_error(ini("%include /dev/zero\n"), 1, 1, "not a regular file");
    expect_one_error(ini("%includes x\n"), 1, 1, "unknown directive %includes");
    std::string loop = (dir / "loop.ini").string();
    write("loop.ini", "%include " + loop + "\n");
    auto l = ini("%include " + loop + "\n");
    ASSERT_FALSE(l.ok());
    EXPECT_NE(all_errors(l).find("nested more than 10 deep"), std::string::npos) << all_errors(l);
    fs::remove_all(dir);
}

TEST(ConfigIni, NoHostMeansTheUnixSocketDirectory) {
    auto r = ini("[pgbouncer]\nunix_socket_dir = /var/run/postgresql\n"
                 "[databases]\nlocal = dbname=app\ntcp = host=127.0.0.1 dbname=app\n");
    ASSERT_TRUE(r.ok()) << all_errors(r);
    EXPECT_EQ(r.cfg->databases.at("local").host, std::vector<std::string>{"/var/run/postgresql"});
    EXPECT_EQ(r.cfg->databases.at("tcp").host, std::vector<std::string>{"127.0.0.1"});
    auto d = ini("[databases]\nlocal = dbname=app\n");  // PgBouncer's default: /tmp
    ASSERT_TRUE(d.ok()) << all_errors(d);
    EXPECT_EQ(d.cfg->databases.at("local").host, std::vector<std::string>{"/tmp"});
    auto y = yaml("databases:\n  local: {dbname: app}\n");
    ASSERT_TRUE(y.ok()) << all_errors(y);
    EXPECT_EQ(y.cfg->databases.at("local").host, std::vector<std::string>{"/tmp"});
    expect_one_error(ini("[pgbouncer]\nunix_socket_dir =\n[databases]\nlocal = dbname=app\n"),
                     4, 1, "has no host and unix_socket_dir is empty");
}

TEST(ConfigErrors, DuplicateYamlKey) {
    expect_one_error(yaml("sluice:\n  listen_port: 1\n  listen_port: 2\n"), 3, 3,
                     "duplicate key 'listen_port' (first given at line 2)");
}

TEST(ConfigErrors, AllMistakesAreReported) {
    auto r = yaml(
        "sluice:\n"
        "  listen_port: 70000\n"  // 2: out of range
        "  pool_mode: transaction\n"
        "  max_clients: 10\n"  // 4: unknown key
        "databases:\n"
        "  app:\n"
        "    pool_mode: sessions\n"  // 7: bad pool mode
        "    port: 5432\n");
    EXPECT_FALSE(r.cfg);
    ASSERT_EQ(r.errors.size(), 3u) << all_errors(r);
    EXPECT_EQ(r.errors[0].line, 2);
    EXPECT_EQ(r.errors[1].line, 4);
    EXPECT_EQ(r.errors[2].line, 7);
    EXPECT_EQ(r.errors[0].to_string().rfind("/etc/sluice/sluice.yaml:2:16: listen_port: ", 0), 0u)
        << r.errors[0].to_string();
    EXPECT_EQ(r.errors[1].to_string().rfind("/etc/sluice/sluice.yaml:4:3: ", 0), 0u);
    EXPECT_EQ(r.errors[2].to_string().rfind("/etc/sluice/sluice.yaml:7:16: ", 0), 0u);
}

TEST(ConfigErrors, MissingFileIsOneError) {
    auto r = load_file("/nonexistent/sluice.yaml");
    EXPECT_FALSE(r.cfg);
    ASSERT_EQ(r.errors.size(), 1u);
    EXPECT_EQ(r.errors[0].line, 0);
    EXPECT_EQ(r.errors[0].to_string().rfind("/nonexistent/sluice.yaml: ", 0), 0u)
        << r.errors[0].to_string();
}

TEST(ConfigErrors, RedisUrlPasswordIsNotEchoed) {
    auto r = yaml("rate_limits:\n  redis_url: 'redis://:hunter2@/0'\n");
    ASSERT_EQ(r.errors.size(), 1u) << all_errors(r);
    EXPECT_EQ(r.errors[0].message.find("hunter2"), std::string::npos);
}

// sluice --convert: the YAML it prints loads into the same model as the ini it came from.
TEST(Convert, IniToYamlRoundTripsEverySetting) {
    auto from_ini = ini(
        "[databases]\n"
        "app = host=10.0.0.1,10.0.0.2 port=6000 dbname=appdb pool_mode=transaction reserve_pool=2 "
        "target_session_attrs=read-write max_replica_lag=2.5 application_name='a b'\n"
        "local = dbname=postgres user=svc password='p\"w'\n"
        "* = host=/var/run/postgresql\n"
        "[users]\n"
        "bob = pool_size=3 query_timeout=0.25 pool_mode=statement\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1, ::1\n"
        "unix_socket_mode = 0700\n"
        "server_reset_query = DISCARD ALL; SELECT '\\\\'\n"
        "admin_users = admin, ops\n"
        "dns_max_ttl = 15\n"
        "syslog = 1\n"
        "query_wait_timeout = 30.5\n");
    ASSERT_TRUE(from_ini.ok()) << all_errors(from_ini);
    const std::string text = to_yaml(*from_ini.cfg, "pgbouncer.ini");
    auto from_yaml = yaml(text);
    ASSERT_TRUE(from_yaml.ok()) << all_errors(from_yaml) << text;
    EXPECT_EQ(from_yaml.cfg->sluice, from_ini.cfg->sluice) << text;
    EXPECT_EQ(from_yaml.cfg->databases, from_ini.cfg->databases) << text;
    EXPECT_EQ(from_yaml.cfg->users, from_ini.cfg->users) << text;
    // A no-op at its default is still named, so the start-up warning stays the same.
    EXPECT_EQ(from_yaml.cfg->no_op_settings, from_ini.cfg->no_op_settings) << text;
    EXPECT_NE(text.find("  reserve_pool_size: \"2\"\n"), std::string::npos) << text;
    EXPECT_EQ(text.find("reserve_pool:"), std::string::npos) << text;  // the old name is not kept
}

}  // namespace
}  // namespace sluice::config
