#pragma once
// Per (database, user) server pools. Pool limits are global: one pool object is shared by
// every worker thread, guarded by a mutex held only for list operations (never across
// I/O). Servers live on the worker that created them and move to a client's worker when
// handed to it (server_connection::migrate).
//
// Flow of acquire():
//   idle server available (prefer this worker's) -> health check -> hand out
//   else room under pool_size / max_db_connections / max_user_connections -> connect
//   else wait in FIFO order until a release hands a server over, a slot frees up, or
//   query_wait_timeout expires (reserve_pool_size adds room after reserve_pool_timeout).
// park() is the same wait as plain handlers (pool.cpp: "parked waits"), for a client's
// request; acquire() is the coroutine form, for the login and the other waits.
#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <unordered_map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "sluice/config/config.hpp"
#include "sluice/net/deadline_queue.hpp"
#include "sluice/pool/host_state.hpp"
#include "sluice/pool/pool_state.hpp"
#include "sluice/pool/server_connection.hpp"
#include "sluice/stats/histogram.hpp"

namespace sluice::pool {

// Who a client says it is, settled at login. The clients of a pool mostly say the same,
// so they share one copy (pool::intern_identity) instead of holding three strings each.
struct client_identity {
    std::string user, database, application_name;
    bool operator==(const client_identity&) const = default;
};
using shared_identity = std::shared_ptr<const client_identity>;

// One shared copy of each distinct value among those in use (weak references: a value
// nobody holds is forgotten). At most `max` values are shared; past that get() returns an
// unshared copy, which is as correct, only not shared. Not thread-safe: the owner locks.
template <class T, std::size_t max>
class shared_copies {
public:
    std::shared_ptr<const T> get(T v) {
        std::erase_if(copies_, [](auto& w) { return w.expired(); });
        for (auto& w : copies_)
            if (auto c = w.lock(); c && *c == v) return c;
        auto c = std::make_shared<const T>(std::move(v));
        if (copies_.size() < max) copies_.push_back(c);
        return c;
    }

private:
    std::vector<std::weak_ptr<const T>> copies_;
};

// Counters kept per pool, read by SHOW STATS and /metrics. Times are microseconds.
struct pool_stats {
    std::atomic<std::uint64_t> server_assignment_count{0}, xact_count{0}, query_count{0},
        bytes_received{0}, bytes_sent{0}, xact_time_us{0}, query_time_us{0}, wait_time_us{0},
        client_parse_count{0}, server_parse_count{0}, bind_count{0}, client_login_count{0},
        errors_login{0}, errors_server{0}, errors_wait_timeout{0}, errors_client{0};
    // Latency distributions for SHOW LATENCY and /metrics (microseconds).
    stats::histogram query_latency, xact_latency, wait_latency;
};

// The hosts of one database entry and what is known of them (pool/host_state.hpp),
// shared by every pool of the entry: what one user's pool learns (the primary moved, a
// standby lags) serves the others. The runtime makes one per entry and a new one when
// the entry's hosts or target change.
struct host_group {
    host_group(std::vector<std::string> hosts, target_session_attrs target, bool round_robin,
               std::optional<steady_clock::duration> max_lag)
        : names(std::move(hosts)), max_replica_lag(max_lag),
          state(names.size(), target, round_robin) {}
    const std::vector<std::string> names;
    const std::optional<steady_clock::duration> max_replica_lag;  // prefer-standby only
    // Whether a server's role matters after login: several hosts, or a target. A single
    // host with target any (most entries) pays nothing per checkout or release.
    bool watches_roles() const {
        return names.size() > 1 || state.target() != target_session_attrs::any;
    }
    mutable std::mutex mutex;
    host_state state;        // under mutex
    std::string last_error;  // under mutex: why the last host tried was not used
    // Under mutex: why each host was last passed over, and all of it in one line for a
    // client that waited in vain ("no host of the list could be used: A: ...; B: ...").
    std::vector<std::string> host_errors = std::vector<std::string>(names.size());
    void note_failure(std::size_t i, const std::string& why) {
        last_error = why;
        if (i < host_errors.size()) host_errors[i] = why;
    }
    std::string summary() const {
        std::string out = "no host of the list could be used";
        const char* sep = ": ";
        for (const auto& why : host_errors)
            if (!why.empty()) {
                out += sep + why;
                sep = "; ";
            }
        return out;
    }
};

struct acquire_result {
    server_ptr server;
    std::string sqlstate;  // set on failure
    std::string message;
    steady_clock::duration waited{};
};

class pool_manager;

class pool {
public:
    pool(pool_manager& manager, std::string database, std::string user);

