#include "sluice/stats/held.hpp"

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

namespace sluice::stats {

namespace {

struct slot {
    std::array<std::atomic<std::int64_t>, std::size_t(held::count_)> v{};
};

struct registry {
    std::mutex m;
    std::vector<std::unique_ptr<slot>> slots;  // never freed: a thread's counts outlive it
};

registry& slots() {
    static registry* r = new registry;  // (lives until exit, whatever the destruction order)
    return *r;
}

slot& mine() {
    thread_local slot* s = [] {
        auto& r = slots();
        std::lock_guard lock(r.m);
        r.slots.push_back(std::make_unique<slot>());
        return r.slots.back().get();
    }();
    return *s;
}

}  // namespace

void held_add(held what, std::int64_t n) {
    auto& c = mine().v[std::size_t(what)];
    // Only this thread writes the slot: a load and a store, no locked instruction.
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

std::int64_t held_total(held what) {
    auto& r = slots();
    std::lock_guard lock(r.m);
    std::int64_t sum = 0;
    for (auto& s : r.slots) sum += s->v[std::size_t(what)].load(std::memory_order_relaxed);
    return sum;
}

}  // namespace sluice::stats
