// Pipelined Redis connection. See connection.hpp for the flow.
#include "sluice/redis/connection.hpp"

#include <fmt/format.h>
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
            case redis_errc::no_master:
                return "no sentinel named the master";
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

// Reads one RESP value from a sentinel link by `deadline` (timeout after it). `sock` and
// `buf` belong to the awaiting caller's frame, which outlives this call.
asio::awaitable<std::pair<error_code, value>> read_reply(asio::ip::tcp::socket& sock,
                                                         byte_buffer& buf,
                                                         steady_clock::time_point deadline) {
    using namespace asio::experimental::awaitable_operators;
    asio::steady_timer timer(sock.get_executor());
    timer.expires_at(deadline);
    for (;;) {
        auto r = parse(std::string_view(reinterpret_cast<const char*>(buf.readable()), buf.size()));
        if (r.status == parse_status::ok) {
            buf.consume(r.consumed);
            co_return std::pair{error_code{}, std::move(r.v)};
        }
        if (r.status == parse_status::error)
            co_return std::pair{make_error_code(redis_errc::protocol_error), value{}};
        buf.reserve_tail(4096);
        // A plain TCP read cancelled by the timer has consumed nothing: the socket stays
        // usable (the +switch-master link sends PING after such a timeout).
        auto got = co_await (sock.async_read_some(buf.writable(), use_nothrow) ||
                             timer.async_wait(use_nothrow));
        if (got.index() == 1) co_return std::pair{make_error_code(redis_errc::timeout), value{}};
        auto [ec, n] = std::get<0>(got);
        if (ec) co_return std::pair{ec, value{}};
        buf.commit(n);
    }
}

asio::awaitable<error_code> write_all(asio::ip::tcp::socket& sock, std::string data,
                                      steady_clock::time_point deadline) {
    using namespace asio::experimental::awaitable_operators;
    asio::steady_timer timer(sock.get_executor());
    timer.expires_at(deadline);
    auto sent = co_await (asio::async_write(sock, asio::buffer(data), use_nothrow) ||
                          timer.async_wait(use_nothrow));
    if (sent.index() == 1) co_return make_error_code(redis_errc::timeout);
    co_return std::get<0>(std::get<0>(sent));
}

// Resolves and connects by `deadline`.
asio::awaitable<std::pair<error_code, asio::ip::tcp::socket>> tcp_connect(
    asio::any_io_executor ex, std::string host, int port, steady_clock::time_point deadline) {
    using namespace asio::experimental::awaitable_operators;
    asio::ip::tcp::resolver resolver(ex);
    asio::steady_timer timer(ex);
    timer.expires_at(deadline);
    asio::ip::tcp::socket sock(ex);
    auto resolved = co_await (resolver.async_resolve(host, std::to_string(port), use_nothrow) ||
                              timer.async_wait(use_nothrow));
    if (resolved.index() == 1)
        co_return std::pair{make_error_code(redis_errc::timeout), std::move(sock)};
    auto [rec, results] = std::get<0>(std::move(resolved));
    if (rec) co_return std::pair{rec, std::move(sock)};
    auto connected =
        co_await (asio::async_connect(sock, results, use_nothrow) || timer.async_wait(use_nothrow));
    if (connected.index() == 1)
        co_return std::pair{make_error_code(redis_errc::timeout), std::move(sock)};
    auto [cec, ep] = std::get<0>(connected);
    if (cec) co_return std::pair{cec, std::move(sock)};
    error_code ignored;
    sock.set_option(asio::ip::tcp::no_delay(true), ignored);
    co_return std::pair{error_code{}, std::move(sock)};
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
      target_{s_.endpoint.host, s_.endpoint.port},
      sentinels_(s_.sentinel.sentinels),
      watch_socket_(ex),
      watch_timer_(ex),
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
    if (use_sentinels()) asio::co_spawn(ex_, watch(shared_from_this()), log_failure);
}

std::string connection::where() const {
    if (!use_sentinels()) return target_.to_string();
    return "master " + s_.sentinel.master + " at " + target_.to_string();
}

std::string connection::master_address() const {
    std::lock_guard lk(address_mutex_);
    return master_address_;
}

