// Linking a server to a client (pool checkout, parameter sync) and giving it back
// (reset query in session mode, waiting out in-flight cancels).
#include "sluice/proxy/client_session.hpp"

#include <spdlog/spdlog.h>

#include <utility>

#include "sluice/proxy/parameters.hpp"
#include "sluice/proxy/runtime.hpp"

namespace sluice::proxy {

namespace proto = sluice::protocol;

bool client_session::link_server_now(pool::server_ptr& taken, bool& round_trips_due) {
    // The usual case needs no coroutine: an idle server is there, no one waits before this
    // client, and the server already has this client's parameters. Otherwise what was
    // taken goes to link_server() in `taken`.
    auto q = pool_->try_acquire_now(executor(), worker_);
    if (!q.server) return false;
    if (q.round_trips_due || fatal_ || !socket_.is_open() ||
        q.server->parameters.synced_to() != wanted_params_) {
        taken = std::move(q.server);
        round_trips_due = q.round_trips_due;
        return false;
    }
    request_time = stats::event_clock::now();
    pool_->stats.wait_latency.record(0);
    attach_server(std::move(q.server));
    start_server_side(true);  // (try_acquire_now's checkout saw it empty)
    return true;
}

void client_session::attach_server(pool::server_ptr s) {
    server_ = std::move(s);
    server_->link_client_id = id;
    linked_server_id = server_->id;
}

void client_session::note_wait(steady_clock::time_point started) {
    auto waited_us =
        std::chrono::duration_cast<std::chrono::microseconds>(stats::event_clock::now() - started)
            .count();
    pool_->stats.wait_time_us += waited_us;
    pool_->stats.wait_latency.record(waited_us);
}

asio::awaitable<bool> client_session::link_server(client_pending& p) {
    state = client_state::waiting;
    // From the start of a parked wait, if there was one: a server_check_query on a server
    // taken before, and a wait after it failed, all count.
    // (what p holds is taken out: p outlives this step)
    const auto wait_start = std::exchange(p.wait_start, {});
    const bool parked = wait_start != steady_clock::time_point{};
    const auto started = parked ? wait_start : stats::event_clock::now();
    request_time = started;
    pool::server_ptr taken = std::exchange(p.taken, nullptr);
    const bool round_trips_due = std::exchange(p.round_trips_due, false);
    bool slot_held = std::exchange(p.slot_held, false);
    std::string wait_sqlstate = std::exchange(p.wait_sqlstate, {});
    std::string wait_message = std::exchange(p.wait_message, {});
    if (taken && round_trips_due) {
        bool usable = co_await pool_->check_out_round_trips(taken);
        if (!usable) {
            taken = nullptr;
            // Dropped. After a wait (parked), as acquire() does: connect in its slot, the
            // client keeps its turn. Otherwise the slot goes back, and this client waits
            // like any other.
            if (parked) slot_held = true;
            else pool_->release_slot();
        }
    }
    pool::acquire_result r;
    if (taken) {
        r.server = std::move(taken);
    } else if (!wait_sqlstate.empty()) {
        r.sqlstate = std::move(wait_sqlstate);
        r.message = std::move(wait_message);
    } else if (slot_held) {
        r = co_await pool_->connect_in_slot(executor(), worker_, started);
    } else {
        // query_wait_notify's NOTICE, should the wait be long (lives in this frame only).
        const std::function<asio::awaitable<void>()> queued_notice = [this] {
            return send_queued_notice();
        };
        r = co_await pool_->acquire(executor(), worker_, &queued_notice);
    }
    note_wait(started);
    if (!r.server) {
        // (no conditional expression inside co_await: gcc 12 mishandles its temporaries)
        std::string sqlstate = r.sqlstate;
        if (sqlstate.empty()) sqlstate = "08006";
        co_await send_error(sqlstate, r.message);
        co_return false;
    }
    if (fatal_ || !socket_.is_open()) {
        // The client went away (KILL) while waiting: the server is clean, give it back.
        release_server(std::move(r.server), true);
        co_return false;
    }
    attach_server(std::move(r.server));
    if (!co_await sync_parameters(*server_)) {
        auto s = std::move(server_);
        linked_server_id = 0;
        pool_->discard(s);
        co_await send_error("08006", "could not set session parameters on the server: " +
                                         s->last_error);
        co_return false;
    }
    start_server_side();
    co_return true;
}

void client_session::start_server_side(bool checked_now) {
    relay_->on_server_linked(&server_->statements);
    try {
        await_server(server_, checked_now);
    } catch (...) {  // (no memory for the read: the server goes, the session ends)
        relay_->on_server_released();
        linked_server_id = 0;
        pool_->discard(std::move(server_));
        throw;
    }
    pool_->active_clients++;
    server_loop_running_ = true;
    state = client_state::active;
}

asio::awaitable<void> client_session::send_queued_notice() {
    // PgBouncer's wording; nothing else writes to the client while it waits for a server.
    std::string out;
    proto::writer(out).notice_response(
        "01000", "No server connection available in postgres server, client is being queued");
    co_await write_client(out);
}

asio::awaitable<bool> client_session::sync_parameters(pool::server_connection& s) {
    // One round trip with every SET the server needs to match what this client believes.
    // The usual case costs a pointer compare: the server was last made to match this very
    // (shared) set, and nothing changed its parameters since.
    if (s.parameters.synced_to() == wanted_params_) co_return true;
    std::string sql;
    for (auto& [k, v] : *wanted_params_) {
        auto it = s.parameters.find(k);
        if (it != s.parameters.end() && it->second == v) continue;
        // set_config() takes the value as the setting's own text (SET with a quoted
        // literal would turn a list like search_path into a single element).
        sql += (sql.empty() ? "SELECT " : ", ") + std::string("pg_catalog.set_config(") +
               quote_literal(k) + ", " + quote_literal(v) + ", false)";
    }
    if (!sql.empty()) {
        bool ok = co_await s.run_internal_query(std::move(sql), max_packet());
        if (!ok) co_return false;
        // Parameters PostgreSQL does not report (search_path before 18, ...) are recorded
        // by hand.
        for (auto& [k, v] : *wanted_params_) s.parameters.set(k, v);
    }
    s.parameters.mark_synced(wanted_params_);
    co_return true;
}

asio::awaitable<bool> client_session::refresh_untracked_parameters(pool::server_connection& s) {
    std::vector<std::string> names;
    for (auto& [k, v] : *wanted_params_)
        if (!reported_by_server(k)) names.push_back(k);
    if (names.empty()) co_return true;
    std::string sql = "SELECT ";
    for (std::size_t i = 0; i < names.size(); ++i)
        sql += (i ? ", " : "") + std::string("current_setting(") + quote_literal(names[i]) + ", true)";
    std::vector<std::optional<std::string>> row;
    bool ok = co_await s.run_internal_query(std::move(sql), max_packet(), &row);
    if (!ok || row.size() != names.size()) co_return false;
    // The server was linked (synced) for this client; after this both have the same
    // values again, for the new set.
    bool synced = s.parameters.synced_to() == wanted_params_;
    pool::param_set wanted = *wanted_params_;
    for (std::size_t i = 0; i < names.size(); ++i)
        if (row[i]) {
            wanted[names[i]] = *row[i];
            s.parameters.set(names[i], *row[i]);
        }
    wanted_params_ = pool_->intern_parameters(std::move(wanted));
    if (synced) s.parameters.mark_synced(wanted_params_);
    co_return true;
}

void client_session::server_loop_done() {
    server_loop_running_ = false;
    if (pool_) pool_->active_clients--;
    if (server_loop_done_) server_loop_done_->cancel();
}

asio::awaitable<void> client_session::finish_server() {
    client_gone_ = true;
    if (server_loop_running_ && server_) {
        error_code ignored;
        server_->socket.cancel(ignored);
        socket_.cancel(ignored);  // a relay blocked writing to a vanished client
        asio::steady_timer done(executor(), steady_clock::time_point::max());
        server_loop_done_ = &done;
        while (server_loop_running_) co_await done.async_wait(use_nothrow);
        server_loop_done_ = nullptr;
    }
    if (!server_) co_return;
    auto s = std::move(server_);
    linked_server_id = 0;
    // A server is clean only if the client left between transactions with nothing in
    // flight; anything else (open transaction, pending results, COPY) closes it.
    bool clean = relay_->server_clean() && s->buffer.empty() && s->socket.is_open() &&
                 !s->close_needed;
    relay_->on_server_released();
    if (!clean)
        spdlog::info("client {} left with its server {} not idle: closing the server", id, s->id);
    release_server(std::move(s), clean);
}

namespace {

// Runs the reset query (session mode) and waits out in-flight cancels before the server
// goes back to the pool. Runs on the server's own executor.
asio::awaitable<void> reset_and_release(pool::server_ptr s, std::string reset_query,
                                        std::size_t max_packet, steady_clock::duration cancel_wait) {
    auto deadline = steady_clock::now() + cancel_wait;
    asio::steady_timer t(s->socket.get_executor());
    while (s->cancels_in_flight.load() > 0 && steady_clock::now() < deadline) {
        t.expires_after(std::chrono::milliseconds(5));
        co_await t.async_wait(use_nothrow);
    }
    if (s->cancels_in_flight.load() > 0) {
        s->owner->discard(s);
        co_return;
    }
    if (!reset_query.empty()) {
        s->state = pool::server_state::used;
        bool ok = co_await s->run_internal_query(reset_query, max_packet);
        if (!ok) {
            spdlog::warn("reset query failed on server {}: {}", s->id, s->last_error);
            s->owner->discard(s);
            co_return;
        }
        // DISCARD ALL / DEALLOCATE ALL drop every prepared statement, and RESET ALL
        // puts unreported parameters back to their defaults.
        s->statements.clear();
        s->owner->restore_defaults(*s);
    }
    s->owner->release(s);
}

}  // namespace

void client_session::release_server(pool::server_ptr s, bool clean) {
    if (!clean) {
        pool_->discard(std::move(s));
        return;
    }
    // The hot path (transaction mode, no cancel in flight) reads no configuration.
    if (mode_ != config::pool_mode::session && !reset_query_always_ &&
        s->cancels_in_flight.load() == 0) {
        pool_->release(std::move(s));
        return;
    }
    auto cfg = rt_.cfg();
    bool reset = mode_ == config::pool_mode::session || cfg->sluice.server_reset_query_always;
    std::string query = reset ? cfg->sluice.server_reset_query : std::string();
    if (query.empty() && s->cancels_in_flight.load() == 0) {
        pool_->release(std::move(s));
        return;
    }
    auto ex = s->socket.get_executor();
    asio::co_spawn(ex,
                   reset_and_release(s, query, max_packet(),
                                     steady_clock::duration(cfg->sluice.cancel_wait_timeout)),
                   [s](std::exception_ptr e) {
                       if (e) {
                           spdlog::error("server {}: reset failed with an exception", s->id);
                           s->owner->discard(s);
                       }
                   });
}

}  // namespace sluice::proxy
