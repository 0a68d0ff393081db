#include "sluice/pool/pool.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "sluice/stats/event_clock.hpp"

namespace sluice::pool {

namespace {
const char* const wait_timeout_message =
    "query_wait_timeout: no server connection became free in time";
}  // namespace


// Slots also count against max_db_connections / max_user_connections, shared with the
// other pools of the same database or user.
bool pool::shared::try_take() {
    auto& m = owner.manager_;
    int db_max = m.db_limit(owner.database_);
    if (db_max > 0 && m.db_count(owner.database_).load() >= db_max) return false;
    int user_max = m.user_limit(owner.user_);
    if (user_max > 0 && m.user_count(owner.user_).load() >= user_max) return false;
    m.db_count(owner.database_)++;
    m.user_count(owner.user_)++;
    return true;
}

void pool::shared::give_back() {
    owner.manager_.db_count(owner.database_)--;
    owner.manager_.user_count(owner.user_)--;
}

pool::pool(pool_manager& manager, std::string database, std::string user)
    : manager_(manager), database_(std::move(database)), user_(std::move(user)),
      snapshot_(std::make_shared<const settings>()), shared_(*this), state_(shared_) {}

pool::settings pool::current_settings() const {
    std::lock_guard lk(mutex_);
    return settings_;
}

pool_limits pool::limits_of(const settings& s) {
    pool_limits l;
    l.pool_size = s.pool_size;
    l.reserve_pool_size = s.reserve_pool_size;
    l.reserve_pool_timeout = s.reserve_pool_timeout;
    l.server_idle_timeout = s.server_idle_timeout;
    l.server_lifetime = s.server_lifetime;
    l.round_robin = s.server_round_robin;
    return l;
}

void pool::update_settings(settings s) {
    std::lock_guard lk(mutex_);
    bool address_changed = s.login.hosts != settings_.login.hosts ||
                           s.login.port != settings_.login.port ||
                           s.login.database != settings_.login.database ||
                           s.login.user != settings_.login.user ||
                           (s.login.tls ? s.login.tls->server_generation : 0) !=
                               (settings_.login.tls ? settings_.login.tls->server_generation : 0);
    if (!s.hosts)
        s.hosts = std::make_shared<host_group>(s.login.hosts, target_session_attrs::any, false,
                                               std::nullopt);
    // Another host list or target: the servers open now may not be what it asks for.
    address_changed |= settings_.hosts && s.hosts != settings_.hosts;
    settings_ = std::move(s);
    snapshot_ = std::make_shared<const settings>(settings_);
    state_.set_limits(limits_of(settings_));
    if (address_changed)
        for (auto& srv : all_) srv->close_needed = true;
    // A larger pool_size lets waiting clients open connections now.
    sync_pause_locked();
    for (auto& g : state_.fill_room()) grant_locked(g);
}

std::map<std::string, std::string> pool::welcome_parameters() const {
    std::lock_guard lk(mutex_);
    return welcome_;
}

shared_params pool::intern_parameters(param_set p) {
    std::lock_guard lk(mutex_);
    return interned_.get(std::move(p));
}

shared_identity pool::intern_identity(client_identity id) {
    std::lock_guard lk(mutex_);
    return identities_.get(std::move(id));
}

void pool::learn_scram_keys(std::vector<std::uint8_t> client_key,
                            std::vector<std::uint8_t> server_key) {
    std::lock_guard lk(mutex_);
    scram_client_key_ = std::move(client_key);
    scram_server_key_ = std::move(server_key);
}

void pool::learn_secret(std::string secret) {
    std::lock_guard lk(mutex_);
    learnt_secret_ = std::move(secret);
}

bool pool::has_scram_keys() const {
    std::lock_guard lk(mutex_);
    return !scram_client_key_.empty();
}

void pool::sync_pause_locked() { state_.set_paused(paused.load()); }

server_ptr pool::find_locked(server_id id) const {
    for (auto& s : all_)
        if (s->id == id) return s;
    return nullptr;
}

// Performs what the core decided for a waiter: hands it a server, or lets it connect.
void pool::grant_locked(const grant& g) {
    auto it = waiting_.find(g.waiter);
    if (it == waiting_.end()) return;
    auto w = it->second;
    waiting_.erase(it);
    if (g.server) {
        w->server = find_locked(g.server);
        w->server->state = server_state::active;
    } else {
        w->may_connect = true;
    }
    w->done = true;
    if (w->wake) {  // parked: its end runs on its worker (never under this mutex)
        try {
            asio::post(w->executor, [this, w] {
                if (!w->delivered) end_parked(w);  // (delivered: `this` may be gone)
            });
        } catch (...) {  // (no memory: its deadline finds `done` within a second)
        }
        return;
    }
    // The waiter's coroutine runs on its own worker; the timer is touched only there.
    // Released on that very worker (the usual case, worker affinity): wake it now rather
    // than through a posted handler.
    auto* ioc = w->executor.target<asio::io_context::executor_type>();
    if (ioc && ioc->running_in_this_thread()) w->timer->cancel();
    else asio::post(w->executor, [w] { w->timer->cancel(); });
}

asio::awaitable<acquire_result> pool::acquire(
    asio::any_io_executor ex, int worker,
    const std::function<asio::awaitable<void>()>* queued_notice) {
    const auto start = steady_clock::now();
    std::shared_ptr<waiter> w;
    std::shared_ptr<const settings> snapshot;  // shared, not copied: no allocation per checkout
    server_ptr s;  // an idle server to check out; none: connect in the slot we hold
    {
        std::lock_guard lk(mutex_);
        snapshot = snapshot_;
        sync_pause_locked();
        auto id = ++next_waiter_;
        auto c = state_.request(id, worker, start);
        if (c.kind == checkout::idle_server) {
            s = find_locked(c.server);
            s->state = server_state::active;
        } else if (c.kind == checkout::wait) {
            w = std::allocate_shared<waiter>(exact_allocator<waiter>(), ex, id, start);
            w->timer.emplace(ex);
            waiting_[id] = w;
        }
    }

    // Wait in line. Woken by a grant (release() hands a server, a freed slot lets us
    // connect, RESUME, a larger pool_size); or by our own timer: the reserve pool, the
    // shared limits, query_wait_timeout.
    const settings& cfg = *snapshot;
    const auto deadline = start + cfg.query_wait_timeout;
    const auto notify_at = start + cfg.query_wait_notify;
    bool notify = queued_notice && *queued_notice && cfg.query_wait_notify.count() > 0;
    while (w) {
        w->timer->expires_at(next_wake(cfg, start, notify));
        co_await w->timer->async_wait(use_nothrow);
        if (notify && steady_clock::now() >= notify_at) {
            notify = false;
            bool granted;
            {
                std::lock_guard lk(mutex_);
                granted = w->done;
            }
            // A grant that comes while the NOTICE is written is taken just below.
            if (!granted) co_await (*queued_notice)();
        }

        std::lock_guard lk(mutex_);
        const auto step = look_again_locked(*w, cfg, start, s);
        if (step == wait_step::timed_out)
            co_return acquire_result{nullptr, "53300", wait_timeout_message,
                                     steady_clock::now() - start};
        if (step != wait_step::wait) break;
    }
    if (s) {
        // (the result is stored first: gcc 12 mishandles co_await inside conditions)
        const auto verdict = check_out_now(s, ex, worker, cfg);
        bool usable = verdict == check_verdict::usable;
        if (verdict == check_verdict::round_trips_due) usable = co_await check_out_round_trips(s, cfg);
        if (usable) co_return acquire_result{s, {}, {}, steady_clock::now() - start};
        // It was broken: connect in the slot it held.
    }
    auto r = co_await open_server(ex, worker, deadline);
    r.waited = steady_clock::now() - start;
    co_return r;
}

steady_clock::time_point pool::next_wake(const settings& cfg, steady_clock::time_point start,
                                         bool notify) const {
    const auto now = stats::event_clock::now();
    auto wake = start + cfg.query_wait_timeout;
    const auto reserve_at = start + cfg.reserve_pool_timeout;
    if (cfg.reserve_pool_size > 0 && reserve_at < wake && now < reserve_at) wake = reserve_at;
    if (notify && start + cfg.query_wait_notify < wake) wake = start + cfg.query_wait_notify;
    // Limits shared with other pools (max_db_connections, max_user_connections) free up
    // without telling us; look again now and then. Otherwise look again every second
    // anyway: a missed wake-up then costs a second, never query_wait_timeout.
    if (manager_.any_shared_limit() &&
        (manager_.db_limit(database_) > 0 || manager_.user_limit(user_) > 0))
        return std::min(wake, now + std::chrono::milliseconds(100));
    return std::min(wake, now + std::chrono::seconds(1));
}

pool::wait_step pool::look_again_locked(waiter& w, const settings& cfg,
                                        steady_clock::time_point start, server_ptr& s) {
    if (w.done) {
        s = std::move(w.server);  // or none: w.may_connect
        return s ? wait_step::server : wait_step::connect;
    }
    sync_pause_locked();
    auto now = steady_clock::now();
    auto c = state_.retry(w.id, start, now);
    if (c.kind == checkout::idle_server) {
        waiting_.erase(w.id);
        s = find_locked(c.server);
        s->state = server_state::active;
        return wait_step::server;
    }
    if (c.kind == checkout::connect) {
        waiting_.erase(w.id);
        if (c.from_reserve)
            spdlog::info(
                "{}/{}: taking connection from reserve_pool (waited {} ms)", database_, user_,
                std::chrono::duration_cast<std::chrono::milliseconds>(now - start).count());
        return wait_step::connect;
    }
    if (now >= start + cfg.query_wait_timeout) {
        state_.cancel(w.id);
        waiting_.erase(w.id);
        stats.errors_wait_timeout++;
        return wait_step::timed_out;
    }
    return wait_step::wait;
}

// --- parked waits: acquire() as plain handlers ------------------------------------------
//
// park -> request(): an idle server (checked out here) | a free slot | queued:
//   the waiter's deadline (next_wake), an entry in its worker's deadline_queue (one Asio
//   timer for all of them: no timer per wait) -> on_parked_timer -> look_again_locked:
//       server / slot / timed out -> wake(ctx, outcome); still waiting -> deadline again
//       (query_wait_notify passed: wake(ctx, {notify}) first, still queued)
//   a grant (release, a freed slot, RESUME) -> grant_locked posts end_parked -> wake
//       (the deadline, should that post have failed, finds `done` and ends the wait too)
// Invariants: the outcome of the wait reaches `wake` exactly once (`delivered`), on the
// waiter's executor, never under mutex_; the deadline entry is touched only on that
// executor, and while queued it holds the waiter (`keep`); every end of the wait takes it
// out of the queue (unqueue_parked). An exception in these handlers (no memory) ends the
// wait with an error and gives back what the wait held (its queue place, a server, a
// slot): it must not reach the worker's run loop, which would end the process.

std::optional<pool::park_outcome> pool::park(asio::any_io_executor ex, int worker,
                                             net::deadline_queue& deadlines, park_wake wake,
                                             std::shared_ptr<void> ctx) {
    const auto start = stats::event_clock::now();  // (the client's handler: one reading)
    // Made before the queue is touched: a failure here changes nothing.
    auto w = std::allocate_shared<waiter>(exact_allocator<waiter>(), ex, 0, start);
    w->wake = wake;
    w->worker = worker;
    w->owner = this;
    w->deadlines = &deadlines;
    w->fire = &pool::on_parked_deadline;
    std::shared_ptr<const settings> snapshot;
    server_ptr s;
    bool queued = false;
    {
        std::lock_guard lk(mutex_);
        snapshot = snapshot_;
        sync_pause_locked();
        w->id = ++next_waiter_;
        auto [it, inserted] = waiting_.try_emplace(w->id, w);  // (before the core hears of it)
        checkout c;
        try {
            c = state_.request(w->id, worker, start);
        } catch (...) {
            waiting_.erase(it);
            throw;
        }
        if (c.kind == checkout::wait) {
            queued = true;
        } else {
            waiting_.erase(it);
            if (c.kind == checkout::idle_server) {
                s = find_locked(c.server);
                s->state = server_state::active;
            }
        }
    }
    if (queued) {
        w->ctx = std::move(ctx);
        w->snapshot = std::move(snapshot);
        w->notify_due = w->snapshot->query_wait_notify.count() > 0;
        // (A grant that comes from now on posts end_parked to this executor: it runs after
        // this handler, so after the deadline is queued.)
        try {
            arm_parked(w);
        } catch (const std::exception& e) {
            fail_parked(w, e);  // (the error reaches wake now; nothing more comes)
        }
        return std::nullopt;
    }
    park_outcome out;
    if (!s) {
        out.slot_held = true;
        return out;
    }
    try {
        hand_out(s, ex, worker, *snapshot, out);
    } catch (...) {
        if (s) discard(std::move(s));
        throw;
    }
    return out;
}

void pool::hand_out(server_ptr& s, const asio::any_io_executor& ex, int worker,
                    const settings& cfg, park_outcome& out) {
    switch (check_out_now(s, ex, worker, cfg)) {
    case check_verdict::usable:
        out.server = std::move(s);
        break;
    case check_verdict::round_trips_due:
        out.server = std::move(s);
        out.round_trips_due = true;
        break;
    case check_verdict::dropped:  // broken (and gone): connect in the slot it held
        s = nullptr;
        out.slot_held = true;
        break;
    }
}

void pool::arm_parked(const std::shared_ptr<waiter>& w) {
    if (!w->keep) w->keep = w;  // (first: a queue that is shut down drops the entry at once)
    // (If this throws, the caller's fail_parked takes the entry out and lets `keep` go.)
    w->deadlines->schedule(*w, next_wake(*w->snapshot, w->since, w->notify_due));
}

void pool::on_parked_deadline(net::deadline_queue::entry& e, bool dropped) noexcept {
    auto w = std::move(static_cast<waiter&>(e).keep);  // (out of the queue: not kept by it)
    // Ended meanwhile (delivered: end_parked has run; the pool may be gone), or the worker's
    // io_context is being destroyed.
    if (dropped || !w || w->delivered) return;
    w->owner->on_parked_timer(w);
}

void pool::unqueue_parked(waiter& w) noexcept {
    if (w.deadlines) w.deadlines->cancel(w);
    w.keep.reset();
}

void pool::on_parked_timer(const std::shared_ptr<waiter>& w) {
    server_ptr s;  // taken by look_again_locked: given back should anything below fail
    try {
        const settings& cfg = *w->snapshot;
        if (w->notify_due && steady_clock::now() >= w->since + cfg.query_wait_notify) {
            w->notify_due = false;
            bool granted;
            {
                std::lock_guard lk(mutex_);
                granted = w->done;
            }
            if (!granted) {
                park_outcome n;
                n.notify = true;
                w->wake(w->ctx, std::move(n));
            }
        }
        wait_step step = wait_step::wait;
        bool granted;
        {
            std::lock_guard lk(mutex_);
            granted = w->done;
            if (!granted) step = look_again_locked(*w, cfg, w->since, s);
        }
        if (granted) return end_parked(w);  // (its posted end_parked then does nothing)
        if (step == wait_step::wait) return arm_parked(w);
        park_outcome out;
        if (step == wait_step::server) {
            hand_out(s, w->executor, w->worker, cfg, out);
        } else if (step == wait_step::connect) {
            out.slot_held = true;
        } else {
            out.sqlstate = "53300";
            out.message = wait_timeout_message;
        }
        deliver_parked(w, std::move(out));
    } catch (const std::exception& e) {
        try {
            if (s) discard(std::move(s));
        } catch (...) {
        }
        fail_parked(w, e);
    }
}

void pool::end_parked(const std::shared_ptr<waiter>& w) {
    if (w->delivered) return;
    unqueue_parked(*w);
    server_ptr s;
    try {
        {
            std::lock_guard lk(mutex_);
            s = std::move(w->server);  // granted (done): a server, or a slot
        }
        park_outcome out;
        if (s) hand_out(s, w->executor, w->worker, *w->snapshot, out);
        else out.slot_held = true;
        deliver_parked(w, std::move(out));
    } catch (const std::exception& e) {
        if (s) {  // the server it was granted goes back here; a slot, in fail_parked
            try {
                discard(std::move(s));
            } catch (...) {
            }
            std::lock_guard lk(mutex_);
            w->done = false;
        }
        fail_parked(w, e);
    }
}

void pool::deliver_parked(const std::shared_ptr<waiter>& w, park_outcome out) {
    unqueue_parked(*w);
    w->delivered = true;
    auto ctx = std::move(w->ctx);
    w->wake(ctx, std::move(out));  // (on_park_wake catches what it could throw)
}

void pool::fail_parked(const std::shared_ptr<waiter>& w, const std::exception& e) noexcept {
    // Leaves the queue if still in it; a grant that came meanwhile is given back.
    server_ptr granted;
    bool slot = false;
    {
        std::lock_guard lk(mutex_);
        if (state_.cancel(w->id)) {
            waiting_.erase(w->id);
        } else if (w->done) {
            granted = std::move(w->server);
            slot = !granted;
            w->done = false;
        }
    }
    try {
        if (granted) discard(std::move(granted));
        else if (slot) release_slot();
        spdlog::error("{}/{}: a queued client's wait failed: {}", database_, user_, e.what());
    } catch (...) {
    }
    unqueue_parked(*w);
    if (w->delivered) return;
    w->delivered = true;
    auto ctx = std::move(w->ctx);
    try {
        park_outcome out;
        out.sqlstate = "53200";  // out_of_memory (short strings: no allocation)
        out.message = "out of memory";
        w->wake(ctx, std::move(out));
    } catch (...) {
    }
}

asio::awaitable<acquire_result> pool::connect_in_slot(asio::any_io_executor ex, int worker,
                                                      steady_clock::time_point since) {
    std::shared_ptr<const settings> snapshot;
    {
        std::lock_guard lk(mutex_);
        snapshot = snapshot_;
    }
    auto r = co_await open_server(ex, worker, since + snapshot->query_wait_timeout);
    r.waited = steady_clock::now() - since;
    co_return r;
}

pool::quick_checkout pool::try_acquire_now(asio::any_io_executor ex, int worker) {
    // A few idle servers may turn out broken (a restart closed them all): each one's slot
    // goes back, and after a few the caller takes the waiting path, which connects.
    for (int tries = 0; tries < 4; ++tries) {
        std::shared_ptr<const settings> snapshot;
        server_ptr s;
        {
            std::lock_guard lk(mutex_);
            sync_pause_locked();
            auto id = state_.take_idle(worker);
            if (!id) return {};
            snapshot = snapshot_;
            s = find_locked(*id);
            s->state = server_state::active;
        }
        switch (check_out_now(s, ex, worker, *snapshot)) {
        case check_verdict::usable:
            return {std::move(s), false};
        case check_verdict::round_trips_due:
            return {std::move(s), true};
        case check_verdict::dropped:
            release_slot();
            break;
        }
    }
    return {};
}

void pool::release_slot() {
    std::lock_guard lk(mutex_);
    sync_pause_locked();
    if (auto g = state_.slot_freed()) grant_locked(*g);
}

pool::check_verdict pool::check_out_now(const server_ptr& s, const asio::any_io_executor& ex,
                                        int worker, const settings& cfg) {
    // A server handed to a client has no unread bytes: an idle server has nothing to say,
    // so anything readable (EOF after pg_terminate_backend or a restart, a FATAL, a
    // NOTIFY for a LISTEN a former client left behind) means it is not fit to hand out.
    // One poll() per checkout; trusting a recently used server let such bytes reach the
    // next client.
    if (s->close_needed) {  // RECONNECT, new server TLS settings: not handed out again
        retire(s, false);
        return check_verdict::dropped;
    }
    if (!s->buffer.empty() || s->broken_while_idle()) {
        spdlog::info("server {} of {}/{} closed or spoke while idle; dropping it", s->id,
                     database_, user_);
        retire(s, false);  // the client connects in its slot
        return check_verdict::dropped;
    }
    // Its host changed role since it was made (a promotion seen by another server): what
    // it was chosen for may no longer hold. Only entries with several hosts or a target
    // pay for the look.
    if (const host_group* g = cfg.hosts.get(); g && g->watches_roles() && s->role.load() != '?') {
        bool changed;
        {
            std::lock_guard lk(g->mutex);
            changed = g->state.role_changes(s->host_index) != s->host_role_changes;
        }
        if (changed) {
            spdlog::info("server {} of {}/{}: {} changed role since it was opened; dropping it",
                         s->id, database_, user_, s->host());
            retire(s, false);
            return check_verdict::dropped;
        }
    }
    // (The move re-registers the descriptor with ex's reactor: what arrives after the
    // poll() above is reported there, which net/drained_wait.hpp relies on.)
    s->migrate(ex);
    s->worker = worker;
    const auto now = stats::event_clock::now();
    if (check_due(*s, cfg, now) || lag_check_due(*s, cfg, now))
        return check_verdict::round_trips_due;
    s->last_used = now;
    stats.server_assignment_count++;
    return check_verdict::usable;
}

bool pool::check_due(const server_connection& s, const settings& cfg,
                     steady_clock::time_point now) {
    // server_check_delay: a server idle for longer is tested before it is handed out; 0
    // tests every one. (Said outright, not left to `now - last_used > 0`: both readings
    // are handler readings (stats::event_clock), and a server released on another worker
    // may carry a reading later than this handler's.)
    const auto delay = cfg.server_check_delay;
    return delay.count() == 0 || (delay.count() > 0 && now - s.last_used > delay);
}

bool pool::lag_check_due(const server_connection& s, const settings& cfg,
                         steady_clock::time_point now) {
    // max_replica_lag: a standby of a prefer-standby entry is measured again when its last
    // measure is older than server_check_delay.
    const host_group* group = cfg.hosts.get();
    const auto delay = cfg.server_check_delay;
    return s.role == 's' && group && group->max_replica_lag &&
           group->state.target() == target_session_attrs::prefer_standby &&
           (delay.count() == 0 || (delay.count() > 0 && now - s.lag_checked_at > delay));
}

asio::awaitable<bool> pool::check_out_round_trips(server_ptr s, const settings& cfg) {
    // server_check_query (empty = an empty query, one cheap round trip).
    if (check_due(*s, cfg, steady_clock::now())) {
        s->state = server_state::tested;
        std::string check = cfg.server_check_query;
        bool alive = co_await s->run_internal_query(std::move(check), cfg.login.max_packet_size);
        if (!alive) {
            spdlog::info("server {} of {}/{} failed server_check_query: {}", s->id, database_,
                         user_, s->last_error);
            retire(s, false);
            co_return false;
        }
        s->state = server_state::active;
    }
    // A standby that lags is closed and its host waits out server_login_retry: this
    // client, and the next ones, go to another host.
    const host_group* group = cfg.hosts.get();
    if (lag_check_due(*s, cfg, steady_clock::now())) {
        bool failed = false;
        bool lagging = co_await lags(*s, *group->max_replica_lag, cfg.login.max_packet_size, failed);
        if (failed || lagging) {
            {
                std::lock_guard lk(cfg.hosts->mutex);
                auto now = steady_clock::now();
                auto& st = cfg.hosts->state;
                if (failed) st.connect_failed(s->host_index, now, cfg.server_login_retry);
                else st.judge(s->host_index, st.known_role(s->host_index).value_or(server_role{true, true}),
                              true, {}, now, cfg.server_login_retry);
            }
            spdlog::info("server {} of {}/{} on {} {}; dropping it", s->id, database_, user_,
                         s->host(), failed ? "did not answer the lag query"
                                           : "lags more than max_replica_lag");
            retire(s, false);
            co_return false;
        }
    }
    s->last_used = steady_clock::now();
    stats.server_assignment_count++;
    co_return true;
}

asio::awaitable<bool> pool::check_out_round_trips(server_ptr s) {
    std::shared_ptr<const settings> snapshot;
    {
        std::lock_guard lk(mutex_);
        snapshot = snapshot_;
    }
    // (`s` copied, not moved: a parameter moved through two coroutines is what gcc 12
    // got wrong elsewhere)
    bool usable = co_await check_out_round_trips(s, *snapshot);
    co_return usable;
}

bool pool::wants_servers() const {
    std::lock_guard lk(mutex_);
    return state_.slots() < settings_.min_pool_size && state_.slots() < settings_.pool_size &&
           (login_failed_error_.empty() ||
            steady_clock::now() - login_failed_at_ >= settings_.server_login_retry);
}

asio::awaitable<void> pool::warm_up(asio::any_io_executor ex, int worker) {
    {
        std::lock_guard lk(mutex_);
        if (state_.slots() >= settings_.min_pool_size || !state_.take_slot()) co_return;
    }
    auto r = co_await open_server(ex, worker);
    if (r.server) {
        stats.server_assignment_count--;  // opened for the pool, not for a client
        release(r.server);
    }
}

asio::awaitable<acquire_result> pool::open_server(
    asio::any_io_executor ex, int worker, std::optional<steady_clock::time_point> wait_until) {
    auto s = std::make_shared<server_connection>(ex, manager_.next_connection_id());
    s->owner = this;
    s->worker = worker;
    login_params login;
    std::shared_ptr<host_group> group;
    steady_clock::duration retry;
    std::vector<std::string> unreported;  // tracked parameters to read from a first server
    {
        std::lock_guard lk(mutex_);
        auto now = steady_clock::now();
        if (!login_failed_error_.empty() && now - login_failed_at_ < settings_.server_login_retry) {
            // As PgBouncer: while logins are failing, do not hammer the server; tell the
            // client why right away. The slot it was given goes to the next waiter, which
            // hears the same (a slot kept by nobody left waiters stuck after a restart).
            if (auto g = state_.slot_freed()) grant_locked(*g);
            co_return acquire_result{nullptr, login_failed_sqlstate_,
                                     "server login has been failing, try again later "
                                     "(server_login_retry): " + login_failed_error_};
        }
        unreported = settings_.unreported_tracked;
        all_.push_back(s);
    }
    // What a try uses, read afresh for each: a RELOAD during a long wait (an operator
    // pointing the entry at the new primary) applies to the next try.
    auto load_settings = [&] {
        std::lock_guard lk(mutex_);
        login = settings_.login;
        group = settings_.hosts;
        retry = settings_.server_login_retry;
        if (login.scram_client_key.empty()) {
            login.scram_client_key = scram_client_key_;
            login.scram_server_key = scram_server_key_;
        }
        if (!login.password && !learnt_secret_.empty()) login.password = learnt_secret_;
        // A RELOAD or RECONNECT before this try marked the server; the try itself uses
        // what is current now.
        s->close_needed = false;
    };
    load_settings();
    manager_.total_servers++;
    bool ok = false;
    bool waited_once = false;
    for (int immediate = 0;; s->reset_for_retry()) {
        ok = co_await connect_to_a_host(*s, login, *group, retry);
        if (ok || !s->last_error_transient || !wait_until) break;
        // Nothing usable now, but it may come back (a restart, a failover in progress):
        // wait for the first host whose server_login_retry has passed.
        auto now = steady_clock::now();
        steady_clock::time_point next;
        {
            std::lock_guard lk(group->mutex);
            next = group->state.next_retry(now);
        }
        // A prefer-standby primary passed over for a standby that then failed is free to
        // take at once; more than that in a row would spin.
        if (next <= now && ++immediate > 1) next = now + std::chrono::milliseconds(100);
        if (next > now) immediate = 0;
        if (next >= *wait_until) break;
        if (!waited_once)
            spdlog::info("no server for {}/{} yet ({}); waiting for a host to come back "
                         "(server_login_retry)", database_, user_, s->last_error);
        waited_once = true;
        asio::steady_timer t(ex, next);
        co_await t.async_wait(use_nothrow);
        load_settings();
    }
    if (!ok) {
        spdlog::warn("server login for {}/{} failed: {}", database_, user_, s->last_error);
        std::string sqlstate = "08006";
        // PostgreSQL's own refusals (bad password, unknown database, too many
        // connections) are passed on with their SQLSTATE.
        if (s->last_error_fields && !s->last_error_fields->sqlstate.empty())
            sqlstate = s->last_error_fields->sqlstate;
        if (!s->last_error_transient) {
            // Only a refusal that trying again cannot cure makes the pool fail fast;
            // hosts that are down are each waited out in connect_to_a_host.
            std::lock_guard lk(mutex_);
            login_failed_at_ = steady_clock::now();
            login_failed_error_ = s->last_error;
            login_failed_sqlstate_ = sqlstate;
        }
        stats.errors_login++;
        discard(s);
        co_return acquire_result{nullptr, sqlstate, s->last_error};
    }
    bool first;
    std::string connect_query;
    {
        std::lock_guard lk(mutex_);
        login_failed_error_.clear();
        first = welcome_.empty();
        connect_query = settings_.connect_query;
    }
    if (!connect_query.empty()) {
        // Before any client has the server, and before its defaults are read: what the
        // query sets is the server's starting state. A failing query is logged, as
        // PgBouncer does, and the server used; one left broken or inside a transaction
        // is not handed to anyone.
        s->last_error_fields.reset();
        const bool ok = co_await s->run_internal_query(connect_query, login.max_packet_size, nullptr);
        // Usable: idle (not left inside a transaction, as by a BEGIN) and, on failure, the
        // error came from PostgreSQL (not a broken connection).
        const bool in_transaction = s->transaction_status != 'I';
        if (in_transaction) s->last_error = "it left the server inside a transaction";
        const bool usable = !in_transaction && (ok || s->last_error_fields);
        if (!ok) {
            spdlog::warn("server {} {}/{}: connect_query failed: {}{}", s->id, database_, user_,
                         s->last_error, usable ? "" : "; closing the server");
            s->last_error_fields.reset();
            if (!usable) {
                stats.errors_login++;
                discard(s);
                co_return acquire_result{nullptr, "08006",
                                         "server connection failed in connect_query: " +
                                             s->last_error};
            }
        }
    }
    if (first && !unreported.empty()) {
        std::string sql = "SELECT ";
        for (std::size_t i = 0; i < unreported.size(); ++i)
            sql += (i ? ", current_setting('" : "current_setting('") + unreported[i] +
                   "', true)";
        std::vector<std::optional<std::string>> row;
        bool ok = co_await s->run_internal_query(std::move(sql), login.max_packet_size, &row);
        if (ok && row.size() == unreported.size())
            for (std::size_t i = 0; i < row.size(); ++i)
                if (row[i]) s->parameters.set(unreported[i], *row[i]);
    }
    bool cfg_log_connections;
    {
        std::lock_guard lk(mutex_);
        cfg_log_connections = settings_.log_connections;
        if (welcome_.empty()) welcome_ = {s->parameters.begin(), s->parameters.end()};
        else
            for (auto& k : settings_.unreported_tracked)
                if (auto it = welcome_.find(k); it != welcome_.end()) s->parameters.set(k, it->second);
        s->state = server_state::active;
    }
    if (cfg_log_connections)
        spdlog::info("server {} {}/{}@{}:{} new connection to server (backend pid {})", s->id,
                     database_, user_, s->host(), s->port.load(), s->backend_key.process_id);
    stats.server_assignment_count++;
    co_return acquire_result{s, {}, {}};
}

asio::awaitable<bool> pool::connect_to_a_host(server_connection& s, const login_params& login,
                                               host_group& group, steady_clock::duration retry) {
    if (group.names.empty()) {  // (an entry removed by RELOAD while its pool lives on)
        s.last_error = "the database entry for " + database_ + " names no host";
        s.last_error_transient = false;
        co_return false;
    }
    std::vector<std::size_t> plan;
    {
        std::lock_guard lk(group.mutex);
        plan = group.state.plan(steady_clock::now());
        if (plan.empty()) {
            s.last_error = group.names.size() > 1 ? group.summary()
                           : group.last_error.empty() ? "no host can be tried yet"
                                                      : group.last_error;
            s.last_error_transient = true;
            co_return false;
        }
    }
    const target_session_attrs target = group.state.target();
    std::string final_error;  // a host that failed for a reason waiting will not cure
    // Host i could not be used: it waits out server_login_retry, and the pool says why.
    auto host_failed = [&](std::size_t i) {
        std::lock_guard lk(group.mutex);
        group.state.connect_failed(i, steady_clock::now(), retry);
        group.note_failure(i, s.last_error);
    };
    for (std::size_t k = 0; k < plan.size(); ++k) {
        const std::size_t i = plan[k];
        const std::string& host = group.names.at(i);
        if (k > 0) s.reset_for_retry();
        spdlog::debug("server {}: connecting to {}:{} for {}/{}", s.id, host, login.port,
                      database_, user_);
        bool connected = co_await s.connect(login, host);
        if (!connected) {
            // PostgreSQL refused this user or database: another host will say the same,
            // and the host itself is fine for the other pools.
            if (!s.last_error_transient && s.last_error_fields) co_return false;
            // Down, or this host's own failing (its certificate, its authentication
            // method): the next host may do.
            if (!s.last_error_transient) final_error = s.last_error;
            host_failed(i);
            if (plan.size() > 1)
                spdlog::warn("server {} for {}/{} is not usable, trying the next host: {}", host,
                             database_, user_, s.last_error);
            continue;
        }
        std::optional<server_role> role = co_await read_role(s, target, login.max_packet_size);
        if (!role && target != target_session_attrs::any) {
            host_failed(i);
            s.close();
            continue;
        }
        if (!role) {  // any: a server that does not say is taken as it is
            s.host_index = i;
            co_return true;
        }
        bool lagging = false;
        if (group.max_replica_lag && target == target_session_attrs::prefer_standby &&
            role->hot_standby) {
            bool failed = false;
            lagging = co_await lags(s, *group.max_replica_lag, login.max_packet_size, failed);
            if (failed) {
                host_failed(i);
                s.close();
                continue;
            }
        }
        std::vector<std::size_t> remaining(plan.begin() + k + 1, plan.end());
        host_state::verdict v;
        {
            std::lock_guard lk(group.mutex);
            v = group.state.judge(i, *role, lagging, remaining, steady_clock::now(), retry);
            s.host_role_changes = group.state.role_changes(i);
            if (v == host_state::verdict::reject) {
                group.last_error = "server " + host + ":" + std::to_string(login.port) +
                                   " is a " + role_name(*role) +
                                   (role->read_only && !role->hot_standby ? " (read-only)" : "") +
                                   (lagging ? " lagging more than max_replica_lag" : "") +
                                   " and target_session_attrs is " + to_string(target);
                group.note_failure(i, group.last_error);
                s.last_error = group.last_error;
            }
        }
        if (v == host_state::verdict::accept) {
            s.host_index = i;
            s.role = role->hot_standby ? 's' : 'p';
            co_return true;
        }
        spdlog::info("{}; closing it for {}/{}", s.last_error, database_, user_);
        s.terminate();
    }
    s.last_error_transient = final_error.empty();
    if (group.names.size() > 1) {
        std::lock_guard lk(group.mutex);
        s.last_error = group.summary();
    } else if (!final_error.empty()) {
        s.last_error = final_error;
    }
    co_return false;
}

asio::awaitable<std::optional<server_role>> pool::read_role(server_connection& s,
                                                             target_session_attrs target,
                                                             std::size_t max_packet) {
    if (auto r = role_from_parameters(s.parameters.value("in_hot_standby"),
                                      s.parameters.value("default_transaction_read_only")))
        co_return r;
    if (target == target_session_attrs::any) co_return std::nullopt;
    // Before PostgreSQL 14 neither is reported: ask, as libpq does.
    std::vector<std::optional<std::string>> row;
    bool ok = co_await s.run_internal_query(
        "SELECT pg_catalog.pg_is_in_recovery(), "
        "pg_catalog.current_setting('default_transaction_read_only')",
        max_packet, &row);
    if (!ok || row.size() != 2 || !row[0] || !row[1]) {
        if (ok) s.last_error = "could not read the role of server " + s.host();
        co_return std::nullopt;
    }
    co_return server_role{*row[0] == "t", *row[1] == "on"};
}

asio::awaitable<bool> pool::lags(server_connection& s, steady_clock::duration max_lag,
                                 std::size_t max_packet, bool& failed) {
    // Replay lag as the time since the last replayed transaction, counted only while WAL
    // received is not yet replayed: an idle primary sends nothing, and its standby is
    // then up to date however old its last transaction is. A standby that has replayed
    // no transaction since it started has been behind for as long as it has run, at most.
    std::vector<std::optional<std::string>> row;
    bool ok = co_await s.run_internal_query(
        "SELECT CASE WHEN pg_catalog.pg_last_wal_receive_lsn() IS NULL "
        "OR pg_catalog.pg_last_wal_receive_lsn() <= pg_catalog.pg_last_wal_replay_lsn() "
        "THEN 0 ELSE EXTRACT(EPOCH FROM now() - COALESCE("
        "pg_catalog.pg_last_xact_replay_timestamp(), pg_catalog.pg_postmaster_start_time())) "
        "END::float8",
        max_packet, &row);
    s.lag_checked_at = steady_clock::now();
    if (!ok || row.size() != 1 || !row[0]) {
        failed = true;
        co_return false;
    }
    double seconds = std::strtod(row[0]->c_str(), nullptr);
    co_return seconds * 1e9 > double(std::chrono::nanoseconds(max_lag).count());
}

void pool::release(server_ptr s) {
    auto now = stats::event_clock::now();
    s->last_used = now;
    s->link_client_id = 0;
    std::lock_guard lk(mutex_);
    // A server made under server TLS settings that have changed since (RELOAD, SET) is
    // not reused: the next connection uses the new ones.
    const std::uint64_t tls_generation =
        settings_.login.tls ? settings_.login.tls->server_generation : 0;
    // A server whose role changed under it (a promoted standby says in_hot_standby=off
    // after its next query) is closed unless the entry's target still fits it; the host's
    // new role is learnt for the next connections.
    bool role_fits = true;
    if (char was = s->role.load();
        was != '?' && settings_.hosts && settings_.hosts->watches_roles() && !s->close_needed) {
        auto r = role_from_parameters(s->parameters.value("in_hot_standby"),
                                      s->parameters.value("default_transaction_read_only"));
        if (r && (r->hot_standby ? 's' : 'p') != was) {
            const auto target = settings_.hosts->state.target();
            role_fits = fits(target, *r, false) && target != target_session_attrs::prefer_standby;
            {
                std::lock_guard glk(settings_.hosts->mutex);
                settings_.hosts->state.learnt(s->host_index, *r);
                s->host_role_changes = settings_.hosts->state.role_changes(s->host_index);
            }
            s->role = r->hot_standby ? 's' : 'p';
            spdlog::info("server {} of {}/{} on {} is now a {}{}", s->id, database_, user_,
                         s->host(), role_name(*r), role_fits ? "" : "; closing it");
        }
    }
    const bool reusable = role_fits && !s->close_needed && s->socket.is_open() &&
                          s->tls_generation == tls_generation &&
                          !(settings_.server_lifetime.count() > 0 &&
                            now - s->connect_time > settings_.server_lifetime);
    if (!reusable) {
        close_locked(s);
        if (auto g = state_.slot_freed()) grant_locked(*g);
        return;
    }
    s->state = server_state::idle;
    sync_pause_locked();
    if (auto g = state_.released(s->id, s->worker, s->connect_time, now, true)) grant_locked(*g);
}

// Takes `s` out of the pool and closes it (on its own executor). False if already gone.
bool pool::close_locked(const server_ptr& s) {
    asio::post(s->socket.get_executor(), [s] { s->close(); });
    auto it = std::find(all_.begin(), all_.end(), s);
    if (it == all_.end()) return false;
    all_.erase(it);
    state_.remove_idle(s->id);
    manager_.total_servers--;
    return true;
}

void pool::discard(server_ptr s) {
    std::lock_guard lk(mutex_);
    if (!close_locked(s)) return;  // already discarded
    sync_pause_locked();
    if (auto g = state_.slot_freed()) grant_locked(*g);
}

void pool::retire(const server_ptr& s, bool free_slot) {
    if (free_slot) return discard(s);
    std::lock_guard lk(mutex_);
    close_locked(s);
}

void pool::maintain(bool close_all_idle) {
    std::lock_guard lk(mutex_);
    auto now = steady_clock::now();
    sync_pause_locked();
    std::vector<server_id> victims = state_.expire(now, close_all_idle);
    for (auto& s : all_)  // marked by RECONNECT or a reload of the address
        if (s->close_needed && s->state == server_state::idle && state_.remove_idle(s->id))
            victims.push_back(s->id);
    for (auto id : victims) {
        if (auto s = find_locked(id)) {
            if (settings_.log_disconnections) {
                // PgBouncer's reasons, which operators grep for.
                const auto age = now - s->connect_time;
                const char* why = s->close_needed ? "close_needed (RECONNECT or RELOAD)"
                                  : settings_.server_lifetime.count() > 0 &&
                                          age >= settings_.server_lifetime
                                      ? "server lifetime over"
                                      : "server idle timeout";
                spdlog::info("server {} {}/{}@{}:{} closing because: {} (age={}s)", s->id,
                             database_, user_, s->host(), s->port.load(), why,
                             std::chrono::duration_cast<std::chrono::seconds>(age).count());
            }
            close_locked(s);
            if (auto g = state_.slot_freed()) grant_locked(*g);
        }
    }
    // Waiters may be stuck behind a pause that ended or a limit that rose.
    for (auto& g : state_.match_idle()) grant_locked(g);
}

void pool::restore_defaults(server_connection& s) const {
    std::lock_guard lk(mutex_);
    for (auto& k : settings_.unreported_tracked)
        if (auto it = welcome_.find(k); it != welcome_.end()) s.parameters.set(k, it->second);
}

void pool::close_all_now() {
    std::lock_guard lk(mutex_);
    for (auto& s : all_) s->close();
    state_.expire(steady_clock::now(), true);  // the idle list: every server is gone
    all_.clear();
}

void pool::mark_all_close_needed() {
    {
        std::lock_guard lk(mutex_);
        for (auto& s : all_) s->close_needed = true;
    }
    maintain();
}

std::vector<std::uint64_t> pool::clients_of_close_needed_servers() const {
    std::vector<std::uint64_t> out;
    std::lock_guard lk(mutex_);
    for (auto& s : all_)
        if (s->close_needed && s->state == server_state::active)
            if (auto c = s->link_client_id.load()) out.push_back(c);
    return out;
}

void pool::resume() {
    paused = false;
    std::lock_guard lk(mutex_);
    sync_pause_locked();
    // Idle servers first, then room to connect, as a release or a larger pool_size would.
    for (auto& g : state_.fill_room()) grant_locked(g);
}

pool::snapshot pool::take_snapshot() const {
    std::lock_guard lk(mutex_);
    snapshot snap;
    snap.cl_waiting = int(waiting_.size());
    auto now = steady_clock::now();
    for (auto& [id, w] : waiting_) snap.maxwait = std::max(snap.maxwait, now - w->since);
    for (auto& s : all_) {
        switch (s->state) {
            case server_state::login: snap.sv_login++; break;
            case server_state::idle: snap.sv_idle++; break;
            case server_state::active: snap.sv_active++; break;
            case server_state::used: snap.sv_used++; break;
            case server_state::tested: snap.sv_tested++; break;
        }
    }
    snap.servers = all_;
    return snap;
}

// --- pool_manager ---------------------------------------------------------------------

std::shared_ptr<pool>& pool_manager::get_locked(const std::string& database,
                                                const std::string& user) {
    auto& slot = pools_[{database, user}];
    if (!slot) {
        slot = std::make_shared<pool>(*this, database, user);
        auto s = make_settings_(database, user);
        if (s.auto_database) spdlog::info("registered new auto-database: db={}", database);
        slot->update_settings(std::move(s));
        slot->paused = pause_all_ || paused_dbs_.count(database) > 0;
    }
    return slot;
}

pool& pool_manager::get(const std::string& database, const std::string& user) {
    std::lock_guard lk(mutex_);
    return *get_locked(database, user);
}

std::shared_ptr<pool> pool_manager::attach(const std::string& database, const std::string& user) {
    std::lock_guard lk(mutex_);
    auto p = get_locked(database, user);
    p->clients++;
    return p;
}

bool pool::empty() const {
    std::lock_guard lk(mutex_);
    return all_.empty() && waiting_.empty() && state_.slots() == 0;
}

void pool_manager::free_idle(steady_clock::time_point now) {
    std::vector<std::shared_ptr<pool>> freed;  // destroyed outside the lock
    std::lock_guard lk(mutex_);
    for (auto it = pools_.begin(); it != pools_.end();) {
        auto& p = it->second;
        if (p->clients.load() > 0 || !p->empty()) {
            p->empty_since_.reset();
            ++it;
            continue;
        }
        if (!p->empty_since_) p->empty_since_ = now;
        auto s = p->current_settings();
        auto limit = s.auto_database ? s.autodb_idle_timeout : s.pool_idle_timeout;
        if (limit.count() > 0 && now - *p->empty_since_ >= limit) {
            spdlog::info("cleaning up idle pool: db={} user={}", p->database(), p->user());
            freed.push_back(std::move(p));
            it = pools_.erase(it);
        } else {
            ++it;
        }
    }
}

void pool_manager::pause(const std::string& database) {
    std::lock_guard lk(mutex_);
    if (database.empty()) pause_all_ = true;
    else paused_dbs_.insert(database);
    for (auto& [k, p] : pools_)
        if (database.empty() || k.first == database) p->paused = true;
}

void pool_manager::resume(const std::string& database) {
    std::vector<pool*> woken;
    {
        std::lock_guard lk(mutex_);
        if (database.empty()) {
            pause_all_ = false;
            paused_dbs_.clear();
        } else {
            paused_dbs_.erase(database);
        }
        for (auto& [k, p] : pools_)
            if (!pause_all_ && !paused_dbs_.count(k.first)) woken.push_back(p.get());
    }
    // Outside mutex_: pool::resume takes the pool's own mutex and may post wake-ups.
    for (auto* p : woken)
        if (p->paused.load()) p->resume();
}

bool pool_manager::paused(const std::string& database) const {
    std::lock_guard lk(mutex_);
    return pause_all_ || paused_dbs_.count(database) > 0;
}

std::vector<std::shared_ptr<pool>> pool_manager::all() const {
    std::lock_guard lk(mutex_);
    std::vector<std::shared_ptr<pool>> out;
    for (auto& [k, p] : pools_) out.push_back(p);
    return out;
}

void pool_manager::refresh_settings() {
    for (auto& p : all()) p->update_settings(make_settings_(p->database(), p->user()));
}

int pool_manager::db_limit(const std::string& db) const {
    std::lock_guard lk(limits_mutex_);
    auto it = db_limits_.find(db);
    return it == db_limits_.end() ? default_db_limit_ : it->second;
}

int pool_manager::user_limit(const std::string& user) const {
    std::lock_guard lk(limits_mutex_);
    auto it = user_limits_.find(user);
    return it == user_limits_.end() ? default_user_limit_ : it->second;
}

std::atomic<int>& pool_manager::db_count(const std::string& db) {
    std::lock_guard lk(limits_mutex_);
    auto& slot = db_counts_[db];
    if (!slot) slot = std::make_unique<std::atomic<int>>(0);
    return *slot;
}

std::atomic<int>& pool_manager::user_count(const std::string& user) {
    std::lock_guard lk(limits_mutex_);
    auto& slot = user_counts_[user];
    if (!slot) slot = std::make_unique<std::atomic<int>>(0);
    return *slot;
}

void pool_manager::set_limits(std::map<std::string, int> db_limits,
                              std::map<std::string, int> user_limits, int default_db_limit,
                              int default_user_limit) {
    std::lock_guard lk(limits_mutex_);
    db_limits_ = std::move(db_limits);
    user_limits_ = std::move(user_limits);
    default_db_limit_ = default_db_limit;
    default_user_limit_ = default_user_limit;
    auto positive = [](auto& m) {
        return std::any_of(m.begin(), m.end(), [](auto& kv) { return kv.second > 0; });
    };
    any_shared_limit_ = default_db_limit > 0 || default_user_limit > 0 ||
                        positive(db_limits_) || positive(user_limits_);
}

}  // namespace sluice::pool
