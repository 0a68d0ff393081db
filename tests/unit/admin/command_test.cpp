#include "sluice/admin/command.hpp"

#include <gtest/gtest.h>

using namespace sluice::admin;

namespace {
command parse_ok(const std::string& s) {
    std::string err;
    auto c = parse_command(s, err);
    EXPECT_TRUE(c.has_value()) << s << ": " << err;
    return c.value_or(command{});
}
std::string parse_err(const std::string& s) {
    std::string err;
    auto c = parse_command(s, err);
    EXPECT_FALSE(c.has_value()) << s;
    return err;
}
}  // namespace

TEST(ConsoleCommand, SplitStatements) {
    EXPECT_EQ(split_statements("SHOW POOLS; show stats ;"),
              (std::vector<std::string>{"SHOW POOLS", "show stats"}));
    EXPECT_EQ(split_statements("  ;  ; "), std::vector<std::string>{});
    EXPECT_EQ(split_statements("SET a = 'x;y'; PAUSE \"d;b\""),
              (std::vector<std::string>{"SET a = 'x;y'", "PAUSE \"d;b\""}));
}

TEST(ConsoleCommand, Show) {
    auto c = parse_ok("show Pools");
    EXPECT_EQ(c.verb, "SHOW");
    EXPECT_EQ(c.subject, "POOLS");
    EXPECT_TRUE(c.read_only());
    EXPECT_EQ(parse_ok("SHOW transaction isolation level").subject, "TRANSACTION ISOLATION LEVEL");
    parse_err("SHOW");
    parse_err("SHOW = x");
}

TEST(ConsoleCommand, ControlWithOptionalDatabase) {
    EXPECT_FALSE(parse_ok("PAUSE").arg);
    EXPECT_EQ(parse_ok("pause App").arg, "app");        // unquoted names fold to lower case
    EXPECT_EQ(parse_ok("PAUSE \"App\"").arg, "App");    // quoted names keep their case
    EXPECT_FALSE(parse_ok("pause").read_only());
    for (auto v : {"RESUME", "KILL", "RECONNECT", "WAIT_CLOSE"}) {
        EXPECT_EQ(parse_ok(std::string(v) + " db1").arg, "db1");
        parse_err(std::string(v) + " db1 db2");
    }
    parse_err("ENABLE");
    parse_err("DISABLE");
    EXPECT_EQ(parse_ok("DISABLE app").verb, "DISABLE");
    parse_err("RELOAD now");
    EXPECT_EQ(parse_ok("reload").verb, "RELOAD");
    EXPECT_EQ(parse_ok("SUSPEND").verb, "SUSPEND");
}

TEST(ConsoleCommand, KillClient) {
    EXPECT_EQ(parse_ok("KILL_CLIENT 42").client_id, 42u);
    parse_err("KILL_CLIENT");
    parse_err("KILL_CLIENT abc");
    parse_err("KILL_CLIENT -1");
    parse_err("KILL_CLIENT 99999999999999999999999");
}

TEST(ConsoleCommand, Shutdown) {
    EXPECT_FALSE(parse_ok("SHUTDOWN").arg);
    EXPECT_EQ(parse_ok("shutdown wait_for_servers").arg, "WAIT_FOR_SERVERS");
    EXPECT_EQ(parse_ok("SHUTDOWN WAIT_FOR_CLIENTS").arg, "WAIT_FOR_CLIENTS");
    parse_err("SHUTDOWN NOW");
}

TEST(ConsoleCommand, Set) {
    auto c = parse_ok("SET default_pool_size = 30");
    EXPECT_EQ(c.set_key, "default_pool_size");
    EXPECT_EQ(c.set_value, "30");
    c = parse_ok("set Query_Wait_Timeout TO '2m'");
    EXPECT_EQ(c.set_key, "query_wait_timeout");
    EXPECT_EQ(c.set_value, "2m");
    c = parse_ok("SET application_name = 'it''s'");
    EXPECT_EQ(c.set_value, "it's");
    c = parse_ok("SET SESSION extra_float_digits = 3");
    EXPECT_EQ(c.set_key, "extra_float_digits");
    c = parse_ok("SET TIME ZONE 'UTC'");
    EXPECT_EQ(c.set_key, "time zone");
    EXPECT_EQ(c.set_value, "UTC");
    c = parse_ok("SET admin_users = alice, bob");
    EXPECT_EQ(c.set_value, "alice, bob");
    parse_err("SET");
    parse_err("SET x =");
    parse_err("SET x = = 1");
}

TEST(ConsoleCommand, Errors) {
    EXPECT_NE(parse_err("FROBNICATE").find("unknown command"), std::string::npos);
    parse_err("SELECT 1");
    EXPECT_NE(parse_err("SET a = 'unterminated").find("unterminated"), std::string::npos);
    parse_err("SHOW POOLS(");
    parse_err("");
    parse_err("'x'");
}
