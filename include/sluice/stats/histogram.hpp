#pragma once
// Latency histogram with bounded memory: fixed log-linear buckets over microseconds,
// atomic counters, safe to record from any thread. Percentiles are read from the bucket
// bounds (relative error below the bucket width, about 10%).
#include <array>
#include <atomic>
#include <cstdint>
#include <vector>

namespace sluice::stats {

class histogram {
public:
    // 1 us .. ~17 minutes in buckets that grow by about 10%.
    static constexpr int bucket_count = 224;

    void record(std::uint64_t microseconds);
    std::uint64_t count() const;
    std::uint64_t sum() const;
    // p in [0, 1]; 0 when empty.
    std::uint64_t percentile(double p) const;
    // Upper bound (us) of bucket i, for Prometheus `le` labels.
    static std::uint64_t upper_bound(int i);
    // Cumulative counts at the given upper bounds (us), for Prometheus histograms.
    std::vector<std::uint64_t> cumulative(const std::vector<std::uint64_t>& bounds_us) const;

private:
    static int bucket_of(std::uint64_t us);
    std::array<std::atomic<std::uint64_t>, bucket_count> buckets_{};
    std::atomic<std::uint64_t> count_{0}, sum_{0};
};

}  // namespace sluice::stats