    const std::string& database() const { return database_; }
    const std::string& user() const { return user_; }

    // Gets a server for a client running on executor `ex` (worker `worker`).
    // `queued_notice`, if given, is awaited once when the caller has waited
    // query_wait_notify (it sends the client a NOTICE); a grant that comes while it runs
    // is taken when it returns.
    asio::awaitable<acquire_result> acquire(
        asio::any_io_executor ex, int worker,
        const std::function<asio::awaitable<void>()>* queued_notice = nullptr);
    // The same wait without a coroutine (a client's request parks here while it needs a
    // server; the coroutine chain cost more than the rest of the transaction). The outcome
    // is returned at once when there is no wait (an idle server, a free slot); otherwise
    // the client is queued (nullopt) and `wake(ctx, outcome)` runs later on `ex`: once with
    // `notify` while still queued when query_wait_notify passes, and once with the end of
    // the wait. The queue, the grants, the deadlines and the reserve pool are acquire()'s.
    struct park_outcome {
        // checked out (moved to `ex`) by the very handler that delivers this outcome, so
        // its checkout's poll() (nothing to read) still holds there; or none:
        server_ptr server;
        bool round_trips_due = false;   // ... it must still pass check_out_round_trips
        bool slot_held = false;         // connect in the slot the wait won: connect_in_slot()
        bool notify = false;            // still queued: query_wait_notify passed
        std::string sqlstate, message;  // the wait failed (query_wait_timeout)
    };
    using park_wake = void (*)(const std::shared_ptr<void>& ctx, park_outcome outcome);
    // `deadlines`: the queue of `ex`'s io_context (its waits share that context's timer).
    std::optional<park_outcome> park(asio::any_io_executor ex, int worker,
                                     net::deadline_queue& deadlines, park_wake wake,
                                     std::shared_ptr<void> ctx);
    // Opens a server in the slot a parked wait won (slot_held), riding out passing
    // failures until `since` + query_wait_timeout, as acquire() does.
    asio::awaitable<acquire_result> connect_in_slot(asio::any_io_executor ex, int worker,
                                                    steady_clock::time_point since);
    // The checkout that needs no waiting, without a coroutine (the usual case): an idle
    // server when one is there and no one waits before this client, its health checks
    // passed and moved to `ex`. `round_trips_due`: it must still pass
    // check_out_round_trips (server_check_delay, max_replica_lag) before use. No server:
    // nothing changed, acquire() takes it from there.
    struct quick_checkout {
        server_ptr server;
        bool round_trips_due = false;
    };
    quick_checkout try_acquire_now(asio::any_io_executor ex, int worker);
    // The checks that need a round trip; false: the server was dropped and its slot is
    // still held (release_slot() gives it back).
    asio::awaitable<bool> check_out_round_trips(server_ptr s);
    void release_slot();
    // Gives back a server that is idle and clean. Any thread.
    void release(server_ptr s);
    // Drops a server that must not be reused (dirty, broken, close_needed). Any thread.
    void discard(server_ptr s);

    // Settings derived from the configuration; refreshed on RELOAD.
    struct settings {
        config::pool_mode mode = config::pool_mode::session;
        int pool_size = 20;
        int min_pool_size = 0;
        int reserve_pool_size = 0;
        steady_clock::duration reserve_pool_timeout = std::chrono::seconds(5);
        steady_clock::duration query_wait_timeout = std::chrono::seconds(120);
        // query_wait_notify: a client queued this long is told so, once (0 = never).
        steady_clock::duration query_wait_notify = std::chrono::seconds(5);
        steady_clock::duration server_lifetime = std::chrono::seconds(3600);
        steady_clock::duration server_idle_timeout = std::chrono::seconds(600);
        steady_clock::duration server_login_retry = std::chrono::seconds(15);
        steady_clock::duration server_check_delay = std::chrono::seconds(30);
        std::string server_check_query;
        // log_connections / log_disconnections: "new connection to server" and the
        // servers' "closing because:" lines (PgBouncer's words).
        bool log_connections = true, log_disconnections = true;
        bool server_round_robin = false;
        // The database's connect_query: run on each new server connection after login,
        // before any client gets it; an error is logged and the server used anyway.
        std::string connect_query;
        login_params login;
        // Which of login.hosts a new connection goes to (null: the hosts in order, any role).
        std::shared_ptr<host_group> hosts;
        // Tracked parameters PostgreSQL does not report (search_path, ...): their
        // defaults are read once from the first server and assumed for every new one.
        std::vector<std::string> unreported_tracked;
        // Freeing the pool object once it has no client and no server: after
        // autodb_idle_timeout for a database created through the "*" entry, after
        // pool_idle_timeout (0 = never) for any other.
        bool auto_database = false;
        steady_clock::duration autodb_idle_timeout = std::chrono::seconds(3600);
        steady_clock::duration pool_idle_timeout{0};
    };
    settings current_settings() const;
    void update_settings(settings s);