void connection::set_master_address(std::string a) {
    std::lock_guard lk(address_mutex_);
    master_address_ = std::move(a);
}

void connection::stop() {
    stopping_ = true;
    up_ = false;
    healthy_ = false;
    close_socket();
    backoff_timer_.cancel();
    write_signal_.cancel();
    error_code ignored;
    watch_socket_.close(ignored);
    watch_timer_.cancel();
    fail_all(redis_errc::stopped);
}

void connection::note_breaker() {
    healthy_.store(up_.load(std::memory_order_relaxed) &&
                       breaker_.current() == ratelimit::breaker::state::closed,
                   std::memory_order_relaxed);
}

bool connection::socket_open() const {
    return tls_ ? tls_->next_layer().is_open() : socket_.is_open();
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
        // Behind Sentinel, READONLY means the master we are on was demoted (a failover we
        // have not heard of yet): reconnect, which asks the sentinels again.
        // (Once: the other replies of the same batch find the socket closed already.)
        if (use_sentinels() && connected_ && socket_open() && r.second.is_error() &&
            r.second.str.rfind("READONLY", 0) == 0) {
            spdlog::warn("redis {}: answers READONLY (demoted); asking the sentinels again",
                         where());
            close_socket();
        }
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
    if (use_sentinels()) {
        // Every connect asks again: the master may have moved while we were away.
        if (auto ec = co_await discover()) co_return ec;
    }
    const auto deadline = steady_clock::now() + s_.connect_timeout;
    auto [cec, sock] = co_await tcp_connect(ex_, target_.host, target_.port, deadline);
    if (cec) co_return cec;
    if (!tls_ctx_) {
        socket_ = std::move(sock);
        co_return error_code{};
    }
    asio::steady_timer timer(ex_);
    timer.expires_at(deadline);
    auto stream =
        std::make_unique<asio::ssl::stream<asio::ip::tcp::socket>>(std::move(sock), *tls_ctx_);
    // SNI, and the certificate must name the host connected to (DNS name or IP address):
    // the URL's, or the one the sentinels announced.
    SSL_set_tlsext_host_name(stream->native_handle(), target_.host.c_str());
    stream->set_verify_callback(asio::ssl::host_name_verification(target_.host));
    auto shaken = co_await (stream->async_handshake(asio::ssl::stream_base::client, use_nothrow) ||
                            timer.async_wait(use_nothrow));
    if (shaken.index() == 1) co_return make_error_code(redis_errc::timeout);
    auto [hec] = std::get<0>(shaken);
    if (hec) co_return hec;
    tls_ = std::move(stream);
    co_return error_code{};
}

asio::awaitable<error_code> connection::ask_sentinel(sentinel::address at, std::string commands,
                                                     std::size_t n, std::vector<value>& replies) {
    const auto deadline = steady_clock::now() + s_.connect_timeout;
    auto [ec, sock] = co_await tcp_connect(ex_, at.host, at.port, deadline);
    if (ec) co_return ec;
    if (auto wec = co_await write_all(sock, std::move(commands), deadline)) co_return wec;
    byte_buffer buf;
    for (std::size_t i = 0; i < n; ++i) {
        auto [rec, v] = co_await read_reply(sock, buf, deadline);
        if (rec) co_return rec;
        replies.push_back(std::move(v));
    }
    error_code ignored;
    sock.close(ignored);
    co_return error_code{};
}

