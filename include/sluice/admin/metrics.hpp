#pragma once
// Prometheus endpoint: GET /metrics on metrics_listen ("host:port"), served with
// Boost.Beast on the main executor. One coroutine per connection, bounded request size,
// a deadline per connection, at most `max_connections` at once; the connection is closed
// after each response.
#include <string>

#include "sluice/net/io.hpp"

namespace sluice::proxy {
class runtime;
}

namespace sluice::admin {

// The whole /metrics body (text exposition format 0.0.4), including rt.extra_metrics.
std::string render_metrics(proxy::runtime& rt);

// Opens the listener on `listen` ("host:port", host may be a name or [v6]) and serves it
// on `ex`. false (and a log line) if it cannot listen.
bool start_metrics(proxy::runtime& rt, asio::any_io_executor ex, const std::string& listen);

}  // namespace sluice::admin
