#pragma once
// Process-wide state shared by every worker: the running configuration and auth file
// (swapped atomically on RELOAD), the pools, the registry of client sessions (for cancel
// requests and SHOW CLIENTS), and the process state (paused, shutting down).
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <spdlog/spdlog.h>

#include "sluice/auth/hba.hpp"
#include "sluice/auth/userlist.hpp"
#include "sluice/config/config.hpp"
#include "sluice/net/deadline_queue.hpp"
#include "sluice/net/io.hpp"
#include "sluice/net/tls.hpp"
#include "sluice/pool/pool.hpp"
#include "sluice/proxy/auth_query.hpp"
#include "sluice/proxy/prepared.hpp"
#include "sluice/ratelimit/limiter.hpp"

namespace sluice::proxy {

class client_session;

// Sessions by the cancel key Sluice handed out. A hash map: cancel lookup is O(1)
// whatever the number of clients (PgBouncer scans a list). Lookups by id are rare (admin
// commands, the janitor) and scan: a second map would cost every idle client a node and a
// bucket (about 56 bytes).
class session_registry {
public:
    // False (and nothing added) if another live session holds the same cancel key: the
    // caller draws a new one (it has not been handed to the client yet).
    bool add(const std::shared_ptr<client_session>& s);
    void remove(const client_session& s);
    std::shared_ptr<client_session> find_by_key(std::uint32_t pid, std::uint32_t key) const;
    std::shared_ptr<client_session> find_by_id(std::uint64_t id) const;
    // Several at once, in one scan: those found, in no particular order.
    std::vector<std::shared_ptr<client_session>> find_by_ids(std::vector<std::uint64_t> ids) const;
    std::vector<std::shared_ptr<client_session>> all() const;
    std::size_t size() const;

private:
    static std::uint64_t key_of(std::uint32_t pid, std::uint32_t key) {
        return (std::uint64_t(pid) << 32) | key;
    }
    // Sessions by cancel key. Not owning: a session removes itself before it is gone (its
    // destructor at the latest), and a shared_ptr is taken under the mutex only from a
    // session not being destroyed (weak_from_this). A node is 24 bytes (a weak_ptr made it
    // 40, one more malloc size class per idle client).
    mutable std::mutex mutex_;
    std::unordered_map<std::uint64_t, client_session*> by_key_;
};

// Logged-in clients per database and per user, for max_db_client_connections and
// max_user_client_connections. Taken at login under one mutex, so that logins running at
// the same time on several workers cannot all pass a limit (counting the sessions
// instead let both of two concurrent logins in); given back when the client leaves.
class client_counts {
public:
    enum class verdict { taken, database_full, user_full };
    // A limit of 0 is none. Nothing is taken unless `taken`.
    verdict try_take(const std::string& database, const std::string& user, int database_max,
                     int user_max);
    void give_back(const std::string& database, const std::string& user);

private:
    std::mutex mutex_;
    std::map<std::string, int, std::less<>> by_database_, by_user_;
};

// auth_hba_file and auth_ident_file, parsed; replaced as a whole on RELOAD.
struct auth_rules {
    std::shared_ptr<const auth::hba_file> hba;  // null unless auth_type is hba
    std::shared_ptr<const auth::ident_map> ident;  // empty map when no auth_ident_file
};
// Reads and parses both files named in `g`. Null, with every problem in `error` as
// FILE:LINE:COL: message, if one cannot be read or does not parse.
std::shared_ptr<const auth_rules> load_auth_rules(const config::general& g, std::string& error);

class runtime {
public:
    runtime(config::config cfg, auth::userlist users);

    std::shared_ptr<const config::config> cfg() const;
    std::shared_ptr<const auth::userlist> users() const;
    // TLS contexts for both sides, rebuilt with the configuration (RELOAD, SET).
    std::shared_ptr<const net::tls_config> tls() const;
    std::shared_ptr<const auth_rules> rules() const;
    // Reads the configuration file and auth file again. On any error the running
    // configuration stays and `errors` says why.
    bool reload(std::string& errors);
    // Console SET: applies `change` to a copy of the running configuration, swaps it in
    // and refreshes pool settings and limits, as a successful RELOAD does.
    void update_config(const std::function<void(config::config&)>& change);

