// Limiter decision on the hot path (DESIGN.md 1.5, 5): what every query pays with the
// limiter on. tenant::try_take is one relaxed load plus one compare-and-swap (a GCRA on
// the local backend, the leased-token count on the Redis backend), so it should cost a few
// nanoseconds, also with several threads hitting the same tenant.
//
// The Redis case starts its own redis-server on a free loopback port (when
// /usr/bin/redis-server exists) with limits far above the load, as in production: the
// lease (rate / 20 tokens) is refilled through EVALSHA so rarely that the figure is the
// hot path's.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <future>
#include <thread>

#include "sluice/ratelimit/bucket.hpp"
#include "sluice/ratelimit/limiter.hpp"

namespace {

using namespace sluice;
using namespace sluice::ratelimit;
using namespace std::chrono_literals;

config::rate_limits far_above(config::rl_backend backend, const std::string& url = {}) {
    config::rate_limits cfg;
    cfg.enabled = true;
    cfg.backend = backend;
    cfg.redis_url = url;
    cfg.defaults.queries_per_second = 1e9;
    return cfg;
}

void BM_gcra_take_pure(benchmark::State& state) {
    auto p = gcra_params::from(1e9, 0);
    nanos tat = 0, now = 1'000'000'000;
    for (auto _ : state) {
        auto g = gcra_take(tat, now, p, 1);
        tat = g.tat;
        now += 2;
        benchmark::DoNotOptimize(g);
    }
}
BENCHMARK(BM_gcra_take_pure);

void BM_try_take_unlimited(benchmark::State& state) {
    static asio::io_context ctx;
    static auto lim = [] {
        config::rate_limits cfg;
        cfg.enabled = true;  // limiter on, this tenant without limits
        return make_limiter(cfg, {ctx.get_executor()}, ctx.get_executor());
    }();
    auto t = lim->tenant_for("free");
    for (auto _ : state) benchmark::DoNotOptimize(t->try_take(kind::query));
}
BENCHMARK(BM_try_take_unlimited)->Threads(1)->Threads(2);

void BM_try_take_local(benchmark::State& state) {
    static asio::io_context ctx;
    static auto lim = make_limiter(far_above(config::rl_backend::local), {ctx.get_executor()},
                                   ctx.get_executor());
    auto t = lim->tenant_for("acme");
    for (auto _ : state) benchmark::DoNotOptimize(t->try_take(kind::query));
}
BENCHMARK(BM_try_take_local)->Threads(1)->Threads(2);

// --- Redis backend ---------------------------------------------------------------------

int free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

struct redis_env {
    pid_t pid = -1;
    int port = 0;
    asio::io_context ctx;
    std::unique_ptr<limiter> lim;
    std::thread runner;
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard;

    redis_env() {
        if (::access("/usr/bin/redis-server", X_OK) != 0) return;
        port = free_port();
        pid = ::fork();
        if (pid == 0) {
            int devnull = ::open("/dev/null", O_WRONLY);
            if (devnull >= 0) ::dup2(devnull, 1);
            std::string p = std::to_string(port);
            ::execl("/usr/bin/redis-server", "redis-server", "--port", p.c_str(), "--bind",
                    "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning",
                    "--dir", "/tmp", static_cast<char*>(nullptr));
            ::_exit(127);
        }
        std::this_thread::sleep_for(300ms);
        guard.emplace(ctx.get_executor());
        lim = make_limiter(
            far_above(config::rl_backend::redis, "redis://127.0.0.1:" + std::to_string(port)),
            {ctx.get_executor()}, ctx.get_executor());
        runner = std::thread([this] { ctx.run(); });
        std::this_thread::sleep_for(300ms);  // connected, script loaded
    }
    ~redis_env() {
        lim.reset();
        guard.reset();
        ctx.stop();
        if (runner.joinable()) runner.join();
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
    }
};

redis_env& env() {
    static redis_env e;
    return e;
}

void BM_try_take_redis_lease(benchmark::State& state) {
    auto& e = env();
    if (!e.lim) {
        state.SkipWithError("redis-server not available");
        return;
    }
    auto t = e.lim->tenant_for("acme");
    std::uint64_t refills = 0;
    for (auto _ : state) {
        if (!t->try_take(kind::query)) {
            // The slow path, as the session runs it: a Redis round trip for a new lease.
            ++refills;
            auto f = asio::co_spawn(e.ctx, e.lim->take(t, kind::query, 0), asio::use_future);
            benchmark::DoNotOptimize(f.get());
        }
    }
    state.counters["refills"] = double(refills);
}
BENCHMARK(BM_try_take_redis_lease)->Threads(1)->Threads(2);

}  // namespace
