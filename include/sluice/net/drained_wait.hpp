#pragma once
// A wait for readability that costs no system call to start.
//
// Asio's epoll reactor registers each socket once, edge-triggered, for input. It does
// not remember whether an edge it saw while no operation was queued has been read since,
// so each wait pays for that: async_wait re-arms the descriptor (epoll_ctl MOD), and a
// read first tries a recv, which finds nothing when the peer has not answered yet. On a
// pooler's steady path both are one system call per transaction that tells nothing new:
// the caller has just seen the socket empty.
//
// async_wait_drained queues a wait on the existing registration, and nothing else: the
// next edge (bytes, EOF, an error) completes it. Precondition, the caller's to prove:
// the socket was seen with nothing to read (a non-blocking recv that would block, or a
// poll() that saw nothing) in the same handler, with no return to the event loop since.
// One thread runs each io_context, so the reactor cannot have consumed an edge in
// between. A socket moved to another io_context after the proof (stream::migrate, on a
// checkout) is still covered, though its old reactor runs on another thread: the move
// deregisters the descriptor and registers it anew (EPOLL_CTL_DEL, then ADD), and the
// kernel reports what is readable at ADD. A move that kept the registration would not be.
// No proof:
//   - a recv that returned less than it asked for: the peer's FIN (or a reset) may have
//     come with those bytes, its edge spent, and the next recv would return it;
//   - a read performed by Asio: one that succeeded at once completes through the
//     scheduler's queue, where the reactor may run first.
// Without the proof, use async_wait or a read.
//
// This reaches into Asio's reactor (asio::detail), checked against the Boost version
// it was written for (Debian 12's 1.81).

#include <boost/version.hpp>

#include <cstddef>
#include <memory>
#include <new>
#include <utility>

#include "sluice/net/io.hpp"

#if BOOST_VERSION / 100 != 1081
#error "drained_wait.hpp uses Asio's epoll reactor internals as of Boost 1.81: check them"
#endif

#include <boost/asio/detail/reactor.hpp>
#include <boost/asio/detail/reactor_op.hpp>

#include <type_traits>

static_assert(std::is_same_v<boost::asio::detail::reactor, boost::asio::detail::epoll_reactor>,
              "drained_wait.hpp relies on the edge-triggered epoll reactor");

namespace sluice::net {

namespace detail {

// The socket's descriptor and its reactor registration (protected in basic_socket).
struct socket_access : stream_socket {
    static auto& implementation(stream_socket& s) {
        return (s.*&socket_access::impl_).get_implementation();
    }
};

asio::detail::reactor& reactor_of(stream_socket& s);

// Set while start_op runs: the reactor then asks the operation whether it can complete
// at once (its speculative attempt), and the answer is no, without a system call.
inline thread_local bool drained_wait_starting = false;

template <class Handler>
class drained_wait_op : public asio::detail::reactor_op {
public:
    explicit drained_wait_op(Handler h)
        : reactor_op(error_code(), &drained_wait_op::do_perform, &drained_wait_op::do_complete),
          handler_(std::move(h)) {}

    static status do_perform(reactor_op*) { return drained_wait_starting ? not_done : done; }

    // owner is null when the io_context is destroyed with the operation still queued.
    static void do_complete(void* owner, asio::detail::operation* base, const error_code&,
                            std::size_t) {
        auto* op = static_cast<drained_wait_op*>(base);
        Handler h(std::move(op->handler_));
        const error_code ec = op->ec_;
        destroy(op);  // before the handler runs, so that its next wait reuses the memory
        if (owner) h(ec);
    }

    // exact_allocator (net/io.hpp): the operation's own size, from a per-thread free list,
    // so that a wait per transaction costs no malloc. Not Asio's recycling cache: that
    // hands out any cached block large enough (a coroutine frame's), which an idle
    // client's wait would then hold for hours (0.11 KiB more per idle client, measured).
    using allocator = exact_allocator<drained_wait_op>;
    static drained_wait_op* make(Handler h) {
        allocator a;
        drained_wait_op* p = a.allocate(1);
        try {
            return new (p) drained_wait_op(std::move(h));
        } catch (...) {
            a.deallocate(p, 1);
            throw;
        }
    }
    static void destroy(drained_wait_op* op) {
        op->~drained_wait_op();
        allocator().deallocate(op, 1);
    }

private:
    Handler handler_;
};

}  // namespace detail

// handler(error_code): success once readable (or woken by an edge whose bytes were read
// already: the caller's recv then finds nothing, and it waits again); operation_aborted if
// the socket is closed or its operations cancelled; bad_descriptor if it was not open.
// A plain handler: it runs on the socket's io_context; an associated executor or
// allocator is not used (the operation's memory comes from exact_allocator).
template <class Handler>
void async_wait_drained(stream_socket& s, Handler handler) {
    auto& impl = detail::socket_access::implementation(s);
    auto& reactor = detail::reactor_of(s);
    auto* op = detail::drained_wait_op<Handler>::make(std::move(handler));
    struct starting {
        starting() { detail::drained_wait_starting = true; }
        ~starting() { detail::drained_wait_starting = false; }
    } during;
    // (read_op: queued with the reads; not a continuation; speculative: so that the
    // reactor neither re-arms the descriptor nor recvs, and only asks do_perform)
    reactor.start_op(asio::detail::reactor::read_op, impl.socket_, impl.reactor_data_, op,
                     false, true);
}

}  // namespace sluice::net
