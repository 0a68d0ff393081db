#include "sluice/proxy/auth_query.hpp"

#include <spdlog/spdlog.h>

#include "sluice/pool/server_connection.hpp"
#include "sluice/proxy/runtime.hpp"

namespace sluice::proxy {

asio::awaitable<auth_query_cache::result> auth_query_cache::lookup(runtime& rt,
                                                                   std::string database,
                                                                   std::string user,
                                                                   asio::any_io_executor ex) {
    auto cfg = rt.cfg();
    const config::database* db = cfg->find_database(database);
    const std::string key = (db ? db->name : database) + '\0' + user;
    const auto ttl = std::chrono::duration_cast<steady_clock::duration>(cfg->sluice.auth_cache_ttl);

    std::shared_ptr<entry> e;
    std::shared_ptr<asio::steady_timer> wait;
    {
        std::lock_guard lk(mutex_);
        auto now = steady_clock::now();
        auto it = entries_.find(key);
        if (it != entries_.end()) {
            e = it->second;
            if (!e->pending && now < e->expires) co_return e->r;
            if (e->pending) {
                wait = std::make_shared<asio::steady_timer>(ex, steady_clock::time_point::max());
                e->waiters.push_back({ex, wait});
            }
        }
        if (!wait) {
            if (entries_.size() >= max_entries)
                std::erase_if(entries_, [&](auto& kv) { return !kv.second->pending && kv.second->expires <= now; });
            e = std::make_shared<entry>();
            entries_[key] = e;
        }
    }
    if (wait) {
        // Woken (timer cancelled) by the lookup in flight when it finishes; that lookup is
        // bounded by server_connect_timeout, so this wait is too.
        co_await wait->async_wait(use_nothrow);
        std::lock_guard lk(mutex_);
        co_return e->r;
    }

    result r = co_await run_query(rt, database, user, ex);
    std::vector<waiter> waiters;
    {
        std::lock_guard lk(mutex_);
        e->r = r;
        e->pending = false;
        e->expires = steady_clock::now() + (r.ok ? ttl : steady_clock::duration::zero());
        waiters.swap(e->waiters);
    }
    for (auto& w : waiters) asio::post(w.executor, [t = w.timer] { t->cancel(); });
    co_return r;
}

asio::awaitable<auth_query_cache::result> auth_query_cache::run_query(runtime& rt,
                                                                      std::string database,
                                                                      std::string user,
                                                                      asio::any_io_executor ex) {
    result r;
    auto cfg = rt.cfg();
    const auto& g = cfg->sluice;
    const config::database* db = cfg->find_database(database);
    const std::string auth_user = db && !db->auth_user.empty() ? db->auth_user : g.auth_user;
    const std::string query = db && !db->auth_query.empty() ? db->auth_query : g.auth_query;
    const std::string auth_dbname = db && !db->auth_dbname.empty() ? db->auth_dbname : g.auth_dbname;

    // The same address, TLS and timeouts as the pool of auth_user would use; auth_user's
    // password comes from auth_file, as in PgBouncer.
    pool::login_params p = rt.pool_settings(database, auth_user).login;
    if (!auth_dbname.empty()) p.database = auth_dbname;
    auto conn = std::make_shared<pool::server_connection>(ex, 0);
    // Any host of the list will do (a standby can read pg_authid too): the first that
    // lets auth_user in, in the order given.
    bool connected = false;
    for (const auto& host : p.hosts) {
        if (&host != &p.hosts.front()) conn->reset_for_retry();
        connected = co_await conn->connect(p, host);
        // PostgreSQL's refusal of auth_user holds on every host; anything else may not.
        if (connected || (!conn->last_error_transient && conn->last_error_fields)) break;
    }
    if (!connected) {
        r.error = "cannot log in to " + p.database + " as auth_user " + auth_user + ": " +
                  conn->last_error;
        conn->close();
        co_return r;
    }
    std::vector<std::optional<std::string>> row;
    std::vector<std::optional<std::string>> bind_values;
    bind_values.emplace_back(user);
    bool ok = co_await conn->run_internal_query(query, p.max_packet_size, &row, std::move(bind_values));
    conn->close();
    if (!ok) {
        r.error = "query failed: " + conn->last_error;
        co_return r;
    }
    r.ok = true;
    // (rolname, secret): no row = no such login role; a NULL secret = no password, or
    // one past rolvaliduntil. Either way the login fails like a wrong password.
    if (row.size() >= 2 && row[1] && !row[1]->empty()) r.secret = *row[1];
    spdlog::debug("auth_query for user {} in {}: {}", user, p.database,
                  r.secret ? "secret found" : "no such user or no valid password");
    co_return r;
}

}  // namespace sluice::proxy