    // The ParameterStatus values a fresh server reports, for welcoming clients without a
    // server round trip. Empty until the first server login.
    std::map<std::string, std::string> welcome_parameters() const;
    // One shared copy of each distinct client parameter set (server_parameters.hpp):
    // clients with the same parameters share it, and a server made to match one of them
    // matches them all. At most max_interned sets are shared; past that a set is
    // returned unshared, which is as correct, only not shared.
    shared_params intern_parameters(param_set p);
    static constexpr std::size_t max_interned = 64;
    // The same for client identities. (With application_name_add_host every identity is
    // distinct: the caller keeps its own copy rather than fill the table with them.)
    shared_identity intern_identity(client_identity id);
    // SCRAM keys learnt from a client's login (pass-through when only a verifier is known).
    void learn_scram_keys(std::vector<std::uint8_t> client_key,
                          std::vector<std::uint8_t> server_key);
    bool has_scram_keys() const;
    // A secret read by auth_query (md5 or plaintext) for logging in this pool's user when
    // auth_file has none.
    void learn_secret(std::string secret);

    // Closes idle servers past server_idle_timeout / server_lifetime, and (if
    // `close_all_idle`) every idle one. Called periodically from any thread.
    void maintain(bool close_all_idle = false);
    // min_pool_size: true while the pool has fewer servers than it should keep open;
    // warm_up opens one (and parks it idle).
    bool wants_servers() const;
    asio::awaitable<void> warm_up(asio::any_io_executor ex, int worker);
    // After a reset query: the server's unreported parameters are back to the defaults.
    void restore_defaults(server_connection& s) const;
    // Marks every server to be closed when released (RECONNECT, reload of the address).
    void mark_all_close_needed();
    // The clients holding a server marked close_needed (server_fast_close looks for them).
    std::vector<std::uint64_t> clients_of_close_needed_servers() const;
    // Process exit, after the workers stopped: closes every server here and now.
    void close_all_now();
    // RESUME: unpauses and wakes waiters, handing them idle servers or room to connect.
    void resume();

    // Snapshot for SHOW POOLS / SERVERS.
    struct snapshot {
        int cl_waiting = 0;
        int sv_active = 0, sv_idle = 0, sv_used = 0, sv_login = 0, sv_tested = 0;
        steady_clock::duration maxwait{};
        std::vector<server_ptr> servers;
    };
    snapshot take_snapshot() const;
    // True while the pool has no server and no waiter (clients are counted apart).
    bool empty() const;

