#include "sluice/stats/histogram.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

namespace sluice::stats {

namespace {
constexpr int linear_buckets = 16;  // 0..15 us, one bucket each
constexpr int sub_bits = 3;         // 8 sub-buckets per power of two
constexpr int sub_count = 1 << sub_bits;
}  // namespace

int histogram::bucket_of(std::uint64_t us) {
    if (us < linear_buckets) return int(us);
    if (us > max_tracked_us) return bucket_count - 1;
    const int e = std::bit_width(us) - 1;  // 4..29
    const int sub = int((us >> (e - sub_bits)) & (sub_count - 1));
    return linear_buckets + (e - 4) * sub_count + sub;
}

std::uint64_t histogram::lower_bound(int i) {
    if (i < linear_buckets) return std::uint64_t(std::max(i, 0));
    const int e = 4 + (i - linear_buckets) / sub_count;
    const int sub = (i - linear_buckets) % sub_count;
    return std::uint64_t(sub_count + sub) << (e - sub_bits);
}

std::uint64_t histogram::upper_bound(int i) {
    if (i < linear_buckets) return std::uint64_t(std::max(i, 0));
    if (i >= bucket_count - 1) return max_tracked_us;
    return lower_bound(i + 1) - 1;
}

void histogram::record(std::uint64_t us) {
    buckets_[bucket_of(us)].fetch_add(1, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(us, std::memory_order_relaxed);
}

std::uint64_t histogram::count() const { return count_.load(std::memory_order_relaxed); }
std::uint64_t histogram::sum() const { return sum_.load(std::memory_order_relaxed); }

std::array<std::uint64_t, histogram::bucket_count> histogram::buckets() const {
    std::array<std::uint64_t, bucket_count> out{};
    for (int i = 0; i < bucket_count; ++i) out[i] = buckets_[i].load(std::memory_order_relaxed);
    return out;
}

std::uint64_t histogram::percentile(double p) const {
    // Read the buckets once: concurrent record() calls may land in between, so the total
    // is taken from the same copy the rank is searched in.
    const auto b = buckets();
    std::uint64_t total = 0;
    for (auto c : b) total += c;
    if (total == 0) return 0;
    if (!(p > 0)) p = 0;
    if (p > 1) p = 1;
    // Nearest-rank definition: the smallest value with at least p of the samples at or
    // below it.
    auto rank = std::uint64_t(std::ceil(p * double(total)));
    rank = std::clamp<std::uint64_t>(rank, 1, total);
    std::uint64_t seen = 0;
    for (int i = 0; i < bucket_count; ++i) {
        if (b[i] == 0) continue;
        if (seen + b[i] >= rank) {
            const std::uint64_t lo = lower_bound(i), hi = upper_bound(i);
            if (hi <= lo) return lo;
            // Position of the rank inside this bucket, spread evenly over [lo, hi].
            const double frac = double(rank - seen) / double(b[i]);
            return lo + std::uint64_t(std::llround(frac * double(hi - lo)));
        }
        seen += b[i];
    }
    return upper_bound(bucket_count - 1);
}

std::vector<std::uint64_t> histogram::cumulative(const std::vector<std::uint64_t>& bounds_us) const {
    const auto b = buckets();
    std::vector<std::uint64_t> out;
    out.reserve(bounds_us.size());
    for (auto bound : bounds_us) {
        std::uint64_t n = 0;
        for (int i = 0; i < bucket_count; ++i) {
            if (b[i] == 0) continue;
            const std::uint64_t lo = lower_bound(i), hi = upper_bound(i);
            if (hi <= bound) {
                n += b[i];
            } else if (lo <= bound) {
                // Straddling bucket: assume its values are spread evenly.
                n += b[i] * (bound - lo + 1) / (hi - lo + 1);
            } else {
                break;
            }
        }
        out.push_back(n);
    }
    // Bounds given out of order still yield sane (per-bound) answers; callers pass them
    // ascending for Prometheus.
    return out;
}

}  // namespace sluice::stats
