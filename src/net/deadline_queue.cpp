#include "sluice/net/deadline_queue.hpp"

#include <utility>

namespace sluice::net {

deadline_queue::deadline_queue(asio::execution_context& ctx)
    : asio::execution_context::service(ctx),
      timer_(static_cast<asio::io_context&>(ctx).get_executor()) {}

void deadline_queue::schedule(entry& e, steady_clock::time_point when) {
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
    if (!shut_down_ && heap_.front()->when < armed_) arm();
}

void deadline_queue::cancel(entry& e) noexcept {
    if (e.queued()) remove_at(e.index);
    // (The timer keeps its wait: when it fires early it re-arms for what is left.)
}

void deadline_queue::arm() {
    armed_ = heap_.front()->when;
    timer_.expires_at(armed_);  // (cancels a wait for a later deadline: it ends aborted)
    timer_.async_wait(
        asio::bind_allocator(exact_allocator<void>(), [this](error_code ec) { on_timer(ec); }));
}

void deadline_queue::on_timer(error_code ec) {
    if (ec == asio::error::operation_aborted || shut_down_) return;  // re-armed, or gone
    armed_ = steady_clock::time_point::max();  // (no wait pending now)
    // Entries due now, earliest first. One that `fire` schedules again for a time already
    // past is left for the next run, so that this loop ends.
    const auto now = steady_clock::now();
    for (std::size_t budget = heap_.size(); budget > 0 && !heap_.empty(); --budget) {
        entry* e = heap_.front();
        if (e->when > now) break;
        remove_at(0);
        e->fire(*e, false);
    }
    if (!heap_.empty() && heap_.front()->when < armed_) arm();
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
