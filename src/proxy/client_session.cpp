#include "sluice/proxy/client_session.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "sluice/admin/console.hpp"
#include "sluice/auth/scram.hpp"
#include "sluice/net/drained_wait.hpp"
#include "sluice/net/interned.hpp"
#include "sluice/ratelimit/limiter.hpp"
#include "sluice/proxy/runtime.hpp"

namespace sluice::proxy {

namespace proto = sluice::protocol;
using namespace std::chrono_literals;

namespace {

// A batch's byte ranges from byte `skip` on (the bytes before it went out already, when
// a write that stopped short is finished by a coroutine).
void gather(const batch_builder& batch, std::size_t skip, std::vector<asio::const_buffer>& out) {
    for (auto& [p, len] : batch.pieces()) {
        if (skip >= len) {
            skip -= len;
            continue;
        }
        out.emplace_back(static_cast<const char*>(p) + skip, len - skip);
        skip = 0;
    }
}

// Who a client is before its startup packet says it: nobody (one shared empty identity).
const pool::shared_identity& nobody() {
    static const auto none = std::make_shared<const pool::client_identity>();
    return none;
}

}  // namespace

client_session::client_session(runtime& rt, stream_socket socket, int worker, std::uint64_t id_)
    : id(id_),
      who_(nobody()),
      rt_(rt),
      socket_(std::move(socket)),
      worker_(worker) {
    // Random, Sluice's own cancel key: the server's key never leaves Sluice.
    auth::random_bytes(reinterpret_cast<std::uint8_t*>(&cancel_key), sizeof cancel_key);
    error_code ec;
    auto remote = socket_.lowest_layer().remote_endpoint(ec);
    if (!ec && (remote.protocol().family() == AF_INET || remote.protocol().family() == AF_INET6)) {
        asio::ip::tcp::endpoint tcp_ep;
        std::memcpy(tcp_ep.data(), remote.data(), remote.size());
        addr = tcp_ep.address().to_string();
        port = tcp_ep.port();
        net::tcp_options::from(rt_.cfg()->sluice).apply(socket_.native_handle());
    } else {
        addr = "unix";
    }
    auto local = socket_.lowest_layer().local_endpoint(ec);
    if (!ec && (local.protocol().family() == AF_INET || local.protocol().family() == AF_INET6)) {
        asio::ip::tcp::endpoint tcp_ep;
        std::memcpy(tcp_ep.data(), local.data(), local.size());
        local_addr = &net::interned(tcp_ep.address().to_string());
        local_port = tcp_ep.port();
    } else {
        local_addr = &net::interned("unix");
    }
}

client_session::~client_session() {
    // (Normally gone from the registry and the counts already, in leave_runtime(); the
    // registry does not own its sessions, so none may outlive its entry.)
    rt_.sessions.remove(*this);
    if (client_counted_) rt_.client_limits.give_back(database(), user());
}

const std::string client_session::empty_text;

std::size_t client_session::max_packet() const {
    return relay_ ? relay_->max_packet() : std::size_t(rt_.cfg()->sluice.max_packet_size);
}

void client_session::set_identity(pool::client_identity who) {
    who_ = std::make_shared<const pool::client_identity>(std::move(who));
}

// ---------------------------------------------------------------------------------------
// Lifecycle

asio::awaitable<void> client_session::run(const refusal* refuse) {
    auto self = shared_from_this();
    while (!rt_.sessions.add(self))  // (a cancel key already taken: 2^-64 per pair)
        auth::random_bytes(reinterpret_cast<std::uint8_t*>(&cancel_key), sizeof cancel_key);
    auto cfg = rt_.cfg();

    // client_login_timeout: one watchdog for the whole login.
    // (The flag is the session's, not this frame's: the handler may run after run() ended,
    // when the timer fired just as the login finished.)
    asio::steady_timer login_watchdog(executor());
    if (cfg->sluice.client_login_timeout.count() > 0) {
        login_watchdog.expires_after(cfg->sluice.client_login_timeout);
        login_watchdog.async_wait([this, self](error_code ec) {
            if (ec || login_over_) return;
            spdlog::info("client {} ({}:{}) did not log in within client_login_timeout", id,
                         addr, port);
            // Best effort, never blocking: a client that stopped mid-login may not read.
            // (Not over TLS: raw bytes would break the record stream.)
            if (!socket_.tls()) {
                std::string out;
                proto::writer(out).error_response("08P01", "client_login_timeout expired", {},
                                                  "FATAL");
                [[maybe_unused]] auto n = ::send(socket_.native_handle(), out.data(),
                                                 out.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
            }
            error_code ignored;
            socket_.close(ignored);
        });
    }
    bool ok = co_await startup(refuse);
    login_over_ = true;
    login_watchdog.cancel();
    if (ok && console_role_ != admin::console_role::none) {
        // The console lives outside the login timeout and the pools.
        state = client_state::active;
        co_await admin::serve(rt_, *this, socket_, in_, console_role_, std::string());
        ok = false;
    }

    if (!ok) {
        co_await finish(false);
        co_return;
    }
    // (state is idle already: startup() set it before the welcome went out.)
    if (cfg->sluice.log_connections)
        spdlog::info("client {} login: db={} user={} addr={}:{} app={}", id, database(), user(),
                     addr, port, application_name());
    // This frame (and the login's) ends here: the relay runs in await_request's handler
    // (a coroutine only while a step must wait), and an idle client waits without any.
    pending_ = make_pending(client_pending{});
    co_await relay_input(client_step::start);
}

client_session::pending_ptr client_session::make_pending(client_pending&& p) {
    exact_allocator<client_pending> a;
    client_pending* m = a.allocate(1);
    try {
        return pending_ptr(new (m) client_pending(std::move(p)));
    } catch (...) {
        a.deallocate(m, 1);
        throw;
    }
}

void client_session::pending_delete::operator()(client_pending* p) const noexcept {
    p->~client_pending();
    exact_allocator<client_pending>().deallocate(p, 1);
}

// Runs the relay on what in_ holds, then waits for more without a frame, or ends.
// `step`: where drive_client() stopped, with pending_ saying where it goes on.
// (pending_ is a member, not a parameter: gcc 12 destroyed a by-value parameter of this
// type twice when it was moved through two coroutines.)
asio::awaitable<void> client_session::relay_input(client_step step) {
    // (Not `if (co_await ...) { ...; co_return; }`: gcc 12 compiles that into a trap here.)
    relaying_client_ = true;
    const bool idle = co_await client_loop(step);
    relaying_client_ = false;
    pending_.reset();
    if (idle)
        await_request();
    else
        co_await finish(true);
}

void client_session::on_client_bytes() {
    // Bytes after an idle wait: the usual request is relayed right here (drive_client);
    // a coroutine only if something must wait.
    idle_since_ns.store(0, std::memory_order_relaxed);
    idle_in_xact_since_ns.store(0, std::memory_order_relaxed);
    client_pending p;
    relaying_client_ = true;
    const auto step = drive_client(p);
    if (step == client_step::idle) {
        relaying_client_ = false;
        return await_request();
    }
    if (step != client_step::end) {
        try {
            pending_ = make_pending(std::move(p));
        } catch (...) {  // (no memory for the hand-over: a server already checked out goes back)
            relaying_client_ = false;
            give_back(p.taken, p.slot_held);
            throw;
        }
    }
    after_drive(step);
}

void client_session::after_drive(client_step step) {
    if (step == client_step::idle) {
        pending_.reset();
        relaying_client_ = false;
        return await_request();
    }
    if (step == client_step::link_server && !pending_->taken && !pending_->parked_wait_ended())
        return park_for_server();
    relaying_client_ = false;  // (relay_input sets it again)
    try {
        asio::co_spawn(executor(), step == client_step::end ? finish(true) : relay_input(step),
                       [self = shared_from_this()](std::exception_ptr e) {
                           if (!e) return;
                           spdlog::error("client {}: relay ended with an exception", self->id);
                           self->leave_runtime();
                       });
    } catch (...) {
        // (no memory for the hand-over: a server already checked out, or a slot won, goes
        // back)
        if (pending_) give_back(pending_->taken, pending_->slot_held);
        throw;
    }
}

// --- a request parked for a server ---------------------------------------------------
//
// drive_client -> link_server (no idle server) -> park_for_server -> pool::park:
//   outcome at once, or later in on_park_wake (on this worker):
//     a server, checked out, with this client's parameters -> linked here, drive on
//     anything else (round trips due, parameters to set, a slot to connect in, the wait
//     failed, the client gone) -> client_loop's link_server step, a coroutine, as before
//   `notify` (query_wait_notify passed, still queued) -> the NOTICE, in a coroutine
// So a request that waits for a server costs no coroutine either. While parked the
// client side counts as running (relaying_client_): its request is in hand.

void client_session::park_for_server() {
    auto& p = *pending_;
    state = client_state::waiting;
    p.wait_start = stats::event_clock::now();
    request_time = p.wait_start;
    auto out = pool_->park(executor(), worker_, rt_.deadlines_of(worker_, executor()),
                           &client_session::on_park_wake, shared_from_this());
    if (!out) return;  // queued: on_park_wake goes on
    try {
        resume_parked(*out);
    } catch (...) {
        give_back(out->server, out->slot_held);
        throw;
    }
}

void client_session::give_back(pool::server_ptr& server, bool& slot_held) {
    if (server) {
        pool_->discard(std::move(server));
    } else if (slot_held) {
        slot_held = false;
        pool_->release_slot();
    }
}

void client_session::on_park_wake(const std::shared_ptr<void>& ctx,
                                  pool::pool::park_outcome out) {
    const stats::event_clock::scope clock;  // (one clock reading for this handler)
    auto self = std::static_pointer_cast<client_session>(ctx);
    // A plain handler: an exception (no memory) would escape into the worker's run loop.
    try {
        if (out.notify) {
            asio::co_spawn(self->executor(), self->send_queued_notice(),
                           [self](std::exception_ptr e) {
                               if (e) spdlog::error("client {}: queued notice failed", self->id);
                           });
            return;
        }
        self->resume_parked(out);
    } catch (const std::exception& e) {
        try {
            self->give_back(out.server, out.slot_held);
            spdlog::error("client {}: {}", self->id, e.what());
        } catch (...) {
        }
        self->relaying_client_ = false;
        self->leave_runtime();
    }
}

void client_session::resume_parked(pool::pool::park_outcome& out) {
    auto& p = *pending_;
    if (out.server && !out.round_trips_due && !fatal_ && socket_.is_open() &&
        out.server->parameters.synced_to() == wanted_params_) {
        note_wait(std::exchange(p.wait_start, {}));
        attach_server(std::move(out.server));
        start_server_side(true);  // (checked out in this handler: park_outcome)
        return after_drive(drive_client(p));
    }
    p.taken = std::move(out.server);
    p.round_trips_due = out.round_trips_due;
    p.slot_held = std::exchange(out.slot_held, false);
    p.wait_sqlstate = std::move(out.sqlstate);
    p.wait_message = std::move(out.message);
    after_drive(client_step::link_server);
}

void client_session::await_request() {
    // Idle between client messages: what stays is the session object and one pending
    // operation whose handler holds a reference to it; no coroutine frame, no relay
    // scratch, no buffer.
    //   plain: a recv that finds nothing, then a drained wait (net/drained_wait.hpp: a
    //          queued operation of about 100 bytes), then a read into in_ that takes
    //          everything the socket has;
    //   TLS:   a read into the stream's own small buffer (OpenSSL decides how many socket
    //          bytes make a record, so readability alone says little), then a copy.
    // (Why the recv first: the read that brought the request proves nothing for a drained
    // wait, since it may have left an EOF behind whose edge is spent; so a wait needs a
    // system call either way, and a recv that would block is the cheaper one. Asio's
    // async_wait re-arms the descriptor with epoll_ctl instead, and perf put that at
    // about twice the recv's kernel time. A read operation kept pending instead would hold
    // 128 bytes of buffer and a larger operation for every idle client.)
    // With a server linked, server_loop may be writing a batch that lives in the scratch:
    // it gives the scratch back itself when it releases the server.
    if (!server_) relay_->release_scratch();
    in_.shrink_if_empty();
    if (!server_) idle_since_ns.store(now_ns(), std::memory_order_relaxed);
    arm_idle_wait(false);
}

void client_session::arm_idle_wait(bool drained) {
    auto alloc = exact_allocator<void>();
    if (socket_.tls()) {
        socket_.async_read_some(
            socket_.idle_space(),
            asio::bind_allocator(alloc, [self = shared_from_this()](error_code ec, std::size_t n) {
                self->on_client_readable(ec, n, false);
            }));
        return;
    }
    if (!drained) {
        // The recv that proves the socket empty, into the stack: an idle client holds no
        // buffer. It usually finds nothing (the client waits for its reply); what it does
        // find (a pipelining client, an EOF, EBADF once the socket is closed) is handled
        // from the event loop, as the wait's completion would be, rather than by
        // recursion from here.
        std::array<unsigned char, idle_probe_size> probe;
        error_code ec;
        const std::size_t n = socket_.read_now(asio::buffer(probe), ec);
        if (ec != asio::error::would_block) {
            if (!ec) {
                in_.reserve_tail(4096);
                std::memcpy(in_.writable().data(), probe.data(), n);
                in_.commit(n);
            }
            // (n: a full probe means more may wait behind it, see on_client_readable)
            asio::post(executor(),
                       asio::bind_allocator(alloc, [self = shared_from_this(), ec, n] {
                           self->on_client_readable(ec, n, true);
                       }));
            return;
        }
    }
    net::async_wait_drained(socket_.lowest_layer(), [self = shared_from_this()](error_code ec) {
        self->on_client_readable(ec, 0, false);
    });
}

void client_session::on_client_readable(error_code ec, std::size_t n, bool in_hand) {
    const stats::event_clock::scope clock;  // (one clock reading for this handler)
    // A plain handler: an exception (no memory) would escape into the worker's run loop
    // and end the process, where a coroutine's only ends its session.
    try {
        // (Closed after the wait completed, without a reason of its own: as if the wait
        // had been cancelled, not a read on a closed descriptor.)
        if (!ec && !socket_.is_open()) ec = asio::error::operation_aborted;
        // in_hand: arm_idle_wait's recv put n bytes in in_ already. If they filled its
        // buffer, one more read takes what follows (a pipelined request larger than the
        // buffer) here, rather than in a coroutine's read step. What it cannot take (an
        // EOF, an error) the recv before the next idle wait finds again.
        if (!ec && in_hand && n == idle_probe_size) {
            error_code more;
            in_.reserve_tail(4096);
            const std::size_t m = socket_.read_now(in_.writable(), more);
            if (!more) in_.commit(m);
        }
        if (!ec && !in_hand) {
            in_.reserve_tail(std::max<std::size_t>(4096, n));
            if (socket_.tls()) {  // (n bytes in the stream's idle space)
                std::memcpy(in_.writable().data(), socket_.idle_space().data(), n);
            } else {
                n = socket_.read_now(in_.writable(), ec);
                // Nothing after all: wait again, still idle since the same moment (and
                // the socket just proved empty).
                if (ec == asio::error::would_block) return arm_idle_wait(true);
            }
        }
        if (ec) {
            note_client_gone(ec);
            asio::co_spawn(executor(), finish(true), [self = shared_from_this()](std::exception_ptr e) {
                if (!e) return;
                spdlog::error("client {}: relay ended with an exception", self->id);
                self->leave_runtime();
            });
            return;
        }
        if (!in_hand) in_.commit(n);
        on_client_bytes();
    } catch (const std::exception& e) {
        spdlog::error("client {}: {}", id, e.what());
        relaying_client_ = false;
        leave_runtime();
    }
}

// The end of a logged-in session, or of one that never logged in.
asio::awaitable<void> client_session::finish(bool logged_in) {
    auto self = shared_from_this();
    if (logged_in) {
        co_await finish_server();
        if (rt_.cfg()->sluice.log_disconnections)
            spdlog::info("client {} closing because: {} (age={}s): db={} user={} addr={}:{}", id,
                         close_reason_ && !close_reason_->empty() ? *close_reason_
                                                                   : std::string("client unexpected eof"),
                         std::chrono::duration_cast<std::chrono::seconds>(steady_clock::now() -
                                                                          connect_time)
                             .count(),
                         database(), user(), addr, port);
    }
    leave_runtime();
}

void client_session::leave_runtime() {
    if (left_runtime_) return;
    left_runtime_ = true;
    if (pool_) pool_->clients--;
    if (std::exchange(client_counted_, false)) rt_.client_limits.give_back(database(), user());
    if (tenant_connection_open_) tenant_->close_connection();
    rt_.sessions.remove(*this);
    error_code ignored;
    socket_.shutdown(ignored);
    socket_.close(ignored);
    if (rt_.client_ended) rt_.client_ended();
}

// ---------------------------------------------------------------------------------------
// Writing to the client

asio::awaitable<bool> client_session::write_client(std::span<const asio::const_buffer> buffers) {
    // server_loop and client_loop run on the same thread but may both have something to
    // say; one async_write at a time.
    while (writing_client_) {
        write_turn turn{asio::steady_timer(executor(), steady_clock::time_point::max())};
        write_turn** last = &write_waiters_;  // (first come, first served)
        while (*last) last = &(*last)->next;
        *last = &turn;
        co_await turn.timer.async_wait(use_nothrow);
    }
    writing_client_ = true;
    auto [ec, n] = co_await asio::async_write(socket_, buffers, use_nothrow);
    writing_client_ = false;
    if (write_turn* next = write_waiters_) {
        write_waiters_ = next->next;
        next->timer.cancel();
    }
    co_return !ec;
}

asio::awaitable<bool> client_session::write_client(const std::string& bytes) {
    asio::const_buffer b(bytes.data(), bytes.size());
    co_return co_await write_client(std::span<const asio::const_buffer>(&b, 1));
}

asio::awaitable<void> client_session::send_error(std::string sqlstate, std::string message,
                                                 std::string hint, bool fatal) {
    std::string out;
    proto::writer w(out);
    w.error_response(sqlstate, message, hint, fatal ? "FATAL" : "ERROR");
    if (!fatal) w.ready_for_query(relay_ ? relay_->transaction_status() : 'I');
    // Logged before it is sent: once the client has the error, the log has the line.
    if (fatal && rt_.cfg()->sluice.log_pooler_errors)
        spdlog::info("client {} ({}:{}): pooler error: {} {}", id, addr, port, sqlstate, message);
    co_await write_client(out);
    if (fatal) {
        if (!fatal_) set_close_reason(message);
        fatal_ = true;
    }
}

// ---------------------------------------------------------------------------------------
// The relay driver: bytes in, the core's verdict out. No protocol rule below this line.

asio::awaitable<bool> client_session::flush_injections() {
    if (!relay_->injections_due()) co_return true;
    std::string out;
    relay_->take_injections(out);
    co_return co_await write_client(out);
}

bool client_session::write_server_now(std::size_t& sent) {
    sent = 0;
    const auto& batch = relay_->to_server();
    if (batch.size() == 0 || !server_) return true;  // (nothing reaches a server the core did not ask for)
    request_time = stats::event_clock::now();
    state = client_state::active;
    buffer_list_lease pieces;
    gather(batch, 0, *pieces);
    error_code ec;
    sent = server_->socket.write_now(*pieces, ec);  // (an error: write_server() sees it too)
    if (sent < batch.size()) return false;
    pool_->stats.bytes_received += batch.size();
    return true;
}

asio::awaitable<bool> client_session::write_server(std::size_t sent) {
    const auto& batch = relay_->to_server();
    if (batch.size() == 0 || !server_) co_return true;
    buffer_list_lease pieces;
    gather(batch, sent, *pieces);
    // (a span, not the vector: async_write would copy a vector, a malloc per request)
    auto [ec, n] = co_await asio::async_write(
        server_->socket, std::span<const asio::const_buffer>(*pieces), use_nothrow);
    if (ec) {
        pool_->stats.errors_server++;
        co_await send_error("08006", "server connection lost while sending the request");
        co_return false;
    }
    pool_->stats.bytes_received += batch.size();
    co_return true;
}

// --- the client side -------------------------------------------------------------------
//
// One request's steps: the core reads in_ (on_client_data), the request goes to the
// server, in_ is consumed, replies the core built go to the client (injections), then
// what the core asked for: more bytes, a server, admission, the end.
// drive_client() takes these steps as far as they go without waiting; a step that must
// wait is returned, and `p` says where to go on afterwards. So the usual request (bytes
// in, an idle server, one sendmsg) runs in await_request's handler with no coroutine at
// all, and client_loop, the coroutine, performs only the waits, from where the handler
// stopped.

client_session::client_step client_session::drive_client(client_pending& p) {
    auto& m = *relay_;
    for (;;) {
        switch (p.stage) {
        case client_stage::fresh:
            if (fatal_ || !socket_.is_open()) return client_step::end;
            p.r = m.on_client_data({in_.readable(), in_.size()});
            note_prepared_statements();
            if (!write_server_now(p.sent)) {
                p.stage = client_stage::written;  // once write_server() sent the rest
                return client_step::write_server;
            }
            [[fallthrough]];
        case client_stage::written:
            in_.consume(p.r.consumed);
            p.stage = client_stage::event;
            if (m.injections_due()) return client_step::flush_injections;
            [[fallthrough]];
        case client_stage::event:
            p.stage = client_stage::fresh;
            switch (p.r.event) {
            case relay::client_event::need_more:
                if (fatal_ || !socket_.is_open()) return client_step::end;
                if (in_.empty() && !m.client_mid_message()) return client_step::idle;
                return client_step::read_more;  // a message is here in part
            case relay::client_event::terminate:
                client_gone_ = true;
                set_close_reason("client close request");
                return client_step::end;
            case relay::client_event::close:
                return client_step::refuse;
            case relay::client_event::need_server:
                if (m.transaction_status() == 'I') xact_start_ = stats::event_clock::now();
                if (link_server_now(p.taken, p.round_trips_due)) continue;
                return client_step::link_server;
            case relay::client_event::need_admission: {
                // The fast path takes tokens from the local lease.
                const bool xact_ok = !p.r.new_transaction ||
                                     tenant_->try_take(ratelimit::kind::transaction);
                if (xact_ok && tenant_->try_take(ratelimit::kind::query)) {
                    const ratelimit::verdict v;
                    m.on_admission(v.allowed, v.retry_after, tenant_->name());
                    continue;
                }
                p.need_transaction = !xact_ok;
                return client_step::admission;
            }
            }
            return client_step::end;
        }
    }
}

asio::awaitable<bool> client_session::client_loop(client_step step) {
    // Performs the wait drive_client() stopped at, then drives on. True once everything
    // the client sent is handled and it is between messages (the caller then waits
    // without a frame).
    auto& m = *relay_;
    auto& p = *pending_;
    for (;;) {
        switch (step) {
        case client_step::start:  // (bytes that came with the login)
            break;
        case client_step::idle:
            co_return true;
        case client_step::end:
            co_return false;
        case client_step::write_server: {
            bool ok = co_await write_server(p.sent);
            if (!ok) co_return false;
            break;
        }
        case client_step::flush_injections: {
            bool ok = co_await flush_injections();
            if (!ok) co_return false;
            break;
        }
        case client_step::refuse:
            pool_->stats.errors_client++;
            co_await send_error(p.r.sqlstate(), p.r.message());
            co_return false;
        case client_step::link_server: {
            bool ok = co_await link_server(p);
            if (!ok) co_return false;
            break;
        }
        case client_step::admission: {
            auto v = co_await admit_request(p.need_transaction);
            m.on_admission(v.allowed, v.retry_after, tenant_->name());
            break;
        }
        case client_step::read_more: {
            // A message is here in part (or its body is still streaming): read the rest.
            error_code rec;
            std::size_t n = 0;
            in_.reserve_tail(4096);
            if (socket_.tls()) {
                // OpenSSL decides how many socket bytes make a record: let it read.
                std::tie(rec, n) = co_await socket_.async_read_some(in_.writable(), use_nothrow);
            } else {
                for (;;) {
                    n = socket_.read_now(in_.writable(), rec);
                    if (rec != asio::error::would_block) break;
                    auto [wec] = co_await socket_.lowest_layer().async_wait(
                        asio::socket_base::wait_read, use_nothrow);
                    if (wec) co_return false;
                }
            }
            if (rec) {  // EOF or reset: the client is gone
                note_client_gone(rec);
                co_return false;
            }
            in_.commit(n);
            idle_in_xact_since_ns.store(0, std::memory_order_relaxed);  // it is still sending
            break;
        }
        }
        step = drive_client(p);
    }
}

void client_session::note_client_gone(const error_code& ec) {
    if (fatal_) return;  // the reason is already known (KILL, a timeout, an error sent)
    // (a reset is the same event seen from here: the client went away without Terminate)
    std::string reason = ec == asio::error::eof || ec == asio::error::connection_reset
                             ? std::string("client unexpected eof")
                             : "client connection failed: " + ec.message();
    // In the middle of a query or transaction: said, since the server is then closed.
    if (query_since_ns.load(std::memory_order_relaxed) != 0)
        reason += " (with a query in progress)";
    else if (server_ && !relay_->server_clean()) reason += " (in a transaction)";
    set_close_reason(std::move(reason));
}

// --- the server side -------------------------------------------------------------------
//
// Flow (plain server socket): link_server -> await_server: a read with a plain handler
//   bytes -> on_server_read: the core, the reply sent with one sendmsg
//         -> end of the transaction: the server goes back (release_if_done), done
//         -> more to come: await_server again
//         -> anything else: server_loop (a coroutine) takes over from that very point
// The same over TLS (the stream's read and write_now go through OpenSSL). So the usual
// transaction costs no coroutine on the server side.
// The first read after a checkout that saw the server empty in this same handler
// (link_server_now, resume_parked) is a drained wait (net/drained_wait.hpp)
// and then a recv of its own: no recv that finds nothing while PostgreSQL works on the
// query, and no epoll_ctl. Later reads are Asio's: a recv that returned less than it
// asked for is no proof, since an EOF may wait behind it (its edge spent).
// Invariant: while a server is linked, exactly one of await_server's read or server_loop
// is running for it (server_loop_running_), and finish_server() waits for it to end.

void client_session::await_server(pool::server_ptr server, bool drained) {
    auto& sbuf = server->buffer;
    sbuf.reserve_tail(4096);
    auto& sock = server->socket;
    if (drained && !sock.tls()) {
        // The usual case: the server has not answered yet, and a read would find nothing.
        net::async_wait_drained(sock.lowest_layer(), [self = shared_from_this(),
                                                     server = std::move(server)](error_code ec) mutable {
            self->on_server_readable(std::move(server), ec);
        });
        return;
    }
    sock.async_read_some(sbuf.writable(),
                         asio::bind_allocator(exact_allocator<void>(),
                                              [self = shared_from_this(), server = std::move(server)](
                                                  error_code ec, std::size_t n) mutable {
                                                  self->on_server_read(std::move(server), ec, n);
                                              }));
}

void client_session::on_server_readable(pool::server_ptr server, error_code ec) {
    const stats::event_clock::scope clock;  // (one clock reading for this handler)
    // (Closed after the wait completed: as if the wait had been cancelled.)
    if (!ec && !server->socket.is_open()) ec = asio::error::operation_aborted;
    std::size_t n = 0;
    if (!ec) {
        n = server->socket.read_now(server->buffer.writable(), ec);  // (reserved by await_server)
        if (ec == asio::error::would_block) {  // nothing after all: that is a proof of its own
            // (A stale edge woke it. A cancel meant for it may have come meanwhile and
            // found nothing queued: finish_server, KILL and the timeouts set these first.)
            if (client_gone_ || fatal_)
                return on_server_read(std::move(server), asio::error::operation_aborted, 0);
            const pool::server_ptr held = server;
            try {
                await_server(std::move(server), true);
            } catch (const std::exception& e) {  // (a plain handler: see on_client_readable)
                server_relay_failed(*held, e);
            }
            return;
        }
    }
    on_server_read(std::move(server), ec, n);
}

void client_session::on_server_read(pool::server_ptr server, error_code ec, std::size_t n) {
    const stats::event_clock::scope clock;  // (one clock reading for this handler)
    // A plain handler: an exception must end this session only (see on_client_readable).
    // (`server` may have been moved on when something throws: the catch keeps its own.)
    const pool::server_ptr held = server;
    try {
        if (ec) {
            continue_server_loop(std::move(server), ec, std::nullopt, 0);
            return;
        }
        auto& sbuf = server->buffer;
        sbuf.commit(n);
        auto& m = *relay_;
        auto r = m.on_server_data({sbuf.readable(), sbuf.size()});
        note_prepared_statements();
        // Only the plain case goes on here; the rest is server_loop's (same steps). The
        // client's socket is written here only when no one else writes or waits to.
        if (r.event != relay::server_event::need_more || m.parameter_refresh_due() ||
            writing_client_ || write_waiters_ || client_gone_ || fatal_ ||
            server_ != server) {
            continue_server_loop(std::move(server), {}, std::move(r), 0);
            return;
        }
        const auto& batch = m.to_client();
        std::size_t sent = 0;
        if (batch.size() > 0) {
            buffer_list_lease pieces;
            gather(batch, 0, *pieces);
            error_code wec;
            sent = socket_.write_now(*pieces, wec);
            if (sent < batch.size()) {  // the client's socket is full (or it is gone)
                continue_server_loop(std::move(server), {}, std::move(r), sent);
                return;
            }
            pool_->stats.bytes_sent += batch.size();
        }
        sbuf.consume(r.consumed);
        if (release_if_done(server)) {
            server_loop_done();
            return;
        }
        await_server(std::move(server));
    } catch (const std::exception& e) {
        server_relay_failed(*held, e);
    }
}

void client_session::server_relay_failed(pool::server_connection& server,
                                         const std::exception& e) {
    spdlog::error("client {}: server relay failed: {}", id, e.what());
    error_code ignored;
    socket_.close(ignored);  // the client side ends the session
    server.close_needed = true;
    server_loop_done();
}

void client_session::continue_server_loop(pool::server_ptr server, error_code failed,
                                          std::optional<relay::server_result> pending,
                                          std::size_t sent) {
    asio::co_spawn(executor(), server_loop(std::move(server), failed, std::move(pending), sent),
                   [self = shared_from_this()](std::exception_ptr e) {
                       // (server_loop says it is done itself, at once: this handler may run
                       // after the client linked its next server)
                       if (!e) return;
                       spdlog::error("client {}: server relay ended with an exception", self->id);
                       self->server_loop_done();
                   });
}

bool client_session::release_if_done(const pool::server_ptr& server) {
    // Back to the pool at the end of a transaction, once nothing the client sent is
    // still unanswered (asked after the write: the client may have sent more).
    auto& m = *relay_;
    const auto verdict = m.release();
    if (verdict == relay::machine::verdict::keep || !server->buffer.empty() || server_ != server)
        return false;
    server_ = nullptr;
    linked_server_id = 0;
    state = client_state::idle;
    m.on_server_released();
    server->buffer.shrink_if_empty();
    // Nothing is in flight on either side once the client waits idle: the request
    // storage goes back to the worker's free list, and the client is idle from now
    // (client_idle_timeout), which await_request could not say while this server was
    // still linked.
    if (!relaying_client_) {
        m.release_scratch();
        idle_since_ns.store(now_ns(), std::memory_order_relaxed);
    }
    release_server(server, verdict == relay::machine::verdict::give_back);
    return true;
}

asio::awaitable<void> client_session::server_loop(pool::server_ptr server, error_code failed,
                                                  std::optional<relay::server_result> pending,
                                                  std::size_t sent) {
    // Entered with nothing pending (TLS), or where on_server_read stopped: a read that
    // failed (`failed`), or the core's verdict on bytes read (`pending`) of whose reply
    // `sent` bytes already went out.
    auto& m = *relay_;
    auto& sbuf = server->buffer;
    auto& stats = pool_->stats;
    for (;;) {
        relay::server_result r;
        if (pending) {
            r = std::move(*pending);
            pending.reset();
        } else {
            error_code rec = failed;
            std::size_t n = 0;
            failed = {};
            if (!rec) {
                sbuf.reserve_tail(4096);
                std::tie(rec, n) =
                    co_await server->socket.async_read_some(sbuf.writable(), use_nothrow);
            }
            if (rec) {
                if (client_gone_ || fatal_) break;  // finish_server() decides what happens
                spdlog::warn("server {} of {}/{} failed: {}", server->id, pool_->database(),
                             pool_->user(), rec.message());
                server->close_needed = true;
                stats.errors_server++;
                if (socket_.is_open())
                    co_await send_error("08006", "server connection closed unexpectedly");
                error_code ignored;
                socket_.close(ignored);  // client_loop ends; finish_server discards the server
                break;
            }
            sbuf.commit(n);
            r = m.on_server_data({sbuf.readable(), sbuf.size()});
            note_prepared_statements();
        }
        const bool releasable = r.event == relay::server_event::need_more &&
                                r.consumed == sbuf.size() &&
                                m.release() == relay::machine::verdict::give_back;
        std::string copy;
        if (releasable && m.take_parameter_refresh()) {
            // A SET/RESET may have changed parameters PostgreSQL does not report: read them
            // before the client gets its ReadyForQuery (it cannot send more until then).
            {
                buffer_list_lease pieces;
                gather(m.to_client(), sent, *pieces);
                for (auto& b : *pieces) copy.append(static_cast<const char*>(b.data()), b.size());
            }
            sent = 0;
            sbuf.consume(r.consumed);
            if (!co_await refresh_untracked_parameters(*server)) server->close_needed = true;
            if (!co_await write_client(copy)) break;
            stats.bytes_sent += copy.size();
        } else {
            const auto& batch = m.to_client();
            if (batch.size() > sent) {
                buffer_list_lease pieces;  // (a warm lease allocates nothing)
                gather(batch, sent, *pieces);
                bool ok = co_await write_client(*pieces);
                if (!ok) {
                    sbuf.consume(r.consumed);  // the client is gone: finish_server() decides
                    break;
                }
            }
            stats.bytes_sent += batch.size();
            sent = 0;
            sbuf.consume(r.consumed);
        }
        if (r.event == relay::server_event::close) {
            spdlog::info("client {}: closing with server {}: {}", id, server->id, r.message());
            server->close_needed = true;
            if (!r.sqlstate().empty()) co_await send_error(r.sqlstate(), r.message());
            fatal_ = true;
            error_code ignored;
            socket_.close(ignored);
            break;
        }
        if (release_if_done(server)) {
            server_loop_done();
            co_return;
        }
    }
    sbuf.shrink_if_empty();
    server_loop_done();
}

// --- relay::observer: stats and timeouts ---------------------------------------------

void client_session::on_query_start() {
    query_start_ = stats::event_clock::now();
    query_since_ns.store(to_ns(query_start_), std::memory_order_relaxed);
}

void client_session::on_ready_for_query(char status, char previous, bool more) {
    auto& stats = pool_->stats;
    auto now = stats::event_clock::now();
    stats.query_count++;
    auto query_us = std::chrono::duration_cast<std::chrono::microseconds>(now - query_start_).count();
    stats.query_time_us += query_us;
    stats.query_latency.record(query_us);
    if (!more) query_since_ns.store(0, std::memory_order_relaxed);
    if (status == 'I') {
        // A transaction ended: an explicit one, or a single autocommit query.
        auto began = previous != 'I' ? xact_start_ : now - std::chrono::microseconds(query_us);
        auto xact_us = std::chrono::duration_cast<std::chrono::microseconds>(now - began).count();
        stats.xact_count++;
        stats.xact_time_us += xact_us;
        stats.xact_latency.record(xact_us);
        xact_since_ns.store(0, std::memory_order_relaxed);
        idle_in_xact_since_ns.store(0, std::memory_order_relaxed);
    } else {
        if (previous == 'I') {
            xact_start_ = now - std::chrono::microseconds(query_us);
            xact_since_ns.store(now_ns(), std::memory_order_relaxed);
        }
        if (!more) idle_in_xact_since_ns.store(now_ns(), std::memory_order_relaxed);
    }
    if (server_) server_->transaction_status = status;
}

void client_session::on_parameter_status(std::string_view name, std::string_view value) {
    // The client changed a parameter (SET ...): remember it for this client and server.
    if (!server_) return;
    std::string k(name);
    // Before the change the linked server matched this client's set (synced at link); a
    // value that both now share keeps it so.
    bool synced = server_->parameters.synced_to() == wanted_params_;
    server_->parameters.set(k, std::string(value));
    if (auto it = wanted_params_->find(k); it != wanted_params_->end() && it->second != value) {
        pool::param_set wanted = *wanted_params_;
        wanted[k] = std::string(value);
        wanted_params_ = pool_->intern_parameters(std::move(wanted));
    }
    if (synced) server_->parameters.mark_synced(wanted_params_);
}

void client_session::on_client_parse() { pool_->stats.client_parse_count++; }
void client_session::on_client_bind() { pool_->stats.bind_count++; }
void client_session::on_server_parse() { pool_->stats.server_parse_count++; }

}  // namespace sluice::proxy
