// The settings table (see settings.hpp): every setting of the sluice/[pgbouncer], databases
// and users sections with its status. The loader reads values through it (loader.cpp,
// where setting::set is defined beside the value converters), SHOW CONFIG and SET use it.
//
// Adding a PgBouncer setting: implement it (a member in config.hpp, an entry here, the code
// that reads it, a test), or list it as refused with a note saying what to do instead. A
// no-op needs a reason why ignoring it is harmless, and a line in the README's "Settings
// with no effect"; nothing about authentication, TLS or access may be one.
#include "sluice/config/settings.hpp"

#include <algorithm>
#include <cstdio>

namespace sluice::config {

const char* to_string(section s) {
    switch (s) {
        case section::general:
            return "sluice";
        case section::database:
            return "databases";
        case section::user:
            return "users";
    }
    return "?";
}

const char* to_string(support s) {
    switch (s) {
        case support::implemented:
            return "implemented";
        case support::no_op:
            return "no-op";
        case support::refused:
            return "refused";
    }
    return "?";
}

namespace {

template <class S>
constexpr section section_of() {
    if constexpr (std::is_same_v<S, general>)
        return section::general;
    else if constexpr (std::is_same_v<S, database>)
        return section::database;
    else
        return section::user;
}

// An entry under construction: imp("name", &general::member).range(1, 65535).restart().
struct def : setting {
    def& range(std::int64_t lo, std::int64_t hi) {
        min = lo;
        max = hi;
        return *this;
    }
    def& at_least(std::int64_t lo) {
        min = lo;
        return *this;
    }
    def& restart() {
        changeable = false;
        return *this;
    }
    def& as(value_format f) {
        format = f;
        return *this;
    }
    def& one_of(const char* words) {
        format = value_format::choice;
        choices = words;
        return *this;
    }
    // Sluice always behaves as this setting's default; another value is refused with `why`.
    def& only_default(const char* why) {
        default_only = true;
        note = why;
        return *this;
    }
    def& doc(const char* what) {
        setting::doc = what;
        return *this;
    }
    def& alias(const char* of) {
        alias_of = of;
        return *this;
    }
};

template <class S, class M>
def imp(const char* name, M S::*member) {
    def e;
    e.name = name;
    e.where = section_of<S>();
    e.status = support::implemented;
    e.member = member;
    return e;
}

template <class S, class M>
def no_op(const char* name, M S::*member, const char* why_harmless) {
    def e = imp(name, member);
    e.status = support::no_op;
    e.note = why_harmless;
    return e;
}

def refused(section where, const char* name, const char* why) {
    def e;
    e.name = name;
    e.where = where;
    e.status = support::refused;
    e.note = why;
    return e;
}

constexpr const char* sslmodes = "disable|allow|prefer|require|verify-ca|verify-full";

const char* const no_dns_cache =
    "Sluice keeps no DNS cache: it resolves a host name afresh through the system resolver "
    "for every new server connection, so there is no cached answer to age";

std::vector<setting> build_table() {
    using g = general;
    using d = database;
    using u = user;
    constexpr std::int64_t i32 = std::numeric_limits<std::int32_t>::max();
    const auto gen = section::general;
    return {
        // --- sluice: / [pgbouncer] -------------------------------------------------------
        imp("listen_addr", &g::listen_addr)
            .doc("Addresses to listen on for TCP clients, comma-separated; * is every IPv4 and "
                 "IPv6 address, empty is the Unix socket only")
            .restart(),
        imp("listen_port", &g::listen_port)
            .doc("TCP port, and the number in the Unix socket's name (.s.PGSQL.PORT)")
            .range(1, 65535)
            .restart(),
        imp("unix_socket_dir", &g::unix_socket_dir)
            .doc("Directory of the Unix socket; empty turns it off. Also where an entry without "
                 "host reaches PostgreSQL")
            .restart(),
        imp("unix_socket_mode", &g::unix_socket_mode)
            .doc("File mode of the Unix socket")
            .range(0, 07777)
            .as(value_format::octal)
            .restart(),
        refused(gen, "unix_socket_group",
                "Sluice does not change the group of its Unix socket; make unix_socket_dir "
                "a directory of the wanted group, or use unix_socket_mode"),
        imp("user", &g::user)
            .doc("OS user to switch to once the listeners are bound (the -u option wins)")
            .restart(),
        imp("listen_backlog", &g::listen_backlog)
            .doc("Backlog of the listening sockets (connections not yet accepted)")
            .at_least(1)
            .restart(),
        imp("so_reuseport", &g::so_reuseport)
            .doc("Set SO_REUSEPORT on the listeners, so that several Sluice processes can share a "
                 "port")
            .restart(),
        imp("workers", &g::workers)
            .doc("Event-loop threads; 0 is half the usable cores, at least one")
            .range(0, 1024)
            .restart(),

        imp("pool_mode", &g::pool_mode_)
            .doc("When a server goes back to the pool: session (client leaves), transaction "
                 "(transaction ends) or statement (statement ends)"),
        imp("default_pool_size", &g::default_pool_size)
            .doc("Server connections per (database, user) pool"),
        imp("min_pool_size", &g::min_pool_size)
            .doc("Server connections a pool keeps open even when idle"),
        imp("reserve_pool_size", &g::reserve_pool_size)
            .doc("Extra server connections a pool may open for clients that waited "
                 "reserve_pool_timeout"),
        imp("reserve_pool_timeout", &g::reserve_pool_timeout)
            .doc("How long a client waits before the reserve pool may serve it, in seconds"),
        imp("max_client_conn", &g::max_client_conn)
            .doc("Client connections Sluice accepts in all; more are refused with 53300")
            .at_least(1),
        imp("max_db_connections", &g::max_db_connections)
            .doc("Server connections per database across its pools; 0 is no limit"),
        imp("max_db_client_connections", &g::max_db_client_connections)
            .doc("Client connections per database; 0 is no limit"),
        imp("max_user_connections", &g::max_user_connections)
            .doc("Server connections per user across its pools; 0 is no limit"),
        imp("max_user_client_connections", &g::max_user_client_connections)
            .doc("Client connections per user; 0 is no limit"),
        imp("server_round_robin", &g::server_round_robin)
            .doc("0: reuse the most recently used idle server; 1: the longest idle, to spread load "
                 "evenly"),
        imp("max_prepared_statements", &g::max_prepared_statements)
            .doc("Protocol-level prepared statements tracked per server in transaction and "
                 "statement mode; 0 turns the tracking off"),
        refused(gen, "max_prepared_statements_cache",
                "not a Sluice setting; max_prepared_statements bounds the prepared "
                "statements kept per server connection"),
        imp("track_extra_parameters", &g::track_extra_parameters)
            .doc("Startup parameters, besides PostgreSQL's reported ones, that Sluice keeps per "
                 "client and sets on each server it lends"),
        imp("ignore_startup_parameters", &g::ignore_startup_parameters)
            .doc("Startup parameters clients may send that Sluice drops; any other unknown one is "
                 "refused"),
        refused(gen, "disable_pqexec",
                "Sluice cannot refuse the simple query protocol; remove the setting, or "
                "keep a PgBouncer where this protection is needed"),
        imp("server_reset_query", &g::server_reset_query)
            .doc("Query run on a server when its session-mode client leaves"),
        imp("server_reset_query_always", &g::server_reset_query_always)
            .doc("Run server_reset_query in transaction and statement mode too"),
        imp("server_check_query", &g::server_check_query)
            .doc("Query that checks a server idle longer than server_check_delay before it is "
                 "lent; empty is an empty query"),
        imp("server_check_delay", &g::server_check_delay)
            .doc("How long a server may be idle before it is checked again, in seconds"),
        imp("server_fast_close", &g::server_fast_close)
            .doc("Session mode: close a server marked by RECONNECT or RELOAD, with its client, "
                 "once between transactions"),
        imp("application_name_add_host", &g::application_name_add_host)
            .doc("Append the client's address and port to application_name at login"),
        imp("autodb_idle_timeout", &g::autodb_idle_timeout)
            .doc("How long a pool of a database made through the * entry lives with no client, in "
                 "seconds"),
        imp("pool_idle_timeout", &g::pool_idle_timeout)
            .doc("How long any other pool lives with no client and no server, in seconds; 0 is for "
                 "ever"),
        imp("stats_period", &g::stats_period)
            .doc("Period of SHOW STATS averages and of the stats: log line, in seconds"),
        imp("scram_iterations", &g::scram_iterations)
            .doc("PBKDF2 iterations of the SCRAM verifiers Sluice derives from plaintext passwords")
            .at_least(1),
        imp("query_wait_notify", &g::query_wait_notify)
            .doc("A client queued for a server this long gets one NOTICE saying so, in seconds; 0 "
                 "never"),
        // A PostgreSQL message length is an int32 that counts itself.
        imp("max_packet_size", &g::max_packet_size)
            .doc("Largest protocol message accepted from a client or server, in bytes")
            .range(5, i32),
        no_op("pkt_buf", &g::pkt_buf,
              "PgBouncer's fixed I/O buffer size; Sluice sizes its buffers per message, "
              "bounded by max_packet_size and max_held_message_size")
            .range(512, 1 << 30)
            .restart(),
        no_op("sbuf_loopcnt", &g::sbuf_loopcnt,
              "a fairness limit for PgBouncer's single event loop; Sluice returns to its "
              "event loop after every read, so one busy connection cannot starve others"),
        imp("max_held_message_size", &g::max_held_message_size)
            .doc("Largest client message Sluice holds whole (a named Parse in transaction mode); "
                 "larger ones are streamed or refused")
            .range(1024, i32),

        imp("server_lifetime", &g::server_lifetime)
            .doc("A server older than this is closed when it is next idle, in seconds; 0 is no "
                 "limit"),
        imp("server_idle_timeout", &g::server_idle_timeout)
            .doc("An idle server is closed after this long, in seconds; 0 never"),
        imp("server_connect_timeout", &g::server_connect_timeout)
            .doc(
                "Time for a server connection and login (and for each internal query), in seconds"),
        imp("server_login_retry", &g::server_login_retry)
            .doc("How long a host that failed is left alone before it is tried again, in seconds"),
        imp("client_login_timeout", &g::client_login_timeout)
            .doc("A client that has not logged in within this is closed, in seconds; 0 never"),
        imp("query_timeout", &g::query_timeout)
            .doc("A query running longer is cancelled, in seconds; 0 never"),
        imp("query_wait_timeout", &g::query_wait_timeout)
            .doc(
                "A client waiting longer for a server gets an error, in seconds; 0 waits for ever"),
        imp("cancel_wait_timeout", &g::cancel_wait_timeout)
            .doc("How long a cancel request may take to reach its server, in seconds"),
        imp("client_idle_timeout", &g::client_idle_timeout)
            .doc("A client idle longer is closed, in seconds; 0 never"),
        imp("idle_transaction_timeout", &g::idle_transaction_timeout)
            .doc("A client idle inside a transaction longer is closed, in seconds; 0 never"),
        imp("transaction_timeout", &g::transaction_timeout)
            .doc(
                "A transaction lasting longer is ended by closing its client, in seconds; 0 never"),
        imp("suspend_timeout", &g::suspend_timeout)
            .doc("How long SUSPEND waits for buffers to drain, in seconds"),

        imp("auth_type", &g::auth_type_)
            .doc("How clients log in: trust, plain, md5, scram-sha-256, hba, cert or any"),
        imp("auth_file", &g::auth_file)
            .doc("User names and passwords or secrets, in PgBouncer's userlist.txt format"),
        imp("auth_hba_file", &g::auth_hba_file)
            .doc("pg_hba.conf-format rules used when auth_type is hba"),
        imp("auth_ident_file", &g::auth_ident_file)
            .doc("pg_ident.conf-format maps for the peer and cert methods"),
        imp("auth_user", &g::auth_user)
            .doc("User whose server connection looks up users not in auth_file with auth_query"),
        imp("auth_query", &g::auth_query)
            .doc("Query that returns (name, secret) for a user not in auth_file; $1 is the user "
                 "name"),
        imp("auth_dbname", &g::auth_dbname)
            .doc("Database the auth_query runs in; empty is the client's database"),
        imp("auth_cache_ttl", &g::auth_cache_ttl)
            .doc("How long an auth_query answer is reused, in seconds"),

        imp("client_tls_sslmode", &g::client_tls_sslmode)
            .doc("TLS towards clients, in libpq's six modes (disable ... verify-full)")
            .one_of(sslmodes),
        imp("client_tls_key_file", &g::client_tls_key_file)
            .doc("Private key of the certificate Sluice presents to clients"),
        imp("client_tls_cert_file", &g::client_tls_cert_file)
            .doc("Certificate Sluice presents to clients"),
        imp("client_tls_ca_file", &g::client_tls_ca_file)
            .doc("CA certificates that client certificates are verified against"),
        imp("client_tls_protocols", &g::client_tls_protocols)
            .doc("TLS versions allowed towards clients (secure, all, or a list such as "
                 "tlsv1.2,tlsv1.3)"),
        imp("client_tls_ciphers", &g::client_tls_ciphers)
            .doc("TLS 1.2 cipher list towards clients (OpenSSL syntax)"),
        imp("client_tls13_ciphers", &g::client_tls13_ciphers)
            .doc("TLS 1.3 cipher suites towards clients; empty is OpenSSL's default"),
        imp("client_tls_ecdhcurve", &g::client_tls_ecdhcurve)
            .doc("Elliptic curve for ECDH key exchange with clients; auto picks one"),
        imp("client_tls_dheparams", &g::client_tls_dheparams)
            .doc("Diffie-Hellman parameters for DHE ciphers with clients: auto or none (legacy "
                 "1024-bit groups are refused)"),
        imp("server_tls_sslmode", &g::server_tls_sslmode)
            .doc("TLS towards PostgreSQL, in libpq's six modes; verify-full checks each host name")
            .one_of(sslmodes),
        imp("server_tls_ca_file", &g::server_tls_ca_file)
            .doc("CA certificates that PostgreSQL's certificate is verified against"),
        imp("server_tls_key_file", &g::server_tls_key_file)
            .doc("Private key of the client certificate Sluice presents to PostgreSQL"),
        imp("server_tls_cert_file", &g::server_tls_cert_file)
            .doc("Client certificate Sluice presents to PostgreSQL"),
        imp("server_tls_protocols", &g::server_tls_protocols)
            .doc("TLS versions allowed towards PostgreSQL"),
        imp("server_tls_ciphers", &g::server_tls_ciphers)
            .doc("TLS 1.2 cipher list towards PostgreSQL (OpenSSL syntax)"),
        imp("server_tls13_ciphers", &g::server_tls13_ciphers)
            .doc("TLS 1.3 cipher suites towards PostgreSQL; empty is OpenSSL's default"),

        imp("logfile", &g::logfile)
            .doc("File the log is also written to; SIGHUP opens it again (logrotate)")
            .restart(),
        imp("pidfile", &g::pidfile)
            .doc("File holding the process id; needed by -d, and a running pid in it stops a "
                 "second start")
            .restart(),
        imp("log_format", &g::log_format)
            .doc("Sluice's own: text, or json (one object per line, for log shippers)")
            .one_of("text|json")
            .restart(),
        imp("syslog", &g::syslog).doc("Also send the log to syslog(3)").restart(),
        imp("syslog_ident", &g::syslog_ident).doc("Program name in syslog lines").restart(),
        imp("syslog_facility", &g::syslog_facility)
            .doc("Syslog facility: auth, authpriv, daemon, user, local0 to local7")
            .one_of("auth|authpriv|daemon|user|local0|local1|local2|local3|local4|local5|"
                    "local6|local7")
            .restart(),
        imp("log_connections", &g::log_connections)
            .doc("Log each client login and each new server connection"),
        imp("log_disconnections", &g::log_disconnections)
            .doc("Log each closed client and server connection, with the reason"),
        imp("log_pooler_errors", &g::log_pooler_errors)
            .doc("Log the fatal errors Sluice itself sends to clients"),
        imp("log_stats", &g::log_stats).doc("Log the stats: line every stats_period"),
        imp("verbose", &g::verbose).doc("More logging: 1 debug, 2 trace (as -v)"),

        imp("admin_users", &g::admin_users).doc("Users who may run every console command"),
        imp("stats_users", &g::stats_users)
            .doc("Users who may run the console's read-only SHOW commands"),
        refused(gen, "stats_users_prefix", "not a Sluice setting; list the users in stats_users"),

        imp("tcp_keepalive", &g::tcp_keepalive)
            .doc("Turn TCP keepalive on for client and server sockets"),
        imp("tcp_keepcnt", &g::tcp_keepcnt)
            .doc("TCP_KEEPCNT: keepalive probes before a connection is dropped; 0 is the system "
                 "default"),
        imp("tcp_keepidle", &g::tcp_keepidle)
            .doc("TCP_KEEPIDLE: idle seconds before the first probe; 0 is the system default"),
        imp("tcp_keepintvl", &g::tcp_keepintvl)
            .doc("TCP_KEEPINTVL: seconds between probes; 0 is the system default"),
        imp("tcp_user_timeout", &g::tcp_user_timeout)
            .doc("TCP_USER_TIMEOUT: milliseconds unacknowledged data may wait; 0 is the system "
                 "default"),
        no_op("tcp_defer_accept", &g::tcp_defer_accept,
              "an accept-latency optimisation; Sluice accepts at once, and "
              "client_login_timeout still ends a client that sends nothing")
            .restart(),
        refused(gen, "tcp_socket_buffer",
                "Sluice leaves socket buffer sizes to the kernel (net.ipv4.tcp_rmem and "
                "tcp_wmem tune them)"),

        no_op("dns_max_ttl", &g::dns_max_ttl, no_dns_cache),
        no_op("dns_nxdomain_ttl", &g::dns_nxdomain_ttl, no_dns_cache),
        no_op("dns_zone_check_period", &g::dns_zone_check_period,
              "Sluice holds no resolved addresses to re-check: every new server "
              "connection resolves the host name afresh"),
        refused(gen, "resolv_conf",
                "Sluice resolves host names through the system resolver "
                "(/etc/resolv.conf, /etc/nsswitch.conf) and cannot use other name "
                "servers; ignoring this could send connections to other addresses"),

        refused(gen, "conffile",
                "the configuration file is the one named on the command line, and RELOAD "
                "reads it again"),
        no_op("service_name", &g::service_name,
              "it names a Windows service; Sluice does not run as one (PgBouncer too "
              "ignores it elsewhere)"),
        no_op("job_name", &g::job_name,
              "PgBouncer's old name for service_name, which names a Windows service"),
        refused(gen, "peer_id",
                "Sluice has no peering ([peers]): a cancel request must reach the Sluice "
                "process that holds the connection"),

        imp("metrics_listen", &g::metrics_listen)
            .doc("Sluice's own: host:port of the Prometheus /metrics endpoint; empty turns it off")
            .as(value_format::host_port)
            .restart(),

        // --- databases: name = connection string / mapping ---------------------------------
        imp("dbname", &d::dbname).doc("Database name on the server; empty is the entry's own name"),
        imp("host", &d::host)
            .doc("Host names, addresses, or a Unix socket directory (starting with /), "
                 "comma-separated; none is unix_socket_dir")
            .as(value_format::host_list),
        imp("port", &d::port).doc("Server port").range(1, 65535),
        imp("user", &d::user)
            .doc("Force this user for every client of the entry (its password from password or "
                 "auth_file)"),
        imp("password", &d::password).doc("Password for the forced user"),
        imp("auth_user", &d::auth_user).doc("auth_user for this database"),
        imp("auth_query", &d::auth_query).doc("auth_query for this database"),
        imp("auth_dbname", &d::auth_dbname).doc("auth_dbname for this database"),
        imp("pool_size", &d::pool_size).doc("default_pool_size for this database"),
        imp("min_pool_size", &d::min_pool_size).doc("min_pool_size for this database"),
        imp("reserve_pool_size", &d::reserve_pool_size).doc("reserve_pool_size for this database"),
        imp("reserve_pool", &d::reserve_pool_size)
            .doc("Old name of reserve_pool_size")
            .alias("reserve_pool_size"),
        imp("connect_query", &d::connect_query)
            .doc("Query run on each new server connection before a client gets it; errors are "
                 "logged"),
        imp("pool_mode", &d::mode).doc("pool_mode for this database"),
        imp("load_balance_hosts", &d::load_balance_hosts)
            .doc("round-robin: alternate the hosts of the list; disable: try them in the order "
                 "given")
            .one_of("round-robin|disable"),
        imp("target_session_attrs", &d::target_session_attrs)
            .doc("Which server of the host list is acceptable, as libpq: any, read-write, "
                 "read-only, primary, standby, prefer-standby")
            .one_of("any|read-write|read-only|primary|standby|prefer-standby"),
        imp("max_replica_lag", &d::max_replica_lag)
            .doc("prefer-standby: a standby lagging more than this gets no new server connections, "
                 "in seconds"),
        imp("max_db_connections", &d::max_db_connections)
            .doc("max_db_connections for this database"),
        imp("max_db_client_connections", &d::max_db_client_connections)
            .doc("max_db_client_connections for this database"),
        imp("server_lifetime", &d::server_lifetime).doc("server_lifetime for this database"),
        imp("client_encoding", &d::client_encoding)
            .doc("client_encoding asked of each new server connection"),
        imp("datestyle", &d::datestyle).doc("DateStyle asked of each new server connection"),
        imp("timezone", &d::timezone).doc("TimeZone asked of each new server connection"),
        imp("application_name", &d::application_name)
            .doc("application_name of each new server connection (a client's own value is then set "
                 "over it)"),

        // --- users: name = settings ---------------------------------------------------------
        imp("pool_size", &u::pool_size).doc("Pool size for this user's pools"),
        imp("reserve_pool_size", &u::reserve_pool_size)
            .doc("reserve_pool_size for this user's pools"),
        imp("pool_mode", &u::mode).doc("pool_mode for this user"),
        imp("max_user_connections", &u::max_user_connections)
            .doc("max_user_connections for this user"),
        imp("max_user_client_connections", &u::max_user_client_connections)
            .doc("max_user_client_connections for this user"),
        imp("query_timeout", &u::query_timeout).doc("query_timeout for this user"),
        imp("idle_transaction_timeout", &u::idle_transaction_timeout)
            .doc("idle_transaction_timeout for this user"),
        imp("client_idle_timeout", &u::client_idle_timeout)
            .doc("client_idle_timeout for this user"),
    };
}

}  // namespace

std::string format_seconds(duration d) {
    auto us = d.count();
    if (us % 1000000 == 0) return std::to_string(us / 1000000);
    std::string s = std::to_string(double(us) / 1e6);
    while (!s.empty() && s.back() == '0') s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
}

const std::vector<setting>& settings() {
    static const std::vector<setting> table = build_table();
    return table;
}

const setting* find_setting(section where, std::string_view name) {
    for (const auto& s : settings())
        if (s.where == where && name == s.name) return &s;
    return nullptr;
}

bool security_related(std::string_view name) {
    static const char* const words[] = {"tls",      "ssl",         "auth",        "hba",
                                        "password", "admin_users", "stats_users", "cert",
                                        "cipher",   "key_file",    "pqexec",      "unix_socket"};
    for (const char* w : words)
        if (name.find(w) != std::string_view::npos) return true;
    return name == "user";  // the OS user to run as
}

std::string no_op_warning(const config& cfg) {
    if (cfg.no_op_settings.empty()) return {};
    std::string names;
    for (const auto& n : cfg.no_op_settings) names += (names.empty() ? "" : ", ") + n;
    return "settings with no effect in Sluice: " + names +
           " (see README \"Settings with no effect\")";
}

std::string setting::get(const general& gen) const {
    return std::visit(
        [&](auto m) -> std::string {
            using M = decltype(m);
            if constexpr (std::is_same_v<M, std::monostate>) {
                return {};
            } else {
                using T = typename member_traits<M>::value;
                if constexpr (!std::is_same_v<typename member_traits<M>::owner, general>) {
                    return {};  // a member of a database or user entry
                } else {
                    const T& v = gen.*m;
                    if constexpr (std::is_same_v<T, bool>) {
                        return v ? "1" : "0";
                    } else if constexpr (std::is_same_v<T, int> ||
                                         std::is_same_v<T, std::int64_t>) {
                        if (format == value_format::octal) {
                            char buf[32];
                            std::snprintf(buf, sizeof buf, "0%llo",
                                          static_cast<unsigned long long>(v));
                            return buf;
                        }
                        return std::to_string(v);
                    } else if constexpr (std::is_same_v<T, duration>) {
                        return format_seconds(v);
                    } else if constexpr (std::is_same_v<T, std::string>) {
                        return v;
                    } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
                        std::string out;
                        for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
                        return out;
                    } else {
                        return to_string(v);
                    }
                }
            }
        },
        member);
}

}  // namespace sluice::config

