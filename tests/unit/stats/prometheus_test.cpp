#include "sluice/stats/prometheus.hpp"

#include <gtest/gtest.h>

using namespace sluice::stats;

TEST(Prometheus, FamilyAndSamples) {
    prometheus_writer w;
    w.family("sluice_queries_total", "counter", "Queries\ncompleted");
    w.sample("sluice_queries_total", {{"database", "app"}, {"user", "a\"b\\c\nd"}}, std::uint64_t(42));
    w.sample("sluice_x", {}, 0.25);
    EXPECT_EQ(w.str(),
              "# HELP sluice_queries_total Queries\\ncompleted\n"
              "# TYPE sluice_queries_total counter\n"
              "sluice_queries_total{database=\"app\",user=\"a\\\"b\\\\c\\nd\"} 42\n"
              "sluice_x 0.25\n");
}

TEST(Prometheus, HistogramInSeconds) {
    histogram h;
    h.record(50);      // 50 us
    h.record(2000);    // 2 ms
    h.record(3000000); // 3 s
    prometheus_writer w;
    w.histogram("lat_seconds", {{"database", "app"}}, h, {100, 1000000});
    EXPECT_EQ(w.str(),
              "lat_seconds_bucket{database=\"app\",le=\"0.0001\"} 1\n"
              "lat_seconds_bucket{database=\"app\",le=\"1\"} 2\n"
              "lat_seconds_bucket{database=\"app\",le=\"+Inf\"} 3\n"
              "lat_seconds_sum{database=\"app\"} 3.00205\n"
              "lat_seconds_count{database=\"app\"} 3\n");
}

TEST(Prometheus, Values) {
    EXPECT_EQ(prometheus_writer::format_value(3), "3");
    EXPECT_EQ(prometheus_writer::format_value(1e-4), "0.0001");
    EXPECT_EQ(prometheus_writer::format_value(1.0 / 0.0), "+Inf");
    auto& b = prometheus_writer::default_latency_bounds_us();
    for (std::size_t i = 1; i < b.size(); ++i) EXPECT_LT(b[i - 1], b[i]);
}
