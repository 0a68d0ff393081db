#pragma once
// Reads a configuration file (YAML, or PgBouncer .ini by extension) into the model.
// Every problem is collected (not only the first) as FILE:LINE:COL: message, and a file
// with any error yields no model, so a bad file never takes effect half-way.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/config/config.hpp"

namespace sluice::config {

struct diagnostic {
    std::string file;
    int line = 0;    // 1-based; 0 when not tied to a line
    int column = 0;  // 1-based
    std::string message;
    std::string to_string() const;  // "file:line:col: message"
};

struct load_result {
    std::optional<config> cfg;
    std::vector<diagnostic> errors;
    bool ok() const { return cfg.has_value() && errors.empty(); }
};

load_result load_file(const std::string& path);
// Parses text as if read from `path` (the extension picks the format).
load_result load_string(const std::string& text, const std::string& path);

// Parses a duration: a number of seconds (fractions allowed) or a string with a unit
// (us, ms, s, m, h, d). Returns nullopt on a malformed or negative value.
std::optional<duration> parse_duration(const std::string& text);

// rate_limits.redis_url taken apart: redis[s]://[[user]:password@]host[:port][/db].
// The loader validates with this, and the Redis client connects with it.
struct redis_endpoint {
    bool tls = false;      // rediss://
    std::string username;  // empty = the default user (AUTH with the password only)
    std::string password;  // empty = no AUTH
    std::string host;      // brackets of an IPv6 literal removed
    int port = 6379;
    bool port_given = false;  // the URL names a port (with sentinels it must not)
    int db = 0;
};
std::optional<redis_endpoint> parse_redis_url(const std::string& url);

// "host:port" or "[v6]:port", the port in 1..65535 (metrics_listen, redis_sentinels).
struct host_port {
    std::string host;  // brackets of an IPv6 literal removed
    int port = 0;
};
std::optional<host_port> parse_host_port(std::string_view text);

}  // namespace sluice::config
