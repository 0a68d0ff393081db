#include "sluice/stats/held.hpp"

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

namespace sluice::stats {

namespace {

struct slot {
    detail::held_slot v{};
};

struct registry {
    std::mutex m;
    std::vector<std::unique_ptr<slot>> slots;  // never freed: a thread's counts outlive it
};

registry& slots() {
    static registry* r = new registry;  // (lives until exit, whatever the destruction order)
    return *r;
}

}  // namespace

namespace detail {

thread_local constinit held_slot* held_mine = nullptr;

held_slot& held_register() {
    auto& r = slots();
    std::lock_guard lock(r.m);
    r.slots.push_back(std::make_unique<slot>());
    held_mine = &r.slots.back()->v;
    return *held_mine;
}

}  // namespace detail

std::int64_t held_total(held what) {
    auto& r = slots();
    std::lock_guard lock(r.m);
    std::int64_t sum = 0;
    for (auto& s : r.slots) sum += s->v[std::size_t(what)].load(std::memory_order_relaxed);
    return sum;
}

}  // namespace sluice::stats
