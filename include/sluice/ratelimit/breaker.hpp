#pragma once
// Circuit breaker in front of the Redis connection (pure, on a caller-supplied clock).
//
// Flow: closed (requests go to Redis; consecutive failures are counted) -> after
// `failure_threshold` failures in a row: open (requests fail fast, the on_redis_failure
// policy applies, Redis is not waited on) -> once `open_for` has passed: half_open (exactly
// one probe request goes through) -> the probe succeeds: closed; it fails: open again
// with the backoff doubled, up to `max_open_for`. A success while closed resets the count.
#include <cstdint>

namespace sluice::ratelimit {

class breaker {
  public:
    using nanos = std::int64_t;
    enum class state { closed, open, half_open };
    struct settings {
        int failure_threshold = 3;
        nanos open_for = 250'000'000;        // first open period: 250 ms
        nanos max_open_for = 2'000'000'000;  // backoff cap: 2 s
    };

    breaker() = default;
    explicit breaker(settings s) : s_(s), open_for_(s.open_for) {}

    // May a request go to Redis now? In half_open, true once (the probe) until it reports.
    bool allow(nanos now);
    void on_success();
    void on_failure(nanos now);
    // Forces open (the connection was lost): fail fast until the next probe.
    void trip(nanos now);

    state current() const { return state_; }
    int failures() const { return failures_; }
    nanos open_until() const { return until_; }

  private:
    void open(nanos now);
    settings s_;
    state state_ = state::closed;
    int failures_ = 0;
    bool probe_in_flight_ = false;
    nanos until_ = 0;
    nanos open_for_ = s_.open_for;
};

const char* to_string(breaker::state s);

}  // namespace sluice::ratelimit