    // SIGHUP reopens the log file (logrotate moves it away first); set by main().
    std::function<void()> reopen_log;

    // (Before the pools, so destroyed after them: a session a pool still holds (a parked
    // request) leaves the registry when the pool lets it go.)
    session_registry sessions;
    client_counts client_limits;
    pool::pool_manager pools;
    auth_query_cache auth_queries;  // auth_user + auth_query lookups
    std::unique_ptr<ratelimit::limiter> limiter;  // null when rate_limits is off

    std::vector<asio::any_io_executor> workers;
    // Each worker's deadline_queue (the waits of parked requests), by worker index; set
    // with `workers`. deadlines_of() finds the queue of an executor not listed there.
    std::vector<net::deadline_queue*> deadlines;
    net::deadline_queue& deadlines_of(int worker, const asio::any_io_executor& ex) {
        if (worker >= 0 && std::size_t(worker) < deadlines.size()) return *deadlines[worker];
        return asio::use_service<net::deadline_queue>(to_io_executor(ex).context());
    }
    std::atomic<int> client_count{0};  // client sessions accepted and not yet ended
    // Set by net::server: a client session ended (any worker thread, once per session).
    std::function<void()> client_ended;
    std::atomic<bool> accepting{true};
    std::atomic<bool> paused{false};      // PAUSE / SUSPEND: no new server assignments
    // A shutdown (signal or SHUTDOWN) is in progress: the console refuses commands
    // other than SHOW and SHUTDOWN with 08P01 "pooler is shutting down", as PgBouncer.
    std::atomic<bool> shutting_down{false};
    // Background coroutines (accept, signals, janitor, warm-up, cancels) that ended with an
    // exception: each is logged, counted here and, if it must keep running, restarted.
    std::atomic<std::uint64_t> task_failures{0};
    // A completion handler for co_spawn that logs and counts a failure of `what`.
    static std::string exception_text(std::exception_ptr e) {
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            return ex.what();
        } catch (...) {
            return "unknown exception";
        }
    }
    auto log_failure(const char* what) {
        return [this, what](std::exception_ptr e) {
            if (!e) return;
            task_failures++;
            spdlog::error("{} failed: {}", what, exception_text(e));
        };
    }
    steady_clock::time_point started = steady_clock::now();

    // Set by net::server: SHUTDOWN from the console. 0 = now, 1 = when servers are
    // released (WAIT_FOR_SERVERS), 2 = when clients are gone (WAIT_FOR_CLIENTS).
    std::function<void(int)> request_shutdown;

    // DISABLE / ENABLE: new clients of a disabled database are refused.
    bool database_disabled(const std::string& db) const;
    void set_database_disabled(const std::string& db, bool disabled);

    // Extra Prometheus text appended to /metrics (whole families, e.g. the rate
    // limiter's). Set once at start-up, before net::server runs; called on the main
    // executor.
    std::function<std::string()> extra_metrics;

    pool::pool::settings pool_settings(const std::string& db, const std::string& user) const;
    // The hosts of database entry `db` and what is known of them, shared by its pools; a
    // new group when the entry's hosts, target or balancing change (RELOAD).
    std::shared_ptr<pool::host_group> host_group_for(const std::string& db,
                                                     const config::database& entry) const;

private:
    void apply_limits(const config::config& c);
    mutable std::shared_mutex mutex_;
    std::set<std::string> disabled_;
    std::shared_ptr<const config::config> cfg_;
    std::shared_ptr<const auth::userlist> users_;
    std::shared_ptr<const net::tls_config> tls_;
    std::shared_ptr<const auth_rules> rules_;
    mutable std::mutex hosts_mutex_;
    struct host_group_entry {
        config::database from;  // the entry it was made for
        std::shared_ptr<pool::host_group> group;
    };
    mutable std::map<std::string, host_group_entry> host_groups_;  // under hosts_mutex_
};

}  // namespace sluice::proxy