    std::atomic<int> clients{0};         // clients logged in to this pool
    std::atomic<int> active_clients{0};  // clients linked to a server right now
    std::atomic<bool> paused{false};
    pool_stats stats;

private:
    friend class pool_manager;
    // A parked waiter is its own entry in its worker's deadline_queue.
    struct waiter : net::deadline_queue::entry {
        waiter(asio::any_io_executor ex, waiter_id id, steady_clock::time_point since)
            : executor(ex), id(id), since(since) {}
        std::optional<asio::steady_timer> timer;  // acquire()'s (a coroutine's) wait
        asio::any_io_executor executor;
        waiter_id id;
        steady_clock::time_point since;  // when the wait began
        server_ptr server;         // granted: a server handed over
        bool may_connect = false;  // granted: a slot to open a new connection in
        bool done = false;
        // Parked (pool::park): no coroutine waits; the deadline entry's handlers deliver the
        // outcome to `wake` on `executor`.
        park_wake wake = nullptr;
        std::shared_ptr<void> ctx;
        pool* owner = nullptr;
        net::deadline_queue* deadlines = nullptr;
        std::shared_ptr<waiter> keep;  // itself, while in `deadlines` (which holds a pointer)
        std::shared_ptr<const settings> snapshot;
        int worker = 0;
        bool notify_due = false;   // query_wait_notify still to come
        bool delivered = false;    // the end of the wait went to `wake`
    };
    // When a waiter looks again: the first of query_wait_timeout, reserve_pool_timeout,
    // query_wait_notify (if `notify`), and a periodic look.
    steady_clock::time_point next_wake(const settings& cfg, steady_clock::time_point start,
                                       bool notify) const;
    // A waiter looks again (its timer or deadline came): under mutex_. `s`: the server it got.
    enum class wait_step { server, connect, timed_out, wait };
    wait_step look_again_locked(waiter& w, const settings& cfg, steady_clock::time_point start,
                                server_ptr& s);
    // Parked waiters: queue the deadline, its handler, the end of the wait (on w's executor).
    void arm_parked(const std::shared_ptr<waiter>& w);
    static void on_parked_deadline(net::deadline_queue::entry& e, bool dropped) noexcept;
    void on_parked_timer(const std::shared_ptr<waiter>& w);
    static void unqueue_parked(waiter& w) noexcept;  // (the caller holds w)
    void end_parked(const std::shared_ptr<waiter>& w);
    void deliver_parked(const std::shared_ptr<waiter>& w, park_outcome out);
    void fail_parked(const std::shared_ptr<waiter>& w, const std::exception& e) noexcept;
    // check_out_now for a server a wait got: into `out` (moved from `s`), or dropped (then
    // `out` says connect in its slot). `s` keeps the server should this throw.
    void hand_out(server_ptr& s, const asio::any_io_executor& ex, int worker,
                  const settings& cfg, park_outcome& out);
    // max_db_connections / max_user_connections, as the core sees them.
    struct shared : shared_limits {
        explicit shared(pool& p) : owner(p) {}
        bool try_take() override;
        void give_back() override;
        pool& owner;
    };
    static pool_limits limits_of(const settings& s);
    void sync_pause_locked();
    server_ptr find_locked(server_id id) const;
    void grant_locked(const grant& g);
    bool close_locked(const server_ptr& s);
    // Closes `s`; its slot goes to the next waiter, or (free_slot false) stays with the
    // caller, which connects in it.
    void retire(const server_ptr& s, bool free_slot);
    // Opens a server in a slot the caller holds. Until `wait_until` (a client's
    // query_wait_timeout), failures that may pass (hosts down, no host fits the target,
    // PostgreSQL starting up) are waited out: the hosts are tried again as
    // server_login_retry allows, so a client between transactions rides out a restart or
    // a failover. Without it (min_pool_size) one round of the hosts is tried.
    asio::awaitable<acquire_result> open_server(
        asio::any_io_executor ex, int worker,
        std::optional<steady_clock::time_point> wait_until = std::nullopt);
    // One round of the plan: connect, log in, judge. True with `s` logged in to a host
    // that fits; false with s.last_error (and last_error_transient) set.
    asio::awaitable<bool> connect_to_a_host(server_connection& s, const login_params& login,
                                            host_group& group, steady_clock::duration retry);
    // The server's role after login: ParameterStatus, or a query to a server too old to
    // report in_hot_standby. nullopt if it could not be read (the server is unusable).
    asio::awaitable<std::optional<server_role>> read_role(server_connection& s,
                                                          target_session_attrs target,
                                                          std::size_t max_packet);
    // prefer-standby with max_replica_lag: whether this standby's replay lags more.
    asio::awaitable<bool> lags(server_connection& s, steady_clock::duration max_lag,
                               std::size_t max_packet, bool& failed);
    // Health check and move to the client's worker, first the steps that need no round
    // trip (dropped: retired, its slot still held), then, when due, those that do.
    enum class check_verdict { usable, dropped, round_trips_due };
    check_verdict check_out_now(const server_ptr& s, const asio::any_io_executor& ex, int worker,
                                const settings& cfg);
    asio::awaitable<bool> check_out_round_trips(server_ptr s, const settings& cfg);
    static bool check_due(const server_connection& s, const settings& cfg,
                          steady_clock::time_point now);
    static bool lag_check_due(const server_connection& s, const settings& cfg,
                              steady_clock::time_point now);

