#include "sluice/pool/pool.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace sluice::pool {

pool::pool(pool_manager& manager, std::string database, std::string user)
    : manager_(manager), database_(std::move(database)), user_(std::move(user)) {}

pool::settings pool::current_settings() const {
    std::lock_guard lk(mutex_);
    return settings_;
}

void pool::update_settings(settings s) {
    std::vector<std::shared_ptr<waiter>> woken;
    {
        std::lock_guard lk(mutex_);
        bool address_changed = s.login.hosts != settings_.login.hosts ||
                               s.login.port != settings_.login.port ||
                               s.login.database != settings_.login.database ||
                               s.login.user != settings_.login.user;
        settings_ = std::move(s);
        if (address_changed)
            for (auto& srv : all_) srv->close_needed = true;
        // A larger pool_size lets waiting clients open connections now.
        while (!waiters_.empty() && room_locked(false)) {
            auto w = waiters_.front();
            waiters_.pop_front();
            ++total_;
            w->may_connect = true;
            wake_locked(w);
        }
    }
}

std::map<std::string, std::string> pool::welcome_parameters() const {
    std::lock_guard lk(mutex_);
    return welcome_;
}

void pool::learn_scram_keys(std::vector<std::uint8_t> client_key,
                            std::vector<std::uint8_t> server_key) {
    std::lock_guard lk(mutex_);
    scram_client_key_ = std::move(client_key);
    scram_server_key_ = std::move(server_key);
}

bool pool::has_scram_keys() const {
    std::lock_guard lk(mutex_);
    return !scram_client_key_.empty();
}

bool pool::room_locked(bool reserve) const {
    int limit = settings_.pool_size + (reserve ? settings_.reserve_pool_size : 0);
    if (total_ >= limit) return false;
    int db_max = manager_.db_limit(database_);
    if (db_max > 0 && manager_.db_count(database_).load() >= db_max) return false;
    int user_max = manager_.user_limit(user_);
    if (user_max > 0 && manager_.user_count(user_).load() >= user_max) return false;
    return true;
}

void pool::wake_locked(const std::shared_ptr<waiter>& w) {
    w->done = true;
    // The waiter's coroutine runs on its own worker; the timer is touched only there.
    asio::post(w->executor, [w] { w->timer.cancel(); });
}

