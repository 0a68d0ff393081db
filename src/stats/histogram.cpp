#include "sluice/stats/histogram.hpp"

namespace sluice::stats {
// Placeholder buckets until the stats module lands.
int histogram::bucket_of(std::uint64_t us) {
    int b = 0;
    while (us > 1 && b < bucket_count - 1) { us >>= 1; ++b; }
    return b;
}
void histogram::record(std::uint64_t us) {
    buckets_[bucket_of(us)].fetch_add(1, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(us, std::memory_order_relaxed);
}
std::uint64_t histogram::count() const { return count_.load(); }
std::uint64_t histogram::sum() const { return sum_.load(); }
std::uint64_t histogram::percentile(double) const { return 0; }
std::uint64_t histogram::upper_bound(int i) { return std::uint64_t(1) << i; }
std::vector<std::uint64_t> histogram::cumulative(const std::vector<std::uint64_t>&) const { return {}; }
}  // namespace sluice::stats
