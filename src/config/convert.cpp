// sluice --convert: the model back out as YAML, driven by the settings table (every
// setting the table lists for a section, printed when it differs from the default), so
// a setting added to the table is converted without a change here.
#include <algorithm>
#include <string>
#include <type_traits>
#include <variant>

#include "sluice/config/settings.hpp"

namespace sluice::config {

namespace {

// A YAML double-quoted scalar: every value is quoted, and the loader reads a quoted
// scalar by the setting's type exactly as a plain one (so "0777" stays octal text).
std::string quoted(const std::string& v) {
    std::string out = "\"";
    for (unsigned char c : v) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\t': out += "\\t"; break;
            case '\r': out += "\\r"; break;
            default:
                if (c < 0x20 || c == 0x7f) {
                    static const char* hex = "0123456789abcdef";
                    out += "\\x";
                    out += hex[c >> 4];
                    out += hex[c & 15];
                } else {
                    out += char(c);
                }
        }
    }
    return out + "\"";
}

std::string text_of(const std::string& v) { return v; }
std::string text_of(int v) { return std::to_string(v); }
std::string text_of(pool_mode m) { return to_string(m); }
std::string text_of(duration d) { return format_seconds(d); }
std::string text_of(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& e : v) out += (out.empty() ? "" : ",") + e;
    return out;
}

// The value of a databases/users member as the loader reads it; nullopt when it is the
// default (an unset optional, or equal to a default-constructed entry's).
template <class Entry>
std::optional<std::string> entry_value(const setting& s, const Entry& e) {
    static const Entry defaults{};
    return std::visit(
        [&](auto m) -> std::optional<std::string> {
            using M = decltype(m);
            if constexpr (std::is_same_v<M, std::monostate>) {
                return std::nullopt;
            } else if constexpr (!std::is_same_v<typename member_traits<M>::owner, Entry>) {
                return std::nullopt;
            } else {
                const auto& v = e.*m;
                if (v == defaults.*m) return std::nullopt;
                using V = std::decay_t<decltype(v)>;
                if constexpr (requires { v.has_value(); }) {
                    if (!v) return std::nullopt;
                    return text_of(*v);
                } else {
                    static_assert(!std::is_same_v<V, bool>);
                    return text_of(v);
                }
            }
        },
        s.member);
}

template <class Entry>
void write_entries(std::string& out, const char* heading, section where,
                   const std::map<std::string, Entry>& entries) {
    if (entries.empty()) return;
    out += std::string("\n") + heading + ":\n";
    for (const auto& [name, e] : entries) {
        std::string fields;
        for (const auto& s : settings()) {
            if (s.where != where || s.status == support::refused || *s.alias_of) continue;
            if (auto v = entry_value(s, e)) fields += std::string("    ") + s.name + ": " + quoted(*v) + "\n";
        }
        out += "  " + quoted(name) + ":" + (fields.empty() ? " {}\n" : "\n" + fields);
    }
}

}  // namespace

std::string to_yaml(const config& cfg, const std::string& source) {
    std::string out = "# Converted from " + source +
                      " by sluice --convert: the settings that differ from their defaults.\n"
                      "# Relative paths are resolved; %include files are merged in.\n"
                      "sluice:\n";
    const general defaults;
    for (const auto& s : settings()) {
        if (s.where != section::general || s.status == support::refused || *s.alias_of) continue;
        const std::string v = s.get(cfg.sluice);
        const bool named_no_op =
            s.status == support::no_op &&
            std::find(cfg.no_op_settings.begin(), cfg.no_op_settings.end(), s.name) !=
                cfg.no_op_settings.end();
        if (v == s.get(defaults) && !named_no_op) continue;
        out += std::string("  ") + s.name + ": " + quoted(v) + "\n";
    }
    write_entries(out, "databases", section::database, cfg.databases);
    write_entries(out, "users", section::user, cfg.users);
    return out;
}

}  // namespace sluice::config
