#pragma once
// auth_user + auth_query: the secret of a user who is not in auth_file, read from
// PostgreSQL (PgBouncer's default query reads pg_authid) on a connection of its own,
// logged in as auth_user.
//
// A login storm must not become a query storm:
//   - a result (found, or "no such role") is kept for auth_cache_ttl;
//   - logins of one user that arrive while its lookup runs wait for that lookup and share
//     its result (one query, whatever the number of waiting clients);
//   - a failed lookup (PostgreSQL down, auth_user refused) is not kept: the next login
//     tries again.
// Entries are bounded: past max_entries, expired ones are dropped before a new one is made.
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "sluice/config/config.hpp"
#include "sluice/net/io.hpp"

namespace sluice::proxy {

class runtime;

class auth_query_cache {
public:
    struct result {
        bool ok = false;                    // the query ran
        std::optional<std::string> secret;  // none: no such login role, or no valid password
        std::string error;                  // why the query did not run
    };

    // `database` is the name the client asked for (its [databases] entry, or "*").
    asio::awaitable<result> lookup(runtime& rt, std::string database, std::string user,
                                   asio::any_io_executor ex);

    static constexpr std::size_t max_entries = 10000;

private:
    struct waiter {
        asio::any_io_executor executor;
        std::shared_ptr<asio::steady_timer> timer;
    };
    struct entry {
        bool pending = true;
        result r;
        steady_clock::time_point expires{};
        std::vector<waiter> waiters;
    };
    asio::awaitable<result> run_query(runtime& rt, std::string database, std::string user,
                                      asio::any_io_executor ex);

    std::mutex mutex_;
    std::unordered_map<std::string, std::shared_ptr<entry>> entries_;
};

}  // namespace sluice::proxy
