#pragma once
// Memory that connections hold, counted where it is taken and given back, for SHOW MEM.
//
// Each thread counts in a slot of its own (relaxed atomics that only that thread writes),
// so the I/O path writes no cache line another thread writes; SHOW MEM sums the slots.
// Memory taken on one thread and given back on another (a server connection's buffer
// moves with it between workers) leaves one slot high and the other low: the sum is right.
#include <cstdint>

namespace sluice::stats {

enum class held : int {
    iobuf_used_bytes,   // byte_buffer blocks attached to a connection
    iobuf_free_blocks,  // standard blocks on the per-thread free lists
    scratch_used,       // relay request storage held by a client with work
    scratch_free,       // ... on the per-thread free lists
    count_
};

void held_add(held what, std::int64_t n);  // this thread's slot
std::int64_t held_total(held what);         // every thread's slots, summed

}  // namespace sluice::stats
