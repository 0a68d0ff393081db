#pragma once
// The log line format: PgBouncer-like text (the default), or `log_format: json`, one JSON
// object per line for log shippers: {"time", "level", "pid", "thread", "message"}.
#include <spdlog/formatter.h>

#include <memory>

namespace sluice::net {

std::unique_ptr<spdlog::formatter> make_log_formatter(bool json);

}  // namespace sluice::net
