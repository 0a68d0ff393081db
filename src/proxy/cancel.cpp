// Cancel requests: a CancelRequest from a new connection is matched to a session by
// Sluice's own key and forwarded, on a new connection, to the server that session is
// linked to. That server is not handed to anyone else until PostgreSQL has closed the
// cancel connection (a late cancel must not hit the next client's query).
#include "sluice/proxy/client_session.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "sluice/proxy/runtime.hpp"

namespace sluice::proxy {

namespace proto = sluice::protocol;
using namespace std::chrono_literals;

asio::awaitable<void> client_session::handle_cancel_request(proto::cancel_request req) {
    // As PostgreSQL: the requester gets no answer either way, the connection is closed.
    if (auto target = rt_.sessions.find_by_key(req.process_id, req.secret_key)) {
        asio::co_spawn(target->executor(), forward_cancel(target), [](std::exception_ptr e) {
            if (e) spdlog::error("cancel forwarding failed with an exception");
        });
    } else {
        spdlog::debug("cancel request with an unknown key from {}:{}", addr, port);
    }
    co_return;
}

asio::awaitable<void> client_session::forward_cancel(std::shared_ptr<client_session> self) {
    // Runs on the target session's thread, so server_ and the relay are stable here.
    auto s = self->server_;
    if (!s || !self->relay_ || self->relay_->outstanding() == 0) co_return;  // nothing running: nothing to cancel
    s->cancels_in_flight++;
    struct done_guard {
        pool::server_ptr s;
        ~done_guard() { s->cancels_in_flight--; }
    } guard{s};
    auto key = s->backend_key;
    stream_socket sock(to_io_executor(self->executor()));
    std::string error;
    auto timeout = self->rt_.cfg()->sluice.cancel_wait_timeout;
    asio::steady_timer watchdog(self->executor(), timeout.count() > 0 ? timeout : 10s);
    watchdog.async_wait([&sock](error_code ec) {
        if (!ec) {
            error_code ignored;
            sock.close(ignored);
        }
    });
    if (!co_await pool::connect_socket(sock, s->host(), s->port.load(), error)) {
        spdlog::warn("cancel for client {}: {}", self->id, error);
        watchdog.cancel();
        co_return;
    }
    std::string out;
    proto::writer(out).cancel(key.process_id, key.secret_key);
    co_await asio::async_write(sock, asio::buffer(out), use_nothrow);
    // PostgreSQL closes the connection once it has signalled the backend; until then the
    // server must not be handed to anyone else.
    std::uint8_t b;
    co_await sock.async_read_some(asio::buffer(&b, 1), use_nothrow);
    watchdog.cancel();
    spdlog::debug("cancel forwarded for client {} to server {}", self->id, s->id);
}

}  // namespace sluice::proxy
