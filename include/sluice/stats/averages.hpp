#pragma once
// PgBouncer's stats figures (SHOW STATS / STATS_TOTALS / STATS_AVERAGES / TOTALS) and the
// averages recomputed every stats_period. Pure: the caller samples the totals and says
// what time it is.
//
// Averages follow PgBouncer (stats.c): counts and bytes per second over the last period;
// xact_time and query_time per transaction / query (us); wait_time per second (us of
// client waiting per second of wall time).
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace sluice::stats {

struct counters {
    std::uint64_t server_assignment_count = 0, xact_count = 0, query_count = 0,
                  bytes_received = 0, bytes_sent = 0, xact_time = 0, query_time = 0,
                  wait_time = 0, client_parse_count = 0, server_parse_count = 0, bind_count = 0,
                  client_login_count = 0;

    counters& operator+=(const counters& o);
    // The figures in PgBouncer's column order (STATS_TOTALS without `database`).
    std::vector<std::uint64_t> values() const;
    bool operator==(const counters&) const = default;
};

// STATS_TOTALS / STATS_AVERAGES column names after `database`.
const std::vector<std::string>& counter_names();
// SHOW STATS column names after `database`: total_* then avg_* (PgBouncer's spelling:
// total_received, avg_recv, ...).
const std::vector<std::string>& stats_total_names();
const std::vector<std::string>& stats_avg_names();

// Averages over `elapsed` between two samples of the totals. A counter that went down
// (a pool was dropped) counts as no activity.
counters compute_averages(const counters& previous, const counters& current,
                          std::chrono::microseconds elapsed);

// PgBouncer's log line: "stats: N xacts/s, N queries/s, ..., in N B/s, out N B/s, xact N
// us, query N us, wait N us".
std::string format_stats_line(const counters& avg);

// Keeps the previous sample per database and the averages of the last complete period.
// Thread-safe: sampled by the stats timer, read by console sessions.
class averages_keeper {
public:
    using clock = std::chrono::steady_clock;
    // Records a new sample. The first call only sets the baseline. Returns the averages
    // computed for each database present in `totals`.
    std::map<std::string, counters> sample(const std::map<std::string, counters>& totals,
                                           clock::time_point now);
    std::map<std::string, counters> averages() const;
    counters average_of(const std::string& database) const;  // zeros if unknown

private:
    mutable std::mutex mutex_;
    bool have_baseline_ = false;
    clock::time_point last_{};
    std::map<std::string, counters> previous_, averages_;
};

}  // namespace sluice::stats
