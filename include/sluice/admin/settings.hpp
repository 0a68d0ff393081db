#pragma once
// The `sluice:` section as a table of named settings, for SHOW CONFIG (key, value, default,
// changeable) and SET key = value. Pure and header-only (unit-tested without Asio).
//
// Values are printed as PgBouncer prints them: durations in seconds (fractions kept),
// booleans as 1/0, lists comma-separated, unix_socket_mode in octal.
#include <charconv>
#include <cstdio>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "sluice/config/config.hpp"
#include "sluice/config/loader.hpp"

namespace sluice::admin {

struct setting {
    using g = config::general;
    using member_t =
        std::variant<int g::*, std::int64_t g::*, bool g::*, config::duration g::*,
                     std::string g::*, std::vector<std::string> g::*, config::pool_mode g::*,
                     config::auth_type g::*>;
    const char* name;
    member_t member;
    bool changeable;        // SET (and RELOAD) change it at run time
    std::int64_t min = 0;   // integers
    std::int64_t max = std::numeric_limits<std::int32_t>::max();
    bool octal = false;     // unix_socket_mode

    std::string get(const config::general& gen) const;
    // Parses `value` and stores it into `gen`. false (with `error`) if it does not parse.
    bool set(config::general& gen, const std::string& value, std::string& error) const;
};

inline std::string format_seconds(config::duration d) {
    auto us = d.count();
    if (us % 1000000 == 0) return std::to_string(us / 1000000);
    std::string s = std::to_string(double(us) / 1e6);
    while (!s.empty() && s.back() == '0') s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
}

inline std::string setting::get(const config::general& gen) const {
    return std::visit(
        [&](auto m) -> std::string {
            using T = std::decay_t<decltype(gen.*m)>;
            const T& v = gen.*m;
            if constexpr (std::is_same_v<T, bool>) {
                return v ? "1" : "0";
            } else if constexpr (std::is_same_v<T, int> || std::is_same_v<T, std::int64_t>) {
                if (octal) {
                    char buf[32];
                    std::snprintf(buf, sizeof buf, "0%o", unsigned(v));
                    return buf;
                }
                return std::to_string(v);
            } else if constexpr (std::is_same_v<T, config::duration>) {
                return format_seconds(v);
            } else if constexpr (std::is_same_v<T, std::string>) {
                return v;
            } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
                std::string out;
                for (auto& s : v) {
                    if (!out.empty()) out += ",";
                    out += s;
                }
                return out;
            } else {
                return config::to_string(v);
            }
        },
        member);
}

