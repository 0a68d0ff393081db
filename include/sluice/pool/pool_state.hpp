#pragma once
// The pool's decisions, sans-io: which idle server a client gets, when it may open a new
// connection, who waits, who is woken when a server comes back or a slot frees up, which
// idle servers are too old. Time is an argument (tests drive it with a fake clock);
// servers and waiters are opaque ids. pool.cpp wraps it with the mutex, the server
// objects, the waiters' timers and the sockets.
//
// Flow
//   request()   a client wants a server: an idle one (preferring its own worker, most
//               recently used first; with server_round_robin the longest idle, on any
//               worker), else a slot to connect, else it waits (FIFO).
//   retry()     a waiter's timer fired: after reserve_pool_timeout it may take a slot of
//               the reserve pool; otherwise it keeps waiting.
//   released()  a clean server comes back: a waiter gets it (the first one on the
//               server's worker among the first affinity_window waiters, so that no
//               socket moves between threads; see below), or it goes idle.
//   slot_freed() a server was closed, or a connection attempt failed: the first waiter
//               may connect in its place.
//   expire()    idle servers past server_idle_timeout / server_lifetime are taken out.
//
// Invariants
//   - slots == idle + handed out + connecting: every slot is accounted for, whatever
//     order events come in; a failed connect or a closed server gives its slot back.
//   - slots <= pool_size, or pool_size + reserve_pool_size for a waiter that has waited
//     reserve_pool_timeout; every slot also holds one unit of the limits shared with other
//     pools (max_db_connections, max_user_connections), taken and given back here only.
//   - a waiter is in the queue exactly until it is granted something or cancels; a grant
//     goes to the longest waiter first, except that a returned server may go to a later
//     waiter on its own worker: only within the first affinity_window waiters, and never
//     past a waiter already passed over max_bypass times. So a waiter is overtaken at most
//     max_bypass times (bounded unfairness), and nothing is granted while paused.
#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

namespace sluice::pool {

using clock_time = std::chrono::steady_clock::time_point;
using server_id = std::uint64_t;
using waiter_id = std::uint64_t;

struct pool_limits {
    int pool_size = 20;
    int reserve_pool_size = 0;
    std::chrono::steady_clock::duration reserve_pool_timeout = std::chrono::seconds(5);
    std::chrono::steady_clock::duration server_idle_timeout = std::chrono::seconds(600);
    std::chrono::steady_clock::duration server_lifetime = std::chrono::seconds(3600);
    // server_round_robin: an idle server is taken oldest-released first (FIFO) instead
    // of the most recently used on the caller's worker (LIFO).
    bool round_robin = false;
};

struct checkout {
    enum kind_t { idle_server, connect, wait } kind = wait;
    server_id server = 0;  // idle_server
    // connect: the slot is one of reserve_pool_size's, beyond pool_size (PgBouncer logs
    // "taking connection from reserve_pool").
    bool from_reserve = false;
};

// A waiter woken: handed `server`, or (server == 0) allowed to connect in a freed slot.
struct grant {
    waiter_id waiter = 0;
    server_id server = 0;
};

// Limits shared with other pools of the same database or user: a slot takes a unit and
// gives it back when it is freed.
class shared_limits {
public:
    virtual ~shared_limits() = default;
    virtual bool try_take() = 0;
    virtual void give_back() = 0;
};

class pool_state {
public:
    // Worker affinity for returned servers (see the invariants above).
    static constexpr std::size_t affinity_window = 8;
    static constexpr int max_bypass = 4;

    explicit pool_state(shared_limits& shared, pool_limits limits = {})
        : shared_(shared), limits_(limits) {}

    checkout request(waiter_id w, int worker, clock_time now);
    // request()'s first answer alone: an idle server when one is there and no one waits,
    // else nothing, and then nothing changed (the caller may go on to request()).
    std::optional<server_id> take_idle(int worker);
    // A waiter's timer fired. `since`: when it started waiting.
    checkout retry(waiter_id w, clock_time since, clock_time now);
    // The waiter gave up (query_wait_timeout, the client left). False if it was not
    // waiting (it was granted something meanwhile, which the caller must then undo).
    bool cancel(waiter_id w);

    // A server back from a client (or fresh from warm-up). `reusable`: clean, not past
    // its lifetime, not marked close_needed; otherwise it is closed and its slot freed.
    std::optional<grant> released(server_id s, int worker, clock_time connected,
                                  clock_time now, bool reusable);
    // A slot is free again (a server closed, or a connection attempt failed).
    std::optional<grant> slot_freed();
    // An idle server is being closed (found broken at checkout, RECONNECT, ...).
    bool remove_idle(server_id s);

    // Idle servers to close: past server_idle_timeout or server_lifetime, or all of them.
    // They leave the idle list; the caller closes them and calls slot_freed() for each.
    std::vector<server_id> expire(clock_time now, bool all = false);
    // Idle servers handed to waiters (after a pause, or a missed wake-up).
    std::vector<grant> match_idle();
    // Waiters given a slot to connect while there is room (after a resume or a larger
    // pool_size).
    std::vector<grant> fill_room();
    // A slot taken outside request(): min_pool_size warm-up. False if there is no room.
    bool take_slot();

    void set_paused(bool p) { paused_ = p; }
    bool paused() const { return paused_; }
    void set_limits(pool_limits l) { limits_ = l; }
    const pool_limits& limits() const { return limits_; }

    int slots() const { return slots_; }
    std::size_t idle_count() const { return idle_.size(); }
    std::size_t waiting() const { return waiters_.size(); }
    bool is_waiting(waiter_id w) const;

private:
    struct idle_entry {
        server_id id;
        int worker;
        clock_time last_used, connected;
    };
    // A slot, if there is room; `from_reserve` tells whether it is beyond pool_size.
    bool take(bool reserve, bool* from_reserve = nullptr);
    server_id pop_idle();  // LIFO, or FIFO under round_robin

    shared_limits& shared_;
    pool_limits limits_;
    bool paused_ = false;
    int slots_ = 0;                 // servers counted against the limits
    struct waiter_entry {
        waiter_id id;
        int worker;
        int bypassed = 0;  // times a later waiter was served first
    };
    std::vector<idle_entry> idle_;  // most recently used at the back
    std::deque<waiter_entry> waiters_;
};

}  // namespace sluice::pool
