// Admission: client connection limits and the rate limiter, at login and per request.
#include "sluice/proxy/client_session.hpp"

#include <algorithm>

#include "sluice/proxy/runtime.hpp"

namespace sluice::proxy {

namespace proto = sluice::protocol;

// At login: max_db_client_connections / max_user_client_connections (clients, not
// servers), then the tenant's connection rate and concurrent connections.
asio::awaitable<bool> client_session::admit_login(const config::config& cfg,
                                                  const config::database& dbcfg,
                                                  const proto::startup_message& startup_msg) {
    const auto& g = cfg.sluice;
    const config::database* db = &dbcfg;
    {
        int db_max = db->max_db_client_connections.value_or(g.max_db_client_connections);
        const config::user* u = cfg.find_user(user());
        int user_max = u && u->max_user_client_connections ? *u->max_user_client_connections
                                                           : g.max_user_client_connections;
        // (Counted for every client, limit or not: a RELOAD may set one later.)
        switch (rt_.client_limits.try_take(database(), user(), db_max, user_max)) {
            case client_counts::verdict::taken:
                client_counted_ = true;
                break;
            case client_counts::verdict::database_full:
                co_await send_error("53300", "too many client connections for database \"" +
                                                 database() + "\" (max_db_client_connections)");
                co_return false;
            case client_counts::verdict::user_full:
                co_await send_error("53300", "too many client connections for user \"" + user() +
                                                 "\" (max_user_client_connections)");
                co_return false;
        }
    }
    if (auto* lim = rt_.limiter.get()) {
        // Rate limits at login: connection attempts per second, then concurrent
        // connections of this tenant.
        tenant_ = lim->tenant_for(
            lim->tenant_name(user(), database(), application_name(), startup_msg.parameters));
        ratelimit::verdict v;
        if (!tenant_->try_take(ratelimit::kind::connection))
            v = co_await lim->take(tenant_, ratelimit::kind::connection, worker_);
        if (!v.allowed) {
            co_await send_error("53400",
                                "connection rate limit exceeded for tenant \"" + tenant_->name() + "\"",
                                "retry after " + std::to_string(std::max<long>(1, v.retry_after.count())) + " ms");
            co_return false;
        }
        if (!tenant_->try_open_connection()) {
            co_await send_error("53300", "too many connections for tenant \"" + tenant_->name() +
                                             "\" (rate_limits max_connections)",
                                "retry after another connection of this tenant closes");
            co_return false;
        }
        tenant_connection_open_ = true;
    }
    co_return true;
}


// Slow path: the local lease ran out (or the transaction token did). `need_xact`: the
// transaction token is still to be taken; the query token always is.
asio::awaitable<ratelimit::verdict> client_session::admit_request(bool need_xact) {
    ratelimit::verdict v;
    auto* lim = rt_.limiter.get();
    if (!lim) co_return v;
    if (need_xact) {
        v = co_await lim->take(tenant_, ratelimit::kind::transaction, worker_);
        if (!v.allowed) co_return v;
    }
    if (!tenant_->try_take(ratelimit::kind::query))
        v = co_await lim->take(tenant_, ratelimit::kind::query, worker_);
    co_return v;
}

}  // namespace sluice::proxy
