// host_state: the choice of host for a new server connection (pool/host_state.hpp),
// driven with a fake clock and the roles servers report.
#include "sluice/pool/host_state.hpp"

#include <gtest/gtest.h>

namespace sluice::pool {
namespace {

using namespace std::chrono_literals;
using hs = host_state;
using v = hs::verdict;
using idx = std::vector<std::size_t>;

const server_role primary{false, false};
const server_role standby{true, true};  // a hot standby also reports read-only
const server_role read_only_primary{false, true};
const hs::clock_time t0{std::chrono::seconds(1000)};
const auto retry = 15s;

TEST(HostState, ParsesLibpqNames) {
    for (auto t : {target_session_attrs::any, target_session_attrs::read_write,
                   target_session_attrs::read_only, target_session_attrs::primary,
                   target_session_attrs::standby, target_session_attrs::prefer_standby})
        EXPECT_EQ(parse_target_session_attrs(to_string(t)), t);
    EXPECT_FALSE(parse_target_session_attrs("readwrite"));
    EXPECT_FALSE(parse_target_session_attrs("Read-Write"));
}

TEST(HostState, RoleFromParameterStatus) {
    std::string on = "on", off = "off";
    EXPECT_FALSE(role_from_parameters(nullptr, &off));  // before PostgreSQL 14: ask instead
    EXPECT_EQ(role_from_parameters(&off, &off), primary);
    EXPECT_EQ(role_from_parameters(&on, &on), standby);
    EXPECT_EQ(role_from_parameters(&off, &on), read_only_primary);
    EXPECT_EQ(role_from_parameters(&off, nullptr), primary);
    EXPECT_STREQ(role_name(standby), "standby");
    EXPECT_STREQ(role_name(read_only_primary), "primary");
}

TEST(HostState, FitsAsLibpqDefinesIt) {
    using t = target_session_attrs;
    EXPECT_TRUE(fits(t::read_write, primary, false));
    EXPECT_FALSE(fits(t::read_write, standby, false));
    EXPECT_FALSE(fits(t::read_write, read_only_primary, false));
    EXPECT_TRUE(fits(t::read_only, read_only_primary, false));
    EXPECT_TRUE(fits(t::read_only, standby, false));
    EXPECT_FALSE(fits(t::read_only, primary, false));
    EXPECT_TRUE(fits(t::primary, read_only_primary, false));
    EXPECT_FALSE(fits(t::primary, standby, false));
    EXPECT_TRUE(fits(t::standby, standby, true));  // the lag guard is prefer-standby's only
    EXPECT_FALSE(fits(t::standby, primary, false));
    EXPECT_TRUE(fits(t::prefer_standby, standby, false));
    EXPECT_FALSE(fits(t::prefer_standby, standby, true));
    EXPECT_TRUE(fits(t::any, standby, true));
}

TEST(HostState, DisableTriesHostsInOrder) {
    hs h(3, target_session_attrs::any, false);
    EXPECT_EQ(h.plan(t0), (idx{0, 1, 2}));
    EXPECT_EQ(h.plan(t0), (idx{0, 1, 2}));
}

TEST(HostState, RoundRobinRotatesTheFirstHost) {
    hs h(3, target_session_attrs::any, true);
    EXPECT_EQ(h.plan(t0), (idx{0, 1, 2}));
    EXPECT_EQ(h.plan(t0), (idx{1, 2, 0}));
    EXPECT_EQ(h.plan(t0), (idx{2, 0, 1}));
    EXPECT_EQ(h.plan(t0), (idx{0, 1, 2}));
}

TEST(HostState, RoundRobinIgnoresWhatIsKnownWhenAnyServerFits) {
    hs h(2, target_session_attrs::any, true);
    h.judge(0, primary, false, {}, t0, retry);  // 1 unknown: still every other connection
    EXPECT_EQ(h.plan(t0), (idx{0, 1}));
    EXPECT_EQ(h.plan(t0), (idx{1, 0}));
}

TEST(HostState, FailedHostWaitsOutServerLoginRetry) {
    hs h(2, target_session_attrs::any, false);
    h.connect_failed(0, t0, retry);
    EXPECT_EQ(h.plan(t0 + 1s), (idx{1}));
    EXPECT_EQ(h.plan(t0 + retry), (idx{0, 1}));
    h.connect_failed(0, t0, retry);
    h.connect_failed(1, t0 + 2s, retry);
    EXPECT_TRUE(h.plan(t0 + 3s).empty());
    EXPECT_EQ(h.next_retry(t0 + 3s), t0 + retry);  // the first host to come back
    EXPECT_EQ(h.next_retry(t0 + 20s), t0 + 20s);
}

TEST(HostState, ReadWriteSkipsTheStandbyOnceKnown) {
    // hosts: 0 = standby, 1 = primary (the order an operator may well write them in)
    hs h(2, target_session_attrs::read_write, false);
    EXPECT_EQ(h.plan(t0), (idx{0, 1}));
    EXPECT_EQ(h.judge(0, standby, false, {1}, t0, retry), v::reject);
    EXPECT_EQ(h.judge(1, primary, false, {}, t0, retry), v::accept);
    // Now known: the primary first, and the standby is not logged in to again for a while.
    EXPECT_EQ(h.plan(t0 + 1s), (idx{1}));
    EXPECT_EQ(h.plan(t0 + retry), (idx{1, 0}));
}

TEST(HostState, FailoverFindsThePromotedStandby) {
    hs h(2, target_session_attrs::read_write, false);
    h.judge(0, primary, false, {1}, t0, retry);
    h.judge(1, standby, false, {}, t0, retry);
    // The primary dies; the standby is not promoted yet, then is.
    h.connect_failed(0, t0 + 20s, 1s);
    EXPECT_EQ(h.plan(t0 + 20s), (idx{1}));
    EXPECT_EQ(h.judge(1, standby, false, {}, t0 + 20s, 1s), v::reject);
    EXPECT_TRUE(h.plan(t0 + 20s).empty());
    EXPECT_EQ(h.next_retry(t0 + 20s), t0 + 21s);
    EXPECT_EQ(h.plan(t0 + 21s), (idx{0, 1}));  // 0 unknown again, 1 a known standby
    h.connect_failed(0, t0 + 21s, 1s);
    EXPECT_EQ(h.judge(1, primary, false, {}, t0 + 21s, 1s), v::accept);
    EXPECT_EQ(h.known_role(1), primary);
    EXPECT_EQ(h.plan(t0 + 22s), (idx{1, 0}));  // the new primary first from now on
}

TEST(HostState, PreferStandbyFallsBackToThePrimaryOnlyWhenNoStandbyIsLeft) {
    hs h(3, target_session_attrs::prefer_standby, false);
    // 0 = primary, 1 = standby that is down, 2 = unknown so far
    EXPECT_EQ(h.judge(0, primary, false, {1, 2}, t0, retry), v::reject);  // 1, 2 may be standbys
    EXPECT_EQ(h.plan(t0), (idx{1, 2, 0}));  // the known primary last
    h.connect_failed(1, t0, retry);
    EXPECT_EQ(h.judge(2, primary, false, {0}, t0, retry), v::accept);  // 0 is a known primary
    EXPECT_EQ(h.plan(t0 + 1s), (idx{0, 2}));
    EXPECT_EQ(h.judge(0, primary, false, {2}, t0 + 1s, retry), v::accept);
    EXPECT_EQ(h.judge(1, standby, false, {}, t0 + retry, retry), v::accept);
    EXPECT_EQ(h.plan(t0 + retry), (idx{1, 0, 2}));  // the standby first again
}

TEST(HostState, PreferStandbyLagGuard) {
    hs h(2, target_session_attrs::prefer_standby, false);  // 0 = primary, 1 = standby
    h.judge(0, primary, false, {1}, t0, retry);
    EXPECT_EQ(h.judge(1, standby, true, {}, t0, retry), v::reject);  // lags
    EXPECT_TRUE(h.lagging(1));
    EXPECT_EQ(h.plan(t0 + 1s), (idx{0}));  // the standby waits out the retry
    EXPECT_EQ(h.judge(0, primary, false, {}, t0 + 1s, retry), v::accept);
    EXPECT_EQ(h.plan(t0 + retry), (idx{1, 0}));  // it may have caught up: tried first again
    EXPECT_EQ(h.judge(1, standby, false, {}, t0 + retry, retry), v::accept);  // caught up
    EXPECT_FALSE(h.lagging(1));
    EXPECT_EQ(h.plan(t0 + retry), (idx{1, 0}));
}

TEST(HostState, RoleChangesAreCounted) {
    hs h(2, target_session_attrs::standby, false);
    EXPECT_EQ(h.role_changes(0), 0u);
    h.judge(0, standby, false, {1}, t0, retry);
    EXPECT_EQ(h.role_changes(0), 0u);  // first seen: nothing changed
    h.judge(0, standby, false, {1}, t0, retry);
    EXPECT_EQ(h.role_changes(0), 0u);
    h.learnt(0, read_only_primary);  // promoted (read-only by default, still a promotion)
    EXPECT_EQ(h.role_changes(0), 1u);
    h.learnt(0, primary);  // only default_transaction_read_only changed: not a role change
    EXPECT_EQ(h.role_changes(0), 1u);
    EXPECT_EQ(h.role_changes(1), 0u);
    h.connect_failed(0, t0, retry);  // forgotten, not a change
    h.judge(0, primary, false, {}, t0 + retry, retry);
    EXPECT_EQ(h.role_changes(0), 1u);
}

TEST(HostState, ACaughtUpStandbyIsFoundAgainInListOrder) {
    // disable, the primary listed first: the standby must not stay behind it for good.
    hs h(2, target_session_attrs::prefer_standby, false);
    h.judge(1, standby, true, {}, t0, retry);  // lags
    EXPECT_EQ(h.plan(t0 + 1s), (idx{0}));
    EXPECT_EQ(h.judge(0, primary, false, {}, t0 + 1s, retry), v::accept);
    auto p = h.plan(t0 + retry);
    EXPECT_EQ(p, (idx{1, 0}));
    EXPECT_EQ(h.judge(1, standby, false, {0}, t0 + retry, retry), v::accept);
}

TEST(HostState, NoHostsNoPlan) {
    hs h(0, target_session_attrs::any, true);
    EXPECT_TRUE(h.plan(t0).empty());
    h.connect_failed(3, t0, retry);  // out of range: ignored
    EXPECT_EQ(h.judge(3, primary, false, {}, t0, retry), v::reject);
    EXPECT_FALSE(h.known_role(3));
}

TEST(HostState, StandbyTargetNeverFallsBack) {
    hs h(1, target_session_attrs::standby, false);
    EXPECT_EQ(h.judge(0, primary, false, {}, t0, retry), v::reject);
    EXPECT_TRUE(h.plan(t0).empty());
}

}  // namespace
}  // namespace sluice::pool
