// GCRA arithmetic on a fake clock, the lock-free bucket, leases, lease sizing.
#include "sluice/ratelimit/bucket.hpp"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace sluice::ratelimit {
namespace {

constexpr nanos ms = 1'000'000;
constexpr nanos sec = 1'000'000'000;
constexpr nanos t0 = 1000 * sec;  // an arbitrary monotonic origin

TEST(GcraParams, RateAndBurst) {
    auto p = gcra_params::from(100, 20);
    EXPECT_EQ(p.interval, 10 * ms);
    EXPECT_EQ(p.tolerance, 200 * ms);
    EXPECT_DOUBLE_EQ(p.rate(), 100);
    EXPECT_DOUBLE_EQ(p.burst(), 20);
}

TEST(GcraParams, ZeroBurstIsOneSecondOfRateAtLeastOne) {
    EXPECT_DOUBLE_EQ(gcra_params::from(100, 0).burst(), 100);
    EXPECT_DOUBLE_EQ(gcra_params::from(0.5, 0).burst(), 1);
}

TEST(GcraParams, ZeroOrNegativeRateIsUnlimited) {
    EXPECT_TRUE(gcra_params::from(0, 10).unlimited());
    EXPECT_TRUE(gcra_params::from(-1, 10).unlimited());
    auto g = gcra_take(0, t0, gcra_params{}, 7);
    EXPECT_EQ(g.granted, 7);
}

TEST(GcraParams, ShareDividesRateAndBurst) {
    auto s = gcra_params::from(100, 20, 4);
    EXPECT_DOUBLE_EQ(s.rate(), 25);
    EXPECT_DOUBLE_EQ(s.burst(), 5);
    // The burst share never drops below one token.
    EXPECT_DOUBLE_EQ(gcra_params::from(10, 2, 8).burst(), 1);
}

TEST(Gcra, FreshBucketGrantsTheBurstThenOnePerInterval) {
    auto p = gcra_params::from(100, 5);
    nanos tat = 0;
    for (int i = 0; i < 5; ++i) {
        auto g = gcra_take(tat, t0, p, 1);
        ASSERT_EQ(g.granted, 1) << i;
        tat = g.tat;
    }
    auto g = gcra_take(tat, t0, p, 1);
    EXPECT_EQ(g.granted, 0);
    EXPECT_EQ(g.retry_after, 10 * ms);
    EXPECT_EQ(gcra_take(tat, t0 + 10 * ms - 1, p, 1).granted, 0);
    g = gcra_take(tat, t0 + 10 * ms, p, 1);
    EXPECT_EQ(g.granted, 1);
}

TEST(Gcra, GrantsUpToWantAtOnce) {
    auto p = gcra_params::from(100, 20);
    auto g = gcra_take(0, t0, p, 8);
    EXPECT_EQ(g.granted, 8);
    EXPECT_EQ(g.retry_after, 0);  // tokens are left
    g = gcra_take(g.tat, t0, p, 50);
    EXPECT_EQ(g.granted, 12);  // only what is left of the burst
    EXPECT_EQ(g.retry_after, 10 * ms);
}

TEST(Gcra, SustainedRateOverManySeconds) {
    // Requests every 1 ms (1000/s) against 100/s with burst 10: over 10 s, 10 + 1000 pass.
    auto p = gcra_params::from(100, 10);
    nanos tat = 0;
    int allowed = 0;
    for (nanos t = t0; t < t0 + 10 * sec; t += ms) {
        auto g = gcra_take(tat, t, p, 1);
        tat = g.tat;
        allowed += int(g.granted);
    }
    EXPECT_NEAR(allowed, 1010, 1);
}

TEST(Gcra, IdleTimeRefillsOnlyUpToTheBurst) {
    auto p = gcra_params::from(10, 3);
    auto g = gcra_take(0, t0, p, 3);
    ASSERT_EQ(g.granted, 3);
    g = gcra_take(g.tat, t0 + 3600 * sec, p, 100);
    EXPECT_EQ(g.granted, 3);
}

TEST(Gcra, ReserveWaitsForTheNextSlotWithinMaxWait) {
    auto p = gcra_params::from(100, 1);
    auto r = gcra_reserve(0, t0, p, 0);
    ASSERT_TRUE(r.admitted);
    EXPECT_EQ(r.wait, 0);
    // The next token is 10 ms away; a second reservation queues behind it.
    auto r2 = gcra_reserve(r.tat, t0, p, 50 * ms);
    ASSERT_TRUE(r2.admitted);
    EXPECT_EQ(r2.wait, 10 * ms);
    auto r3 = gcra_reserve(r2.tat, t0, p, 50 * ms);
    ASSERT_TRUE(r3.admitted);
    EXPECT_EQ(r3.wait, 20 * ms);
    // Past max_wait: refused, with the wait it would have needed as the hint, TAT kept.
    auto r4 = gcra_reserve(r3.tat, t0, p, 25 * ms);
    EXPECT_FALSE(r4.admitted);
    EXPECT_EQ(r4.wait, 30 * ms);
    EXPECT_EQ(r4.tat, r3.tat);
}

TEST(Gcra, ReserveAndTakeAgreeOnConformance) {
    auto p = gcra_params::from(50, 4);
    nanos tat_a = 0, tat_b = 0;
    for (nanos t = t0; t < t0 + 2 * sec; t += 3 * ms) {
        auto g = gcra_take(tat_a, t, p, 1);
        auto r = gcra_reserve(tat_b, t, p, 0);
        ASSERT_EQ(g.granted == 1, r.admitted) << (t - t0);
        tat_a = g.tat;
        tat_b = r.tat;
    }
}

TEST(AtomicGcra, ThreadsNeverExceedTheBudget) {
    // Frozen clock: exactly the burst is handed out, whatever the interleaving.
    auto p = gcra_params::from(1, 1000);
    atomic_gcra bucket;
    std::atomic<int> granted{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i)
        threads.emplace_back([&] {
            for (int j = 0; j < 1000; ++j) granted += int(bucket.take(t0, p, 1).granted);
        });
    for (auto& t : threads) t.join();
    EXPECT_EQ(granted.load(), 1000);
}

TEST(Lease, TakeAddDrain) {
    lease l;
    EXPECT_FALSE(l.try_take());
    l.add(3);
    EXPECT_TRUE(l.try_take());
    EXPECT_EQ(l.size(), 2);
    l.add(0);
    l.add(-5);  // ignored
    EXPECT_EQ(l.size(), 2);
    EXPECT_EQ(l.drain(), 2);
    EXPECT_FALSE(l.try_take());
}

TEST(Lease, ConcurrentTakesSpendEachTokenOnce) {
    lease l;
    l.add(10000);
    std::atomic<int> taken{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i)
        threads.emplace_back([&] {
            while (l.try_take()) ++taken;
        });
    for (auto& t : threads) t.join();
    EXPECT_EQ(taken.load(), 10000);
    EXPECT_EQ(l.size(), 0);
}

TEST(LeaseSize, DerivedFromTheRateCappedByTheBurst) {
    EXPECT_EQ(lease_size_for(100, 0, 0), 5);  // 50 ms of budget
    EXPECT_EQ(lease_size_for(10, 0, 0), 1);   // at least one
    EXPECT_EQ(lease_size_for(10000, 0, 0), 500);
    EXPECT_EQ(lease_size_for(10000, 50, 0), 50);  // never more than the burst
    EXPECT_EQ(lease_size_for(100, 0, 7), 7);      // configured
    EXPECT_EQ(lease_size_for(100, 3, 7), 3);
}

TEST(Script, KeysAreHashTaggedPerTenant) {
    EXPECT_EQ(bucket_key("acme", 'q'), "sluice:{acme}:q");
    EXPECT_EQ(bucket_key("", 't'), "sluice:{}:t");
}

TEST(Script, Sha1IsWhatRedisNamesTheScriptBy) {
    // SHA-1 of "return 1" as printed by SCRIPT LOAD.
    EXPECT_EQ(script_sha1("return 1"), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    EXPECT_EQ(script_sha1(gcra_lua).size(), 40u);
    EXPECT_NE(std::string(gcra_lua).find("redis.call('TIME')"), std::string::npos);
}

}  // namespace
}  // namespace sluice::ratelimit
