#pragma once
// Memory that connections hold, counted where it is taken and given back, for SHOW MEM.
//
// Each thread counts in a slot of its own (relaxed atomics that only that thread writes),
// so the I/O path writes no cache line another thread writes; SHOW MEM sums the slots.
// Memory taken on one thread and given back on another (a server connection's buffer
// moves with it between workers) leaves one slot high and the other low: the sum is right.
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace sluice::stats {

enum class held : int {
    iobuf_used_bytes,   // byte_buffer blocks attached to a connection
    iobuf_free_blocks,  // standard blocks on the per-thread free lists
    scratch_used,       // relay request storage held by a client with work
    scratch_free,       // ... on the per-thread free lists
    count_
};

namespace detail {
using held_slot = std::atomic<std::int64_t>[std::size_t(held::count_)];
// This thread's slot, null until the thread first counts. constinit: no dynamic
// initialisation, so other translation units reach it without a TLS wrapper call (the
// I/O path counts several times per transaction).
extern thread_local constinit held_slot* held_mine;
held_slot& held_register();  // gives this thread its slot (once per thread, out of line)
}  // namespace detail

// Adds to this thread's slot: a load and a store, no locked instruction (only this thread
// writes the slot).
inline void held_add(held what, std::int64_t n) {
    detail::held_slot* s = detail::held_mine;
    if (s == nullptr) [[unlikely]] s = &detail::held_register();
    auto& c = (*s)[std::size_t(what)];
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

std::int64_t held_total(held what);  // every thread's slots, summed

}  // namespace sluice::stats
