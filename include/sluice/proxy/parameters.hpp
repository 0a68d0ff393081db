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

}  // namespace sluice::proxy
