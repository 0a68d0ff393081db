#include "sluice/admin/settings.hpp"

#include <gtest/gtest.h>

#include <set>

using namespace sluice;
using namespace sluice::admin;

TEST(ConsoleSettings, EverySettingHasAUniqueName) {
    std::set<std::string> names;
    for (auto& s : general_settings()) EXPECT_TRUE(names.insert(s.name).second) << s.name;
    EXPECT_GE(names.size(), 70u);
    EXPECT_TRUE(find_setting("default_pool_size"));
    EXPECT_FALSE(find_setting("nope"));
}

TEST(ConsoleSettings, FormatsAsPgBouncer) {
    config::general g;
    EXPECT_EQ(find_setting("default_pool_size")->get(g), "20");
    EXPECT_EQ(find_setting("server_lifetime")->get(g), "3600");
    EXPECT_EQ(find_setting("reserve_pool_timeout")->get(g), "5");
    EXPECT_EQ(find_setting("log_connections")->get(g), "1");
    EXPECT_EQ(find_setting("unix_socket_mode")->get(g), "0777");
    EXPECT_EQ(find_setting("pool_mode")->get(g), "session");
    EXPECT_EQ(find_setting("track_extra_parameters")->get(g), "IntervalStyle");
    g.query_wait_timeout = std::chrono::milliseconds(250);
    EXPECT_EQ(find_setting("query_wait_timeout")->get(g), "0.25");
    g.admin_users = {"a", "b"};
    EXPECT_EQ(find_setting("admin_users")->get(g), "a,b");
}

TEST(ConsoleSettings, SetParsesAndValidates) {
    config::general g;
    std::string err;
    EXPECT_TRUE(find_setting("default_pool_size")->set(g, "33", err));
    EXPECT_EQ(g.default_pool_size, 33);
    EXPECT_FALSE(find_setting("default_pool_size")->set(g, "-1", err));
    EXPECT_FALSE(find_setting("default_pool_size")->set(g, "3x", err));
    EXPECT_FALSE(find_setting("default_pool_size")->set(g, "", err));
    EXPECT_EQ(g.default_pool_size, 33);
    EXPECT_TRUE(find_setting("query_wait_timeout")->set(g, "2m", err));
    EXPECT_EQ(g.query_wait_timeout, std::chrono::minutes(2));
    EXPECT_TRUE(find_setting("query_wait_timeout")->set(g, "1.5", err));
    EXPECT_EQ(g.query_wait_timeout, std::chrono::milliseconds(1500));
    EXPECT_FALSE(find_setting("query_wait_timeout")->set(g, "soon", err));
    EXPECT_TRUE(find_setting("log_stats")->set(g, "off", err));
    EXPECT_FALSE(g.log_stats);
    EXPECT_FALSE(find_setting("log_stats")->set(g, "maybe", err));
    EXPECT_TRUE(find_setting("pool_mode")->set(g, "transaction", err));
    EXPECT_EQ(g.pool_mode_, config::pool_mode::transaction);
    EXPECT_FALSE(find_setting("pool_mode")->set(g, "bogus", err));
    EXPECT_TRUE(find_setting("stats_users")->set(g, " x , y ", err));
    EXPECT_EQ(g.stats_users, (std::vector<std::string>{"x", "y"}));
}

TEST(ConsoleSettings, RestartOnlySettingsAreNotChangeable) {
    for (auto name : {"listen_addr", "listen_port", "unix_socket_dir", "workers", "metrics_listen"})
        EXPECT_FALSE(find_setting(name)->changeable) << name;
    for (auto name : {"default_pool_size", "query_wait_timeout", "log_connections", "stats_period"})
        EXPECT_TRUE(find_setting(name)->changeable) << name;
}

// SET parses with the loader's rules (one settings table): what the file refuses, SET refuses.
TEST(ConsoleSettings, SetUsesTheLoaderRules) {
    using namespace std::chrono_literals;
    config::general g;
    std::string err;
    EXPECT_FALSE(find_setting("client_tls_sslmode")->set(g, "bogus", err));
    EXPECT_NE(err.find("'bogus' is not one of disable, allow"), std::string::npos) << err;
    EXPECT_TRUE(find_setting("client_tls_sslmode")->set(g, "Require", err)) << err;
    EXPECT_EQ(g.client_tls_sslmode, "require");
    EXPECT_FALSE(find_setting("listen_port")->set(g, "70000", err));
    EXPECT_NE(err.find("out of range 1..65535"), std::string::npos) << err;
    EXPECT_FALSE(find_setting("metrics_listen")->set(g, "localhost", err));
    EXPECT_TRUE(find_setting("unix_socket_mode")->set(g, "0700", err)) << err;
    EXPECT_EQ(g.unix_socket_mode, 0700);
    EXPECT_TRUE(find_setting("server_fast_close")->set(g, "1", err)) << err;
    EXPECT_TRUE(g.server_fast_close);
    EXPECT_TRUE(find_setting("server_round_robin")->set(g, "1", err)) << err;
    EXPECT_TRUE(g.server_round_robin);
    // A no-op is shown and may be set; it changes nothing but what SHOW CONFIG prints.
    EXPECT_TRUE(find_setting("dns_max_ttl")->set(g, "30", err)) << err;
    EXPECT_EQ(g.dns_max_ttl, 30s);
    EXPECT_EQ(find_setting("dns_max_ttl")->get(g), "30");
}

TEST(ConsoleSettings, ShowConfigListsNoOpsButNotRefusedSettings) {
    config::general g;
    EXPECT_EQ(find_setting("syslog")->get(g), "0");
    EXPECT_EQ(find_setting("dns_max_ttl")->get(g), "15");
    EXPECT_EQ(find_setting("pkt_buf")->get(g), "4096");
    EXPECT_FALSE(find_setting("pkt_buf")->changeable);
    EXPECT_EQ(find_setting("syslog_facility")->get(g), "daemon");
    for (auto name : {"tcp_socket_buffer", "peer_id", "resolv_conf", "unix_socket_group", "disable_pqexec"})
        EXPECT_FALSE(find_setting(name)) << name;
}
