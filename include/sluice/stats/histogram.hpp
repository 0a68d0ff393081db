#pragma once
// Latency histogram with bounded memory: fixed log-linear buckets over microseconds,
// atomic counters, safe to record from any thread. Percentiles are read from the bucket
// bounds (relative error below the bucket width, about 10%).
//
// Buckets (HDR-style): values 0..15 us have a bucket each; above that every power of two
// [2^e, 2^(e+1)) is split into 8 equal sub-buckets, i.e. at most 12.5% wide (6.25% at the
// top of an octave). 16 + 26 * 8 = 224 buckets reach 2^30 us (~17.9 minutes); larger
// values land in the last bucket. 224 * 8 bytes per histogram, whatever the traffic.
#include <array>
#include <atomic>
#include <cstdint>
#include <vector>

namespace sluice::stats {

class histogram {
public:
    // 1 us .. ~17 minutes in buckets that grow by about 10%.
    static constexpr int bucket_count = 224;
    static constexpr std::uint64_t max_tracked_us = (std::uint64_t(1) << 30) - 1;

    void record(std::uint64_t microseconds);
    std::uint64_t count() const;
    std::uint64_t sum() const;
    // p in [0, 1]; 0 when empty. Interpolated linearly inside the bucket that holds the
    // rank, so a uniform spread inside a bucket is estimated well.
    std::uint64_t percentile(double p) const;
    // Upper bound (us, inclusive) of bucket i, for Prometheus `le` labels.
    static std::uint64_t upper_bound(int i);
    // Lower bound (us, inclusive) of bucket i.
    static std::uint64_t lower_bound(int i);
    // Cumulative counts at the given upper bounds (us, inclusive): how many recorded
    // values were <= each bound. A bucket straddling a bound contributes pro rata
    // (rounded down), so the result is monotonic in the bounds and never above count().
    std::vector<std::uint64_t> cumulative(const std::vector<std::uint64_t>& bounds_us) const;
    // Copy of the bucket counts (index = bucket).
    std::array<std::uint64_t, bucket_count> buckets() const;

    static int bucket_of(std::uint64_t us);

private:
    std::array<std::atomic<std::uint64_t>, bucket_count> buckets_{};
    std::atomic<std::uint64_t> count_{0}, sum_{0};
};

}  // namespace sluice::stats
