#include "sluice/net/deadline_queue.hpp"

#include <spdlog/spdlog.h>

#include <utility>

namespace sluice::net {

deadline_queue::deadline_queue(asio::io_context& ioc)
    : asio::execution_context::service(ioc), timer_(ioc.get_executor()) {}

void deadline_queue::schedule(entry& e, steady_clock::time_point when) {
    if (shut_down_) {  // (the io_context is going away: nothing will fire)
        e.fire(e, true);
        return;
    }
    if (e.queued()) {
        const bool earlier = when < e.when;
        e.when = when;
        earlier ? sift_up(e.index) : sift_down(e.index);
    } else {
        heap_.push_back(&e);  // (the only step that can throw: nothing changed yet)
        e.when = when;
        place(heap_.size() - 1, &e);
        sift_up(e.index);
    }
    if (firing_ || !(heap_.front()->when < armed_)) return;
    try {
        arm();
    } catch (...) {
        remove_at(e.index);
        throw;
    }
}

void deadline_queue::cancel(entry& e) noexcept {
    if (e.queued()) remove_at(e.index);
    // (The timer keeps its wait: when it fires early it re-arms for what is left.)
}

void deadline_queue::arm() {
    const auto when = heap_.front()->when;
    armed_ = steady_clock::time_point::max();  // (until the new wait is in place)
    timer_.expires_at(when);  // (cancels a wait for a later deadline: it ends aborted)
    timer_.async_wait(
        asio::bind_allocator(exact_allocator<void>(), [this](error_code ec) { on_timer(ec); }));
    armed_ = when;
}

void deadline_queue::on_timer(error_code ec) {
    if (ec == asio::error::operation_aborted || shut_down_) return;  // re-armed, or gone
    armed_ = steady_clock::time_point::max();  // (no wait pending now)
    // Entries due now, earliest first. The loop takes at most as many as the heap held
    // when it began, so an entry that `fire` schedules again for a time already past
    // cannot keep it going. Scheduling from `fire` does not arm the timer: it is armed
    // once, below.
    const auto now = steady_clock::now();
    firing_ = true;
    for (std::size_t budget = heap_.size(); budget > 0 && !heap_.empty(); --budget) {
        entry* e = heap_.front();
        if (e->when > now) break;
        remove_at(0);
        e->fire(*e, false);
    }
    firing_ = false;
    if (heap_.empty()) return;
    try {
        arm();
    } catch (const std::exception& ex) {  // (no memory: the next schedule() arms it)
        spdlog::error("deadline queue: cannot wait for the next deadline: {}", ex.what());
    }
}

void deadline_queue::shutdown() {
    // The io_context is going away with entries still queued: their owners let them go.
    shut_down_ = true;
    timer_.cancel();
    while (!heap_.empty()) {
        entry* e = heap_.back();
        heap_.pop_back();
        e->index = entry::npos;
        e->fire(*e, true);
    }
}

void deadline_queue::remove_at(std::size_t i) noexcept {
    entry* gone = heap_[i];
    entry* last = heap_.back();
    heap_.pop_back();
    gone->index = entry::npos;
    if (last == gone) return;  // it was the last element
    place(i, last);
    if (i > 0 && last->when < heap_[(i - 1) / 2]->when) sift_up(i);
    else sift_down(i);
}

void deadline_queue::sift_up(std::size_t i) noexcept {
    entry* e = heap_[i];
    while (i > 0) {
        const std::size_t parent = (i - 1) / 2;
        if (!(e->when < heap_[parent]->when)) break;
        place(i, heap_[parent]);
        i = parent;
    }
    place(i, e);
}

void deadline_queue::sift_down(std::size_t i) noexcept {
    entry* e = heap_[i];
    const std::size_t n = heap_.size();
    for (;;) {
        std::size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && heap_[child + 1]->when < heap_[child]->when) ++child;
        if (!(heap_[child]->when < e->when)) break;
        place(i, heap_[child]);
        i = child;
    }
    place(i, e);
}

}  // namespace sluice::net
