#pragma once
// Common Asio vocabulary for the I/O modules. Only net, proxy, pool, admin, redis and the
// I/O halves of ratelimit include this.
#include <boost/asio.hpp>
#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "sluice/stats/held.hpp"

namespace sluice {
namespace asio = boost::asio;
// Sockets carry the worker's io_context executor, not any_io_executor: every executor a
// socket is made with is an io_context's, and the concrete type makes each socket 40 bytes
// smaller (it is held by every idle client) and each operation cheaper (no type-erased
// work counting per read or write).
using io_executor = asio::io_context::executor_type;
using stream_socket = asio::basic_stream_socket<asio::generic::stream_protocol, io_executor>;
// The io_context executor inside `ex`. Sluice makes every executor from an io_context;
// anything else is a programming error.
inline io_executor to_io_executor(const asio::any_io_executor& ex) {
    if (auto* e = ex.target<io_executor>()) return *e;
    throw std::logic_error("executor is not an io_context's");
}
using stream_acceptor = asio::basic_socket_acceptor<asio::generic::stream_protocol>;
using error_code = boost::system::error_code;  // what Asio reports; protocol code uses std::
using steady_clock = std::chrono::steady_clock;

// Awaitable completion that reports errors as values: peers misbehaving is normal, not
// exceptional.
inline constexpr auto use_nothrow = asio::as_tuple(asio::use_awaitable);

// An allocator for an operation that may stay pending for hours (an idle client's read),
// bound with asio::bind_allocator. Asio's default recycles per-thread blocks sized for
// coroutine frames, which would hold several times the operation's size for as long as it
// waits; this one takes the operation's size, rounded up to 16 bytes (malloc's own granule:
// coarser classes cost an idle client up to the difference), and keeps freed blocks on a
// small per-thread list per size class, so that a wait per request costs no malloc on the
// steady path.
namespace detail {
struct op_block_cache {
    static constexpr std::size_t granule = 16, classes = 32, max_blocks = 256;
    std::vector<void*> free[classes];
    ~op_block_cache() {
        for (auto& list : free)
            for (void* p : list) ::operator delete(p);
    }
    static op_block_cache& mine() {
        thread_local op_block_cache c;
        return c;
    }
};
}  // namespace detail

template <class T>
struct exact_allocator {
    using value_type = T;
    exact_allocator() = default;
    template <class U>
    exact_allocator(const exact_allocator<U>&) noexcept {}
    T* allocate(std::size_t n) {
        const std::size_t cls = size_class(n);
        if (cls < detail::op_block_cache::classes) {
            auto& list = detail::op_block_cache::mine().free[cls];
            if (!list.empty()) {
                void* p = list.back();
                list.pop_back();
                return static_cast<T*>(p);
            }
            return static_cast<T*>(::operator new((cls + 1) * detail::op_block_cache::granule));
        }
        return static_cast<T*>(::operator new(n * sizeof(T)));
    }
    void deallocate(T* p, std::size_t n) noexcept {
        const std::size_t cls = size_class(n);
        if (cls < detail::op_block_cache::classes) {
            auto& list = detail::op_block_cache::mine().free[cls];
            if (list.size() < detail::op_block_cache::max_blocks) {
                try {
                    list.push_back(p);
                    return;
                } catch (...) {  // (no memory for the list: free the block instead)
                }
            }
        }
        ::operator delete(p);
    }
    template <class U>
    bool operator==(const exact_allocator<U>&) const noexcept { return true; }

private:
    static std::size_t size_class(std::size_t n) {
        return (n * sizeof(T) + detail::op_block_cache::granule - 1) /
                   detail::op_block_cache::granule -
               1;
    }
};

// The buffer list of one gathered write, lent from a per-thread free list for as long as
// the write takes (the lease lives in the writing coroutine's frame): a connection holds
// none while idle, and a warm list costs no allocation per write.
class buffer_list_lease {
public:
    buffer_list_lease() {
        auto& f = free_lists();
        if (!f.empty()) {
            list_ = std::move(f.back());
            f.pop_back();
        }
        list_.clear();
    }
    ~buffer_list_lease() {
        auto& f = free_lists();
        if (f.size() < 64 && list_.capacity() <= 1024) {
            try {
                f.push_back(std::move(list_));
            } catch (...) {  // (no memory for the list: the vector is simply freed)
            }
        }
    }
    buffer_list_lease(const buffer_list_lease&) = delete;
    buffer_list_lease& operator=(const buffer_list_lease&) = delete;
    std::vector<asio::const_buffer>& operator*() { return list_; }
    std::vector<asio::const_buffer>* operator->() { return &list_; }

private:
    static std::vector<std::vector<asio::const_buffer>>& free_lists() {
        thread_local std::vector<std::vector<asio::const_buffer>> lists;
        return lists;
    }
    std::vector<asio::const_buffer> list_;
};

// A growable byte buffer with a read cursor: [begin, end) holds unread bytes. Memory is
// not zero-filled, and blocks of the standard size are recycled per thread, so a
// connection can drop its buffer whenever it goes idle at almost no cost.
class byte_buffer {
public:
    static constexpr std::size_t standard_size = 16384;

