// Sentinel replies and events, from the bytes a sentinel sends: get-master-addr-by-name,
// ROLE, the +switch-master message and the subscription's confirmation; the commands sent;
// the order in which sentinels are asked.
#include "sluice/redis/sentinel_state.hpp"

#include <gtest/gtest.h>

namespace sluice::redis::sentinel {
namespace {

// Parses exactly one RESP value from `bytes`, checking on the way that every strict prefix
// is need_more (a reply split by the network at any byte decodes the same).
value from_bytes(const std::string& bytes) {
    for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
        auto r = parse(std::string_view(bytes).substr(0, cut));
        EXPECT_EQ(r.status, parse_status::need_more) << bytes << " cut at " << cut;
    }
    auto r = parse(bytes);
    EXPECT_EQ(r.status, parse_status::ok) << bytes;
    EXPECT_EQ(r.consumed, bytes.size()) << bytes;
    return r.v;
}

TEST(SentinelCommands, Encoded) {
    EXPECT_EQ(get_master_addr_command("mymaster"),
              "*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$8\r\nmymaster\r\n");
    EXPECT_EQ(auth_command("s3cret"), "*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n");
    EXPECT_EQ(subscribe_switch_master_command(),
              "*2\r\n$9\r\nSUBSCRIBE\r\n$14\r\n+switch-master\r\n");
    EXPECT_EQ(role_command(), "*1\r\n$4\r\nROLE\r\n");
    EXPECT_EQ(ping_command(), "*1\r\n$4\r\nPING\r\n");
}

TEST(SentinelMasterAddr, Found) {
    auto a = parse_master_addr(from_bytes("*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n"));
    ASSERT_EQ(a.kind, answer::found);
    EXPECT_EQ(a.addr, (address{"127.0.0.1", 6380}));
    EXPECT_EQ(a.addr.to_string(), "127.0.0.1:6380");
    // IPv6 and host names (sentinel resolve-hostnames yes) are kept as announced.
    auto b = parse_master_addr(from_bytes("*2\r\n$3\r\n::1\r\n$4\r\n7000\r\n"));
    ASSERT_EQ(b.kind, answer::found);
    EXPECT_EQ(b.addr.to_string(), "[::1]:7000");
    auto d = parse_master_addr(from_bytes("*2\r\n$16\r\nredis-1.internal\r\n$4\r\n6379\r\n"));
    ASSERT_EQ(d.kind, answer::found);
    EXPECT_EQ(d.addr.host, "redis-1.internal");
}

TEST(SentinelMasterAddr, UnknownMasterIsNil) {
    // Redis 7 answers a null array; older versions a null bulk string. Both are nil.
    EXPECT_EQ(parse_master_addr(from_bytes("*-1\r\n")).kind, answer::unknown_master);
    EXPECT_EQ(parse_master_addr(from_bytes("$-1\r\n")).kind, answer::unknown_master);
}

TEST(SentinelMasterAddr, ErrorReplyIsRefusedWithItsText) {
    auto a = parse_master_addr(from_bytes("-NOAUTH Authentication required.\r\n"));
    ASSERT_EQ(a.kind, answer::refused);
    EXPECT_EQ(a.error, "NOAUTH Authentication required.");
}

TEST(SentinelMasterAddr, MalformedShapes) {
    for (std::string bad : {
             "*1\r\n$9\r\n127.0.0.1\r\n",                        // one element
             "*3\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\n2\r\n",          // three
             "*2\r\n$9\r\n127.0.0.1\r\n:6380\r\n",               // port as an integer
             "*2\r\n$9\r\n127.0.0.1\r\n$1\r\n0\r\n",             // port 0
             "*2\r\n$9\r\n127.0.0.1\r\n$5\r\n65536\r\n",         // port out of range
             "*2\r\n$9\r\n127.0.0.1\r\n$4\r\n63x0\r\n",          // not a number
             "*2\r\n$0\r\n\r\n$4\r\n6380\r\n",                   // empty host
             "*2\r\n$5\r\na b c\r\n$4\r\n6380\r\n",              // spaces in the host
             "+OK\r\n",                                          // a status
             ":1\r\n",                                           // an integer
         })
        EXPECT_EQ(parse_master_addr(from_bytes(bad)).kind, answer::malformed) << bad;
}

TEST(SentinelDiscovery, AuthThenAddress) {
    std::vector<value> ok = {from_bytes("+OK\r\n"),
                             from_bytes("*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n")};
    auto a = parse_discovery(ok, true);
    ASSERT_EQ(a.kind, answer::found);
    EXPECT_EQ(a.addr.port, 6380);

    std::vector<value> wrongpass = {
        from_bytes("-WRONGPASS invalid username-password pair or user is disabled.\r\n"),
        from_bytes("-NOAUTH Authentication required.\r\n")};
    auto b = parse_discovery(wrongpass, true);
    ASSERT_EQ(b.kind, answer::refused);
    EXPECT_EQ(b.error.rfind("WRONGPASS", 0), 0u);  // the first error, the cause, is kept

    // Without a password: the one reply alone. A count that does not match is malformed.
    EXPECT_EQ(parse_discovery({ok[1]}, false).kind, answer::found);
    EXPECT_EQ(parse_discovery(ok, false).kind, answer::malformed);
    EXPECT_EQ(parse_discovery({ok[1]}, true).kind, answer::malformed);
    EXPECT_EQ(parse_discovery({}, false).kind, answer::malformed);
    // AUTH answered with something other than +OK.
    EXPECT_EQ(parse_discovery({from_bytes(":1\r\n"), ok[1]}, true).kind, answer::malformed);
}

TEST(SentinelRole, MasterReplicaSentinel) {
    // ROLE on a master: ["master", offset, [[ip, port, offset], ...]].
    EXPECT_EQ(parse_role(from_bytes("*3\r\n$6\r\nmaster\r\n:3129659\r\n*1\r\n*3\r\n$9\r\n127.0.0."
                                    "1\r\n$4\r\n9001\r\n$7\r\n3129242\r\n")),
              role::master);
    // On a replica: ["slave", master-ip, master-port, state, offset].
    EXPECT_EQ(parse_role(from_bytes("*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:9000\r\n$9\r\n"
                                    "connected\r\n:3167038\r\n")),
              role::replica);
    // On a sentinel: ["sentinel", [master names]].
    EXPECT_EQ(parse_role(from_bytes("*2\r\n$8\r\nsentinel\r\n*1\r\n$8\r\nmymaster\r\n")),
              role::sentinel);
    EXPECT_EQ(parse_role(from_bytes("-NOAUTH Authentication required.\r\n")), role::unknown);
    EXPECT_EQ(parse_role(from_bytes("*0\r\n")), role::unknown);
    EXPECT_EQ(parse_role(from_bytes("*1\r\n:1\r\n")), role::unknown);
    EXPECT_EQ(parse_role(from_bytes("*1\r\n$7\r\nprimary\r\n")), role::unknown);
    EXPECT_STREQ(to_string(role::replica), "slave");
}

TEST(SentinelSwitchMaster, Message) {
    const std::string bytes =
        "*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$38\r\nmymaster 127.0.0.1 6380 "
        "127.0.0.1 6381\r\n";
    auto m = parse_switch_master(from_bytes(bytes));
    ASSERT_TRUE(m);
    EXPECT_EQ(m->master, "mymaster");
    EXPECT_EQ(m->from, (address{"127.0.0.1", 6380}));
    EXPECT_EQ(m->to, (address{"127.0.0.1", 6381}));
}

TEST(SentinelSwitchMaster, OtherMessagesAreNotSwitches) {
    // The confirmation of SUBSCRIBE is recognised as such, and is no switch.
    value ack = from_bytes("*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n");
    EXPECT_TRUE(is_subscribed(ack));
    EXPECT_FALSE(parse_switch_master(ack));
    EXPECT_FALSE(is_subscribed(from_bytes("*3\r\n$9\r\nsubscribe\r\n$6\r\n+sdown\r\n:1\r\n")));
    // A PING in subscribed mode answers ["pong", ""].
    value pong = from_bytes("*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    EXPECT_FALSE(parse_switch_master(pong));
    EXPECT_FALSE(is_subscribed(pong));
    // Another channel's message.
    EXPECT_FALSE(parse_switch_master(from_bytes(
        "*3\r\n$7\r\nmessage\r\n$6\r\n+sdown\r\n$38\r\nmymaster 127.0.0.1 6380 127.0.0.1 6381\r\n")));
    EXPECT_FALSE(parse_switch_master(from_bytes("+OK\r\n")));
    EXPECT_FALSE(parse_switch_master(from_bytes("*2\r\n$7\r\nmessage\r\n$1\r\nx\r\n")));
}

TEST(SentinelSwitchMaster, MalformedPayloads) {
    for (const char* bad : {
             "",
             "mymaster",
             "mymaster 127.0.0.1 6380 127.0.0.1",          // four fields
             "mymaster 127.0.0.1 6380 127.0.0.1 6381 x",   // six
             "mymaster  127.0.0.1 6380 127.0.0.1 6381",    // an empty field
             "mymaster 127.0.0.1 6380 127.0.0.1 0",        // port 0
             "mymaster 127.0.0.1 6380 127.0.0.1 http",     // not a port
             "mymaster 127.0.0.1 6380 127.0.0.1 6381 ",    // trailing space
         })
        EXPECT_FALSE(parse_switch_master_payload(bad)) << bad;
    auto ok = parse_switch_master_payload("m-1 ::1 6380 ::1 6381");
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->to.to_string(), "[::1]:6381");
}

TEST(SentinelList, AnsweredMovesToTheFrontOthersKeepTheirOrder) {
    sentinel_list l({{"a", 1}, {"b", 2}, {"c", 3}, {"d", 4}});
    l.answered(0);  // already first
    EXPECT_EQ(l[0].host, "a");
    l.answered(2);
    ASSERT_EQ(l.size(), 4u);
    EXPECT_EQ(l[0].host, "c");
    EXPECT_EQ(l[1].host, "a");
    EXPECT_EQ(l[2].host, "b");
    EXPECT_EQ(l[3].host, "d");
    l.answered(3);
    EXPECT_EQ(l[0].host, "d");
    EXPECT_EQ(l[1].host, "c");
    l.answered(9);  // out of range: nothing changes
    EXPECT_EQ(l[0].host, "d");
}

}  // namespace
}  // namespace sluice::redis::sentinel
