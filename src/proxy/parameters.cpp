#include "sluice/proxy/parameters.hpp"

#include <algorithm>
#include <array>
#include <cctype>

namespace sluice::proxy {

namespace {
constexpr std::array<std::string_view, 8> always_tracked{
    "client_encoding",  "DateStyle",   "TimeZone",    "IntervalStyle",
    "standard_conforming_strings", "application_name", "search_path",
    "default_transaction_read_only"};
constexpr std::array<std::string_view, 9> reported{
    "client_encoding", "DateStyle", "TimeZone", "IntervalStyle", "standard_conforming_strings",
    "application_name", "default_transaction_read_only", "integer_datetimes",
    "server_encoding"};
}  // namespace

bool iequals(std::string_view a, std::string_view b) {
    // ASCII case folding, as PostgreSQL compares setting names (guc_name_compare); inline,
    // not std::tolower (a locale-aware call per character, run hundreds of times per login).
    auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; };
    return a.size() == b.size() &&
           std::equal(a.begin(), a.end(), b.begin(),
                      [&](char x, char y) { return lower(x) == lower(y); });
}

std::optional<std::string> tracked_parameter_name(std::string_view name,
                                                  const std::vector<std::string>& extra) {
    for (auto k : always_tracked)
        if (iequals(k, name)) return std::string(k);
    for (auto& k : extra)
        if (iequals(k, name)) return k;
    return std::nullopt;
}

bool is_tracked(std::string_view name, const std::vector<std::string>& extra) {
    return tracked_parameter_name(name, extra).has_value();
}

bool reported_by_server(std::string_view name) {
    return std::any_of(reported.begin(), reported.end(),
                       [&](std::string_view k) { return iequals(k, name); });
}

bool is_server_status_parameter(std::string_view name) {
    return !is_tracked(name, {}) || reported_by_server(name);
}

std::string quote_literal(std::string_view value) {
    // E'' so that the result means the same whatever standard_conforming_strings says.
    std::string out = "E'";
    for (char c : value) {
        if (c == '\'' || c == '\\') out += c;
        out += c;
    }
    return out + "'";
}

std::optional<std::vector<startup_option>> parse_startup_options(std::string_view o) {
    std::vector<startup_option> out;
    std::size_t i = 0;
    auto skip_ws = [&] {
        while (i < o.size() && std::isspace(static_cast<unsigned char>(o[i]))) ++i;
    };
    // One whitespace-delimited word, with backslash escapes resolved.
    auto word = [&] {
        std::string w;
        while (i < o.size() && !std::isspace(static_cast<unsigned char>(o[i]))) {
            if (o[i] == '\\' && i + 1 < o.size()) ++i;
            w += o[i++];
        }
        return w;
    };
    for (skip_ws(); i < o.size(); skip_ws()) {
        std::string setting;
        if (o.substr(i, 2) == "--") {
            i += 2;
            setting = word();
        } else if (o.substr(i, 2) == "-c") {
            i += 2;
            skip_ws();  // "-c name=value" and "-cname=value"
            setting = word();
        } else {
            return std::nullopt;
        }
        auto eq = setting.find('=');
        if (eq == std::string::npos || eq == 0) return std::nullopt;
        startup_option opt{setting.substr(0, eq), setting.substr(eq + 1)};
        std::replace(opt.name.begin(), opt.name.end(), '-', '_');
        out.push_back(std::move(opt));
    }
    return out;
}

}  // namespace sluice::proxy
