#pragma once
// The `sluice:` section as SHOW CONFIG (key, value, default, changeable) and SET key = value
// see it: a view of the one settings table (config/settings.hpp), never a second list.
// It holds the general settings Sluice accepts, implemented and no-op, in the table's
// order; refused settings are not in it. Pure (unit-tested without Asio).
//
// setting::get prints values as PgBouncer does (durations in seconds with fractions kept,
// booleans 1/0, lists comma-separated, unix_socket_mode in octal); setting::set parses with
// the loader's rules, so SET accepts exactly what the configuration file accepts.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "sluice/config/settings.hpp"

namespace sluice::admin {

using setting = config::setting;

inline const std::vector<setting>& general_settings() {
    static const std::vector<setting> view = [] {
        std::vector<setting> v;
        for (const auto& s : config::settings())
            if (s.where == config::section::general && s.status != config::support::refused)
                v.push_back(s);
        return v;
    }();
    return view;
}

inline const setting* find_setting(const std::string& name) {
    for (const auto& s : general_settings())
        if (name == s.name) return &s;
    return nullptr;
}

}  // namespace sluice::admin
