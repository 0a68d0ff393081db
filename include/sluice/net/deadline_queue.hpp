#pragma once
// Many deadlines on one Asio timer: the waits of one worker's parked requests.
//
// A parked request (pool::park) looks again at its pool when its next deadline passes
// (query_wait_timeout, reserve_pool_timeout, query_wait_notify, the periodic look). With
// an Asio timer each, every parked transaction constructed a timer (a service lookup
// under a lock), armed it and, when a server came first (nearly always), cancelled it:
// two more locks, two changes of the reactor's timer heap and a handler run for the
// cancellation, about a tenth of Sluice's instructions per transaction at 200 clients.
//
// Here a wait is an entry in an unordered intrusive list, and one Asio timer per
// io_context waits for the earliest deadline. Nearly every wait ends with a grant long
// before its deadline, so what must be cheap is adding and removing an entry: both are a
// few pointer writes, touching the entry and its two neighbours. (A binary heap, tried
// first, cost fewer instructions but more time: each removal walked several entries
// spread over the heap, a cache miss each, 0.7 µs per transaction at 200 clients.)
// Finding the earliest deadline is a walk of the list, done only when the timer fires.
// Deadlines are mostly "now + the same period", so a new entry is nearly always later
// than the one the timer waits for, and the timer fires about once per period while
// requests wait, whatever the rate of transactions.
//
// Flow:  schedule(e, when) -> into the list; the timer re-armed only if `when` is earlier
//        than the deadline it waits for (or it waits for none); no memory for the wait:
//        `e` out again, the error to the caller
//        cancel(e)         -> out of the list; the timer is left alone (it may fire for
//                             nothing, which costs one walk)
//        timer fires       -> one walk: entries due move to a list of their own and the
//                             earliest deadline of the rest is found; then each due
//                             entry's `fire(e, false)` runs, in the order they were
//                             scheduled; then the timer waits for the earliest deadline
//                             (no memory for that wait: logged, and the next schedule()
//                             arms it)
//        shutdown()        -> (the io_context is destroyed) every entry's
//                             `fire(e, true)` runs: let go, nothing more comes
// Invariants: one thread runs the io_context, and every call is made on it (the queue
// has no lock); an entry is in at most one list at a time (`queued()`), so an entry that
// is not queued can be cancelled any number of times; `fire` is called after the entry
// left the lists, so it may schedule the entry again, cancel others or free it; `armed_`
// is never later than the earliest deadline queued, unless no wait could be started.
// The queue does not own its entries: the owner keeps an entry alive while it is queued.

#include "sluice/net/io.hpp"

namespace sluice::net {

class deadline_queue : public asio::execution_context::service {
public:
    struct entry {
        // Called with the entry out of the queue: `dropped` false when `when` passed,
        // true when the queue is shut down. Must not throw.
        void (*fire)(entry& e, bool dropped) noexcept = nullptr;
        steady_clock::time_point when{};
        bool queued() const { return next != nullptr; }

    private:
        friend class deadline_queue;
        entry* prev = nullptr;  // a circular list through a sentinel; null: not queued
        entry* next = nullptr;
    };

    // An Asio service: one per io_context, made by asio::use_service<deadline_queue>(ioc).
    using key_type = deadline_queue;
    static inline asio::execution_context::id id;
    explicit deadline_queue(asio::io_context& ioc);
    deadline_queue(const deadline_queue&) = delete;
    deadline_queue& operator=(const deadline_queue&) = delete;

    // Queues `e` for `when`, or moves it there if queued. If it throws (std::bad_alloc:
    // no memory for the timer's wait), `e` is not queued. After the io_context's
    // shutdown, `e` is dropped at once (fire(e, true)).
    void schedule(entry& e, steady_clock::time_point when);
    void cancel(entry& e) noexcept;
    std::size_t size() const { return size_; }

private:
    void shutdown() override;
    void arm(steady_clock::time_point when);
    void on_timer(error_code ec);
    static void link(entry& list, entry& e) noexcept;  // at the end of `list`
    static void unlink(entry& e) noexcept;

    asio::steady_timer timer_;
    entry list_;  // the sentinel of the queued entries
    std::size_t size_ = 0;
    // What the timer waits for; max: no wait is pending.
    steady_clock::time_point armed_ = steady_clock::time_point::max();
    // In on_timer, while due entries fire: the earliest deadline scheduled meanwhile (the
    // timer is armed once, at the end).
    bool firing_ = false;
    steady_clock::time_point scheduled_while_firing_ = steady_clock::time_point::max();
    bool shut_down_ = false;
};

}  // namespace sluice::net
