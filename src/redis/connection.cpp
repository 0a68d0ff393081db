// Pipelined Redis connection. See connection.hpp for the flow.
#include "sluice/redis/connection.hpp"

#include <spdlog/spdlog.h>

#include <exception>

namespace sluice::redis {

namespace {

class redis_category_impl : public boost::system::error_category {
  public:
    const char* name() const noexcept override { return "sluice.redis"; }
    std::string message(int ev) const override {
        switch (redis_errc(ev)) {
            case redis_errc::not_connected:
                return "Redis is not connected (or the breaker is open)";
            case redis_errc::timeout:
                return "Redis did not answer in time";
            case redis_errc::connection_lost:
                return "the Redis connection was lost";
            case redis_errc::protocol_error:
                return "Redis sent a malformed reply";
            case redis_errc::tls_unsupported:
                return "TLS is not available";
            case redis_errc::stopped:
                return "the Redis connection was stopped";
        }
        return "unknown Redis error";
    }
};

// Completion handler of detached coroutines: a failure is logged, never propagated.
void log_failure(std::exception_ptr e) {
    if (!e) return;
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        spdlog::error("redis: internal task failed: {}", ex.what());
    } catch (...) {
        spdlog::error("redis: internal task failed");
    }
}

// A `-NOSCRIPT` reply is the normal way of learning that Redis lost its script cache
// (restart, SCRIPT FLUSH); every other error reply means Redis is unwell (LOADING, BUSY,
// READONLY, MASTERDOWN, OOM ...).
bool is_unwell_reply(const value& v) {
    return v.is_error() && v.str.rfind("NOSCRIPT", 0) != 0;
}

}  // namespace

const boost::system::error_category& redis_category() {
    static redis_category_impl c;
    return c;
}

connection::connection(asio::any_io_executor ex, connection_settings s)
    : ex_(ex),
      s_(std::move(s)),
      socket_(ex),
      write_signal_(ex),
      backoff_timer_(ex),
      breaker_(s_.breaker) {
    if (s_.endpoint.tls) {
        tls_ctx_ = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
        error_code ec;
        tls_ctx_->set_default_verify_paths(ec);
        tls_ctx_->set_verify_mode(asio::ssl::verify_peer);
    }
}

connection::~connection() = default;

std::int64_t connection::now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               steady_clock::now().time_since_epoch())
        .count();
}

void connection::start() {
    asio::co_spawn(ex_, run(shared_from_this()), log_failure);
}

void connection::stop() {
    stopping_ = true;
    up_ = false;
    healthy_ = false;
    close_socket();
    backoff_timer_.cancel();
    write_signal_.cancel();
    fail_all(redis_errc::stopped);
}

void connection::note_breaker() {
    healthy_.store(up_.load(std::memory_order_relaxed) &&
                       breaker_.current() == ratelimit::breaker::state::closed,
                   std::memory_order_relaxed);
}

void connection::close_socket() {
    error_code ignored;
    auto& sock = tls_ ? tls_->next_layer() : socket_;
    if (sock.is_open()) {
        sock.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
        sock.close(ignored);
    }
}

void connection::fail_all(error_code ec) {
    auto pending = std::move(pending_);
    pending_.clear();
    write_queue_.clear();
    for (auto& r : pending) {
        if (r->done) continue;
        r->done = true;
        r->ec = ec;
        r->timer.cancel();
    }
}

asio::awaitable<std::pair<error_code, value>> connection::exec(std::string command) {
    if (stopping_ || !up_.load(std::memory_order_relaxed))
        co_return std::pair{make_error_code(redis_errc::not_connected), value{}};
    if (!breaker_.allow(now_ns())) {
        note_breaker();
        co_return std::pair{make_error_code(redis_errc::not_connected), value{}};
    }
    auto r = co_await send(std::move(command), s_.timeout);
    if (r.first || is_unwell_reply(r.second)) {
        errors_.fetch_add(1, std::memory_order_relaxed);
        breaker_.on_failure(now_ns());
    } else {
        breaker_.on_success();
    }
    note_breaker();
    co_return r;
}