    byte_buffer() = default;
    byte_buffer(byte_buffer&&) = default;
    byte_buffer& operator=(byte_buffer&&) = default;
    ~byte_buffer() { release(); }

    std::size_t size() const { return end - begin; }
    bool empty() const { return begin == end; }
    std::size_t capacity() const { return capacity_; }
    const std::uint8_t* readable() const { return data_.get() + begin; }
    std::uint8_t* raw() { return data_.get(); }
    void consume(std::size_t n) {
        begin += n;
        if (begin == end) begin = end = 0;
    }
    // Makes room for at least `n` more bytes after `end`, moving unread bytes to the front.
    // New memory is at least `smallest` bytes: a standard block (recycled) unless asked
    // for less, as a login does (its messages are small, and a login storm holding a
    // 16 KiB block each left megabytes behind in the block cache and the heap).
    void reserve_tail(std::size_t n, std::size_t smallest = standard_size) {
        if (capacity_ - end >= n) return;
        if (begin > 0) {
            std::memmove(data_.get(), data_.get() + begin, end - begin);
            end -= begin;
            begin = 0;
        }
        if (capacity_ - end >= n) return;
        std::size_t want = std::max(smallest, end + n);
        if (want > smallest) want = std::max(want, capacity_ * 2);
        auto fresh = allocate(want);
        const std::size_t unread = end;  // begin is 0 here
        if (unread > 0) std::memcpy(fresh.get(), data_.get(), unread);
        release();  // (resets the cursors: the unread bytes now live in `fresh`)
        data_ = std::move(fresh);
        capacity_ = want;
        end = unread;
    }
    asio::mutable_buffer writable() { return asio::buffer(data_.get() + end, capacity_ - end); }
    void commit(std::size_t n) { end += n; }
    // Gives the memory back when nothing is unread (idle connections cost almost nothing).
    void shrink_if_empty() {
        if (empty()) release();
    }

    std::size_t begin = 0, end = 0;

private:
    using block = std::unique_ptr<std::uint8_t[]>;
    // Free blocks kept per thread (1 MiB). In steady traffic blocks are taken and given back
    // at the same rate, so a few suffice; a login storm (each login holds a block for its
    // messages) would otherwise leave up to the cap behind for good, malloc never reusing
    // it for sessions: at 256 that was 4 MiB, 0.2 KiB per client at 19,000 idle clients.
    static constexpr std::size_t max_cached_blocks = 64;
    static std::vector<block>& cache() {
        static thread_local std::vector<block> blocks;
        return blocks;
    }
    static block allocate(std::size_t n) {
        auto& c = cache();
        stats::held_add(stats::held::iobuf_used_bytes, std::int64_t(n));
        if (n == standard_size && !c.empty()) {
            block b = std::move(c.back());
            c.pop_back();
            stats::held_add(stats::held::iobuf_free_blocks, -1);
            return b;
        }
        return std::make_unique_for_overwrite<std::uint8_t[]>(n);
    }
    void release() {
        if (data_) stats::held_add(stats::held::iobuf_used_bytes, -std::int64_t(capacity_));
        if (data_ && capacity_ == standard_size && cache().size() < max_cached_blocks) {
            cache().push_back(std::move(data_));
            stats::held_add(stats::held::iobuf_free_blocks, 1);
        }
        data_.reset();
        capacity_ = 0;
        begin = end = 0;
    }
    block data_;
    std::size_t capacity_ = 0;
};

}  // namespace sluice