asio::awaitable<error_code> connection::discover() {
    const auto& ss = s_.sentinel;
    const bool auth = !ss.password.empty();
    std::string why;
    for (std::size_t i = 0; i < sentinels_.size() && !stopping_; ++i) {
        const sentinel::address at = sentinels_[i];  // a copy: answered() reorders the list
        std::string commands = auth ? sentinel::auth_command(ss.password) : std::string();
        commands += sentinel::get_master_addr_command(ss.master);
        std::vector<value> replies;
        error_code ec = co_await ask_sentinel(at, std::move(commands), auth ? 2 : 1, replies);
        if (!why.empty()) why += "; ";
        why += "sentinel " + at.to_string() + ": ";
        if (ec) {
            why += ec.message();
            continue;
        }
        auto a = sentinel::parse_discovery(replies, auth);
        switch (a.kind) {
            case sentinel::answer::found: {
                sentinels_.answered(i);
                target_ = a.addr;
                // Each reconnect asks again; the line is logged when the answer changes.
                std::string line = fmt::format("redis: master {} is at {} (from sentinel {})",
                                               ss.master, a.addr.to_string(), at.to_string());
                if (line != last_discovery_) spdlog::info("{}", line);
                last_discovery_ = std::move(line);
                last_discovery_error_.clear();
                co_return error_code{};
            }
            case sentinel::answer::unknown_master:
                why += "does not know a master named " + ss.master;
                break;
            case sentinel::answer::refused:
                why += a.error;
                break;
            case sentinel::answer::malformed:
                why += "unexpected reply";
                break;
        }
    }
    if (why != last_discovery_error_)
        spdlog::warn("redis: no sentinel named master {} ({})", ss.master, why);
    last_discovery_error_ = std::move(why);
    last_discovery_.clear();
    co_return make_error_code(redis_errc::no_master);
}

asio::awaitable<void> connection::watch(std::shared_ptr<connection> self) {
    auto backoff = s_.backoff_min;
    std::size_t attempt = 0;
    while (!stopping_) {
        // The sentinel discovery trusts most (the front of the list) first; each failure
        // moves on to the next one.
        const sentinel::address at = sentinels_[attempt++ % sentinels_.size()];
        const auto started = steady_clock::now();
        error_code ec = co_await watch_once(at);
        if (stopping_) break;
        spdlog::debug("redis: +switch-master subscription to sentinel {} ended ({})",
                      at.to_string(), ec.message());
        // A subscription that lived a while was healthy: start the backoff afresh.
        if (steady_clock::now() - started > s_.sentinel.watch_ping) backoff = s_.backoff_min;
        watch_timer_.expires_after(backoff);
        co_await watch_timer_.async_wait(use_nothrow);
        backoff = std::min(s_.backoff_max, backoff * 2);
    }
}

asio::awaitable<error_code> connection::watch_once(sentinel::address at) {
    const auto& ss = s_.sentinel;
    const auto deadline = steady_clock::now() + s_.connect_timeout;
    auto [cec, sock] = co_await tcp_connect(ex_, at.host, at.port, deadline);
    if (cec) co_return cec;
    if (stopping_) co_return make_error_code(redis_errc::stopped);
    watch_socket_ = std::move(sock);  // stop() closes it
    const bool auth = !ss.password.empty();
    std::string commands = auth ? sentinel::auth_command(ss.password) : std::string();
    commands += sentinel::subscribe_switch_master_command();
    if (auto ec = co_await write_all(watch_socket_, std::move(commands), deadline)) co_return ec;
    byte_buffer buf;
    if (auth) {
        auto [ec, v] = co_await read_reply(watch_socket_, buf, deadline);
        if (ec) co_return ec;
        if (v.t != value::type::simple_string || v.str != "OK") {
            // (Discovery AUTHs the same way and warns about it.)
            spdlog::debug("redis: sentinel {} refused AUTH: {}", at.to_string(), v.str);
            co_return make_error_code(redis_errc::protocol_error);
        }
    }
    {
        auto [ec, v] = co_await read_reply(watch_socket_, buf, deadline);
        if (ec) co_return ec;
        if (!sentinel::is_subscribed(v)) co_return make_error_code(redis_errc::protocol_error);
    }
    spdlog::debug("redis: watching +switch-master on sentinel {}", at.to_string());
    bool ping_sent = false;
    for (;;) {
        auto [ec, v] = co_await read_reply(watch_socket_, buf, steady_clock::now() + ss.watch_ping);
        if (ec == redis_errc::timeout && !ping_sent) {
            // Silence: make sure the sentinel is still there (a subscribed client may PING).
            ping_sent = true;
            auto wec = co_await write_all(watch_socket_, sentinel::ping_command(),
                                          steady_clock::now() + s_.connect_timeout);
            if (wec) co_return wec;
            continue;
        }
        if (ec) co_return ec;
        ping_sent = false;
        auto m = sentinel::parse_switch_master(v);
        if (m && m->master == ss.master) on_switch_master(*m, at);
    }
}

