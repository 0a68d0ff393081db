// stats::held_add / held_total: each thread counts in a slot of its own; the total is the
// sum of every slot, and a thread's counts outlive the thread.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "sluice/stats/held.hpp"

namespace sluice::stats {
namespace {

TEST(Held, TotalIsTheSumOfEveryThreadsCountsAfterTheyExit) {
    const auto before = held_total(held::scratch_free);
    std::vector<std::thread> threads;
    for (int t = 1; t <= 4; ++t) {
        threads.emplace_back([t] {
            for (int i = 0; i < 1000; ++i) held_add(held::scratch_free, t);
            held_add(held::scratch_free, -t);  // (a give-back on the same thread)
        });
    }
    for (auto& t : threads) t.join();
    // 999 x (1 + 2 + 3 + 4), from threads that have all ended
    EXPECT_EQ(held_total(held::scratch_free) - before, 9990);
    held_add(held::scratch_free, -9990);  // taken on this thread, given back here
    EXPECT_EQ(held_total(held::scratch_free), before);
}

TEST(Held, CountersAreKeptApart) {
    const auto used = held_total(held::iobuf_used_bytes);
    const auto blocks = held_total(held::iobuf_free_blocks);
    held_add(held::iobuf_used_bytes, 16384);
    EXPECT_EQ(held_total(held::iobuf_used_bytes) - used, 16384);
    EXPECT_EQ(held_total(held::iobuf_free_blocks), blocks);
    held_add(held::iobuf_used_bytes, -16384);
    EXPECT_EQ(held_total(held::iobuf_used_bytes), used);
}

}  // namespace
}  // namespace sluice::stats
