#pragma once
// The admin console: the virtual database `sluice` (alias `pgbouncer`) spoken over the
// same protocol code, with PgBouncer's SHOW and control commands.
//
// Session flow: welcome (AuthenticationOk, ParameterStatus..., BackendKeyData,
// ReadyForQuery) -> for each Query: split into statements, run each (stop at the first
// error, as PostgreSQL does), ReadyForQuery 'I'. Extended-protocol messages get one
// 08P01 error and are skipped up to Sync. Terminate or EOF ends the session.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "sluice/config/config.hpp"
#include "sluice/net/io.hpp"
#include "sluice/net/stream.hpp"

namespace sluice::proxy {
class runtime;
class client_session;
}  // namespace sluice::proxy

namespace sluice::admin {

enum class console_role : std::uint8_t { none, stats, admin };

// admin_users may run everything; stats_users only SHOW (read-only).
console_role role_of(const config::config& cfg, const std::string& user);

// Runs a logged-in console session: sends the welcome (AuthenticationOk, ParameterStatus,
// BackendKeyData, ReadyForQuery; `prefix` holds bytes to send first) and then answers
// simple queries until the client leaves. `in` holds bytes already read from the client.
asio::awaitable<void> serve(proxy::runtime& rt, proxy::client_session& session,
                            net::stream& socket, byte_buffer& in, console_role role,
                            std::string prefix);

// Starts what the console and metrics need in the background: the stats_period timer
// (averages, log_stats line) and the Prometheus listener when metrics_listen is set.
// Called once by net::server on its main executor.
void start_background(proxy::runtime& rt, asio::any_io_executor ex);

// A console result set. Type OIDs as PostgreSQL's: text 25, int8 20, int4 23.
inline constexpr std::uint32_t text_oid = 25, int8_oid = 20, int4_oid = 23;
struct table {
    std::vector<std::string> columns;
    std::vector<std::uint32_t> types;
    std::vector<std::vector<std::optional<std::string>>> rows;

    void column(std::string name, std::uint32_t type = text_oid) {
        columns.push_back(std::move(name));
        types.push_back(type);
    }
};

// SHOW subjects other modules add (e.g. "TENANTS" from the rate limiter). Register at
// start-up, before the server runs; `subject` is upper case. Called on a worker thread.
using show_handler = std::function<table(proxy::runtime&)>;
void register_show(const std::string& subject, show_handler handler);

}  // namespace sluice::admin
