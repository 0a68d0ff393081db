#pragma once
// One reading of the steady clock per I/O event.
//
// Why: a pooled -S transaction read the steady clock eight times (query start, checkout,
// link, the write to the server, ReadyForQuery, the release, idle since...), five in the
// handler of the client's bytes and three in the handler of the server's. Each is a vDSO
// call of 20 to 40 ns on these VMs, about a tenth of Sluice's user-space time per
// transaction (perf, bench/perf_xact.py), where PgBouncer reads its clock once per loop.
//
// An event_clock::scope opens at the top of such a handler; inside it the first now()
// reads the clock and later ones return that reading. A handler runs for microseconds on
// one thread, and every figure taken from these readings (query, transaction and wait
// times, idle since, last used) is in microseconds or coarser, measured between two
// handlers. Outside any scope now() reads the clock each time: timers and the console
// are unaffected. A coroutine spawned from a scoped handler runs up to its first
// suspension inside the scope (co_spawn dispatches), so the time it reads before it first
// waits is the handler's; it must not measure an elapsed time within that stretch.
//
// Invariants: the cache lives in a thread_local, so a reading never crosses threads;
// scopes nest (the outermost one clears the reading when it closes), so a handler called
// from another handler shares its reading.
#include <chrono>
#include <cstdint>

namespace sluice::stats {

class event_clock {
public:
    using clock = std::chrono::steady_clock;

    class scope {
    public:
        scope() noexcept { ++depth_; }
        ~scope() {
            if (--depth_ == 0) reading_ = {};
        }
        scope(const scope&) = delete;
        scope& operator=(const scope&) = delete;
    };

    static clock::time_point now() noexcept {
        if (depth_ == 0) return clock::now();
        if (reading_ == clock::time_point{}) reading_ = clock::now();
        return reading_;
    }

    static std::int64_t now_ns() noexcept {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(now().time_since_epoch())
            .count();
    }

private:
    // constinit: no dynamic initialisation, so no TLS wrapper call on each use.
    static thread_local constinit int depth_;
    static thread_local constinit clock::time_point reading_;
};

}  // namespace sluice::stats
