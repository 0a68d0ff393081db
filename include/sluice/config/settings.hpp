#pragma once
// The settings table: every setting of the `sluice:` ([pgbouncer]), `databases` and `users`
// sections, one entry each, with its support status. It is the only list of settings:
// the loader (YAML and ini) reads values through it, SHOW CONFIG and SET use it
// (admin/settings.hpp), and the rule test (tests/unit/config/settings_rule_test.cpp) checks
// it against the tests and the README.
//
// The rule: a setting Sluice accepts either works (implemented), or has no effect and is
// harmless (no_op: named in one warning at start-up and on RELOAD, never security-related),
// or is refused when the file is loaded ("setting X is not supported", with its position).
// An implemented setting marked default_only works at its default value only (Sluice
// always behaves that way); any other value is refused the same way.
//
// The rate limiter's own sections (rate_limits, 1.5 in DESIGN.md) have their own schema in
// the loader; they are not PgBouncer settings and not shown by SHOW CONFIG.
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "sluice/config/config.hpp"

namespace sluice::config {

enum class section { general, database, user };  // sluice: / [pgbouncer], [databases], [users]
enum class support { implemented, no_op, refused };

const char* to_string(section s);  // "sluice", "databases", "users"
const char* to_string(support s);  // "implemented", "no-op", "refused"

// How a value is spelled, beyond what its C++ type says.
enum class value_format {
    plain,
    octal,      // int: a file mode such as 0777
    host_port,  // string: "host:port" or "" (metrics_listen)
    host_list,  // list: at least one host
    choice,     // string: one of `choices`, stored lower-case
};

// The struct a member pointer belongs to, and the member's type.
template <class M>
struct member_traits;
template <class S, class T>
struct member_traits<T S::*> {
    using owner = S;
    using value = T;
};

struct setting {
    using g = general;
    using d = database;
    using u = user;
    // Where the value is stored: a member of the section's struct. Refused settings have none.
    using member_t = std::variant<std::monostate,  //
                                  int g::*, std::int64_t g::*, bool g::*, duration g::*,
                                  std::string g::*, std::vector<std::string> g::*,
                                  pool_mode g::*, auth_type g::*,  //
                                  int d::*, std::string d::*, std::vector<std::string> d::*,
                                  std::optional<int> d::*, std::optional<pool_mode> d::*,
                                  std::optional<duration> d::*,  //
                                  std::optional<int> u::*, std::optional<pool_mode> u::*,
                                  std::optional<duration> u::*>;

    const char* name = "";
    section where = section::general;
    support status = support::implemented;
    member_t member;
    // no_op: why ignoring it is harmless. refused (and default_only): why, and what to do
    // instead; it ends the "not supported" message. implemented: empty, or a remark.
    const char* note = "";
    // implemented: what the setting does, one line, for doc/config.md and the man page
    // (no-op and refused settings are explained by their note).
    const char* doc = "";
    bool changeable = true;  // general: SET and RELOAD change it at run time
    std::int64_t min = 0;    // integers
    std::int64_t max = std::numeric_limits<std::int32_t>::max();
    value_format format = value_format::plain;
    const char* choices = "";   // value_format::choice: "a|b|c"
    bool default_only = false;  // implemented at its default value only
    const char* alias_of = "";  // an old name (reserve_pool): the setting it stands for

    // The value as SHOW CONFIG prints it, PgBouncer's way: durations in seconds (fractions
    // kept), booleans 1/0, lists comma-separated, octal modes with a leading 0. Only for
    // general settings with a member; "" otherwise.
    std::string get(const general& gen) const;
    // Parses `value` as the loader would (same rules, same messages) and stores it. false,
    // with `error`, if it does not parse or is refused. Defined in loader.cpp.
    bool set(general& gen, const std::string& value, std::string& error) const;
};

// The table, in the order of PgBouncer's documentation within each section.
const std::vector<setting>& settings();
// The entry for `name` in `where` (nullptr if there is none). Names are exact: the ini
// reader lower-cases [pgbouncer] keys and connection-string keys before looking them up.
const setting* find_setting(section where, std::string_view name);

// True for settings about authentication, TLS or access: these may never be no-ops.
bool security_related(std::string_view name);

// The one start-up/RELOAD warning naming the no-op settings the file gives, e.g.
// `settings with no effect in Sluice: dns_max_ttl, pkt_buf (see README "Settings with no
// effect")`; empty when there are none.
std::string no_op_warning(const config& cfg);

// The configuration reference, generated from the table: every setting with its section,
// default, whether RELOAD/SET change it, its status and the table's note. `markdown` is
// doc/config.md (a unit test fails when the committed file differs); `man` is a roff
// [SETTINGS] section for help2man (packaging/make-man.sh).
enum class reference_format { markdown, man };
// A duration as PgBouncer prints it: seconds, fractions kept ("0.25", "600").
std::string format_seconds(duration d);
// `sluice --convert FILE`: the configuration as YAML, every value that differs from its
// default (and every no-op the file gave, so the start-up warning stays the same). What
// it prints loads into the same model, so SHOW CONFIG is the same.
std::string to_yaml(const config& cfg, const std::string& source);
std::string settings_reference(reference_format f);

}  // namespace sluice::config