    pool_manager& manager_;
    std::string database_, user_;
    mutable std::mutex mutex_;
    settings settings_;
    std::shared_ptr<const settings> snapshot_;  // settings_, immutable, for checkouts
    shared shared_;
    pool_state state_;                      // slots, idle list, waiters: the decisions
    std::vector<server_ptr> all_;           // every open or connecting server
    // (from the worker's free lists: a wait costs no malloc, see exact_allocator)
    std::unordered_map<waiter_id, std::shared_ptr<waiter>, std::hash<waiter_id>,
                       std::equal_to<waiter_id>,
                       exact_allocator<std::pair<const waiter_id, std::shared_ptr<waiter>>>>
        waiting_;
    waiter_id next_waiter_ = 0;
    std::map<std::string, std::string> welcome_;
    shared_copies<param_set, max_interned> interned_;
    shared_copies<client_identity, max_interned> identities_;
    std::vector<std::uint8_t> scram_client_key_, scram_server_key_;
    std::string learnt_secret_;
    steady_clock::time_point login_failed_at_{};
    std::optional<steady_clock::time_point> empty_since_;  // under the manager's mutex
    std::string login_failed_error_, login_failed_sqlstate_;
};

// Owns every pool and the global counters behind max_db_connections and
// max_user_connections.
class pool_manager {
public:
    using settings_fn = std::function<pool::settings(const std::string& db, const std::string& user)>;
    explicit pool_manager(settings_fn make_settings) : make_settings_(std::move(make_settings)) {}

    pool& get(const std::string& database, const std::string& user);
    // The pool a client logs in to: counted in `clients` under the manager's lock, so that
    // free_idle() never frees a pool a client is about to use.
    std::shared_ptr<pool> attach(const std::string& database, const std::string& user);
    std::vector<std::shared_ptr<pool>> all() const;
    // Frees pools with no client, no server and no waiter for longer than their
    // autodb_idle_timeout / pool_idle_timeout. Holders of a shared_ptr keep theirs alive.
    void free_idle(steady_clock::time_point now);

    // PAUSE / RESUME (console, signals): an empty name means every database. Pools
    // created while a pause is in effect start paused.
    void pause(const std::string& database);
    void resume(const std::string& database);
    bool paused(const std::string& database) const;
    void refresh_settings();  // after RELOAD

    // Ids of client and server connections come from this one counter, so that an id
    // in SHOW CLIENTS / SHOW SERVERS and in the log names one connection (as PgBouncer).
    std::uint64_t next_connection_id() { return ++connection_ids_; }
    std::atomic<int> total_servers{0};

    // Limits shared by the pools of one database / one user (0 = none). Guarded by the
    // pools' own mutexes only loosely: counts are atomics, checked before opening.
    int db_limit(const std::string& db) const;
    int user_limit(const std::string& user) const;
    std::atomic<int>& db_count(const std::string& db);
    std::atomic<int>& user_count(const std::string& user);
    // Per-name limits, and the general section's values for names without their own.
    // False when no max_db_connections / max_user_connections is set anywhere: a waiter
    // then has no shared limit to look at (no lock, no lookup per wait).
    bool any_shared_limit() const { return any_shared_limit_.load(std::memory_order_relaxed); }
    void set_limits(std::map<std::string, int> db_limits, std::map<std::string, int> user_limits,
                    int default_db_limit, int default_user_limit);

private:
    settings_fn make_settings_;
    mutable std::mutex mutex_;         // pools_; taken before a pool's own mutex
    mutable std::mutex limits_mutex_;  // the maps below; taken after a pool's mutex
    std::shared_ptr<pool>& get_locked(const std::string& database, const std::string& user);
    std::map<std::pair<std::string, std::string>, std::shared_ptr<pool>> pools_;
    bool pause_all_ = false;              // under mutex_
    std::set<std::string> paused_dbs_;    // under mutex_
    std::map<std::string, std::unique_ptr<std::atomic<int>>> db_counts_, user_counts_;
    std::map<std::string, int> db_limits_, user_limits_;
    int default_db_limit_ = 0, default_user_limit_ = 0;
    std::atomic<bool> any_shared_limit_{false};  // any of the above > 0: waiters poll them
    std::atomic<std::uint64_t> connection_ids_{0};
};

}  // namespace sluice::pool
