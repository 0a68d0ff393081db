#include "sluice/stats/histogram.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <thread>
#include <vector>

using sluice::stats::histogram;

namespace {

double rel_error(double got, double want) { return std::fabs(got - want) / want; }

}  // namespace

TEST(Histogram, EmptyIsZero) {
    histogram h;
    EXPECT_EQ(h.count(), 0u);
    EXPECT_EQ(h.sum(), 0u);
    EXPECT_EQ(h.percentile(0.5), 0u);
    EXPECT_EQ(h.percentile(0.999), 0u);
    auto c = h.cumulative({1, 1000});
    EXPECT_EQ(c, (std::vector<std::uint64_t>{0, 0}));
}

TEST(Histogram, BucketsAreContiguousAndAtMostAboutTenPercentWide) {
    EXPECT_EQ(histogram::lower_bound(0), 0u);
    for (int i = 1; i < histogram::bucket_count; ++i)
        EXPECT_EQ(histogram::lower_bound(i), histogram::upper_bound(i - 1) + 1) << i;
    for (int i = 16; i < histogram::bucket_count; ++i) {
        double lo = double(histogram::lower_bound(i)), hi = double(histogram::upper_bound(i));
        EXPECT_LE((hi - lo + 1) / lo, 0.125 + 1e-9) << i;
    }
    // 1 us .. ~17.9 minutes
    EXPECT_GE(histogram::upper_bound(histogram::bucket_count - 1), 1000u * 1000000u);
}

TEST(Histogram, EveryValueLandsInItsBucket) {
    std::mt19937_64 rng(7);
    for (int i = 0; i < 100000; ++i) {
        std::uint64_t v = rng() % (std::uint64_t(1) << (rng() % 31));
        int b = histogram::bucket_of(v);
        ASSERT_LE(histogram::lower_bound(b), v);
        ASSERT_GE(histogram::upper_bound(b), v);
    }
    for (std::uint64_t v = 0; v < 5000; ++v) {
        int b = histogram::bucket_of(v);
        ASSERT_LE(histogram::lower_bound(b), v);
        ASSERT_GE(histogram::upper_bound(b), v);
    }
    // Beyond the range: the last bucket, never out of bounds.
    EXPECT_EQ(histogram::bucket_of(std::uint64_t(1) << 40), histogram::bucket_count - 1);
    EXPECT_EQ(histogram::bucket_of(~std::uint64_t(0)), histogram::bucket_count - 1);
}

TEST(Histogram, SmallValuesAreExact) {
    histogram h;
    for (int v = 1; v <= 10; ++v) h.record(v);
    EXPECT_EQ(h.percentile(0.5), 5u);
    EXPECT_EQ(h.percentile(0.9), 9u);
    EXPECT_EQ(h.percentile(1.0), 10u);
    EXPECT_EQ(h.percentile(0.0), 1u);
    EXPECT_EQ(h.count(), 10u);
    EXPECT_EQ(h.sum(), 55u);
}

TEST(Histogram, UniformDistributionPercentiles) {
    histogram h;
    for (std::uint64_t v = 1; v <= 100000; ++v) h.record(v);
    for (double p : {0.5, 0.9, 0.99, 0.999}) {
        double want = p * 100000;
        EXPECT_LT(rel_error(double(h.percentile(p)), want), 0.07) << p;
    }
}

TEST(Histogram, ConstantValue) {
    histogram h;
    for (int i = 0; i < 1000; ++i) h.record(12345);
    for (double p : {0.01, 0.5, 0.99, 1.0}) EXPECT_LT(rel_error(double(h.percentile(p)), 12345), 0.125);
}

