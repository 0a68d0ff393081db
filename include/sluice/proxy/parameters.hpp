#pragma once
// Session parameters Sluice tracks per client (PgBouncer's list plus search_path and
// default_transaction_read_only), and the SQL quoting used to apply them with SET.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::proxy {

bool iequals(std::string_view a, std::string_view b);

// The canonical spelling (as ParameterStatus reports it) of a tracked parameter, or
// nullopt if `name` is not tracked.
std::optional<std::string> tracked_parameter_name(std::string_view name,
                                                  const std::vector<std::string>& extra);
bool is_tracked(std::string_view name, const std::vector<std::string>& extra);
// True for parameters PostgreSQL 15 reports with ParameterStatus (GUC_REPORT).
bool reported_by_server(std::string_view name);
// Other ParameterStatus values a server sends at login that clients expect to see
// (server_version, is_superuser, ...): passed on in the welcome, never SET.
bool is_server_status_parameter(std::string_view name);

std::string quote_literal(std::string_view value);

// The `options` startup parameter as libpq sends it (PGOPTIONS, JDBC's `options`, ORMs):
// settings as `-c name=value` (or `-cname=value`) and `--name=value`, separated by
// whitespace, a backslash taking the next character literally (`\ ` is a space inside a
// value). A '-' in a name is a '_', as PostgreSQL reads it. nullopt for anything else
// (another switch such as -d, a setting without '='): PgBouncer refuses those too.
struct startup_option {
    std::string name, value;
    bool operator==(const startup_option&) const = default;
};
std::optional<std::vector<startup_option>> parse_startup_options(std::string_view options);

}  // namespace sluice::proxy
