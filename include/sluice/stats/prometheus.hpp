#pragma once
// Prometheus text exposition format (version 0.0.4) writer, pure. One family at a time:
// `family()` writes # HELP and # TYPE, then its samples follow. Histograms are written
// from a stats::histogram (microseconds) in seconds, as Prometheus conventions want.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sluice/stats/histogram.hpp"

namespace sluice::stats {

using label_set = std::vector<std::pair<std::string, std::string>>;

class prometheus_writer {
public:
    // type: "counter", "gauge", "histogram" (or "untyped").
    void family(std::string_view name, std::string_view type, std::string_view help);
    void sample(std::string_view name, const label_set& labels, double value);
    void sample(std::string_view name, const label_set& labels, std::uint64_t value);
    void sample(std::string_view name, const label_set& labels, std::int64_t value) {
        sample(name, labels, double(value));
    }
    void sample(std::string_view name, const label_set& labels, int value) {
        sample(name, labels, double(value));
    }
    // Writes name_bucket{...,le="..."} for each bound, le="+Inf", name_sum and name_count.
    void histogram(std::string_view name, const label_set& labels, const stats::histogram& h,
                   const std::vector<std::uint64_t>& bounds_us);
    // Raw text appended as is (other modules' families).
    void raw(std::string_view text) { out_.append(text); }

    const std::string& str() const { return out_; }
    std::string take() { return std::move(out_); }

    static std::string escape_label_value(std::string_view v);
    static std::string escape_help(std::string_view v);
    static std::string format_value(double v);

    // Default latency bounds: 100 us .. 60 s.
    static const std::vector<std::uint64_t>& default_latency_bounds_us();

private:
    void labels_text(const label_set& labels, std::string_view extra_key = {},
                     std::string_view extra_value = {});
    std::string out_;
};

}  // namespace sluice::stats
