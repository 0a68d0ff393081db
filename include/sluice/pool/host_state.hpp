#pragma once
// Which host of a database entry a new server connection goes to, sans-io: the entry's
// `target_session_attrs` (libpq's meaning), `load_balance_hosts`, what each host said
// about itself when last connected to, and which hosts failed recently. Time is an
// argument; hosts are indexes into the entry's host list. pool.cpp connects, logs in and
// reports back here; it never decides.
//
// Flow of one new server connection
//   plan(now)        the hosts to try, in order: those not waiting out server_login_retry,
//                    rotated by one per call under round-robin, then ranked: a host known
//                    to fit first, unknown next, known not to fit last. A host that failed
//                    is unknown again once its retry time has passed: it may come back
//                    with another role (a restarted primary, a repaired standby).
//   connect_failed() the host was down, or TLS or the login failed at the socket level:
//                    it is not tried again before server_login_retry has passed.
//   judge()          logged in; the server said what it is (role_of). Accept, or reject:
//                    the connection is closed and the next host of the plan is tried.
//   next_retry()     nothing is left to try: when the first waiting host may be tried.
//   learnt()         a server in use reported another role (promoted): remembered, and
//                    counted in role_changes(), which retires the host's pooled servers.
//
// What fits (libpq): any; read-write = neither a hot standby nor read-only by default;
// read-only = the opposite; primary = not a hot standby; standby = a hot standby;
// prefer-standby = a standby that is not lagging (max_replica_lag), else any server, but
// only once no host of the plan that may still be such a standby remains untried.
//
// Invariants
//   - a host is in a plan only if its retry time has passed (so one that lagged is
//     ranked as unknown there: it may have caught up); a host that did not fit a
//     strict target (or lags) gets the same retry time as a failed one, so a read-write
//     entry does not log in to its standby for every new connection;
//   - what is known of a host is only what its last attempt said: a role learnt
//     replaces the previous one, a failure forgets it and delays the next try.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::pool {

enum class target_session_attrs { any, read_write, read_only, primary, standby, prefer_standby };
std::optional<target_session_attrs> parse_target_session_attrs(std::string_view s);
const char* to_string(target_session_attrs t);

// What a server says about itself after login.
struct server_role {
    bool hot_standby = false;  // in_hot_standby, or pg_is_in_recovery()
    bool read_only = false;    // default_transaction_read_only
    bool operator==(const server_role&) const = default;
};
// From the ParameterStatus values PostgreSQL 14+ reports (null = not reported); nullopt
// when in_hot_standby is missing (an older server: ask with a query instead).
std::optional<server_role> role_from_parameters(const std::string* in_hot_standby,
                                                const std::string* default_transaction_read_only);
// "primary" or "standby" (SHOW SERVERS, /metrics, the logs).
const char* role_name(const server_role& r);
// The strict rule (every target but prefer-standby's fallback).
bool fits(target_session_attrs t, const server_role& r, bool lagging);

class host_state {
  public:
    using clock_time = std::chrono::steady_clock::time_point;
    using duration = std::chrono::steady_clock::duration;

    host_state(std::size_t hosts, target_session_attrs target, bool round_robin);

    std::vector<std::size_t> plan(clock_time now);
    void connect_failed(std::size_t host, clock_time now, duration retry);
    enum class verdict { accept, reject };
    // `remaining`: the hosts of the plan not tried yet (prefer-standby's fallback rule).
    verdict judge(std::size_t host, const server_role& role, bool lagging,
                  const std::vector<std::size_t>& remaining, clock_time now, duration retry);
    // A server of host `i` reported another role since its login (a promotion).
    void learnt(std::size_t i, const server_role& role) {
        if (i < hosts_.size()) remember(hosts_[i], role);
    }
    // Counts the changes of host i's role seen so far. A pooled server records it when it
    // is made; one whose host has changed role since is not handed out (pool::check_out):
    // PostgreSQL tells an idle session nothing when its server is promoted.
    std::uint64_t role_changes(std::size_t i) const {
        return i < hosts_.size() ? hosts_[i].role_changes : ~std::uint64_t{0};
    }
    // The earliest time a host waiting out its retry may be tried (now if none waits).
    clock_time next_retry(clock_time now) const;

    target_session_attrs target() const { return target_; }
    std::size_t size() const { return hosts_.size(); }
    // The last role host `i` reported (SHOW DATABASES), if any.
    std::optional<server_role> known_role(std::size_t i) const {
        return i < hosts_.size() ? hosts_[i].role : std::nullopt;
    }
    bool lagging(std::size_t i) const { return i < hosts_.size() && hosts_[i].lagging; }

  private:
    struct host {
        clock_time retry_at{};
        std::optional<server_role> role;
        bool lagging = false;
        std::uint64_t role_changes = 0;
    };
    // A change is a promotion (or a demotion): primary <-> standby.
    static void remember(host& h, const server_role& role) {
        if (h.role && h.role->hot_standby != role.hot_standby) ++h.role_changes;
        h.role = role;
    }
    // 0 = known to fit, 1 = unknown, 2 = known not to fit.
    int rank(const host& h) const;
    std::vector<host> hosts_;
    const target_session_attrs target_;
    bool round_robin_;
    std::size_t next_start_ = 0;
};

}  // namespace sluice::pool
