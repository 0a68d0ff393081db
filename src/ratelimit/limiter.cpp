// The limiter service: tenants, the local and Redis backends, the failure policies and
// action: delay. Pure arithmetic lives in bucket_state.cpp / breaker_state.cpp.
//
// Hot path (tenant::try_take): one relaxed load of the limit, then either one
// compare-and-swap on the local GCRA (backend: local) or one on the leased token count
// (backend: redis). No lock, no clock read on the Redis path.
//
// Slow path (limiter::take), backend redis:
//   leased token left?                -> allowed
//   a denial cached for this tenant?  -> rejected (or, with delay, sleep and look again)
//   EVALSHA on the worker's connection, asking for a lease of `lease_size` tokens
//     (only one refill per tenant and kind is in flight per instance; concurrent callers
//     ask for exactly one token, so leases never pile up)
//     granted g > 0  -> one used now, g-1 kept for the hot path
//     granted 0      -> denial cached for the retry time Redis returned
//   Redis down, breaker open, timeout -> on_redis_failure: local (GCRA at rate /
//     expected_instances), open (allow), closed (reject, retry after 1 s).
//
// Over-admission bound (backend redis). Every token admitted was granted by the Lua
// script against the one global budget, so the only excess comes from tokens granted in
// an earlier window and spent in a later one: at most one unspent lease per tenant, kind
// and instance, i.e. in any window a tenant gets at most
//     limit + lease_size x instances
// tokens (burst included in `limit`), plus whatever the failure policy admits while Redis
// is unreachable (local: rate / expected_instances per instance; open: everything).
// lease_size defaults to max(1, rate / 20) (about 50 ms of budget) capped at the burst.
#include "sluice/ratelimit/limiter.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <array>
#include <cmath>
#include <map>
#include <mutex>
#include <stdexcept>

#include "sluice/config/loader.hpp"
#include "sluice/ratelimit/bucket.hpp"
#include "sluice/redis/connection.hpp"

namespace sluice::ratelimit {

namespace {

constexpr int kind_count = 3;
const char* const kind_names[kind_count] = {"query", "transaction", "connection"};
constexpr char kind_letters[kind_count] = {'q', 't', 'c'};
constexpr nanos closed_retry = 1'000'000'000;  // on_redis_failure: closed hint

nanos now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               steady_clock::now().time_since_epoch())
        .count();
}