asio::awaitable<std::pair<error_code, value>> connection::send(std::string command,
                                                               std::chrono::milliseconds timeout) {
    if (!connected_) co_return std::pair{make_error_code(redis_errc::not_connected), value{}};
    // A Redis that stopped reading: do not let the queue grow without bound.
    if (pending_.size() > 100000) {
        close_socket();
        co_return std::pair{make_error_code(redis_errc::connection_lost), value{}};
    }
    auto req = std::make_shared<request>(ex_);
    req->timer.expires_after(timeout);
    pending_.push_back(req);
    write_queue_ += command;
    write_signal_.cancel();
    co_await req->timer.async_wait(use_nothrow);
    if (!req->done) {
        // Timed out. The request stays queued: its reply, if it ever comes, arrives in
        // order and is dropped.
        req->done = true;
        co_return std::pair{make_error_code(redis_errc::timeout), value{}};
    }
    co_return std::pair{req->ec, std::move(req->reply)};
}

asio::awaitable<void> connection::writer(std::shared_ptr<connection> self,
                                         std::uint64_t generation) {
    std::string batch;
    while (!stopping_ && connected_ && generation == generation_) {
        if (write_queue_.empty()) {
            write_signal_.expires_at(steady_clock::time_point::max());
            co_await write_signal_.async_wait(use_nothrow);
            continue;
        }
        batch.clear();
        batch.swap(write_queue_);  // every command queued so far goes in one write
        auto [ec, n] = tls_ ? co_await asio::async_write(*tls_, asio::buffer(batch), use_nothrow)
                            : co_await asio::async_write(socket_, asio::buffer(batch), use_nothrow);
        if (ec) {
            if (generation == generation_) close_socket();
            co_return;
        }
    }
}

asio::awaitable<error_code> connection::reader() {
    for (;;) {
        rbuf_.reserve_tail(4096);
        auto [ec, n] = tls_ ? co_await tls_->async_read_some(rbuf_.writable(), use_nothrow)
                            : co_await socket_.async_read_some(rbuf_.writable(), use_nothrow);
        if (ec) co_return ec;
        rbuf_.commit(n);
        for (;;) {
            auto r = parse(
                std::string_view(reinterpret_cast<const char*>(rbuf_.readable()), rbuf_.size()));
            if (r.status == parse_status::need_more) break;
            if (r.status == parse_status::error || pending_.empty())
                co_return make_error_code(redis_errc::protocol_error);
            rbuf_.consume(r.consumed);
            auto req = std::move(pending_.front());
            pending_.pop_front();
            if (req->done) continue;  // timed out earlier: the late reply is dropped
            req->done = true;
            req->reply = std::move(r.v);
            req->timer.cancel();
        }
        rbuf_.shrink_if_empty();
    }
}

asio::awaitable<error_code> connection::connect_once() {
    using namespace asio::experimental::awaitable_operators;
    asio::ip::tcp::resolver resolver(ex_);
    asio::steady_timer deadline(ex_);
    deadline.expires_after(s_.connect_timeout);
    auto resolved = co_await (
        resolver.async_resolve(s_.endpoint.host, std::to_string(s_.endpoint.port), use_nothrow) ||
        deadline.async_wait(use_nothrow));
    if (resolved.index() == 1) co_return make_error_code(redis_errc::timeout);
    auto [rec, results] = std::get<0>(std::move(resolved));
    if (rec) co_return rec;
    asio::ip::tcp::socket sock(ex_);
    auto connected = co_await (asio::async_connect(sock, results, use_nothrow) ||
                               deadline.async_wait(use_nothrow));
    if (connected.index() == 1) co_return make_error_code(redis_errc::timeout);
    auto [cec, ep] = std::get<0>(connected);
    if (cec) co_return cec;
    error_code ignored;
    sock.set_option(asio::ip::tcp::no_delay(true), ignored);
    if (!tls_ctx_) {
        socket_ = std::move(sock);
        co_return error_code{};
    }
    auto stream =
        std::make_unique<asio::ssl::stream<asio::ip::tcp::socket>>(std::move(sock), *tls_ctx_);
    // SNI, and the certificate must name the host of the URL (DNS name or IP address).
    SSL_set_tlsext_host_name(stream->native_handle(), s_.endpoint.host.c_str());
    stream->set_verify_callback(asio::ssl::host_name_verification(s_.endpoint.host));
    auto shaken = co_await (stream->async_handshake(asio::ssl::stream_base::client, use_nothrow) ||
                            deadline.async_wait(use_nothrow));
    if (shaken.index() == 1) co_return make_error_code(redis_errc::timeout);
    auto [hec] = std::get<0>(shaken);
    if (hec) co_return hec;
    tls_ = std::move(stream);
    co_return error_code{};
}

