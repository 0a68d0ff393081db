// stats::event_clock: inside a scope (an I/O event's handler) every now() is the first
// reading; outside any scope each now() reads the steady clock; scopes nest, and each
// thread has its own reading.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "sluice/stats/event_clock.hpp"

namespace sluice::stats {
namespace {

using clock = std::chrono::steady_clock;

// Spins until the steady clock has moved past t (it does within microseconds; the bound
// only keeps a broken clock from hanging the test).
bool clock_passes(clock::time_point t) {
    const auto give_up = clock::now() + std::chrono::seconds(10);
    while (clock::now() <= t)
        if (clock::now() > give_up) return false;
    return true;
}

TEST(EventClock, OutsideAScopeEachCallReadsTheClock) {
    const auto first = event_clock::now();
    ASSERT_TRUE(clock_passes(first));
    EXPECT_GT(event_clock::now(), first);
}

TEST(EventClock, InsideAScopeEveryCallReturnsTheFirstReading) {
    const event_clock::scope s;
    const auto first = event_clock::now();
    ASSERT_TRUE(clock_passes(first));
    EXPECT_EQ(event_clock::now(), first);
    EXPECT_EQ(event_clock::now_ns(),
              std::chrono::duration_cast<std::chrono::nanoseconds>(first.time_since_epoch()).count());
}

TEST(EventClock, ScopesNestAndTheOutermostClearsTheReading) {
    clock::time_point outer_reading;
    {
        const event_clock::scope outer;
        outer_reading = event_clock::now();
        ASSERT_TRUE(clock_passes(outer_reading));
        {
            const event_clock::scope inner;  // (a handler called from a handler)
            EXPECT_EQ(event_clock::now(), outer_reading);
        }
        EXPECT_EQ(event_clock::now(), outer_reading);  // the inner scope left it alone
    }
    EXPECT_GT(event_clock::now(), outer_reading);  // no scope: the clock again
    const event_clock::scope next;                   // a later event reads afresh
    EXPECT_GT(event_clock::now(), outer_reading);
}

TEST(EventClock, EachThreadHasItsOwnReading) {
    const event_clock::scope s;
    const auto mine = event_clock::now();
    ASSERT_TRUE(clock_passes(mine));
    clock::time_point theirs, theirs_unscoped;
    std::thread([&] {
        theirs_unscoped = event_clock::now();  // no scope on that thread: the clock
        const event_clock::scope other;
        theirs = event_clock::now();
    }).join();
    EXPECT_GT(theirs_unscoped, mine);
    EXPECT_GT(theirs, mine);
    EXPECT_EQ(event_clock::now(), mine);  // this thread's reading is untouched
}

}  // namespace
}  // namespace sluice::stats
