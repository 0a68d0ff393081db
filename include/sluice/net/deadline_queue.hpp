#pragma once
// Many deadlines on one Asio timer: the waits of one worker's parked requests.
//
// A parked request (pool::park) looks again at its pool when its next deadline passes
// (query_wait_timeout, reserve_pool_timeout, query_wait_notify, the periodic look). With
// an Asio timer each, every parked transaction constructed a timer (a service lookup
// under a lock), armed it and, when a server came first (nearly always), cancelled it:
// two more locks, two changes of the reactor's timer heap and a handler run for the
// cancellation, about a tenth of Sluice's instructions per transaction at 200 clients.
// Here a wait is an entry in a binary heap, and one Asio timer per io_context is armed
// for the earliest entry. Deadlines are mostly "now + a constant", so a new entry is
// nearly always later than the one the timer waits for, and the timer is left alone:
// scheduling and cancelling an entry touch only the heap.
//
// Flow:  schedule(e, when) -> heap; the timer re-armed only if `when` is earlier than
//        the deadline it waits for (or it waits for none); no memory for either: `e` out
//        again, the error to the caller
//        cancel(e)         -> out of the heap; the timer is left alone (it may fire for
//                             nothing, which costs one handler run)
//        timer fires       -> entries due are taken out and their `fire(e, false)` runs,
//                             earliest first; then the timer waits for the new earliest
//                             (no memory for that wait: logged, and the next schedule()
//                             arms it)
//        shutdown()        -> (the io_context is destroyed) every entry's
//                             `fire(e, true)` runs: let go, nothing more comes
// Invariants: one thread runs the io_context, and every call is made on it (the queue
// has no lock); an entry is in the heap at most once (`index` says where), so an entry
// that is not queued can be cancelled any number of times; `fire` is called after the
// entry left the heap, so it may schedule the entry again or free it. The queue does not
// own its entries: the owner keeps an entry alive while it is queued.

#include <cstddef>
#include <limits>
#include <vector>

#include "sluice/net/io.hpp"

namespace sluice::net {

class deadline_queue : public asio::execution_context::service {
public:
    struct entry {
        static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();
        // Called with the entry out of the heap: `dropped` false when `when` passed,
        // true when the queue is shut down. Must not throw.
        void (*fire)(entry& e, bool dropped) noexcept = nullptr;
        steady_clock::time_point when{};
        std::size_t index = npos;  // place in the heap; npos: not queued
        bool queued() const { return index != npos; }
    };

    // An Asio service: one per io_context, made by asio::use_service<deadline_queue>(ioc).
    using key_type = deadline_queue;
    static inline asio::execution_context::id id;
    explicit deadline_queue(asio::io_context& ioc);
    deadline_queue(const deadline_queue&) = delete;
    deadline_queue& operator=(const deadline_queue&) = delete;

    // Queues `e` for `when`, or moves it there if queued. If it throws (std::bad_alloc:
    // the heap or the timer's wait could not get memory), `e` is not queued. After the
    // io_context's shutdown, `e` is dropped at once (fire(e, true)).
    void schedule(entry& e, steady_clock::time_point when);
    void cancel(entry& e) noexcept;
    std::size_t size() const { return heap_.size(); }

private:
    void shutdown() override;
    void arm();
    void on_timer(error_code ec);
    void sift_up(std::size_t i) noexcept;
    void sift_down(std::size_t i) noexcept;
    void place(std::size_t i, entry* e) noexcept {
        heap_[i] = e;
        e->index = i;
    }
    void remove_at(std::size_t i) noexcept;

    asio::steady_timer timer_;
    std::vector<entry*> heap_;  // a min-heap on `when`
    // What the timer waits for; max: no wait is pending.
    steady_clock::time_point armed_ = steady_clock::time_point::max();
    bool firing_ = false;  // in on_timer's loop: it arms the timer once, at the end
    bool shut_down_ = false;
};

}  // namespace sluice::net