void connection::on_switch_master(const sentinel::switch_master& m,
                                  const sentinel::address& from) {
    spdlog::warn("redis: sentinel {} reports +switch-master: master {} moved from {} to {}",
                 from.to_string(), m.master, m.from.to_string(), m.to.to_string());
    if (stopping_) return;
    if (up_.load(std::memory_order_relaxed) && target_ == m.to) return;  // there already
    // Drop the connection (the reader ends, the loop reconnects and so asks the sentinels);
    // a loop waiting out its backoff goes now.
    if (connected_) close_socket();
    backoff_timer_.cancel();
}

std::vector<connection::setup_step> connection::handshake_commands() const {
    std::vector<setup_step> hello;
    const auto& ep = s_.endpoint;
    if (!ep.password.empty()) {
        if (ep.username.empty())
            hello.push_back({encode_command({"AUTH", ep.password})});
        else
            hello.push_back({encode_command({"AUTH", ep.username, ep.password})});
    }
    if (ep.db != 0) {
        std::string db = std::to_string(ep.db);
        hello.push_back({encode_command({"SELECT", db})});
    }
    // Behind Sentinel, the address may be stale (the sentinel has not noticed a failover
    // yet, or the old master came back as a replica): only a master will do.
    if (use_sentinels()) hello.push_back({sentinel::role_command(), true});
    for (auto& c : s_.on_connect) hello.push_back({c});
    return hello;
}

asio::awaitable<void> connection::run(std::shared_ptr<connection> self) {
    using namespace std::chrono;
    auto backoff = s_.backoff_min;
    bool logged_down = false;
    while (!stopping_) {
        error_code ec = co_await connect_once();
        if (!ec && !stopping_) {
            connected_ = true;
            std::uint64_t gen = ++generation_;
            asio::co_spawn(ex_, writer(self, gen), log_failure);
            // Handshake: AUTH, SELECT and the caller's commands (SCRIPT LOAD), pipelined
            // through the same queue the reader answers.
            std::vector<setup_step> hello = handshake_commands();
            asio::co_spawn(ex_, handshake(self, gen, std::move(hello)), log_failure);
            ec = co_await reader();
            connected_ = false;
            bool lost_up = up_.exchange(false);
            set_master_address({});
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
                    where(), ec.message());
                logged_down = true;
                backoff = s_.backoff_min;
            }
        } else if (!stopping_ && !logged_down) {
            spdlog::warn(
                "redis {}: cannot connect ({}); rate limits use the on_redis_failure "
                "policy until it answers",
                where(), ec.message());
            logged_down = true;
        }
        if (stopping_) break;
        backoff_timer_.expires_after(backoff);
        co_await backoff_timer_.async_wait(use_nothrow);
        backoff = std::min(s_.backoff_max, backoff * 2);
    }
}

asio::awaitable<void> connection::handshake(std::shared_ptr<connection> self, std::uint64_t gen,
                                            std::vector<setup_step> steps) {
    // Sent together, awaited in order: one round trip.
    std::vector<std::shared_ptr<request>> sent;
    for (auto& step : steps) {
        auto req = std::make_shared<request>(ex_);
        req->timer.expires_after(s_.connect_timeout);
        pending_.push_back(req);
        write_queue_ += step.command;
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
        } else if (steps[i].expect_master) {
            auto role = sentinel::parse_role(req->reply);
            if (role != sentinel::role::master) {
                // Not an error of the setup: the sentinels' answer was stale. Ask again
                // (logged once for as long as the answer stays the same).
                std::string line = where() + ": is not the master (ROLE: " +
                                   sentinel::to_string(role) + "); asking the sentinels again";
                if (line != last_setup_error_) spdlog::warn("redis {}", line);
                last_setup_error_ = std::move(line);
                close_socket();
                co_return;
            }
        }
        if (!why.empty()) {
            // Never log the command itself: AUTH carries the password. Each distinct
            // reason once, not at every reconnect attempt.
            if (why != last_setup_error_)
                spdlog::error("redis {}: connection setup failed at step {}: {}", where(),
                              i + 1, why);
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
    set_master_address(target_.to_string());
    note_breaker();
    spdlog::info("redis {}: connected", where());
}

}  // namespace sluice::redis
