// Circuit breaker transitions on a fake clock.
#include "sluice/ratelimit/breaker.hpp"

#include <gtest/gtest.h>

namespace sluice::ratelimit {
namespace {

constexpr breaker::nanos ms = 1'000'000;

breaker make() {
    return breaker({3, 100 * ms, 400 * ms});
}

TEST(Breaker, ClosedUntilThresholdFailuresInARow) {
    auto b = make();
    EXPECT_TRUE(b.allow(0));
    b.on_failure(0);
    b.on_failure(0);
    EXPECT_EQ(b.current(), breaker::state::closed);
    b.on_success();  // resets the count
    b.on_failure(0);
    b.on_failure(0);
    EXPECT_EQ(b.current(), breaker::state::closed);
    b.on_failure(1 * ms);
    EXPECT_EQ(b.current(), breaker::state::open);
    EXPECT_FALSE(b.allow(2 * ms));
    EXPECT_FALSE(b.allow(100 * ms));
}

TEST(Breaker, HalfOpenLetsOneProbeThrough) {
    auto b = make();
    for (int i = 0; i < 3; ++i) b.on_failure(0);
    EXPECT_TRUE(b.allow(100 * ms));  // the probe
    EXPECT_EQ(b.current(), breaker::state::half_open);
    EXPECT_FALSE(b.allow(100 * ms));  // only one
    b.on_success();
    EXPECT_EQ(b.current(), breaker::state::closed);
    EXPECT_TRUE(b.allow(100 * ms));
    EXPECT_EQ(b.failures(), 0);
}

TEST(Breaker, FailedProbeDoublesTheOpenPeriodUpToTheCap) {
    auto b = make();
    for (int i = 0; i < 3; ++i) b.on_failure(0);
    EXPECT_EQ(b.open_until(), 100 * ms);
    ASSERT_TRUE(b.allow(100 * ms));
    b.on_failure(100 * ms);
    EXPECT_EQ(b.current(), breaker::state::open);
    EXPECT_EQ(b.open_until(), 300 * ms);  // 200 ms
    ASSERT_TRUE(b.allow(300 * ms));
    b.on_failure(300 * ms);
    EXPECT_EQ(b.open_until(), 700 * ms);  // 400 ms
    ASSERT_TRUE(b.allow(700 * ms));
    b.on_failure(700 * ms);
    EXPECT_EQ(b.open_until(), 1100 * ms);  // capped at 400 ms
    // Recovery resets the backoff.
    ASSERT_TRUE(b.allow(1100 * ms));
    b.on_success();
    for (int i = 0; i < 3; ++i) b.on_failure(2000 * ms);
    EXPECT_EQ(b.open_until(), 2100 * ms);
}

TEST(Breaker, TripOpensAtOnce) {
    auto b = make();
    b.trip(5 * ms);
    EXPECT_EQ(b.current(), breaker::state::open);
    EXPECT_FALSE(b.allow(6 * ms));
    EXPECT_TRUE(b.allow(105 * ms));
    b.on_success();
    EXPECT_EQ(b.current(), breaker::state::closed);
}

TEST(Breaker, LateFailureWhileOpenKeepsItOpen) {
    auto b = make();
    for (int i = 0; i < 3; ++i) b.on_failure(0);
    b.on_failure(50 * ms);
    EXPECT_EQ(b.current(), breaker::state::open);
    EXPECT_EQ(b.open_until(), 100 * ms);
}

}  // namespace
}  // namespace sluice::ratelimit
