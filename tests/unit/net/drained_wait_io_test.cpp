// net::async_wait_drained: a wait on a socket seen empty, queued on Asio's existing
// edge-triggered registration without a system call. What it must do: complete on the
// next bytes, on EOF, with operation_aborted when the socket is closed, and never on its
// own; and (the reason it exists) not look at the socket when it starts, which the
// "spent edge" test shows: bytes whose edge the reactor already consumed do not complete
// it, which is why callers must prove the socket empty first.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <new>
#include <memory>
#include <optional>

#include "sluice/net/drained_wait.hpp"
#include "sluice/net/stream.hpp"

namespace {
using namespace sluice;
using namespace std::chrono_literals;

struct drained_wait : ::testing::Test {
    asio::io_context ctx{1};
    stream_socket ours{ctx.get_executor()};
    int peer = -1;
    // Keeps poll() running the reactor when nothing else is pending.
    asio::executor_work_guard<asio::io_context::executor_type> work{ctx.get_executor()};

    void SetUp() override {
        int fds[2];
        ASSERT_EQ(0, ::socketpair(AF_UNIX, SOCK_STREAM, 0, fds));
        ours.assign(asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM), fds[0]);
        ours.non_blocking(true);
        peer = fds[1];
    }
    void TearDown() override {
        if (peer >= 0) ::close(peer);
    }
    void send_byte() { ASSERT_EQ(1, ::send(peer, "x", 1, MSG_NOSIGNAL)); }
    // Runs handlers until `done` or a generous deadline (never a verdict on speed).
    void run_until(const std::optional<error_code>& done) {
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        while (!done && std::chrono::steady_clock::now() < deadline) ctx.run_one_for(100ms);
    }
};

TEST_F(drained_wait, completes_when_bytes_arrive_and_leaves_them_unread) {
    std::optional<error_code> got;
    net::async_wait_drained(ours, [&](error_code ec) { got = ec; });
    ctx.poll();
    EXPECT_FALSE(got) << "completed with nothing to read";
    send_byte();
    run_until(got);
    ASSERT_TRUE(got);
    EXPECT_FALSE(*got) << got->message();
    char c = 0;
    EXPECT_EQ(1, ::recv(ours.native_handle(), &c, 1, MSG_DONTWAIT));  // a wait, not a read
}

TEST_F(drained_wait, completes_on_eof) {
    std::optional<error_code> got;
    net::async_wait_drained(ours, [&](error_code ec) { got = ec; });
    ::close(peer);
    peer = -1;
    run_until(got);
    ASSERT_TRUE(got);
    EXPECT_FALSE(*got);
    char c;
    EXPECT_EQ(0, ::recv(ours.native_handle(), &c, 1, MSG_DONTWAIT));
}

TEST_F(drained_wait, closing_the_socket_aborts_it) {
    std::optional<error_code> got;
    net::async_wait_drained(ours, [&](error_code ec) { got = ec; });
    ours.close();
    run_until(got);
    ASSERT_TRUE(got);
    EXPECT_EQ(*got, asio::error::operation_aborted);
}

TEST_F(drained_wait, a_closed_socket_fails_at_once) {
    ours.close();
    std::optional<error_code> got;
    net::async_wait_drained(ours, [&](error_code ec) { got = ec; });
    run_until(got);
    ASSERT_TRUE(got);
    EXPECT_EQ(*got, asio::error::bad_descriptor);
}

TEST_F(drained_wait, a_socket_and_context_destroyed_with_it_pending_free_the_handler_uncalled) {
    // (The socket goes first and aborts the wait; the context, destroyed before it ran
    // the completion, frees it without calling it: do_complete with no owner.)
    auto held = std::make_shared<int>(1);
    bool called = false;
    {
        asio::io_context other{1};
        stream_socket s{other.get_executor()};
        int fds[2];
        ASSERT_EQ(0, ::socketpair(AF_UNIX, SOCK_STREAM, 0, fds));
        s.assign(asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM), fds[0]);
        net::async_wait_drained(s, [held, &called](error_code) { called = true; });
        EXPECT_EQ(held.use_count(), 2);
        ::close(fds[1]);
    }
    EXPECT_FALSE(called);
    EXPECT_EQ(held.use_count(), 1);
}

TEST_F(drained_wait, does_not_look_at_the_socket_when_it_starts) {
    // Bytes arrive while nothing waits; the reactor consumes their edge.
    send_byte();
    ctx.poll();
    std::optional<error_code> got;
    net::async_wait_drained(ours, [&](error_code ec) { got = ec; });
    ctx.poll();
    // No recv and no epoll_ctl: the socket is readable, and the wait does not know.
    EXPECT_FALSE(got);
    // The next edge completes it.
    send_byte();
    run_until(got);
    ASSERT_TRUE(got);
    EXPECT_FALSE(*got);
}

TEST_F(drained_wait, works_again_on_a_new_context_at_the_same_address) {
    // reactor_of remembers the last context per thread. Contexts made one after another
    // in the same storage have the same address; each must reach its own reactor, not the
    // destroyed one's (freed memory: ASan, which the CI runs these tests under, reports
    // the use).
    alignas(asio::io_context) unsigned char storage[sizeof(asio::io_context)];
    for (int i = 0; i < 3; ++i) {
        auto* other = new (storage) asio::io_context(1);
        {
            stream_socket s{other->get_executor()};
            int fds[2];
            ASSERT_EQ(0, ::socketpair(AF_UNIX, SOCK_STREAM, 0, fds));
            s.assign(asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM), fds[0]);
            std::optional<error_code> got;
            net::async_wait_drained(s, [&](error_code ec) { got = ec; });
            ASSERT_EQ(1, ::send(fds[1], "x", 1, MSG_NOSIGNAL));
            const auto deadline = std::chrono::steady_clock::now() + 10s;
            while (!got && std::chrono::steady_clock::now() < deadline) other->run_one_for(100ms);
            EXPECT_TRUE(got) << i;
            if (got) {
                EXPECT_FALSE(*got);
            }
            ::close(fds[1]);
        }
        other->~io_context();
    }
}

TEST_F(drained_wait, a_socket_moved_to_another_context_after_the_proof_still_wakes) {
    // The checkout's case: seen empty on one worker's context, bytes arrive and that
    // context's reactor consumes their edge, then the socket moves (stream::migrate) to
    // the client's worker, where the wait starts. The move registers the descriptor anew,
    // and the kernel reports the bytes there.
    asio::io_context client_side{1};  // (outlives the socket moved onto it)
    net::stream moving{std::move(ours)};
    send_byte();
    ctx.poll();  // the old reactor takes the edge, with nothing queued
    ASSERT_TRUE(moving.migrate(client_side.get_executor()));
    std::optional<error_code> got;
    net::async_wait_drained(moving.lowest_layer(), [&](error_code ec) { got = ec; });
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!got && std::chrono::steady_clock::now() < deadline) client_side.run_one_for(100ms);
    ASSERT_TRUE(got);
    EXPECT_FALSE(*got);
}

}  // namespace