inline bool setting::set(config::general& gen, const std::string& raw, std::string& error) const {
    auto trim = [](std::string s) {
        auto b = s.find_first_not_of(" \t");
        if (b == std::string::npos) return std::string();
        auto e = s.find_last_not_of(" \t");
        return s.substr(b, e - b + 1);
    };
    const std::string value = trim(raw);
    return std::visit(
        [&](auto m) -> bool {
            using T = std::decay_t<decltype(gen.*m)>;
            if constexpr (std::is_same_v<T, bool>) {
                std::string v;
                for (char c : value) v.push_back(char(std::tolower(static_cast<unsigned char>(c))));
                if (v == "1" || v == "on" || v == "true" || v == "yes") gen.*m = true;
                else if (v == "0" || v == "off" || v == "false" || v == "no") gen.*m = false;
                else {
                    error = std::string(name) + ": expected a boolean (1/0, on/off, true/false)";
                    return false;
                }
                return true;
            } else if constexpr (std::is_same_v<T, int> || std::is_same_v<T, std::int64_t>) {
                std::int64_t v = 0;
                auto first = value.data(), last = value.data() + value.size();
                auto [p, ec] = std::from_chars(first, last, v, octal ? 8 : 10);
                if (ec != std::errc() || p != last || value.empty()) {
                    error = std::string(name) + ": expected an integer";
                    return false;
                }
                if (v < min || v > max) {
                    error = std::string(name) + ": must be between " + std::to_string(min) +
                            " and " + std::to_string(max);
                    return false;
                }
                gen.*m = T(v);
                return true;
            } else if constexpr (std::is_same_v<T, config::duration>) {
                auto d = config::parse_duration(value);
                if (!d) {
                    error = std::string(name) +
                            ": expected a duration (seconds, or a number with us/ms/s/m/h/d)";
                    return false;
                }
                gen.*m = *d;
                return true;
            } else if constexpr (std::is_same_v<T, std::string>) {
                gen.*m = value;
                return true;
            } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
                std::vector<std::string> items;
                std::string cur;
                for (char c : value + ",") {
                    if (c == ',') {
                        auto t = trim(cur);
                        if (!t.empty()) items.push_back(t);
                        cur.clear();
                    } else {
                        cur.push_back(c);
                    }
                }
                gen.*m = std::move(items);
                return true;
            } else if constexpr (std::is_same_v<T, config::pool_mode>) {
                for (auto mode : {config::pool_mode::session, config::pool_mode::transaction,
                                  config::pool_mode::statement})
                    if (value == config::to_string(mode)) {
                        gen.*m = mode;
                        return true;
                    }
                error = std::string(name) + ": expected session, transaction or statement";
                return false;
            } else {
                for (auto a : {config::auth_type::trust, config::auth_type::plain,
                               config::auth_type::md5, config::auth_type::scram_sha_256,
                               config::auth_type::hba, config::auth_type::cert,
                               config::auth_type::any})
                    if (value == config::to_string(a)) {
                        gen.*m = a;
                        return true;
                    }
                error = std::string(name) + ": unknown auth_type";
                return false;
            }
        },
        member);
}

