#include "sluice/stats/averages.hpp"

#include <gtest/gtest.h>

using namespace sluice::stats;
using namespace std::chrono_literals;

TEST(Averages, PerSecondRatesAndPerEventTimes) {
    counters prev, cur;
    prev.xact_count = 100;
    cur.xact_count = 700;  // 600 in 60 s
    cur.query_count = 1200;
    cur.bytes_received = 6000;
    cur.bytes_sent = 60000;
    prev.xact_time = 1000;
    cur.xact_time = 1000 + 600 * 250;  // 250 us per transaction
    cur.query_time = 1200 * 100;
    cur.wait_time = 60 * 30;  // 30 us of waiting per second
    auto a = compute_averages(prev, cur, 60s);
    EXPECT_EQ(a.xact_count, 10u);
    EXPECT_EQ(a.query_count, 20u);
    EXPECT_EQ(a.bytes_received, 100u);
    EXPECT_EQ(a.bytes_sent, 1000u);
    EXPECT_EQ(a.xact_time, 250u);
    EXPECT_EQ(a.query_time, 100u);
    EXPECT_EQ(a.wait_time, 30u);
}

TEST(Averages, NoActivityAndCounterResets) {
    counters prev, cur;
    prev.xact_count = 50;  // went down: a pool was dropped
    auto a = compute_averages(prev, cur, 1s);
    EXPECT_EQ(a, counters{});
    EXPECT_EQ(compute_averages(cur, cur, 0s), counters{});
}

TEST(Averages, KeeperFirstSampleIsBaseline) {
    averages_keeper k;
    auto t0 = averages_keeper::clock::time_point{} + 1000s;
    std::map<std::string, counters> totals;
    totals["app"].xact_count = 1000;
    EXPECT_TRUE(k.sample(totals, t0).empty());
    EXPECT_EQ(k.average_of("app").xact_count, 0u);
    totals["app"].xact_count = 1500;
    totals["other"].query_count = 20;  // appeared during the period
    auto out = k.sample(totals, t0 + 10s);
    EXPECT_EQ(out["app"].xact_count, 50u);
    EXPECT_EQ(out["other"].query_count, 2u);
    EXPECT_EQ(k.average_of("app").xact_count, 50u);
    EXPECT_EQ(k.averages().size(), 2u);
    EXPECT_EQ(k.average_of("nope"), counters{});
}

TEST(Averages, ColumnNamesMatchPgBouncer) {
    EXPECT_EQ(counter_names().size(), counters{}.values().size());
    EXPECT_EQ(stats_total_names().front(), "total_server_assignment_count");
    EXPECT_EQ(stats_avg_names()[3], "avg_recv");
    EXPECT_EQ(stats_avg_names()[4], "avg_sent");
    EXPECT_EQ(stats_total_names()[3], "total_received");
}

TEST(Averages, LogLine) {
    counters a;
    a.xact_count = 3;
    a.query_count = 4;
    a.bytes_received = 5;
    a.bytes_sent = 6;
    a.xact_time = 7;
    a.query_time = 8;
    a.wait_time = 9;
    auto line = format_stats_line(a);
    EXPECT_EQ(line.rfind("stats: 3 xacts/s, 4 queries/s", 0), 0u) << line;
    EXPECT_NE(line.find("in 5 B/s, out 6 B/s, xact 7 us, query 8 us, wait 9 us"), std::string::npos)
        << line;
}