std::vector<std::string> connection::handshake_commands() const {
    std::vector<std::string> hello;
    const auto& ep = s_.endpoint;
    if (!ep.password.empty()) {
        if (ep.username.empty())
            hello.push_back(encode_command({"AUTH", ep.password}));
        else
            hello.push_back(encode_command({"AUTH", ep.username, ep.password}));
    }
    if (ep.db != 0) {
        std::string db = std::to_string(ep.db);
        hello.push_back(encode_command({"SELECT", db}));
    }
    for (auto& c : s_.on_connect) hello.push_back(c);
    return hello;
}

asio::awaitable<void> connection::run(std::shared_ptr<connection> self) {
    using namespace std::chrono;
    auto backoff = s_.backoff_min;
    bool logged_down = false;
    const auto where = s_.endpoint.host + ":" + std::to_string(s_.endpoint.port);
    while (!stopping_) {
        error_code ec = co_await connect_once();
        if (!ec && !stopping_) {
            connected_ = true;
            std::uint64_t gen = ++generation_;
            asio::co_spawn(ex_, writer(self, gen), log_failure);
            // Handshake: AUTH, SELECT and the caller's commands (SCRIPT LOAD), pipelined
            // through the same queue the reader answers.
            std::vector<std::string> hello = handshake_commands();
            asio::co_spawn(ex_, handshake(self, gen, std::move(hello)), log_failure);
            ec = co_await reader();
            connected_ = false;
            bool lost_up = up_.exchange(false);
            close_socket();
            write_signal_.cancel();
            fail_all(redis_errc::connection_lost);
            rbuf_.consume(rbuf_.size());
            breaker_.trip(now_ns());
            note_breaker();
            if (lost_up) {
                spdlog::warn(
                    "redis {}: connection lost ({}); rate limits fall back to the "
                    "on_redis_failure policy",
                    where, ec.message());
                logged_down = true;
                backoff = s_.backoff_min;
            }
        } else if (!stopping_ && !logged_down) {
            spdlog::warn(
                "redis {}: cannot connect ({}); rate limits use the on_redis_failure "
                "policy until it answers",
                where, ec.message());
            logged_down = true;
        }
        if (stopping_) break;
        backoff_timer_.expires_after(backoff);
        co_await backoff_timer_.async_wait(use_nothrow);
        backoff = std::min(s_.backoff_max, backoff * 2);
    }
}

asio::awaitable<void> connection::handshake(std::shared_ptr<connection> self, std::uint64_t gen,
                                            std::vector<std::string> commands) {
    // Sent together, awaited in order: one round trip.
    std::vector<std::shared_ptr<request>> sent;
    for (auto& c : commands) {
        auto req = std::make_shared<request>(ex_);
        req->timer.expires_after(s_.connect_timeout);
        pending_.push_back(req);
        write_queue_ += c;
        sent.push_back(req);
    }
    write_signal_.cancel();
    for (std::size_t i = 0; i < sent.size(); ++i) {
        auto& req = sent[i];
        if (!req->done) co_await req->timer.async_wait(use_nothrow);
        if (gen != generation_ || !connected_) co_return;
        std::string why;
        if (!req->done) {
            req->done = true;
            why = "no answer in time";
        } else if (req->ec) {
            why = req->ec.message();
        } else if (req->reply.is_error()) {
            why = req->reply.str;
        }
        if (!why.empty()) {
            // Never log the command itself: AUTH carries the password. Each distinct
            // reason once, not at every reconnect attempt.
            if (why != last_setup_error_)
                spdlog::error("redis {}:{}: connection setup failed at step {}: {}",
                              s_.endpoint.host, s_.endpoint.port, i + 1, why);
            last_setup_error_ = why;
            close_socket();
            co_return;
        }
    }
    if (gen != generation_ || !connected_) co_return;
    breaker_.on_success();
    reconnects_.fetch_add(1, std::memory_order_relaxed);
    up_ = true;
    last_setup_error_.clear();
    note_breaker();
    spdlog::info("redis {}:{}: connected", s_.endpoint.host, s_.endpoint.port);
}

}  // namespace sluice::redis
