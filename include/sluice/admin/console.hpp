#pragma once
// The admin console: the virtual database `sluice` (alias `pgbouncer`) spoken over the
// same protocol code, with PgBouncer's SHOW and control commands.
#include <string>

#include "sluice/config/config.hpp"
#include "sluice/net/io.hpp"

namespace sluice::proxy {
class runtime;
class client_session;
}  // namespace sluice::proxy

namespace sluice::admin {

enum class console_role { none, stats, admin };

// admin_users may run everything; stats_users only SHOW (read-only).
console_role role_of(const config::config& cfg, const std::string& user);

// Runs a logged-in console session: sends the welcome (AuthenticationOk, ParameterStatus,
// BackendKeyData, ReadyForQuery; `prefix` holds bytes to send first) and then answers
// simple queries until the client leaves. `in` holds bytes already read from the client.
asio::awaitable<void> serve(proxy::runtime& rt, proxy::client_session& session,
                            stream_socket& socket, byte_buffer& in, console_role role,
                            std::string prefix);

// Starts what the console and metrics need in the background: the stats_period timer
// (averages, log_stats line) and the Prometheus listener when metrics_listen is set.
// Called once by net::server on its main executor.
void start_background(proxy::runtime& rt, asio::any_io_executor ex);

}  // namespace sluice::admin