std::chrono::milliseconds to_retry_ms(nanos ns) {
    auto ms = (std::max<nanos>(ns, 1) + 999'999) / 1'000'000;
    return std::chrono::milliseconds(ms);
}

struct kind_state {
    std::atomic<nanos> interval{0}, tolerance{0};              // the tenant's limit
    std::atomic<nanos> share_interval{0}, share_tolerance{0};  // on_redis_failure: local
    std::atomic<std::int64_t> lease_size{1};
    atomic_gcra local;     // backend: local
    atomic_gcra fallback;  // Redis unreachable, policy local
    lease leased;
    std::atomic<bool> refilling{false};
    std::atomic<nanos> denied_until{0};
    std::atomic<std::uint64_t> allowed{0}, rejected{0}, delayed{0};

    gcra_params params() const {
        return {interval.load(std::memory_order_relaxed),
                tolerance.load(std::memory_order_relaxed)};
    }
    gcra_params share() const {
        return {share_interval.load(std::memory_order_relaxed),
                share_tolerance.load(std::memory_order_relaxed)};
    }
    void set(const gcra_params& p, const gcra_params& s, std::int64_t lease_n) {
        interval.store(p.interval, std::memory_order_relaxed);
        tolerance.store(p.tolerance, std::memory_order_relaxed);
        share_interval.store(s.interval, std::memory_order_relaxed);
        share_tolerance.store(s.tolerance, std::memory_order_relaxed);
        lease_size.store(lease_n, std::memory_order_relaxed);
    }
};

class tenant_impl final : public tenant {
  public:
    tenant_impl(std::string name, bool redis_backend)
        : name_(std::move(name)), redis_backend_(redis_backend) {
        for (int k = 0; k < kind_count; ++k) keys_[k] = bucket_key(name_, kind_letters[k]);
    }

    bool try_take(kind k) override {
        kind_state& s = k_[int(k)];
        nanos iv = s.interval.load(std::memory_order_relaxed);
        if (iv <= 0) {
            s.allowed.fetch_add(1, std::memory_order_relaxed);
            return true;
        }
        if (redis_backend_) {
            if (!s.leased.try_take()) return false;
            s.allowed.fetch_add(1, std::memory_order_relaxed);
            return true;
        }
        auto g = s.local.take(now_ns(), s.params(), 1);
        if (g.granted == 0) return false;  // take() decides: reject, delay or shadow
        s.allowed.fetch_add(1, std::memory_order_relaxed);
        return true;
    }

    bool try_open_connection() override {
        int max = max_connections_.load(std::memory_order_relaxed);
        int n = connections_.load(std::memory_order_relaxed);
        for (;;) {
            if (max > 0 && n >= max && !shadow_.load(std::memory_order_relaxed)) {
                connections_refused_.fetch_add(1, std::memory_order_relaxed);
                return false;
            }
            if (connections_.compare_exchange_weak(n, n + 1, std::memory_order_acq_rel,
                                                   std::memory_order_relaxed)) {
                if (max > 0 && n >= max) connections_refused_.fetch_add(1);  // shadow
                return true;
            }
        }
    }
    void close_connection() override { connections_.fetch_sub(1, std::memory_order_acq_rel); }
    const std::string& name() const override { return name_; }

    void apply(const config::rate_limit& l, const config::rate_limits& all) {
        const double rates[kind_count] = {l.queries_per_second, l.transactions_per_second,
                                          l.connections_per_second};
        const double bursts[kind_count] = {l.query_burst, l.transaction_burst, l.connection_burst};
        for (int k = 0; k < kind_count; ++k) {
            auto p = gcra_params::from(rates[k], bursts[k]);
            auto s = gcra_params::from(rates[k], bursts[k], std::max(1, all.expected_instances));
            bool changed = !(p == k_[k].params());
            k_[k].set(p, s, lease_size_for(rates[k], bursts[k], all.lease_size));
            if (changed) {
                // New limits take effect now: tokens leased under the old ones are dropped.
                k_[k].leased.drain();
                k_[k].denied_until.store(0, std::memory_order_relaxed);
            }
        }
        max_connections_.store(l.max_connections, std::memory_order_relaxed);
        shadow_.store(l.shadow, std::memory_order_relaxed);
        delay_.store(l.action == config::rl_action::delay, std::memory_order_relaxed);
        max_delay_.store(std::chrono::duration_cast<std::chrono::nanoseconds>(l.max_delay).count(),
                         std::memory_order_relaxed);
        limits_ = l;
    }

    std::string name_;
    std::array<std::string, kind_count> keys_;
    bool redis_backend_;
    std::array<kind_state, kind_count> k_;
    std::atomic<int> max_connections_{0}, connections_{0};
    std::atomic<std::uint64_t> connections_refused_{0};
    std::atomic<bool> shadow_{false}, delay_{false};
    std::atomic<nanos> max_delay_{0};
    bool configured_ = false;  // named in rate_limits.tenants (never pruned)
    // Guarded by the limiter's mutex.
    config::rate_limit limits_;
    std::uint64_t rate_last_count_ = 0;
    nanos rate_last_time_ = now_ns();
    double rate_ = 0;
};

// Result of one attempt at a token.
struct attempt {
    bool allowed = false;
    nanos wait = 0;  // allowed: sleep this long first (delay); refused: retry hint
};

class limiter_impl final : public limiter {
  public:
    limiter_impl(const config::rate_limits& cfg, std::vector<asio::any_io_executor> workers,
                 asio::any_io_executor main)
        : cfg_(cfg), redis_(cfg.backend == config::rl_backend::redis) {
        policy_.store(cfg.on_redis_failure);
        if (!redis_) return;
        redis::connection_settings s;
        if (!cfg.redis_url.empty()) {
            auto ep = config::parse_redis_url(cfg.redis_url);
            if (!ep) throw std::runtime_error("rate_limits.redis_url: cannot parse the URL");
            s.endpoint = *ep;
        }
        // Behind Sentinel the address comes from the sentinels (redis_url, if given, keeps
        // the credentials, db and TLS; the loader made sure its host is the master's name).
        for (const auto& text : cfg.redis_sentinels) {
            auto hp = config::parse_host_port(text);
            if (!hp) throw std::runtime_error("rate_limits.redis_sentinels: cannot parse " + text);
            s.sentinel.sentinels.push_back({hp->host, hp->port});
        }
        s.sentinel.master = cfg.redis_sentinel_master;
        s.sentinel.password = cfg.redis_sentinel_password;
        script_ = gcra_lua;
        sha_ = script_sha1(script_);
        auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(cfg.redis_timeout);
        if (timeout.count() <= 0) timeout = std::chrono::milliseconds(50);
        s.timeout = timeout;
        s.connect_timeout = std::max(std::chrono::milliseconds(500), timeout * 4);
        s.on_connect.push_back(redis::encode_command({"SCRIPT", "LOAD", script_}));
        if (workers.empty()) workers.push_back(main);
        for (auto& ex : workers) {
            auto c = std::make_shared<redis::connection>(ex, s);
            c->start();
            conns_.push_back(std::move(c));
        }
    }

    ~limiter_impl() override {
        for (auto& c : conns_) asio::post(c->executor(), [c] { c->stop(); });
    }

    std::string tenant_name(
        const std::string& user, const std::string& database, const std::string& application_name,
        const std::vector<std::pair<std::string, std::string>>& params) const override {
        std::string key;
        {
            std::lock_guard lk(mutex_);
            key = cfg_.tenant_key;
        }
        if (key == "user") return user;
        if (key == "database") return database;
        if (key == "application_name") return application_name;
        if (key.rfind("startup:", 0) == 0) {
            std::string_view param = std::string_view(key).substr(8);
            for (auto& [k, v] : params)
                if (k == param) return v;
        }
        return {};
    }

    std::shared_ptr<tenant> tenant_for(const std::string& name) override {
        std::lock_guard lk(mutex_);
        auto it = tenants_.find(name);
        if (it != tenants_.end()) return it->second;
        // tenant_key may be client-chosen (application_name): forget tenants nobody uses
        // so a client cannot grow this map without bound.
        if (tenants_.size() >= 10000) prune_locked();
        auto t = std::make_shared<tenant_impl>(name, redis_);
        auto o = cfg_.tenants.find(name);
        t->configured_ = o != cfg_.tenants.end();
        t->apply(t->configured_ ? o->second : cfg_.defaults, cfg_);
        tenants_.emplace(name, t);
        return t;
    }

    asio::awaitable<verdict> take(std::shared_ptr<tenant> base, kind k, int worker) override {
        auto t = std::static_pointer_cast<tenant_impl>(base);
        kind_state& s = t->k_[int(k)];
        verdict v;
        if (s.params().unlimited()) {
            s.allowed.fetch_add(1, std::memory_order_relaxed);
            co_return v;
        }
        const bool shadow = t->shadow_.load(std::memory_order_relaxed);
        const bool delay = !shadow && t->delay_.load(std::memory_order_relaxed);
        const nanos start = now_ns();
        const nanos deadline = start + (delay ? t->max_delay_.load(std::memory_order_relaxed) : 0);
        auto ex = co_await asio::this_coro::executor;
        bool slept = false;
        for (;;) {
            nanos now = now_ns();
            // (No co_await inside ?: -- gcc 12 miscompiles it.)
            attempt a;
            if (redis_)
                a = co_await attempt_redis(t, s, int(k), worker, now, deadline, ex);
            else
                a = attempt_local(s.local, s.params(), now, deadline, delay);
            if (a.allowed) {
                if (a.wait > 0) {
                    co_await sleep(ex, a.wait);
                    slept = true;
                }
                v.delayed = slept;
                s.allowed.fetch_add(1, std::memory_order_relaxed);
                if (v.delayed) s.delayed.fetch_add(1, std::memory_order_relaxed);
                co_return v;
            }
            now = now_ns();
            if (delay && a.wait > 0 && now + a.wait <= deadline) {
                co_await sleep(ex, a.wait);
                slept = true;
                continue;
            }
            s.rejected.fetch_add(1, std::memory_order_relaxed);
            if (shadow) co_return v;  // counted, never enforced
            v.allowed = false;
            v.retry_after = to_retry_ms(a.wait);
            co_return v;
        }
    }

    void reload(const config::rate_limits& cfg) override {
        std::lock_guard lk(mutex_);
        if (cfg.backend != cfg_.backend || cfg.redis_url != cfg_.redis_url ||
            cfg.redis_sentinels != cfg_.redis_sentinels ||
            cfg.redis_sentinel_master != cfg_.redis_sentinel_master ||
            cfg.redis_sentinel_password != cfg_.redis_sentinel_password)
            spdlog::warn(
                "rate_limits: a new backend, redis_url or redis_sentinel* takes effect at "
                "restart; the new limits apply now");
        // Where Redis is stays as it was started: the connections were built from it.
        auto kept = cfg_;
        cfg_ = cfg;
        cfg_.backend = kept.backend;
        cfg_.redis_url = kept.redis_url;
        cfg_.redis_sentinels = kept.redis_sentinels;
        cfg_.redis_sentinel_master = kept.redis_sentinel_master;
        cfg_.redis_sentinel_password = kept.redis_sentinel_password;
        policy_.store(cfg.on_redis_failure);
        for (auto& [name, t] : tenants_) {
            auto o = cfg_.tenants.find(name);
            t->configured_ = o != cfg_.tenants.end();
            t->apply(t->configured_ ? o->second : cfg_.defaults, cfg_);
        }
    }

    std::vector<tenant_stats> snapshot() const override {
        std::lock_guard lk(mutex_);
        std::vector<tenant_stats> out;
        out.reserve(tenants_.size());
        std::string m = mode();
        nanos now = now_ns();
        for (auto& [name, t] : tenants_) {
            tenant_stats r;
            r.tenant = name;
            const auto& l = t->limits_;
            r.queries_per_second = l.queries_per_second;
            r.transactions_per_second = l.transactions_per_second;
            r.connections_per_second = l.connections_per_second;
            r.max_connections = l.max_connections;
            r.current_connections = t->connections_.load(std::memory_order_relaxed);
            for (auto& s : t->k_) {
                r.allowed += s.allowed.load(std::memory_order_relaxed);
                r.rejected += s.rejected.load(std::memory_order_relaxed);
                r.delayed += s.delayed.load(std::memory_order_relaxed);
            }
            // Rate of allowed queries over the last interval of at least a second
            // between snapshots (the first one: since the tenant appeared).
            std::uint64_t q = t->k_[0].allowed.load(std::memory_order_relaxed);
            nanos dt = now - t->rate_last_time_;
            if (dt >= 1'000'000'000 || t->rate_last_count_ == 0) {
                if (dt > 0) t->rate_ = double(q - t->rate_last_count_) * 1e9 / double(dt);
                t->rate_last_count_ = q;
                t->rate_last_time_ = now;
            }
            r.current_rate = t->rate_;
            r.mode = t->limits_.shadow ? m + " (shadow)" : m;
            out.push_back(std::move(r));
        }
        return out;
    }

    std::string metrics_text() const override {
        std::lock_guard lk(mutex_);
        std::string out;
        auto counter = [&](const char* metric, const char* help, auto get) {
            out += fmt::format("# HELP {} {}\n# TYPE {} counter\n", metric, help, metric);
            for (auto& [name, t] : tenants_)
                for (int k = 0; k < kind_count; ++k)
                    out += fmt::format("{}{{tenant=\"{}\",kind=\"{}\"}} {}\n", metric,
                                       escape_label(name), kind_names[k], get(t->k_[k]));
        };
        counter("sluice_ratelimit_allowed_total", "Requests admitted by the rate limiter.",
                [](const kind_state& s) { return s.allowed.load(std::memory_order_relaxed); });
        counter("sluice_ratelimit_rejected_total",
                "Requests over the limit (answered 53400; counted only, with shadow).",
                [](const kind_state& s) { return s.rejected.load(std::memory_order_relaxed); });
        counter("sluice_ratelimit_delayed_total", "Requests admitted after waiting (delay).",
                [](const kind_state& s) { return s.delayed.load(std::memory_order_relaxed); });
        out +=
            "# HELP sluice_ratelimit_connections Client connections per tenant.\n"
            "# TYPE sluice_ratelimit_connections gauge\n";
        for (auto& [name, t] : tenants_)
            out += fmt::format("sluice_ratelimit_connections{{tenant=\"{}\"}} {}\n",
                               escape_label(name), t->connections_.load());
        out +=
            "# HELP sluice_ratelimit_connections_refused_total Logins refused by "
            "max_connections.\n# TYPE sluice_ratelimit_connections_refused_total counter\n";
        for (auto& [name, t] : tenants_)
            out += fmt::format("sluice_ratelimit_connections_refused_total{{tenant=\"{}\"}} {}\n",
                               escape_label(name), t->connections_refused_.load());
        if (redis_) {
            std::size_t healthy = 0;
            std::uint64_t errors = 0;
            for (auto& c : conns_) {
                healthy += c->healthy();
                errors += c->errors();
            }
            out += fmt::format(
                "# HELP sluice_ratelimit_redis_up 1 when every worker's Redis connection is "
                "up and its breaker closed.\n# TYPE sluice_ratelimit_redis_up gauge\n"
                "sluice_ratelimit_redis_up {}\n"
                "# HELP sluice_ratelimit_redis_connections_healthy Workers whose Redis "
                "connection is usable.\n# TYPE sluice_ratelimit_redis_connections_healthy gauge\n"
                "sluice_ratelimit_redis_connections_healthy {}\n"
                "# HELP sluice_ratelimit_redis_errors_total Redis requests that failed or timed "
                "out.\n# TYPE sluice_ratelimit_redis_errors_total counter\n"
                "sluice_ratelimit_redis_errors_total {}\n",
                healthy == conns_.size() ? 1 : 0, healthy, errors);
            // Which Redis the workers are connected to: behind Sentinel, the current
            // master (during a failover two addresses may show for a moment).
            std::map<std::string, int> at;
            for (auto& c : conns_)
                if (auto a = c->master_address(); !a.empty()) ++at[a];
            out +=
                "# HELP sluice_ratelimit_redis_master Workers connected to each Redis address "
                "(behind Sentinel: the master).\n# TYPE sluice_ratelimit_redis_master gauge\n";
            for (auto& [a, n] : at)
                out += fmt::format("sluice_ratelimit_redis_master{{address=\"{}\"}} {}\n",
                                   escape_label(a), n);
        }
        out += fmt::format(
            "# HELP sluice_ratelimit_mode 1 for the mode in effect.\n"
            "# TYPE sluice_ratelimit_mode gauge\n"
            "sluice_ratelimit_mode{{mode=\"{}\"}} 1\n",
            mode());
        return out;
    }

  private:
    static std::string escape_label(const std::string& s) {
        std::string o;
        for (char c : s) {
            if (c == '\\' || c == '"') o += '\\';
            if (c == '\n') {
                o += "\\n";
                continue;
            }
            o += c;
        }
        return o;
    }

    // redis: global enforcement in effect; otherwise the on_redis_failure policy's name.
    std::string mode() const {
        if (!redis_) return "local";
        for (auto& c : conns_)
            if (!c->healthy()) return config::to_string(cfg_.on_redis_failure);
        return "redis";
    }

    void prune_locked() {
        for (auto it = tenants_.begin(); it != tenants_.end();) {
            if (it->second.use_count() == 1 && !it->second->configured_)
                it = tenants_.erase(it);
            else
                ++it;
        }
    }

    static asio::awaitable<void> sleep(asio::any_io_executor ex, nanos ns) {
        asio::steady_timer timer(ex);
        timer.expires_after(std::chrono::nanoseconds(ns));
        co_await timer.async_wait(use_nothrow);
    }

    static attempt attempt_local(atomic_gcra& bucket, const gcra_params& p, nanos now,
                                 nanos deadline, bool delay) {
        if (delay) {
            auto r = bucket.reserve(now, p, std::max<nanos>(0, deadline - now));
            return {r.admitted, r.wait};
        }
        auto g = bucket.take(now, p, 1);
        if (g.granted > 0) return {true, 0};
        return {false, g.retry_after};
    }

    // One attempt through Redis, or the failure policy when Redis cannot answer.
    asio::awaitable<attempt> attempt_redis(std::shared_ptr<tenant_impl> t, kind_state& s, int k,
                                           int worker, nanos now, nanos deadline,
                                           asio::any_io_executor ex) {
        if (s.leased.try_take()) co_return attempt{true, 0};
        nanos denied = s.denied_until.load(std::memory_order_relaxed);
        if (now < denied) co_return attempt{false, denied - now};

        auto p = s.params();
        bool leader = !s.refilling.exchange(true, std::memory_order_acq_rel);
        std::int64_t want = leader ? s.lease_size.load(std::memory_order_relaxed) : 1;
        auto& conn = conns_[std::size_t(worker < 0 ? 0 : worker) % conns_.size()];
        // (Commands are built outside the co_await expressions: gcc 12 miscompiles braced
        // initializer lists there.)
        std::string cmd = eval_command(true, t->keys_[k], p, want);
        auto r = co_await exec(conn, std::move(cmd), ex);
        if (!r.first && r.second.is_error() && r.second.str.rfind("NOSCRIPT", 0) == 0) {
            // Redis lost its script cache (restart, SCRIPT FLUSH): EVAL loads it again.
            std::string full = eval_command(false, t->keys_[k], p, want);
            r = co_await exec(conn, std::move(full), ex);
        }
        if (leader) s.refilling.store(false, std::memory_order_release);
        const auto& v = r.second;
        if (!r.first && v.t == redis::value::type::array && v.elements.size() == 2 &&
            v.elements[0].t == redis::value::type::integer &&
            v.elements[1].t == redis::value::type::integer) {
            std::int64_t granted = v.elements[0].integer;
            nanos retry = v.elements[1].integer * 1'000'000;
            if (granted > 0) {
                s.leased.add(granted - 1);
                co_return attempt{true, 0};
            }
            nanos until = now_ns() + std::max<nanos>(retry, 1'000'000);
            s.denied_until.store(until, std::memory_order_relaxed);
            co_return attempt{false, until - now};
        }
        // Redis unreachable, too slow, or answering errors: the failure policy, at once.
        switch (cfg_policy()) {
            case config::rl_failure_policy::open:
                co_return attempt{true, 0};
            case config::rl_failure_policy::closed:
                co_return attempt{false, closed_retry};
            case config::rl_failure_policy::local:
                break;
        }
        bool delay = deadline > now;
        co_return attempt_local(s.fallback, s.share(), now_ns(), deadline, delay);
    }

    std::string eval_command(bool by_sha, const std::string& key, const gcra_params& p,
                             std::int64_t want) const {
        std::string interval_us = fmt::format("{:.3f}", double(p.interval) / 1e3);
        std::string tolerance_us = fmt::format("{:.3f}", double(p.tolerance) / 1e3);
        std::string n = std::to_string(want);
        std::vector<std::string_view> args{by_sha ? "EVALSHA" : "EVAL",
                                           by_sha ? std::string_view(sha_) : script_,
                                           "1",
                                           key,
                                           interval_us,
                                           tolerance_us,
                                           n};
        return redis::encode_command(args);
    }

    config::rl_failure_policy cfg_policy() const { return policy_.load(std::memory_order_relaxed); }

    // Runs the request on the connection's executor (the worker's own, normally).
    static asio::awaitable<std::pair<error_code, redis::value>> exec(
        std::shared_ptr<redis::connection> conn, std::string cmd, asio::any_io_executor ex) {
        if (conn->executor() == ex) co_return co_await conn->exec(std::move(cmd));
        co_return co_await asio::co_spawn(conn->executor(), conn->exec(std::move(cmd)),
                                          asio::use_awaitable);
    }

    mutable std::mutex mutex_;
    config::rate_limits cfg_;
    const bool redis_;
    std::atomic<config::rl_failure_policy> policy_{config::rl_failure_policy::local};
    std::map<std::string, std::shared_ptr<tenant_impl>> tenants_;
    std::vector<std::shared_ptr<redis::connection>> conns_;
    std::string script_, sha_;
};

}  // namespace

std::unique_ptr<limiter> make_limiter(const config::rate_limits& cfg,
                                      std::vector<asio::any_io_executor> workers,
                                      asio::any_io_executor main) {
    if (!cfg.enabled) return nullptr;
    return std::make_unique<limiter_impl>(cfg, std::move(workers), main);
}

}  // namespace sluice::ratelimit
