#include "sluice/stats/prometheus.hpp"

#include <fmt/format.h>

#include <cmath>

namespace sluice::stats {

std::string prometheus_writer::escape_label_value(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\') out += "\\\\";
        else if (c == '"') out += "\\\"";
        else if (c == '\n') out += "\\n";
        else out.push_back(c);
    }
    return out;
}

std::string prometheus_writer::escape_help(std::string_view v) {
    std::string out;
    for (char c : v) {
        if (c == '\\') out += "\\\\";
        else if (c == '\n') out += "\\n";
        else out.push_back(c);
    }
    return out;
}

std::string prometheus_writer::format_value(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", std::int64_t(v));
    return fmt::format("{}", v);
}

void prometheus_writer::family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, escape_help(help), name, type);
}

void prometheus_writer::labels_text(const label_set& labels, std::string_view extra_key,
                                    std::string_view extra_value) {
    if (labels.empty() && extra_key.empty()) return;
    out_ += '{';
    bool first = true;
    for (auto& [k, v] : labels) {
        if (!first) out_ += ',';
        first = false;
        out_ += k;
        out_ += "=\"";
        out_ += escape_label_value(v);
        out_ += '"';
    }
    if (!extra_key.empty()) {
        if (!first) out_ += ',';
        out_ += extra_key;
        out_ += "=\"";
        out_ += extra_value;
        out_ += '"';
    }
    out_ += '}';
}

void prometheus_writer::sample(std::string_view name, const label_set& labels, double value) {
    out_ += name;
    labels_text(labels);
    out_ += ' ';
    out_ += format_value(value);
    out_ += '\n';
}

void prometheus_writer::sample(std::string_view name, const label_set& labels, std::uint64_t value) {
    out_ += name;
    labels_text(labels);
    out_ += ' ';
    out_ += std::to_string(value);
    out_ += '\n';
}

void prometheus_writer::histogram(std::string_view name, const label_set& labels,
                                  const stats::histogram& h,
                                  const std::vector<std::uint64_t>& bounds_us) {
    // Read count first: buckets recorded after it may only make the cumulative counts
    // larger, so clamp them to keep +Inf == _count and the series monotonic.
    const auto total = h.count();
    const auto sum = h.sum();
    auto cum = h.cumulative(bounds_us);
    std::string bucket = std::string(name) + "_bucket";
    std::uint64_t last = 0;
    for (std::size_t i = 0; i < bounds_us.size(); ++i) {
        std::uint64_t c = std::min(std::max(cum[i], last), total);
        last = c;
        out_ += bucket;
        labels_text(labels, "le", format_value(double(bounds_us[i]) / 1e6));
        out_ += ' ';
        out_ += std::to_string(c);
        out_ += '\n';
    }
    out_ += bucket;
    labels_text(labels, "le", "+Inf");
    out_ += ' ';
    out_ += std::to_string(total);
    out_ += '\n';
    sample(std::string(name) + "_sum", labels, double(sum) / 1e6);
    sample(std::string(name) + "_count", labels, total);
}

const std::vector<std::uint64_t>& prometheus_writer::default_latency_bounds_us() {
    static const std::vector<std::uint64_t> b = {
        100,     250,     500,     1000,     2500,     5000,     10000,    25000,   50000,
        100000,  250000,  500000,  1000000,  2500000,  5000000,  10000000, 30000000, 60000000};
    return b;
}

}  // namespace sluice::stats
