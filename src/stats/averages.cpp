#include "sluice/stats/averages.hpp"

#include <fmt/format.h>

namespace sluice::stats {

counters& counters::operator+=(const counters& o) {
    server_assignment_count += o.server_assignment_count;
    xact_count += o.xact_count;
    query_count += o.query_count;
    bytes_received += o.bytes_received;
    bytes_sent += o.bytes_sent;
    xact_time += o.xact_time;
    query_time += o.query_time;
    wait_time += o.wait_time;
    client_parse_count += o.client_parse_count;
    server_parse_count += o.server_parse_count;
    bind_count += o.bind_count;
    client_login_count += o.client_login_count;
    return *this;
}

std::vector<std::uint64_t> counters::values() const {
    return {server_assignment_count, xact_count,         query_count,        bytes_received,
            bytes_sent,              xact_time,          query_time,         wait_time,
            client_parse_count,      server_parse_count, bind_count,         client_login_count};
}

const std::vector<std::string>& counter_names() {
    static const std::vector<std::string> names = {
        "server_assignment_count", "xact_count",         "query_count",
        "bytes_received",          "bytes_sent",         "xact_time",
        "query_time",              "wait_time",          "client_parse_count",
        "server_parse_count",      "bind_count",         "client_login_count"};
    return names;
}

const std::vector<std::string>& stats_total_names() {
    static const std::vector<std::string> names = {
        "total_server_assignment_count", "total_xact_count",         "total_query_count",
        "total_received",                "total_sent",               "total_xact_time",
        "total_query_time",              "total_wait_time",          "total_client_parse_count",
        "total_server_parse_count",      "total_bind_count",         "total_client_login_count"};
    return names;
}

const std::vector<std::string>& stats_avg_names() {
    static const std::vector<std::string> names = {
        "avg_server_assignment_count", "avg_xact_count",         "avg_query_count",
        "avg_recv",                    "avg_sent",               "avg_xact_time",
        "avg_query_time",              "avg_wait_time",          "avg_client_parse_count",
        "avg_server_parse_count",      "avg_bind_count",         "avg_client_login_count"};
    return names;
}

counters compute_averages(const counters& prev, const counters& cur,
                          std::chrono::microseconds elapsed) {
    counters avg;
    const auto us = elapsed.count();
    if (us <= 0) return avg;
    auto delta = [](std::uint64_t now, std::uint64_t before) {
        return now >= before ? now - before : 0;
    };
    // Per second: USEC * delta / elapsed_us, as PgBouncer computes it.
    auto rate = [&](std::uint64_t now, std::uint64_t before) {
        return std::uint64_t((long double)delta(now, before) * 1e6L / (long double)us);
    };
    const auto xacts = delta(cur.xact_count, prev.xact_count);
    const auto queries = delta(cur.query_count, prev.query_count);
    avg.server_assignment_count = rate(cur.server_assignment_count, prev.server_assignment_count);
    avg.xact_count = rate(cur.xact_count, prev.xact_count);
    avg.query_count = rate(cur.query_count, prev.query_count);
    avg.bytes_received = rate(cur.bytes_received, prev.bytes_received);
    avg.bytes_sent = rate(cur.bytes_sent, prev.bytes_sent);
    avg.xact_time = xacts ? delta(cur.xact_time, prev.xact_time) / xacts : 0;
    avg.query_time = queries ? delta(cur.query_time, prev.query_time) / queries : 0;
    avg.wait_time = rate(cur.wait_time, prev.wait_time);
    avg.client_parse_count = rate(cur.client_parse_count, prev.client_parse_count);
    avg.server_parse_count = rate(cur.server_parse_count, prev.server_parse_count);
    avg.bind_count = rate(cur.bind_count, prev.bind_count);
    avg.client_login_count = rate(cur.client_login_count, prev.client_login_count);
    return avg;
}

std::string format_stats_line(const counters& a) {
    return fmt::format(
        "stats: {} xacts/s, {} queries/s, {} client parses/s, {} server parses/s, {} binds/s, "
        "in {} B/s, out {} B/s, xact {} us, query {} us, wait {} us",
        a.xact_count, a.query_count, a.client_parse_count, a.server_parse_count, a.bind_count,
        a.bytes_received, a.bytes_sent, a.xact_time, a.query_time, a.wait_time);
}

std::map<std::string, counters> averages_keeper::sample(const std::map<std::string, counters>& totals,
                                                        clock::time_point now) {
    std::lock_guard lk(mutex_);
    std::map<std::string, counters> out;
    if (have_baseline_) {
        auto elapsed = std::chrono::duration_cast<std::chrono::microseconds>(now - last_);
        for (auto& [db, cur] : totals) {
            auto it = previous_.find(db);
            out[db] = compute_averages(it == previous_.end() ? counters{} : it->second, cur, elapsed);
        }
        averages_ = out;
    }
    have_baseline_ = true;
    last_ = now;
    previous_ = totals;
    return out;
}

std::map<std::string, counters> averages_keeper::averages() const {
    std::lock_guard lk(mutex_);
    return averages_;
}

counters averages_keeper::average_of(const std::string& database) const {
    std::lock_guard lk(mutex_);
    auto it = averages_.find(database);
    return it == averages_.end() ? counters{} : it->second;
}

}  // namespace sluice::stats
