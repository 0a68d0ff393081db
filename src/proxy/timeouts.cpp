// query_timeout, idle_transaction_timeout, transaction_timeout, client_idle_timeout: a
// sweeper on another thread compares the session's timestamps (atomics) with its limits;
// an expired one is acted on in the session's own executor. KILL closes the client.
#include "sluice/proxy/client_session.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "sluice/proxy/runtime.hpp"

namespace sluice::proxy {

namespace proto = sluice::protocol;

void client_session::check_timeouts(std::int64_t now) {
    auto expired = [now](std::atomic<std::int64_t>& since, std::int64_t limit) {
        auto t = since.load(std::memory_order_relaxed);
        return limit > 0 && t != 0 && now - t > limit && since.compare_exchange_strong(t, 0);
    };
    if (expired(query_since_ns, query_timeout_ns)) {
        // As PgBouncer's query_timeout: cancel the query; PostgreSQL answers 57014.
        spdlog::info("client {}: query_timeout, cancelling its query", id);
        asio::co_spawn(executor(), forward_cancel(shared_from_this()),
                       rt_.log_failure("query_timeout cancel"));
    }
    if (expired(idle_in_xact_since_ns, idle_transaction_timeout_ns))
        kill("25P03", "idle transaction timeout (idle_transaction_timeout)");
    if (expired(xact_since_ns, transaction_timeout_ns))
        kill("25P04", "transaction timeout (transaction_timeout)");
    if (expired(idle_since_ns, client_idle_timeout_ns))
        kill("57P05", "client idle timeout (client_idle_timeout)");
}

void client_session::fast_close_if_idle() {
    asio::post(executor(), [self = shared_from_this()] {
        if (self->fatal_ || self->mode_ != config::pool_mode::session || !self->server_ ||
            !self->server_->close_needed || !self->relay_ || !self->relay_->server_clean() ||
            self->query_since_ns.load(std::memory_order_relaxed) != 0)
            return;
        // In this same handler: no client message can slip in between the check and
        // the close (the client would not know whether that query ran).
        self->kill_now("57P01", "server connection closed by server_fast_close (RECONNECT or "
                                "RELOAD asked for new server connections)");
    });
}

void client_session::kill(std::string sqlstate, std::string message) {
    asio::post(executor(), [self = shared_from_this(), sqlstate = std::move(sqlstate),
                            message = std::move(message)] { self->kill_now(sqlstate, message); });
}

void client_session::kill_now(const std::string& sqlstate, const std::string& message) {
    if (fatal_) return;
    fatal_ = true;
    set_close_reason(message);
    if (!writing_client_ && socket_.is_open() && !socket_.tls()) {
        // Best effort: a FATAL the client can show, without waiting on a slow reader.
        std::string out;
        proto::writer(out).error_response(sqlstate, message, {}, "FATAL");
        [[maybe_unused]] auto n = ::send(socket_.native_handle(), out.data(), out.size(),
                                         MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    error_code ignored;
    socket_.shutdown(ignored);
    socket_.close(ignored);
    if (server_ && server_loop_running_) server_->socket.cancel(ignored);
}

}  // namespace sluice::proxy
