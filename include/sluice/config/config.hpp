#pragma once
// The configuration model. YAML (native) and PgBouncer .ini files are both read into this
// one model (see loader.hpp). Setting names and defaults are PgBouncer's (see
// shared/reference/pgbouncer-compat.md); durations are held as std::chrono values.
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace sluice::config {

using duration = std::chrono::microseconds;  // 0 = disabled, as PgBouncer's "0 seconds"

enum class pool_mode { session, transaction, statement };
enum class auth_type { trust, plain, md5, scram_sha_256, hba, cert, any };

const char* to_string(pool_mode m);
const char* to_string(auth_type a);  // PgBouncer's spelling: "scram-sha-256", ...

// [pgbouncer] section, named `sluice:` in YAML.
struct general {
    std::vector<std::string> listen_addr{"127.0.0.1"};  // "*" = all; empty = unix socket only
    int listen_port = 6432;
    std::string unix_socket_dir = "/tmp";  // "" disables
    int unix_socket_mode = 0777;
    int listen_backlog = 128;
    bool so_reuseport = false;
    int workers = 0;  // event-loop threads; 0 = one per core

    pool_mode pool_mode_ = pool_mode::session;
    int default_pool_size = 20;
    int min_pool_size = 0;
    int reserve_pool_size = 0;
    duration reserve_pool_timeout = std::chrono::seconds(5);
    int max_client_conn = 100;
    int max_db_connections = 0;
    int max_db_client_connections = 0;
    int max_user_connections = 0;
    int max_user_client_connections = 0;
    // 0: the most recently used idle server first (LIFO: warm caches, the rest can time
    // out); 1: the longest idle first, so that load spreads evenly over the servers.
    bool server_round_robin = false;
    int max_prepared_statements = 200;
    std::vector<std::string> track_extra_parameters{"IntervalStyle"};
    std::vector<std::string> ignore_startup_parameters;
    std::string server_reset_query = "DISCARD ALL";
    bool server_reset_query_always = false;
    std::string server_check_query;  // empty = empty query
    duration server_check_delay = std::chrono::seconds(30);
    // Session mode: a server marked by RECONNECT/RELOAD is closed, with its client, once
    // between transactions (0: when the client leaves).
    bool server_fast_close = false;
    bool application_name_add_host = false;   // "app - addr:port" sent to the server
    duration autodb_idle_timeout = std::chrono::seconds(3600);
    duration pool_idle_timeout = duration{0};
    duration stats_period = std::chrono::seconds(60);
    int scram_iterations = 4096;
    duration query_wait_notify = std::chrono::seconds(5);  // a NOTICE to a client queued so long
    std::int64_t max_packet_size = 2147483647;
    // Sluice's own: the largest client message the pooler holds whole (a named Parse in
    // transaction/statement mode, whose text it keeps). Everything else is streamed.
    std::int64_t max_held_message_size = 16 << 20;
    int pkt_buf = 4096;  // no effect (settings.cpp)

    duration server_lifetime = std::chrono::seconds(3600);
    duration server_idle_timeout = std::chrono::seconds(600);
    duration server_connect_timeout = std::chrono::seconds(15);
    duration server_login_retry = std::chrono::seconds(15);
    duration client_login_timeout = std::chrono::seconds(60);
    duration query_timeout = duration{0};
    duration query_wait_timeout = std::chrono::seconds(120);
    duration cancel_wait_timeout = std::chrono::seconds(10);
    duration client_idle_timeout = duration{0};
    duration idle_transaction_timeout = duration{0};
    duration transaction_timeout = duration{0};
    duration suspend_timeout = std::chrono::seconds(10);

    auth_type auth_type_ = auth_type::md5;
    std::string auth_file;  // resolved relative to the config file
    std::string auth_hba_file;
    std::string auth_user;
    std::string auth_query =
        "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
        "FROM pg_authid WHERE rolname=$1 AND rolcanlogin";
    std::string auth_dbname;
    std::string auth_ident_file;        // pg_ident.conf-style maps for hba peer/cert
    duration auth_cache_ttl = std::chrono::seconds(10);  // Sluice's own: auth_query cache

    std::string client_tls_sslmode = "disable";
    std::string client_tls_key_file, client_tls_cert_file, client_tls_ca_file;
    std::string client_tls_protocols = "secure", client_tls_ciphers = "default";
    std::string client_tls13_ciphers, client_tls_ecdhcurve = "auto",
        client_tls_dheparams = "auto";
    std::string server_tls_sslmode = "prefer";
    std::string server_tls_ca_file, server_tls_key_file, server_tls_cert_file;
    std::string server_tls_protocols = "secure", server_tls_ciphers = "default";
    std::string server_tls13_ciphers;

    std::string logfile, pidfile;
    // syslog = 1: log lines also go to syslog(3) with this ident and facility. The ident
    // defaults to "sluice" (PgBouncer's is "pgbouncer"): the log names the program.
    bool syslog = false;
    std::string syslog_ident = "sluice", syslog_facility = "daemon";
    std::string user;  // the OS user to switch to after binding (-u overrides it)
    std::string log_format = "text";  // Sluice's own: text, or json (one object per line)
    // log_pooler_errors: the fatal errors Sluice itself sends to clients are logged.
    bool log_connections = true, log_disconnections = true, log_pooler_errors = true,
         log_stats = true;
    int verbose = 0;

    std::vector<std::string> admin_users, stats_users;

    bool tcp_keepalive = true;
    int tcp_keepcnt = 0, tcp_keepidle = 0, tcp_keepintvl = 0, tcp_user_timeout = 0;

    // PgBouncer settings that have no effect in Sluice (the no-op list in settings.cpp says
    // why each is harmless). Kept so that SHOW CONFIG and SET show what the file said.
    duration dns_max_ttl = std::chrono::seconds(15);
    duration dns_nxdomain_ttl = std::chrono::seconds(15);
    duration dns_zone_check_period = duration{0};
    int tcp_defer_accept = 0;
    int sbuf_loopcnt = 5;
    std::string service_name = "pgbouncer", job_name = "pgbouncer";

    std::string metrics_listen;  // "host:port"; empty = off

    bool operator==(const general&) const = default;
};

// One [databases] entry. Optional fields fall back to the general section.
struct database {
    std::string name;                            // the name clients connect to; "*" = fallback
    // A path starting with '/' = a Unix socket directory. None given: the loader puts
    // unix_socket_dir here (PgBouncer's rule: no host = the Unix socket).
    std::vector<std::string> host;
    int port = 5432;
    std::string dbname;  // empty = same as name
    std::string user;    // forced user; empty = client's user
    std::string password;
    std::string auth_user;
    std::string auth_query, auth_dbname;  // empty = the general section's
    std::optional<int> pool_size, min_pool_size, reserve_pool_size, max_db_connections,
        max_db_client_connections;
    std::optional<pool_mode> mode;
    std::optional<duration> server_lifetime;
    std::string client_encoding, datestyle, timezone, application_name;
    std::string connect_query;  // run on each new server connection (errors only logged)
    // Host lists (pool/host_state.hpp): which host a new server connection goes to.
    std::string load_balance_hosts = "round-robin";  // or "disable": in the order given
    std::string target_session_attrs = "any";        // libpq's names
    std::optional<duration> max_replica_lag;  // prefer-standby: skip a standby lagging more

    bool operator==(const database&) const = default;
};

// One [users] entry.
struct user {
    std::string name;
    std::optional<int> pool_size, reserve_pool_size, max_user_connections,
        max_user_client_connections;
    std::optional<pool_mode> mode;
    std::optional<duration> query_timeout, idle_transaction_timeout, client_idle_timeout;

    bool operator==(const user&) const = default;
};

enum class rl_action { reject, delay };
enum class rl_backend { local, redis };
enum class rl_failure_policy { local, open, closed };

const char* to_string(rl_action a);
const char* to_string(rl_backend b);
const char* to_string(rl_failure_policy p);

// One limit set (rate_limits.default or a tenant override). 0 = unlimited.
struct rate_limit {
    double queries_per_second = 0;
    double query_burst = 0;
    double transactions_per_second = 0;
    double transaction_burst = 0;
    double connections_per_second = 0;
    double connection_burst = 0;
    int max_connections = 0;
    rl_action action = rl_action::reject;
    duration max_delay = std::chrono::seconds(1);
    bool shadow = false;

    bool operator==(const rate_limit&) const = default;
};

struct rate_limits {
    bool enabled = false;  // true when the section is present with any limit
    rl_backend backend = rl_backend::local;
    std::string redis_url;            // redis://[:password@]host:port/db or rediss://
    // Redis behind Sentinel: the master's address is asked of these sentinels ("host:port"
    // each, in order) at every connect, and redis_url then gives only the credentials, the
    // db and TLS (its host must be the master's name). Empty = redis_url's address.
    std::vector<std::string> redis_sentinels;
    std::string redis_sentinel_master;    // the name the sentinels monitor it by
    std::string redis_sentinel_password;  // AUTH to the sentinels; empty = none
    std::string tenant_key = "user";  // user | database | application_name | startup:<param>
    rl_failure_policy on_redis_failure = rl_failure_policy::local;
    int expected_instances = 1;
    duration redis_timeout = std::chrono::milliseconds(50);
    int lease_size = 0;  // tokens leased per Redis round trip; 0 = derived from the rate
    rate_limit defaults;
    std::map<std::string, rate_limit> tenants;  // each starts as a copy of `defaults`

    bool operator==(const rate_limits&) const = default;
};

struct config {
    std::string path;  // file it was read from
    general sluice;
    std::map<std::string, database> databases;
    std::map<std::string, user> users;
    rate_limits limits;
    // Settings the file gives that have no effect in Sluice, in file order (each once):
    // start-up and RELOAD name them in one warning (see no_op_warning in settings.hpp).
    std::vector<std::string> no_op_settings;

    // Effective values for a (database, user) pair, PgBouncer's precedence: user, then
    // database, then the general section.
    pool_mode mode_for(const database* db, const user* u) const;
    int pool_size_for(const database* db, const user* u) const;
    const database* find_database(const std::string& name) const;  // falls back to "*"
    const user* find_user(const std::string& name) const;

    // Compares every setting (path included); a reload uses it to tell what changed.
    bool operator==(const config&) const = default;
};

}  // namespace sluice::config