TEST(Histogram, LogNormalLatencies) {
    // Latency-like: log-normal around 2 ms with a long tail; compare with exact order
    // statistics.
    std::mt19937_64 rng(42);
    std::lognormal_distribution<double> dist(std::log(2000.0), 0.8);
    std::vector<std::uint64_t> values;
    histogram h;
    for (int i = 0; i < 200000; ++i) {
        auto v = std::uint64_t(dist(rng)) + 1;
        values.push_back(v);
        h.record(v);
    }
    std::sort(values.begin(), values.end());
    for (double p : {0.5, 0.9, 0.99, 0.999}) {
        double exact = double(values[std::size_t(std::ceil(p * values.size())) - 1]);
        EXPECT_LT(rel_error(double(h.percentile(p)), exact), 0.10) << p;
    }
}

TEST(Histogram, BimodalTail) {
    histogram h;
    for (int i = 0; i < 990; ++i) h.record(100);
    for (int i = 0; i < 10; ++i) h.record(1000000);
    EXPECT_LT(rel_error(double(h.percentile(0.5)), 100), 0.125);
    EXPECT_LT(rel_error(double(h.percentile(0.99)), 100), 0.125);
    EXPECT_LT(rel_error(double(h.percentile(0.999)), 1000000), 0.125);
}

TEST(Histogram, HugeValuesAreClamped) {
    histogram h;
    h.record(std::uint64_t(1) << 45);
    EXPECT_EQ(h.count(), 1u);
    EXPECT_EQ(h.percentile(0.5), histogram::max_tracked_us);
    EXPECT_EQ(h.cumulative({histogram::max_tracked_us})[0], 1u);
}

TEST(Histogram, CumulativeIsMonotonicAndBounded) {
    histogram h;
    std::mt19937_64 rng(3);
    for (int i = 0; i < 50000; ++i) h.record(rng() % 2000000);
    std::vector<std::uint64_t> bounds = {100, 250, 500, 1000, 2500, 5000, 10000, 100000, 1000000,
                                         2000000, 10000000};
    auto c = h.cumulative(bounds);
    ASSERT_EQ(c.size(), bounds.size());
    for (std::size_t i = 1; i < c.size(); ++i) EXPECT_LE(c[i - 1], c[i]);
    EXPECT_EQ(c.back(), h.count());
    // Uniform over [0, 2e6): about half below 1e6.
    EXPECT_NEAR(double(c[8]) / double(h.count()), 0.5, 0.02);
}

TEST(Histogram, ExactBucketBoundsCountExactly) {
    histogram h;
    for (int i = 0; i < 100; ++i) h.record(1000);
    for (int i = 0; i < 100; ++i) h.record(5000);
    auto b = histogram::upper_bound(histogram::bucket_of(1000));
    auto c = h.cumulative({b, histogram::lower_bound(histogram::bucket_of(5000)) - 1});
    EXPECT_EQ(c[0], 100u);
    EXPECT_EQ(c[1], 100u);
}

TEST(Histogram, BoundedMemory) {
    // Fixed size whatever the traffic: buckets plus two counters.
    EXPECT_LE(sizeof(histogram), (histogram::bucket_count + 2) * sizeof(std::uint64_t));
}

TEST(Histogram, ConcurrentRecordLosesNothing) {
    histogram h;
    constexpr int threads = 4, per_thread = 50000;
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
        ts.emplace_back([&h, t] {
            for (int i = 0; i < per_thread; ++i) h.record(std::uint64_t(i % 1000 + t));
        });
    // Readers concurrently: must not crash or report more than recorded.
    for (int i = 0; i < 100; ++i) {
        auto p = h.percentile(0.99);
        EXPECT_LE(p, 2000u);
    }
    for (auto& t : ts) t.join();
    EXPECT_EQ(h.count(), std::uint64_t(threads) * per_thread);
    std::uint64_t expected_sum = 0;
    for (int t = 0; t < threads; ++t)
        for (int i = 0; i < per_thread; ++i) expected_sum += std::uint64_t(i % 1000 + t);
    EXPECT_EQ(h.sum(), expected_sum);
    auto all = h.buckets();
    std::uint64_t total = 0;
    for (auto c : all) total += c;
    EXPECT_EQ(total, h.count());
}
