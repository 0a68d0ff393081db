#pragma once
// Per-tenant rate limiting (DESIGN.md 1.5). One limiter per process, shared by every
// worker. The proxy asks it at three points: a connection attempt (connections per second
// and concurrent connections), and before forwarding each query / each transaction start.
//
// The hot path is `tenant::try_take`: no I/O, no lock beyond an atomic, answered from
// tokens leased in batches from Redis (or from the local bucket with backend: local).
// Only when the local lease is empty does the proxy call the awaitable `take`, which
// refills from Redis (pipelined, one EVALSHA per tenant and kind), applies the
// on_redis_failure policy when Redis is unwell, and for `action: delay` waits up to
// max_delay before giving up.
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "sluice/config/config.hpp"
#include "sluice/net/io.hpp"

namespace sluice::ratelimit {

enum class kind { query = 0, transaction = 1, connection = 2 };

struct verdict {
    bool allowed = true;
    bool delayed = false;                 // allowed after waiting (action: delay)
    std::chrono::milliseconds retry_after{0};  // for the HINT when rejected
};

// State of one tenant, shared by its sessions. Created by limiter::tenant_for.
class tenant {
public:
    virtual ~tenant() = default;
    // Takes one token of `k` from the local lease. False when the lease is empty (the
    // caller then co_awaits limiter::take). Always true when `k` is unlimited.
    virtual bool try_take(kind k) = 0;
    // Concurrent connections (max_connections): called at login and at disconnect.
    virtual bool try_open_connection() = 0;
    virtual void close_connection() = 0;
    virtual const std::string& name() const = 0;
};

// One row of SHOW TENANTS.
struct tenant_stats {
    std::string tenant;
    double queries_per_second = 0, transactions_per_second = 0, connections_per_second = 0;
    int max_connections = 0;
    int current_connections = 0;
    std::uint64_t allowed = 0, rejected = 0, delayed = 0;
    double current_rate = 0;  // queries per second over the last stats interval
    std::string mode;         // redis | local | open | closed
};

class limiter {
public:
    virtual ~limiter() = default;

    // tenant_key: derives the tenant name from a client's login.
    // params are the client's startup parameters.
    virtual std::string tenant_name(const std::string& user, const std::string& database,
                                    const std::string& application_name,
                                    const std::vector<std::pair<std::string, std::string>>& params)
        const = 0;
    virtual std::shared_ptr<tenant> tenant_for(const std::string& name) = 0;

    // Slow path: refills the lease (Redis round trip or local bucket), or applies the
    // failure policy; with action: delay waits up to max_delay. Runs on the caller's
    // executor; never blocks the thread.
    // `worker` is the caller's worker index (its Redis connection).
    virtual asio::awaitable<verdict> take(std::shared_ptr<tenant> t, kind k, int worker) = 0;

    // New limits after RELOAD, without dropping clients.
    virtual void reload(const config::rate_limits& cfg) = 0;
    virtual std::vector<tenant_stats> snapshot() const = 0;
    // Prometheus text for sluice_ratelimit_* (appended to /metrics).
    virtual std::string metrics_text() const = 0;
    // shadow: true tenants are counted (rejected/delayed) but always allowed: try_take and
    // take handle that themselves.
};

// Builds the limiter for the configuration; nullptr when rate_limits is absent/disabled.
// `workers` are the worker executors (one Redis connection each, used by sessions on that
// worker); `main` runs background work (reconnects, circuit breaker).
std::unique_ptr<limiter> make_limiter(const config::rate_limits& cfg,
                                      std::vector<asio::any_io_executor> workers,
                                      asio::any_io_executor main);

}  // namespace sluice::ratelimit
