// The settings rule, checked over the whole table (config/settings.hpp):
//   every setting Sluice accepts either works (and a test names it), or is refused when the
//   file is loaded (FILE:LINE:COL: setting X is not supported), or is on the short list of
//   harmless no-ops named in the start-up warning, never one about security;
//   every PgBouncer setting is one of the three; the loader accepts nothing else;
//   SHOW CONFIG / SET and the README tell the same story.
// A new setting fails here until it is classified, tested and documented.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "sluice/admin/settings.hpp"
#include "sluice/config/loader.hpp"
#include "sluice/config/settings.hpp"

namespace sluice::config {
namespace {

namespace fs = std::filesystem;

// __FILE__ is absolute in this build: tests/unit/config/settings_rule_test.cpp.
fs::path tests_dir() { return fs::path(__FILE__).parent_path().parent_path().parent_path(); }
fs::path repo_root() { return tests_dir().parent_path(); }

std::string read_text(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

std::string all_errors(const load_result& r) {
    std::string out;
    for (const auto& e : r.errors) out += e.to_string() + "\n";
    return out;
}

// Every PgBouncer 1.25 setting, by section (shared/reference/pgbouncer-compat.md and
// PgBouncer's documentation). Each must be in the table, whatever its status.
const std::vector<const char*> pgbouncer_general = {
    "logfile", "pidfile", "listen_addr", "listen_port", "unix_socket_dir", "unix_socket_mode",
    "unix_socket_group", "user", "pool_mode", "max_client_conn", "default_pool_size",
    "min_pool_size", "reserve_pool_size", "reserve_pool_timeout", "max_db_connections",
    "max_db_client_connections", "max_user_connections", "max_user_client_connections",
    "server_round_robin", "track_extra_parameters", "ignore_startup_parameters", "peer_id",
    "disable_pqexec", "application_name_add_host", "conffile", "service_name", "job_name",
    "stats_period", "max_prepared_statements", "scram_iterations", "auth_type",
    "auth_hba_file", "auth_ident_file", "auth_file", "auth_user", "auth_query", "auth_dbname",
    "syslog", "syslog_ident", "syslog_facility", "log_connections", "log_disconnections",
    "log_pooler_errors", "log_stats", "verbose", "admin_users", "stats_users",
    "server_reset_query", "server_reset_query_always", "server_check_delay",
    "server_check_query", "server_fast_close", "server_lifetime", "server_idle_timeout",
    "server_connect_timeout", "server_login_retry", "client_login_timeout",
    "autodb_idle_timeout", "dns_max_ttl", "dns_nxdomain_ttl", "dns_zone_check_period",
    "resolv_conf", "query_wait_notify", "client_tls_sslmode", "client_tls_key_file",
    "client_tls_cert_file", "client_tls_ca_file", "client_tls_protocols", "client_tls_ciphers",
    "client_tls13_ciphers", "client_tls_ecdhcurve", "client_tls_dheparams",
    "server_tls_sslmode", "server_tls_ca_file", "server_tls_key_file", "server_tls_cert_file",
    "server_tls_protocols", "server_tls_ciphers", "server_tls13_ciphers", "query_timeout",
    "query_wait_timeout", "cancel_wait_timeout", "client_idle_timeout",
    "idle_transaction_timeout", "transaction_timeout", "suspend_timeout", "pkt_buf",
    "max_packet_size", "listen_backlog", "sbuf_loopcnt", "so_reuseport", "tcp_defer_accept",
    "tcp_socket_buffer", "tcp_keepalive", "tcp_keepcnt", "tcp_keepidle", "tcp_keepintvl",
    "tcp_user_timeout"};
const std::vector<const char*> pgbouncer_database = {
    "dbname", "host", "port", "user", "password", "auth_user", "auth_query", "auth_dbname",
    "pool_size", "min_pool_size", "reserve_pool", "reserve_pool_size", "connect_query",
    "pool_mode", "load_balance_hosts", "max_db_connections", "max_db_client_connections",
    "server_lifetime", "client_encoding", "datestyle", "timezone"};
const std::vector<const char*> pgbouncer_user = {
    "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections", "query_timeout",
    "idle_transaction_timeout", "client_idle_timeout", "max_user_client_connections"};

// A file setting `name` to `value` in its section, in each format, and where the key and
// the value start (line, column) and the label errors use.
struct probe {
    std::string yaml, ini;
    int yaml_line = 0, ini_line = 0, yaml_col = 0, ini_col = 0;
    std::string label;
};

probe make_probe(section where, const std::string& name, const std::string& value) {
    probe p;
    p.ini_line = 2;
    p.yaml_line = where == section::general ? 2 : 3;
    if (where == section::general) {
        p.yaml = "sluice:\n  " + name + ": '" + value + "'\n";
        p.ini = "[pgbouncer]\n" + name + " = " + value + "\n";
        p.yaml_col = 3, p.ini_col = 1;
        p.label = name;
        return p;
    }
    // An ini entry is a connection string; another key comes first, so the column shows.
    const bool db = where == section::database;
    const std::string entry = db ? "app" : "u";
    std::string other = db ? "dbname=app" : "pool_size=1";
    if (name == other.substr(0, other.find('='))) other = db ? "port=5432" : "pool_mode=session";
    p.yaml = std::string(db ? "databases" : "users") + ":\n  " + entry + ":\n    " + name +
             ": '" + value + "'\n";
    p.ini = std::string(db ? "[databases]" : "[users]") + "\n" + entry + " = " + other + " " +
            name + "='" + value + "'\n";
    p.yaml_col = 5;
    p.ini_col = static_cast<int>(entry.size() + 3 + other.size() + 1) + 1;
    p.label = std::string(db ? "databases." : "users.") + entry + "." + name;
    return p;
}

// A valid value for an accepted setting, as text: its default where the section has one.
std::string sample_value(const setting& s) {
    if (s.where == section::general) return s.get(general{});
    return std::visit(
        [&](auto m) -> std::string {
            using M = decltype(m);
            if constexpr (std::is_same_v<M, std::monostate>) {
                return "";
            } else {
                using T = typename member_traits<M>::value;
                if constexpr (std::is_same_v<T, std::string>) {
                    if (s.format == value_format::choice) {
                        std::string c = s.choices;
                        return c.substr(0, c.find('|'));
                    }
                    return "x";
                } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
                    return "h1";
                } else if constexpr (std::is_same_v<T, std::optional<pool_mode>>) {
                    return "session";
                } else if constexpr (std::is_same_v<T, std::optional<duration>>) {
                    return "30";
                } else {
                    return std::to_string(std::max<std::int64_t>(s.min, 1));  // integers
                }
            }
        },
        s.member);
}

// A value of a default_only setting that is not its default.
std::string other_value(const setting& s) {
    if (s.format == value_format::choice) {
        std::string c = s.choices;
        return c.substr(c.find('|') + 1, c.find('|', c.find('|') + 1) - c.find('|') - 1);
    }
    return sample_value(s) == "0" ? "1" : "0";  // booleans
}

// Every identifier in the tests, except this file: the names tests mention.
std::set<std::string> words_in_tests() {
    std::set<std::string> words;
    const fs::path self = fs::path(__FILE__).lexically_normal();
    static const std::regex word("[A-Za-z0-9_]+");
    for (const auto& f : fs::recursive_directory_iterator(tests_dir())) {
        if (!f.is_regular_file()) continue;
        const auto ext = f.path().extension();
        if (ext != ".cpp" && ext != ".hpp" && ext != ".py") continue;
        if (f.path().lexically_normal() == self) continue;
        const std::string text = read_text(f.path());
        for (std::sregex_iterator it(text.begin(), text.end(), word), end; it != end; ++it)
            words.insert(it->str());
    }
    return words;
}

// The first backticked word of each "- `name`" bullet in the README section `heading`.
std::set<std::string> readme_bullets(const std::string& heading) {
    std::istringstream in(read_text(repo_root() / "README.md"));
    std::set<std::string> names;
    std::string line;
    bool inside = false;
    while (std::getline(in, line)) {
        if (line.rfind("#", 0) == 0) {
            inside = line.find(heading) != std::string::npos;
            continue;
        }
        if (!inside || line.rfind("- `", 0) != 0) continue;
        auto end = line.find('`', 3);
        if (end != std::string::npos) names.insert(line.substr(3, end - 3));
    }
    return names;
}

// ---------------------------------------------------------------------------------------

TEST(SettingsRule, EveryEntryIsWellFormed) {
    std::set<std::pair<section, std::string>> seen;
    for (const auto& s : settings()) {
        SCOPED_TRACE(std::string(to_string(s.where)) + "." + s.name);
        EXPECT_TRUE(seen.insert({s.where, s.name}).second) << "listed twice";
        EXPECT_EQ(find_setting(s.where, s.name), &s);
        const bool has_member = !std::holds_alternative<std::monostate>(s.member);
        switch (s.status) {
            case support::implemented:
                EXPECT_TRUE(has_member);
                if (s.default_only) {
                    EXPECT_GT(std::string(s.note).size(), 20u) << "say why";
                }
                break;
            case support::no_op:
                EXPECT_TRUE(has_member) << "a no-op keeps its value for SHOW CONFIG";
                EXPECT_GT(std::string(s.note).size(), 20u) << "a no-op needs its reason";
                EXPECT_FALSE(security_related(s.name)) << "security settings are never no-ops";
                EXPECT_EQ(s.where, section::general);
                EXPECT_FALSE(s.default_only);
                break;
            case support::refused:
                EXPECT_FALSE(has_member);
                EXPECT_GT(std::string(s.note).size(), 20u) << "say why, and what to do instead";
                break;
        }
        if (*s.alias_of) {
            const setting* target = find_setting(s.where, s.alias_of);
            ASSERT_NE(target, nullptr);
            EXPECT_EQ(target->status, support::implemented);
            EXPECT_TRUE(target->member == s.member);
        }
    }
    // The words that make a setting security-related, as the rule states them.
    for (const char* n : {"client_tls_sslmode", "auth_type", "server_tls_ca_file", "auth_hba_file",
                          "password", "admin_users", "stats_users", "stats_users_prefix",
                          "client_tls_ciphers", "user"})
        EXPECT_TRUE(security_related(n)) << n;
    EXPECT_FALSE(security_related("dns_max_ttl"));
}

TEST(SettingsRule, ImplementedSettingsAreNamedByATest) {
    const auto words = words_in_tests();
    ASSERT_GT(words.size(), 1000u) << "tests not found under " << tests_dir();
    for (const auto& s : settings()) {
        if (s.status != support::implemented) continue;
        EXPECT_TRUE(words.count(s.name))
            << to_string(s.where) << "." << s.name
            << " is implemented but no test under tests/ names it: add a test that exercises "
               "it, or make it refused";
    }
}

TEST(SettingsRule, RefusedSettingsFailToLoadWithTheirPosition) {
    for (const auto& s : settings()) {
        if (s.status != support::refused) continue;
        SCOPED_TRACE(std::string(to_string(s.where)) + "." + s.name);
        const probe p = make_probe(s.where, s.name, "1");
        const std::string message = "setting " + p.label + " is not supported: " + s.note;
        for (auto [text, path, line, col] :
             {std::tuple{p.yaml, "/etc/sluice/s.yaml", p.yaml_line, p.yaml_col},
              std::tuple{p.ini, "/etc/sluice/s.ini", p.ini_line, p.ini_col}}) {
            auto r = load_string(text, path);
            EXPECT_FALSE(r.cfg);
            ASSERT_EQ(r.errors.size(), 1u) << all_errors(r);
            EXPECT_EQ(r.errors[0].to_string(), std::string(path) + ":" + std::to_string(line) +
                                                   ":" + std::to_string(col) + ": " + message);
        }
    }
}

TEST(SettingsRule, AcceptedSettingsLoadInBothFormats) {
    for (const auto& s : settings()) {
        if (s.status == support::refused) continue;
        SCOPED_TRACE(std::string(to_string(s.where)) + "." + s.name);
        const probe p = make_probe(s.where, s.name, sample_value(s));
        for (auto [text, path] : {std::pair{p.yaml, "/etc/sluice/s.yaml"},
                                  std::pair{p.ini, "/etc/sluice/s.ini"}}) {
            auto r = load_string(text, path);
            ASSERT_TRUE(r.ok()) << text << all_errors(r);
            if (s.status == support::no_op)
                EXPECT_EQ(r.cfg->no_op_settings, std::vector<std::string>{s.name});
            else
                EXPECT_TRUE(r.cfg->no_op_settings.empty());
        }
        if (s.default_only) {
            const probe q = make_probe(s.where, s.name, other_value(s));
            auto r = load_string(q.ini, "/etc/sluice/s.ini");
            ASSERT_EQ(r.errors.size(), 1u) << q.ini << all_errors(r);
            EXPECT_NE(r.errors[0].message.find("setting " + q.label + " = " + other_value(s) +
                                               " is not supported: " + s.note),
                      std::string::npos)
                << all_errors(r);
        }
    }
}

TEST(SettingsRule, EveryPgBouncerSettingIsClassified) {
    for (auto [where, names] : {std::pair{section::general, &pgbouncer_general},
                                std::pair{section::database, &pgbouncer_database},
                                std::pair{section::user, &pgbouncer_user}})
        for (const char* n : *names)
            EXPECT_NE(find_setting(where, n), nullptr)
                << to_string(where) << "." << n
                << ": a PgBouncer setting must be implemented, a no-op or refused";
}

TEST(SettingsRule, TheLoaderAcceptsExactlyTheTable) {
    // Every name the table knows, PgBouncer's, and near misses of each: the loader accepts a
    // key exactly when the table has it and does not refuse it.
    std::map<section, std::set<std::string>> candidates;
    for (const auto& s : settings()) {
        candidates[s.where].insert(s.name);
        candidates[s.where].insert(std::string(s.name) + "_x");
        candidates[s.where].insert(std::string(s.name).substr(1));
    }
    for (const char* n : pgbouncer_general) candidates[section::general].insert(n);
    for (const char* n : pgbouncer_database) candidates[section::database].insert(n);
    for (const char* n : pgbouncer_user) candidates[section::user].insert(n);
    for (const auto& [where, names] : candidates) {
        for (const auto& n : names) {
            const setting* s = find_setting(where, n);
            const std::string value = s && s->status != support::refused ? sample_value(*s) : "1";
            const probe p = make_probe(where, n, value);
            auto r = load_string(p.ini, "/etc/sluice/s.ini");
            const bool accepted = s && s->status != support::refused;
            EXPECT_EQ(r.ok(), accepted) << to_string(where) << "." << n << "\n" << all_errors(r);
            if (!s) {
                ASSERT_EQ(r.errors.size(), 1u) << n;
                EXPECT_NE(r.errors[0].message.find("unknown setting '" + n + "'"),
                          std::string::npos)
                    << all_errors(r);
            }
        }
    }
}

TEST(SettingsRule, ShowConfigAndSetSeeTheSameTable) {
    std::vector<std::string> expected;
    for (const auto& s : settings())
        if (s.where == section::general && s.status != support::refused) expected.push_back(s.name);
    std::vector<std::string> shown;
    for (const auto& s : admin::general_settings()) shown.push_back(s.name);
    EXPECT_EQ(shown, expected);
    for (const auto& s : settings()) {
        if (s.where != section::general) continue;
        const admin::setting* a = admin::find_setting(s.name);
        if (s.status == support::refused) {
            EXPECT_EQ(a, nullptr) << s.name << " is refused: SHOW CONFIG must not list it";
            std::string error;
            general g;
            EXPECT_FALSE(s.set(g, "1", error));
            EXPECT_NE(error.find("is not supported"), std::string::npos) << error;
            continue;
        }
        ASSERT_NE(a, nullptr) << s.name;
        // SET takes what SHOW CONFIG prints, and a default_only setting only its default.
        general g;
        std::string error;
        EXPECT_TRUE(a->set(g, a->get(general{}), error)) << s.name << ": " << error;
        EXPECT_EQ(g, general{}) << s.name;
        if (s.default_only) {
            EXPECT_FALSE(a->set(g, other_value(s), error)) << s.name;
            EXPECT_NE(error.find("is not supported"), std::string::npos) << error;
        }
    }
}

TEST(SettingsRule, TheReadmeListsTheSameSettings) {
    std::set<std::string> no_op, refused, default_only;
    for (const auto& s : settings()) {
        if (s.status == support::no_op) no_op.insert(s.name);
        if (s.status == support::refused) refused.insert(s.name);
        if (s.default_only) default_only.insert(s.name);
    }
    EXPECT_EQ(readme_bullets("Settings with no effect"), no_op);
    EXPECT_EQ(readme_bullets("Settings Sluice refuses"), refused);
    EXPECT_EQ(readme_bullets("Settings accepted at their default only"), default_only);
}

TEST(SettingsRule, TheWarningNamesEachNoOpOnce) {
    std::string yaml = "sluice:\n", expected;
    for (const auto& s : settings()) {
        if (s.status != support::no_op) continue;
        yaml += std::string("  ") + s.name + ": '" + sample_value(s) + "'\n";
        expected += (expected.empty() ? "" : ", ") + std::string(s.name);
    }
    yaml += "databases:\n  a: {pool_size: 1}\n";
    auto r = load_string(yaml, "/etc/sluice/s.yaml");
    ASSERT_TRUE(r.ok()) << all_errors(r);
    EXPECT_EQ(no_op_warning(*r.cfg), "settings with no effect in Sluice: " + expected +
                                         " (see README \"Settings with no effect\")");
}

// doc/config.md is the table printed (sluice --settings-reference): regenerate it with
// `build/sluice --settings-reference > doc/config.md` when the table changes.
TEST(SettingsRule, TheReferenceIsGeneratedFromTheTable) {
    const std::string committed = read_text(repo_root() / "doc" / "config.md");
    EXPECT_EQ(committed, settings_reference(reference_format::markdown))
        << "doc/config.md is out of date: build/sluice --settings-reference > doc/config.md";
    for (const auto& s : settings())
        EXPECT_NE(committed.find(std::string("| `") + s.name + "` |"), std::string::npos) << s.name;
    // Every implemented setting says what it does.
    for (const auto& s : settings())
        if (s.status == support::implemented)
            EXPECT_GT(std::string_view(s.doc).size(), 10u) << s.name << " has no description";
    const std::string man = settings_reference(reference_format::man);
    for (const auto& s : settings())
        EXPECT_NE(man.find(std::string(".B ") + s.name + "\n"), std::string::npos) << s.name;
}

}  // namespace
}  // namespace sluice::config
