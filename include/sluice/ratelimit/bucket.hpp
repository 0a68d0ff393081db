#pragma once
// Pure (sans-io) building blocks of the rate limiter. Time is passed in as nanoseconds of
// a monotonic clock, so every rule here runs on a fake clock in the unit tests.
//
// The algorithm is GCRA (the generic cell rate algorithm, a token bucket written as one
// number): a bucket of `burst` tokens refilled at `rate` per second is the "theoretical
// arrival time" TAT of the next token. A request for n tokens at `now` conforms while
// max(TAT, now) + n*T <= now + burst*T, T = 1/rate. One number per bucket is what lets
// the local backend decide with one compare-and-swap and the Redis backend with one key.
// The Lua script run in Redis (gcra_lua below) does the same arithmetic in microseconds on
// the Redis server's clock.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

namespace sluice::ratelimit {

using nanos = std::int64_t;  // monotonic nanoseconds

struct gcra_params {
    nanos interval = 0;   // T: nanoseconds per token; 0 = unlimited
    nanos tolerance = 0;  // burst * T: how far the TAT may run ahead of now

    bool unlimited() const { return interval <= 0; }
    // rate <= 0 = unlimited. burst 0 = max(1, rate) tokens (one second of budget).
    // `share` divides the limit (on_redis_failure: local enforces rate / expected_instances).
    static gcra_params from(double rate, double burst, int share = 1);
    double rate() const { return interval > 0 ? 1e9 / double(interval) : 0; }
    double burst() const { return interval > 0 ? double(tolerance) / double(interval) : 0; }
    bool operator==(const gcra_params&) const = default;
};

struct gcra_grant {
    std::int64_t granted = 0;  // tokens given, 0..want
    nanos retry_after = 0;     // from now until the next token conforms (0 = one is there)
    nanos tat = 0;             // the new TAT to store
};

// Grants up to `want` tokens (fewer when the bucket holds fewer). Pure: the caller stores
// the returned TAT. This is the arithmetic of gcra_lua, in integers.
gcra_grant gcra_take(nanos tat, nanos now, const gcra_params& p, std::int64_t want);

// Reservation for action: delay. Admits one token whose turn comes within `max_wait`:
// returns the wait (0 = at once) and the new TAT, or nullopt with the wait it would need.
struct gcra_reservation {
    bool admitted = false;
    nanos wait = 0;  // admitted: sleep this long first; refused: the retry hint
    nanos tat = 0;
};
gcra_reservation gcra_reserve(nanos tat, nanos now, const gcra_params& p, nanos max_wait);

// A lock-free GCRA bucket: one atomic TAT updated with compare-and-swap. Used for
// backend: local and for the on_redis_failure: local share.
class atomic_gcra {
  public:
    gcra_grant take(nanos now, const gcra_params& p, std::int64_t want = 1);
    gcra_reservation reserve(nanos now, const gcra_params& p, nanos max_wait);
    void reset() { tat_.store(0, std::memory_order_relaxed); }

  private:
    std::atomic<nanos> tat_{0};
};

// Tokens leased from Redis and not yet spent by this instance. The hot path takes one
// with a compare-and-swap; refills add a batch.
class lease {
  public:
    bool try_take() {
        std::int64_t n = tokens_.load(std::memory_order_relaxed);
        while (n > 0)
            if (tokens_.compare_exchange_weak(n, n - 1, std::memory_order_acq_rel,
                                              std::memory_order_relaxed))
                return true;
        return false;
    }
    void add(std::int64_t n) {
        if (n > 0) tokens_.fetch_add(n, std::memory_order_acq_rel);
    }
    std::int64_t size() const { return tokens_.load(std::memory_order_relaxed); }
    std::int64_t drain() { return tokens_.exchange(0, std::memory_order_acq_rel); }

  private:
    std::atomic<std::int64_t> tokens_{0};
};

// Lease size for a rate: the configured size, else about 50 ms of budget (rate / 20),
// at least 1, and never more than the burst (Redis could not grant more at once anyway).
std::int64_t lease_size_for(double rate, double burst, int configured);

// The Lua script run with EVALSHA. KEYS[1] = the bucket key (sluice:{tenant}:q|t|c);
// ARGV = interval_us, tolerance_us, want. Returns {granted, retry_after_ms}. Uses the
// Redis server's clock (TIME), so instances with skewed clocks still share one budget.
extern const char* const gcra_lua;
// Lowercase hex SHA-1 of a script body: the name EVALSHA knows it by.
std::string script_sha1(const std::string& body);

// Key of a tenant's bucket. The {hash tag} keeps all of a tenant's keys in one Redis
// Cluster slot.
std::string bucket_key(const std::string& tenant, char kind_letter);

}  // namespace sluice::ratelimit