asio::awaitable<acquire_result> pool::acquire(asio::any_io_executor ex, int worker) {
    const auto start = steady_clock::now();
    std::shared_ptr<waiter> w;
    settings cfg;
    for (;;) {
        server_ptr s;
        bool open = false;
        {
            std::lock_guard lk(mutex_);
            cfg = settings_;
            if (!paused.load() && !idle_.empty()) {
                // Prefer a server already on this worker: no socket migration needed.
                auto it = std::find_if(idle_.rbegin(), idle_.rend(),
                                       [&](const server_ptr& p) { return p->worker == worker; });
                auto pos = it != idle_.rend() ? std::prev(it.base()) : std::prev(idle_.end());
                s = *pos;
                idle_.erase(pos);
                s->state = server_state::active;
            } else if (!paused.load() && room_locked(false)) {
                ++total_;
                manager_.db_count(database_)++;
                manager_.user_count(user_)++;
                open = true;
            } else {
                w = std::make_shared<waiter>(ex);
                waiters_.push_back(w);
            }
        }
        if (s) {
            // (the result is stored first: gcc 12 mishandles co_await inside conditions)
            bool usable = co_await check_out(s, ex, worker, cfg);
            if (!usable) continue;
            co_return acquire_result{s, {}, {}, steady_clock::now() - start};
        }
        if (open) {
            auto r = co_await open_server(ex, worker);
            r.waited = steady_clock::now() - start;
            co_return r;
        }
        break;
    }

    // Wait in line. Woken by release() (a server), discard() (room to connect), RESUME or
    // a pool_size increase; or by our own deadlines.
    const auto deadline = start + cfg.query_wait_timeout;
    const auto reserve_at = start + cfg.reserve_pool_timeout;
    for (;;) {
        auto wake = deadline;
        if (cfg.reserve_pool_size > 0 && reserve_at < wake && steady_clock::now() < reserve_at)
            wake = reserve_at;
        // Limits shared with other pools (max_db_connections, max_user_connections) free
        // up without telling us; look again now and then. Otherwise look again every
        // second anyway: a missed wake-up then costs a second, never query_wait_timeout.
        if (manager_.db_limit(database_) > 0 || manager_.user_limit(user_) > 0)
            wake = std::min(wake, steady_clock::now() + std::chrono::milliseconds(100));
        else
            wake = std::min(wake, steady_clock::now() + std::chrono::seconds(1));
        w->timer.expires_at(wake);
        co_await w->timer.async_wait(use_nothrow);

        server_ptr s;
        bool open = false;
        {
            std::lock_guard lk(mutex_);
            if (w->done) {
                s = std::move(w->server);
                open = w->may_connect;
            } else {
                auto now = steady_clock::now();
                bool reserve = cfg.reserve_pool_size > 0 && now >= reserve_at;
                if (!paused.load() && room_locked(reserve)) {
                    ++total_;
                    manager_.db_count(database_)++;
                    manager_.user_count(user_)++;
                    open = true;
                } else if (now >= deadline) {
                    waiters_.erase(std::remove(waiters_.begin(), waiters_.end(), w),
                                   waiters_.end());
                    stats.errors_wait_timeout++;
                    co_return acquire_result{
                        nullptr, "53300",
                        "query_wait_timeout: no server connection became free in time",
                        now - start};
                } else {
                    continue;
                }
                waiters_.erase(std::remove(waiters_.begin(), waiters_.end(), w), waiters_.end());
            }
        }
        if (s) {
            bool usable = co_await check_out(s, ex, worker, cfg);
            if (usable) co_return acquire_result{s, {}, {}, steady_clock::now() - start};
            // It was broken; our turn came, so take the slot it freed.
            std::lock_guard lk(mutex_);
            ++total_;
            manager_.db_count(database_)++;
            manager_.user_count(user_)++;
            open = true;
        }
        if (open) {
            auto r = co_await open_server(ex, worker);
            r.waited = steady_clock::now() - start;
            co_return r;
        }
    }
}

asio::awaitable<bool> pool::check_out(server_ptr s, asio::any_io_executor ex, int worker,
                                       const settings& cfg) {
    // A server handed to a client has no unread bytes: an idle server has nothing to say,
    // so anything readable (EOF after pg_terminate_backend or a restart, a FATAL, a
    // NOTIFY for a LISTEN a former client left behind) means it is not fit to hand out.
    // One poll() per checkout; trusting a recently used server let such bytes reach the
    // next client.
    if (!s->buffer.empty() || s->broken_while_idle()) {
        spdlog::info("server {} of {}/{} closed or spoke while idle; dropping it", s->id,
                     database_, user_);
        discard(s);
        co_return false;
    }
    s->migrate(ex);
    s->worker = worker;
    // server_check_delay: a server idle for longer is tested before it is handed out
    // (server_check_query; empty = an empty query, one cheap round trip).
    if (cfg.server_check_delay.count() >= 0 &&
        steady_clock::now() - s->last_used > cfg.server_check_delay) {
        s->state = server_state::tested;
        std::string check = cfg.server_check_query;
        bool alive = co_await s->run_internal_query(std::move(check), cfg.login.max_packet_size);
        if (!alive) {
            spdlog::info("server {} of {}/{} failed server_check_query: {}", s->id, database_,
                         user_, s->last_error);
            discard(s);
            co_return false;
        }
        s->state = server_state::active;
    }
    s->last_used = steady_clock::now();
    stats.server_assignment_count++;
    co_return true;
}

bool pool::wants_servers() const {
    std::lock_guard lk(mutex_);
    return total_ < settings_.min_pool_size && total_ < settings_.pool_size &&
           (login_failed_error_.empty() ||
            steady_clock::now() - login_failed_at_ >= settings_.server_login_retry);
}

