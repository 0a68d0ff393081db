#include "sluice/pool/pool_state.hpp"

#include <algorithm>

namespace sluice::pool {

bool pool_state::take(bool reserve, bool* from_reserve) {
    int limit = limits_.pool_size + (reserve ? limits_.reserve_pool_size : 0);
    if (slots_ >= limit || !shared_.try_take()) return false;
    if (from_reserve) *from_reserve = slots_ >= limits_.pool_size;
    ++slots_;
    return true;
}

bool pool_state::is_waiting(waiter_id w) const {
    return std::any_of(waiters_.begin(), waiters_.end(), [&](auto& e) { return e.id == w; });
}

server_id pool_state::pop_idle() {
    if (limits_.round_robin) {
        server_id s = idle_.front().id;
        idle_.erase(idle_.begin());
        return s;
    }
    server_id s = idle_.back().id;
    idle_.pop_back();
    return s;
}

std::optional<server_id> pool_state::take_idle(int worker) {
    if (paused_ || !waiters_.empty() || idle_.empty()) return std::nullopt;
    if (limits_.round_robin) return pop_idle();  // the longest idle, wherever it is
    // Prefer a server already on this worker (no socket migration), the most recently
    // used first (warmest caches, and the others can time out).
    auto it = std::find_if(idle_.rbegin(), idle_.rend(),
                           [&](const idle_entry& e) { return e.worker == worker; });
    auto pos = it != idle_.rend() ? std::prev(it.base()) : std::prev(idle_.end());
    server_id s = pos->id;
    idle_.erase(pos);
    return s;
}

checkout pool_state::request(waiter_id w, int worker, clock_time) {
    if (auto s = take_idle(worker)) return {checkout::idle_server, *s};
    if (!paused_ && waiters_.empty() && take(false)) return {checkout::connect, 0};
    waiters_.push_back({w, worker});
    return {checkout::wait, 0};
}

checkout pool_state::retry(waiter_id w, clock_time since, clock_time now) {
    if (paused_ || !is_waiting(w)) return {checkout::wait, 0};
    // Only the longest waiter takes a free slot: the queue stays fair.
    const bool reserve = limits_.reserve_pool_size > 0 && now - since >= limits_.reserve_pool_timeout;
    if (waiters_.front().id == w && !idle_.empty()) {
        waiters_.pop_front();
        return {checkout::idle_server, pop_idle()};
    }
    bool from_reserve = false;
    if ((waiters_.front().id == w || reserve) && take(reserve, &from_reserve)) {
        waiters_.erase(std::find_if(waiters_.begin(), waiters_.end(),
                                    [&](auto& e) { return e.id == w; }));
        return {checkout::connect, 0, from_reserve};
    }
    return {checkout::wait, 0};
}

bool pool_state::cancel(waiter_id w) {
    auto it = std::find_if(waiters_.begin(), waiters_.end(), [&](auto& e) { return e.id == w; });
    if (it == waiters_.end()) return false;
    waiters_.erase(it);
    return true;
}

std::optional<grant> pool_state::released(server_id s, int worker, clock_time connected,
                                          clock_time now, bool reusable) {
    if (!reusable) return slot_freed();
    if (!paused_ && !waiters_.empty()) {
        // The first waiter on the server's worker, if one is near the front: the server
        // then stays on its thread (no socket migration, no cross-thread wake-up).
        std::size_t pick = 0;
        const std::size_t window = std::min(affinity_window, waiters_.size());
        for (std::size_t i = 0; i < window; ++i) {
            if (waiters_[i].worker == worker) {
                pick = i;
                break;
            }
            if (waiters_[i].bypassed >= max_bypass) break;  // its turn: no more overtaking
        }
        for (std::size_t i = 0; i < pick; ++i) waiters_[i].bypassed++;
        waiter_id w = waiters_[pick].id;
        waiters_.erase(waiters_.begin() + std::ptrdiff_t(pick));
        return grant{w, s};
    }
    idle_.push_back({s, worker, now, connected});
    return std::nullopt;
}

std::optional<grant> pool_state::slot_freed() {
    if (slots_ > 0) {
        --slots_;
        shared_.give_back();
    }
    if (!paused_ && !waiters_.empty() && take(false)) {
        waiter_id w = waiters_.front().id;
        waiters_.pop_front();
        return grant{w, 0};
    }
    return std::nullopt;
}

bool pool_state::remove_idle(server_id s) {
    auto it = std::find_if(idle_.begin(), idle_.end(), [&](const idle_entry& e) { return e.id == s; });
    if (it == idle_.end()) return false;
    idle_.erase(it);
    return true;
}

std::vector<server_id> pool_state::expire(clock_time now, bool all) {
    std::vector<server_id> out;
    auto too_old = [&](const idle_entry& e) {
        bool idle_too_long = limits_.server_idle_timeout.count() > 0 &&
                             now - e.last_used > limits_.server_idle_timeout;
        bool past_lifetime = limits_.server_lifetime.count() > 0 &&
                             now - e.connected > limits_.server_lifetime;
        return all || idle_too_long || past_lifetime;
    };
    for (auto& e : idle_)
        if (too_old(e)) out.push_back(e.id);
    idle_.erase(std::remove_if(idle_.begin(), idle_.end(), too_old), idle_.end());
    return out;
}

std::vector<grant> pool_state::match_idle() {
    std::vector<grant> out;
    while (!paused_ && !waiters_.empty() && !idle_.empty()) {
        out.push_back({waiters_.front().id, pop_idle()});
        waiters_.pop_front();
    }
    return out;
}

std::vector<grant> pool_state::fill_room() {
    std::vector<grant> out = match_idle();
    while (!paused_ && !waiters_.empty() && take(false)) {
        out.push_back({waiters_.front().id, 0});
        waiters_.pop_front();
    }
    return out;
}

bool pool_state::take_slot() { return take(false); }

}  // namespace sluice::pool