// Every setting of the `sluice:` section, in the order of PgBouncer's documentation.
// `changeable` is false where a new value needs a restart (listening sockets, threads,
// process files, the metrics listener).
inline const std::vector<setting>& general_settings() {
    using g = config::general;
    constexpr auto imax = std::numeric_limits<std::int32_t>::max();
    static const std::vector<setting> table = {
        {"listen_addr", &g::listen_addr, false},
        {"listen_port", &g::listen_port, false, 1, 65535},
        {"unix_socket_dir", &g::unix_socket_dir, false},
        {"unix_socket_mode", &g::unix_socket_mode, false, 0, 07777, true},
        {"listen_backlog", &g::listen_backlog, false, 1},
        {"so_reuseport", &g::so_reuseport, false},
        {"workers", &g::workers, false, 0, 1024},
        {"pool_mode", &g::pool_mode_, true},
        {"default_pool_size", &g::default_pool_size, true},
        {"min_pool_size", &g::min_pool_size, true},
        {"reserve_pool_size", &g::reserve_pool_size, true},
        {"reserve_pool_timeout", &g::reserve_pool_timeout, true},
        {"max_client_conn", &g::max_client_conn, true, 1},
        {"max_db_connections", &g::max_db_connections, true},
        {"max_db_client_connections", &g::max_db_client_connections, true},
        {"max_user_connections", &g::max_user_connections, true},
        {"max_user_client_connections", &g::max_user_client_connections, true},
        {"server_round_robin", &g::server_round_robin, true},
        {"max_prepared_statements", &g::max_prepared_statements, true},
        {"track_extra_parameters", &g::track_extra_parameters, true},
        {"ignore_startup_parameters", &g::ignore_startup_parameters, true},
        {"server_reset_query", &g::server_reset_query, true},
        {"server_reset_query_always", &g::server_reset_query_always, true},
        {"server_check_query", &g::server_check_query, true},
        {"server_check_delay", &g::server_check_delay, true},
        {"server_fast_close", &g::server_fast_close, true},
        {"application_name_add_host", &g::application_name_add_host, true},
        {"autodb_idle_timeout", &g::autodb_idle_timeout, true},
        {"pool_idle_timeout", &g::pool_idle_timeout, true},
        {"stats_period", &g::stats_period, true},
        {"scram_iterations", &g::scram_iterations, true, 1},
        {"query_wait_notify", &g::query_wait_notify, true},
        {"max_packet_size", &g::max_packet_size, true, 5, imax},
        {"pkt_buf", &g::pkt_buf, false, 512, 1 << 30},
        {"max_held_message_size", &g::max_held_message_size, true, 1024, imax},
        {"server_lifetime", &g::server_lifetime, true},
        {"server_idle_timeout", &g::server_idle_timeout, true},
        {"server_connect_timeout", &g::server_connect_timeout, true},
        {"server_login_retry", &g::server_login_retry, true},
        {"client_login_timeout", &g::client_login_timeout, true},
        {"query_timeout", &g::query_timeout, true},
        {"query_wait_timeout", &g::query_wait_timeout, true},
        {"cancel_wait_timeout", &g::cancel_wait_timeout, true},
        {"client_idle_timeout", &g::client_idle_timeout, true},
        {"idle_transaction_timeout", &g::idle_transaction_timeout, true},
        {"transaction_timeout", &g::transaction_timeout, true},
        {"suspend_timeout", &g::suspend_timeout, true},
        {"auth_type", &g::auth_type_, true},
        {"auth_file", &g::auth_file, true},
        {"auth_hba_file", &g::auth_hba_file, true},
        {"auth_user", &g::auth_user, true},
        {"auth_query", &g::auth_query, true},
        {"auth_dbname", &g::auth_dbname, true},
        {"auth_ident_file", &g::auth_ident_file, true},
        {"auth_cache_ttl", &g::auth_cache_ttl, true},
        {"client_tls_sslmode", &g::client_tls_sslmode, true},
        {"client_tls_key_file", &g::client_tls_key_file, true},
        {"client_tls_cert_file", &g::client_tls_cert_file, true},
        {"client_tls_ca_file", &g::client_tls_ca_file, true},
        {"client_tls_protocols", &g::client_tls_protocols, true},
        {"client_tls_ciphers", &g::client_tls_ciphers, true},
        {"client_tls13_ciphers", &g::client_tls13_ciphers, true},
        {"client_tls_ecdhcurve", &g::client_tls_ecdhcurve, true},
        {"client_tls_dheparams", &g::client_tls_dheparams, true},
        {"server_tls_sslmode", &g::server_tls_sslmode, true},
        {"server_tls_ca_file", &g::server_tls_ca_file, true},
        {"server_tls_key_file", &g::server_tls_key_file, true},
        {"server_tls_cert_file", &g::server_tls_cert_file, true},
        {"server_tls_protocols", &g::server_tls_protocols, true},
        {"server_tls_ciphers", &g::server_tls_ciphers, true},
        {"server_tls13_ciphers", &g::server_tls13_ciphers, true},
        {"logfile", &g::logfile, false},
        {"pidfile", &g::pidfile, false},
        {"syslog", &g::syslog, false},
        {"log_connections", &g::log_connections, true},
        {"log_disconnections", &g::log_disconnections, true},
        {"log_pooler_errors", &g::log_pooler_errors, true},
        {"log_stats", &g::log_stats, true},
        {"verbose", &g::verbose, true},
        {"admin_users", &g::admin_users, true},
        {"stats_users", &g::stats_users, true},
        {"tcp_keepalive", &g::tcp_keepalive, true},
        {"tcp_keepcnt", &g::tcp_keepcnt, true},
        {"tcp_keepidle", &g::tcp_keepidle, true},
        {"tcp_keepintvl", &g::tcp_keepintvl, true},
        {"tcp_user_timeout", &g::tcp_user_timeout, true},
        {"metrics_listen", &g::metrics_listen, false},
    };
    return table;
}

inline const setting* find_setting(const std::string& name) {
    for (auto& s : general_settings())
        if (name == s.name) return &s;
    return nullptr;
}

}  // namespace sluice::admin