asio::awaitable<void> pool::warm_up(asio::any_io_executor ex, int worker) {
    {
        std::lock_guard lk(mutex_);
        if (total_ >= settings_.min_pool_size || !room_locked(false)) co_return;
        ++total_;
        manager_.db_count(database_)++;
        manager_.user_count(user_)++;
    }
    auto r = co_await open_server(ex, worker);
    if (r.server) {
        stats.server_assignment_count--;  // opened for the pool, not for a client
        release(r.server);
    }
}

asio::awaitable<acquire_result> pool::open_server(asio::any_io_executor ex, int worker) {
    auto s = std::make_shared<server_connection>(ex, manager_.next_server_id());
    s->owner = this;
    s->worker = worker;
    login_params login;
    std::vector<std::string> unreported;  // tracked parameters to read from a first server
    {
        std::lock_guard lk(mutex_);
        auto now = steady_clock::now();
        if (!login_failed_error_.empty() && now - login_failed_at_ < settings_.server_login_retry) {
            // As PgBouncer: while logins are failing, do not hammer the server; tell the
            // client why right away. The slot it was given goes to the next waiter, which
            // hears the same (a slot kept by nobody left waiters stuck after a restart).
            --total_;
            manager_.db_count(database_)--;
            manager_.user_count(user_)--;
            give_room_to_waiter_locked();
            co_return acquire_result{nullptr, login_failed_sqlstate_,
                                     "server login has been failing, try again later "
                                     "(server_login_retry): " + login_failed_error_};
        }
        login = settings_.login;
        unreported = settings_.unreported_tracked;
        if (login.scram_client_key.empty()) {
            login.scram_client_key = scram_client_key_;
            login.scram_server_key = scram_server_key_;
        }
        all_.push_back(s);
    }
    manager_.total_servers++;
    bool ok = co_await s->connect(login);
    if (!ok) {
        spdlog::warn("server login for {}/{} failed: {}", database_, user_, s->last_error);
        std::string sqlstate = "08006";
        // PostgreSQL's own refusals (bad password, unknown database, too many
        // connections) are passed on with their SQLSTATE.
        if (s->last_error_fields && !s->last_error_fields->sqlstate.empty())
            sqlstate = s->last_error_fields->sqlstate;
        {
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
    {
        std::lock_guard lk(mutex_);
        login_failed_error_.clear();
        first = welcome_.empty();
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
                if (row[i]) s->parameters[unreported[i]] = *row[i];
    }
    {
        std::lock_guard lk(mutex_);
        if (welcome_.empty()) welcome_ = s->parameters;
        else
            for (auto& k : settings_.unreported_tracked)
                if (auto it = welcome_.find(k); it != welcome_.end()) s->parameters[k] = it->second;
        s->state = server_state::active;
    }
    spdlog::debug("new server connection {} to {}:{} for {}/{}", s->id, s->host(), s->port.load(),
                  database_, user_);
    stats.server_assignment_count++;
    co_return acquire_result{s, {}, {}};
}

void pool::release(server_ptr s) {
    auto now = steady_clock::now();
    s->last_used = now;
    s->link_client_id = 0;
    std::unique_lock lk(mutex_);
    if (s->close_needed || !s->socket.is_open() ||
        (settings_.server_lifetime.count() > 0 && now - s->connect_time > settings_.server_lifetime)) {
        lk.unlock();
        discard(std::move(s));
        return;
    }
    if (!paused.load() && !waiters_.empty()) {
        auto w = waiters_.front();
        waiters_.pop_front();
        s->state = server_state::active;
        w->server = std::move(s);
        wake_locked(w);
        return;
    }
    s->state = server_state::idle;
    idle_.push_back(std::move(s));
}

void pool::discard(server_ptr s) {
    asio::post(s->socket.get_executor(), [s] { s->close(); });
    std::lock_guard lk(mutex_);
    auto it = std::find(all_.begin(), all_.end(), s);
    if (it == all_.end()) return;  // already discarded
    all_.erase(it);
    idle_.erase(std::remove(idle_.begin(), idle_.end(), s), idle_.end());
    server_gone_locked();
}

void pool::server_gone_locked() {
    --total_;
    manager_.db_count(database_)--;
    manager_.user_count(user_)--;
    manager_.total_servers--;
    give_room_to_waiter_locked();
}

void pool::give_room_to_waiter_locked() {
    if (!paused.load() && !waiters_.empty() && room_locked(false)) {
        auto w = waiters_.front();
        waiters_.pop_front();
        ++total_;
        manager_.db_count(database_)++;
        manager_.user_count(user_)++;
        w->may_connect = true;
        wake_locked(w);
    }
}

void pool::maintain(bool close_all_idle) {
    std::vector<server_ptr> victims;
    {
        std::lock_guard lk(mutex_);
        auto now = steady_clock::now();
        for (auto& s : idle_) {
            bool idle_too_long = settings_.server_idle_timeout.count() > 0 &&
                                 now - s->last_used > settings_.server_idle_timeout;
            bool too_old = settings_.server_lifetime.count() > 0 &&
                           now - s->connect_time > settings_.server_lifetime;
            if (close_all_idle || idle_too_long || too_old || s->close_needed)
                victims.push_back(s);
        }
        // Waiters may be stuck behind a pause that ended or a limit that rose.
        while (!paused.load() && !waiters_.empty() && !idle_.empty()) {
            auto w = waiters_.front();
            waiters_.pop_front();
            auto s = idle_.back();
            idle_.pop_back();
            s->state = server_state::active;
            w->server = s;
            wake_locked(w);
        }
    }
    for (auto& s : victims) {
        spdlog::debug("closing idle server {} of {}/{}", s->id, database_, user_);
        discard(s);
    }
}

void pool::restore_defaults(server_connection& s) const {
    std::lock_guard lk(mutex_);
    for (auto& k : settings_.unreported_tracked)
        if (auto it = welcome_.find(k); it != welcome_.end()) s.parameters[k] = it->second;
}

void pool::close_all_now() {
    std::lock_guard lk(mutex_);
    for (auto& s : all_) s->close();
    idle_.clear();
    all_.clear();
}

void pool::mark_all_close_needed() {
    {
        std::lock_guard lk(mutex_);
        for (auto& s : all_) s->close_needed = true;
    }
    maintain();
}

void pool::resume() {
    paused = false;
    maintain();  // hands idle servers to waiters first
    std::lock_guard lk(mutex_);
    // Waiters left with no idle server to take get room to connect, as a release or a
    // larger pool_size would give them.
    while (!waiters_.empty() && idle_.empty() && room_locked(false)) {
        auto w = waiters_.front();
        waiters_.pop_front();
        ++total_;
        manager_.db_count(database_)++;
        manager_.user_count(user_)++;
        w->may_connect = true;
        wake_locked(w);
    }
}

pool::snapshot pool::take_snapshot() const {
    std::lock_guard lk(mutex_);
    snapshot snap;
    snap.cl_waiting = int(waiters_.size());
    auto now = steady_clock::now();
    for (auto& w : waiters_) snap.maxwait = std::max(snap.maxwait, now - w->since);
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

pool& pool_manager::get(const std::string& database, const std::string& user) {
    std::lock_guard lk(mutex_);
    auto& slot = pools_[{database, user}];
    if (!slot) {
        slot = std::make_unique<pool>(*this, database, user);
        slot->update_settings(make_settings_(database, user));
        slot->paused = pause_all_ || paused_dbs_.count(database) > 0;
    }
    return *slot;
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

std::vector<pool*> pool_manager::all() const {
    std::lock_guard lk(mutex_);
    std::vector<pool*> out;
    for (auto& [k, p] : pools_) out.push_back(p.get());
    return out;
}

void pool_manager::refresh_settings() {
    for (auto* p : all()) p->update_settings(make_settings_(p->database(), p->user()));
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
}

}  // namespace sluice::pool