namespace sluice::config {

namespace {

struct reference_row {
    std::string name, section_name, default_value, changes, status, what, note;
};

std::vector<reference_row> reference_rows() {
    std::vector<reference_row> rows;
    const general defaults;
    for (const auto& s : settings()) {
        reference_row r;
        r.name = s.name;
        r.section_name = s.where == section::general    ? "sluice: / [pgbouncer]"
                         : s.where == section::database ? "databases entry"
                                                        : "users entry";
        if (s.status != support::refused && s.where == section::general)
            r.default_value = s.get(defaults);
        if (s.status == support::refused)
            r.changes = "-";
        else if (s.where != section::general)
            r.changes = "RELOAD";
        else
            r.changes = s.changeable ? "RELOAD, SET" : "restart";
        r.status = s.status == support::implemented && s.default_only ? "default only"
                                                                      : to_string(s.status);
        r.what = s.doc;
        r.note = s.note;
        if (*s.alias_of) r.note = std::string("old name of ") + s.alias_of;
        if (s.format == value_format::choice) {
            std::string words = s.choices;
            for (auto& c : words)
                if (c == '|') c = ',';
            std::string one_of = "one of: " + words;
            for (std::size_t i = 0; (i = one_of.find(',', i)) != std::string::npos; i += 2)
                one_of.insert(i + 1, " ");
            r.note = r.note.empty() ? one_of : one_of + ". " + r.note;
        }
        rows.push_back(std::move(r));
    }
    return rows;
}

std::string md_cell(std::string v) {
    std::string out;
    for (char c : v) {
        if (c == '|')
            out += "\\|";
        else if (c == '\n')
            out += ' ';
        else
            out += c;
    }
    return out;
}

std::string roff(const std::string& v) {
    std::string out;
    for (char c : v) {
        if (c == '\\')
            out += "\\e";
        else if (c == '-')
            out += "\\-";
        else
            out += c;
    }
    if (!out.empty() && (out[0] == '.' || out[0] == '\'')) out.insert(0, "\\&");
    return out;
}

}  // namespace

std::string settings_reference(reference_format f) {
    const auto rows = reference_rows();
    std::string out;
    if (f == reference_format::markdown) {
        out +=
            "# Sluice settings reference\n\n"
            "Generated by `sluice --settings-reference` from the settings table "
            "(`src/config/settings.cpp`); `SettingsRule.TheReferenceIsGeneratedFromTheTable` "
            "fails when this file differs from it. Names and defaults are PgBouncer's. "
            "Status: *implemented*; *default only* (another value is refused); *no-op* "
            "(accepted, named in the start-up warning); *refused* (a load error at its "
            "FILE:LINE:COL). \"RELOAD, SET\": changed at run time by RELOAD and the "
            "console's SET; \"restart\": read at start-up only.\n";
        std::string current;
        for (const auto& r : rows) {
            if (r.section_name != current) {
                current = r.section_name;
                out += "\n## " + current + "\n\n";
                out += "| setting | what it does | default | changed by | status | notes |\n";
                out += "|---|---|---|---|---|---|\n";
            }
            out +=
                "| `" + r.name + "` | " + md_cell(r.what) + " | " +
                (r.default_value.empty() ? std::string() : "`" + md_cell(r.default_value) + "`") +
                " | " + r.changes + " | " + r.status + " | " + md_cell(r.note) + " |\n";
        }
        return out;
    }
    out +=
        "[SETTINGS]\n"
        "Names and defaults are PgBouncer's. Each setting is implemented, accepted at its "
        "default only, a no\\-op named in a start\\-up warning, or refused at load time "
        "with FILE:LINE:COL.\n";
    std::string current;
    for (const auto& r : rows) {
        if (r.section_name != current) {
            current = r.section_name;
            out += ".SS " + roff(current) + "\n";
        }
        out += ".TP\n.B " + roff(r.name) + "\n";
        if (!r.what.empty()) out += roff(r.what + ".") + "\n.br\n";
        std::string line = r.status;
        if (!r.default_value.empty()) line += "; default " + r.default_value;
        if (r.changes != "-") line += "; " + r.changes;
        if (!r.note.empty()) line += ". " + r.note;
        out += roff(line) + "\n";
    }
    return out;
}

}  // namespace sluice::config
