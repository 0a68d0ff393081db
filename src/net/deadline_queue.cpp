#include "sluice/net/deadline_queue.hpp"

#include <spdlog/spdlog.h>

namespace sluice::net {

deadline_queue::deadline_queue(asio::io_context& ioc)
    : asio::execution_context::service(ioc), timer_(ioc.get_executor()) {
    list_.prev = list_.next = &list_;
}

void deadline_queue::link(entry& list, entry& e) noexcept {
    e.prev = list.prev;
    e.next = &list;
    list.prev->next = &e;
    list.prev = &e;
}

void deadline_queue::unlink(entry& e) noexcept {
    e.prev->next = e.next;
    e.next->prev = e.prev;
    e.prev = e.next = nullptr;
}

void deadline_queue::schedule(entry& e, steady_clock::time_point when) {
    if (shut_down_) {  // (the io_context is going away: nothing will fire)
        e.fire(e, true);
        return;
    }
    e.when = when;
    if (!e.queued()) {
        link(list_, e);
        ++size_;
    }
    if (firing_) {
        if (when < scheduled_while_firing_) scheduled_while_firing_ = when;
        return;
    }
    if (!(when < armed_)) return;  // (the timer fires no later than `when`)
    try {
        arm(when);
    } catch (...) {
        cancel(e);
        throw;
    }
}

void deadline_queue::cancel(entry& e) noexcept {
    if (!e.queued()) return;
    unlink(e);
    --size_;
    // (The timer keeps its wait: when it fires early it finds the earliest of the rest.)
}

void deadline_queue::arm(steady_clock::time_point when) {
    armed_ = steady_clock::time_point::max();  // (until the new wait is in place)
    timer_.expires_at(when);  // (cancels a wait for a later deadline: it ends aborted)
    timer_.async_wait(
        asio::bind_allocator(exact_allocator<void>(), [this](error_code ec) { on_timer(ec); }));
    armed_ = when;
}

void deadline_queue::on_timer(error_code ec) {
    if (ec == asio::error::operation_aborted || shut_down_) return;  // re-armed, or gone
    armed_ = steady_clock::time_point::max();  // (no wait pending now)
    // One walk: what is due moves to a list of its own, and the earliest of the rest is
    // found. Then the due entries fire; what they schedule meanwhile goes into the main
    // list, not this walk.
    const auto now = steady_clock::now();
    entry due;
    due.prev = due.next = &due;
    auto earliest = steady_clock::time_point::max();
    for (entry* e = list_.next; e != &list_;) {
        entry* next = e->next;
        if (!(now < e->when)) {
            unlink(*e);
            link(due, *e);
        } else if (e->when < earliest) {
            earliest = e->when;
        }
        e = next;
    }
    firing_ = true;
    scheduled_while_firing_ = steady_clock::time_point::max();
    while (due.next != &due) {
        entry* e = due.next;
        unlink(*e);
        if (now < e->when) {  // moved later by an earlier fire(): back in the queue
            link(list_, *e);
            if (e->when < scheduled_while_firing_) scheduled_while_firing_ = e->when;
            continue;
        }
        --size_;  // (out of the queue before it fires: it may schedule itself again)
        e->fire(*e, false);  // (may cancel others, in `due` or in the queue: unlink needs
                             // no list head)
    }
    firing_ = false;
    // Entries that fire() cancelled may have been the earliest: the timer then fires
    // early for nothing, which costs one walk.
    if (scheduled_while_firing_ < earliest) earliest = scheduled_while_firing_;
    if (size_ == 0 || earliest == steady_clock::time_point::max()) return;
    try {
        arm(earliest);
    } catch (const std::exception& ex) {  // (no memory: the next schedule() arms it)
        spdlog::error("deadline queue: cannot wait for the next deadline: {}", ex.what());
    }
}

void deadline_queue::shutdown() {
    // The io_context is going away with entries still queued: their owners let them go.
    shut_down_ = true;
    timer_.cancel();
    while (list_.next != &list_) {
        entry* e = list_.next;
        unlink(*e);
        --size_;
        e->fire(*e, true);
    }
}

}  // namespace sluice::net
