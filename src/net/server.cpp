#include "sluice/net/server.hpp"

#include <spdlog/spdlog.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <filesystem>
#include <future>
#include <memory>
#include <utility>

#include "sluice/admin/console.hpp"
#include "sluice/net/deadline_queue.hpp"
#include "sluice/net/service.hpp"
#include "sluice/proxy/client_session.hpp"
#include "sluice/ratelimit/limiter.hpp"

namespace sluice::net {

using namespace std::chrono_literals;
using acceptor_t = stream_acceptor;

server::server(proxy::runtime& rt) : rt_(rt), signals_(main_) {  // NOLINT(order)
    // Caught from here on, before start-up is reported (READY=1, a daemon's parent
    // exiting): a SIGHUP right after `systemctl start` must reload, not kill.
    for (int sig : {SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2}) signals_.add(sig);
    int n = rt_.cfg()->sluice.workers;
    if (n <= 0) n = default_workers();
    spdlog::info("{} worker thread{}{}", n, n == 1 ? "" : "s",
                 rt_.cfg()->sluice.workers <= 0 ? " (workers: 0, half the usable cores)" : "");
    for (int i = 0; i < n; ++i) {
        // One thread per io_context: sessions and their servers need no locks.
        workers_.push_back(std::make_unique<asio::io_context>(1));
        guards_.push_back(asio::make_work_guard(*workers_.back()));
        rt_.workers.push_back(workers_.back()->get_executor());
        rt_.deadlines.push_back(&asio::use_service<net::deadline_queue>(*workers_.back()));
    }
}

int default_workers() {
    // Half the cores this process may run on (its affinity mask: taskset, cgroup cpusets),
    // at least one. A pooler shares its machine with PostgreSQL or the application in the
    // usual deployment; measured on 2 cores, one event loop does the same work for 10-15%
    // less CPU than two, which spend it sleeping and waking each other (bench/README.md).
    cpu_set_t set;
    int cores = 0;
    if (sched_getaffinity(0, sizeof set, &set) == 0) cores = CPU_COUNT(&set);
    if (cores <= 0) cores = int(std::thread::hardware_concurrency());
    return std::max(1, cores / 2);
}

server::~server() {
    for (auto& g : guards_) g.reset();
    for (auto& w : workers_) w->stop();
    for (auto& t : threads_)
        if (t.joinable()) t.join();
}

bool server::open_listeners() {
    auto cfg = rt_.cfg();
    const auto& g = cfg->sluice;
    bool ok = true;
    // `optional`: the IPv6 half of `*`, which a host without IPv6 cannot bind (a warning,
    // not a failure, as long as the IPv4 half listens).
    auto listen = [&](asio::generic::stream_protocol::endpoint ep, const std::string& what,
                      bool optional = false) {
        auto acc = std::make_unique<acceptor_t>(accept_context());
        error_code ec;
        acc->open(ep.protocol(), ec);
        if (!ec && ep.protocol().family() != AF_UNIX)
            acc->set_option(asio::socket_base::reuse_address(true), ec);
        if (!ec && ep.protocol().family() == AF_INET6) {
            // [::] takes IPv6 only: 0.0.0.0 has its own socket on the same port.
            int one = 1;
            if (::setsockopt(acc->native_handle(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0)
                ec = error_code(errno, asio::error::get_system_category());
        }
        if (!ec && g.so_reuseport) {
            int one = 1;
            ::setsockopt(acc->native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        }
        if (!ec) acc->bind(ep, ec);
        if (!ec) acc->listen(g.listen_backlog, ec);
        if (ec && optional) {
            spdlog::warn("not listening on {}: {}", what, ec.message());
            return;
        }
        if (ec) {
            spdlog::error("cannot listen on {}: {}", what, ec.message());
            ok = false;
            return;
        }
        spdlog::info("listening on {}", what);
        acceptors_.push_back(std::move(acc));
    };
    for (const auto& a : g.listen_addr) {
        std::vector<asio::ip::address> addrs;
        const bool any = a == "*";
        if (any) {
            // Every address, IPv4 and IPv6, as PgBouncer's `*`.
            addrs = {asio::ip::address_v4::any(), asio::ip::address_v6::any()};
        } else {
            error_code ec;
            auto addr = asio::ip::make_address(a, ec);
            if (ec) {
                asio::ip::tcp::resolver r(main_);
                auto res = r.resolve(a, std::to_string(g.listen_port), ec);
                if (ec) {
                    spdlog::error("cannot resolve listen_addr {}: {}", a, ec.message());
                    ok = false;
                    continue;
                }
                for (auto& e : res) addrs.push_back(e.endpoint().address());
            } else {
                addrs.push_back(addr);
            }
        }
        for (auto& addr : addrs) {
            asio::ip::tcp::endpoint ep(addr, std::uint16_t(g.listen_port));
            std::string shown = addr.is_v6() ? "[" + addr.to_string() + "]" : addr.to_string();
            listen({ep.data(), ep.size()}, shown + ":" + std::to_string(g.listen_port),
                   any && addr.is_v6());
        }
    }
    if (!g.unix_socket_dir.empty()) {
        unix_socket_path_ = g.unix_socket_dir + "/.s.PGSQL." + std::to_string(g.listen_port);
        std::error_code fs_ec;
        std::filesystem::remove(unix_socket_path_, fs_ec);  // stale socket of a dead process
        asio::local::stream_protocol::endpoint ep(unix_socket_path_);
        listen({ep.data(), ep.size()}, unix_socket_path_);
        ::chmod(unix_socket_path_.c_str(), mode_t(g.unix_socket_mode));
    }
    return ok && !acceptors_.empty();
}

void server::close_listeners() {
    // Closed, not destroyed: an accept loop may still resume (a wait that completed just
    // before) and must find its acceptor, closed. They go with the server.
    if (listeners_closed_ || acceptors_.empty()) return;
    listeners_closed_ = true;
    rt_.accepting = false;
    auto close_all = [this] {
        for (auto& a : acceptors_) {
            error_code ignored;
            a->close(ignored);
        }
    };
    bool confirmed = true;
    if (accept_on_worker() && !threads_.empty()) {
        // The acceptors belong to the worker's io_context: closed on its thread, and
        // waited for (the main loop, signals and janitor included, waits too), so that no
        // connection is taken once this returns. It is called before the workers are
        // stopped. A worker that does not answer within the bound (it is stuck: it takes
        // no connection either) leaves them to be closed with the server.
        auto done = std::make_shared<std::promise<void>>();
        auto closed = done->get_future();
        asio::post(*workers_[0], [close_all, done] {
            close_all();
            done->set_value();
        });
        confirmed = closed.wait_for(10s) == std::future_status::ready;
    } else {
        close_all();
    }
    if (!unix_socket_path_.empty()) {
        error_code ignored;
        std::filesystem::remove(unix_socket_path_, ignored);
    }
    if (confirmed)
        spdlog::info("listeners closed: no new connections");
    else
        spdlog::warn("listeners: the worker did not close them within 10 s; new connections "
                     "are refused (57P01) until they close");
}

// An accepted descriptor on its way to a worker: closed if it never gets there (a handler
// destroyed unrun at shutdown).
struct accepted_fd {
    int fd = -1;
    explicit accepted_fd(int f) : fd(f) {}
    accepted_fd(accepted_fd&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
    accepted_fd& operator=(accepted_fd&&) = delete;
    ~accepted_fd() {
        if (fd >= 0) ::close(fd);
    }
    int release() { return std::exchange(fd, -1); }
};

namespace {

// Connections taken off one listen queue per wake-up, at most (then other work runs).
constexpr int max_accepts_per_wake = 64;

// accept(2) errors that concern the one connection, not the listener: take the next. (The
// network errors are those accept(2) says to treat as EAGAIN, and Asio retries EPROTO.)
bool connection_error(int e) {
    switch (e) {
        case EINTR: case ECONNABORTED: case EPROTO: case ENETDOWN: case ENOPROTOOPT:
        case EHOSTDOWN: case ENONET: case EHOSTUNREACH: case EOPNOTSUPP: case ENETUNREACH:
            return true;
        default:
            return false;
    }
}

}  // namespace

asio::awaitable<void> server::accept_loop(acceptor_t& acceptor) {
    // This loop only takes connections off the listen queue (all that are there, up to a
    // bound, per wake-up). With several workers it runs on the main thread and hands each
    // descriptor to a worker, which makes its socket and session; with one worker it runs
    // on that worker, which makes them in place. Either way everything a client holds for
    // its lifetime (session, Asio's per-descriptor state, its waits) comes from the
    // worker's malloc arena, where its login's temporaries were freed: made on the main
    // thread, it took fresh memory in the main arena while each worker's arena kept the
    // holes (about 0.1 KiB per idle client).
    if (!acceptor.is_open()) co_return;
    error_code ec;
    acceptor.non_blocking(true, ec);  // (accept4 below must not block the loop's thread)
    const auto protocol = acceptor.local_endpoint(ec).protocol();
    if (ec) {
        spdlog::error("listener unusable, not accepting on it: {}", ec.message());
        co_return;
    }
    for (;;) {
        auto [wait_ec] = co_await acceptor.async_wait(acceptor_t::wait_read, use_nothrow);
        if (wait_ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
        error_code failed = wait_ec;
        for (int taken = 0; !failed && taken < max_accepts_per_wake; ++taken) {
            int fd = ::accept4(acceptor.native_handle(), nullptr, nullptr, SOCK_CLOEXEC);
            if (fd >= 0) {
                hand_off(accepted_fd(fd), protocol);
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            } else if (!connection_error(errno)) {
                failed = error_code(errno, asio::error::get_system_category());
            }
        }
        if (failed) {
            // Out of file descriptors and the like: back off instead of spinning.
            spdlog::warn("accept failed: {}", failed.message());
            asio::steady_timer t(co_await asio::this_coro::executor, 100ms);
            co_await t.async_wait(use_nothrow);
        }
    }
}

void server::hand_off(accepted_fd fd, asio::generic::stream_protocol protocol) {
    // (next_worker_ belongs to the main thread: with one worker this runs on the worker)
    unsigned w = accept_on_worker() ? 0 : next_worker_++ % unsigned(workers_.size());
    const proxy::client_session::refusal* refuse = nullptr;
    if (rt_.client_count.load() >= rt_.cfg()->sluice.max_client_conn)
        refuse = &proxy::client_session::too_many_clients;
    else if (!rt_.accepting.load())
        refuse = &proxy::client_session::shutting_down;
    rt_.client_count++;
    if (accept_on_worker()) {  // (on that worker's thread already)
        start_session(std::move(fd), protocol, int(w), refuse);
        return;
    }
    try {
        asio::post(workers_[w]->get_executor(),
                   [this, w, refuse, protocol, fd = std::move(fd)]() mutable {
                       start_session(std::move(fd), protocol, int(w), refuse);
                   });
    } catch (...) {  // (no memory: the descriptor is closed, the count given back)
        rt_.client_ended();
        throw;
    }
}

void server::start_session(accepted_fd fd, asio::generic::stream_protocol protocol, int w,
                           const proxy::client_session::refusal* refuse) {
    // A plain handler: an exception (no memory) would end the worker's run loop.
    std::shared_ptr<proxy::client_session> session;
    try {
        stream_socket socket(workers_[w]->get_executor());
        error_code ec;
        socket.assign(protocol, fd.fd, ec);
        if (ec) {
            spdlog::warn("accepting a client failed: {}", ec.message());
            rt_.client_ended();
            return;  // (fd closes here)
        }
        fd.release();  // (the socket owns it)
        session = std::make_shared<proxy::client_session>(rt_, std::move(socket), w,
                                                          rt_.pools.next_connection_id());
        // The session ends on its own (client_session::finish): run() covers the login
        // only, the relay goes on in shorter coroutines.
        asio::co_spawn(workers_[w]->get_executor(), session->run(refuse),
                       [session](std::exception_ptr e) {
                           if (!e) return;
                           try {
                               std::rethrow_exception(e);
                           } catch (const std::exception& ex) {
                               spdlog::error("client {} failed: {}", session->id, ex.what());
                           }
                           session->leave_runtime();
                       });
    } catch (const std::exception& ex) {  // (the socket is closed with what owns it)
        spdlog::error("accepting a client failed: {}", ex.what());
        if (session) session->leave_runtime();
        else rt_.client_ended();
    }
}

asio::awaitable<void> server::signal_loop() {
    for (;;) {
        auto [ec, sig] = co_await signals_.async_wait(use_nothrow);
        if (ec) co_return;
        switch (sig) {
            case SIGHUP: {
                service::notify_reloading();
                if (rt_.reopen_log) rt_.reopen_log();
                std::string errors;
                if (!rt_.reload(errors))
                    spdlog::error("RELOAD failed, keeping the running configuration:\n{}", errors);
                if (!rt_.shutting_down) service::notify("READY=1");
                break;
            }
            // A second SIGINT or SIGTERM during a graceful shutdown exits at once, as
            // PgBouncer (an operator who runs out of patience signals again).
            case SIGTERM:
            case SIGINT:
                if (stop_ != stop_mode::none) {
                    spdlog::info("{} during shutdown: exiting now",
                                 sig == SIGTERM ? "SIGTERM" : "SIGINT");
                    shutdown_now();
                } else if (sig == SIGTERM) {
                    spdlog::info("SIGTERM: waiting for clients to leave");
                    shutdown_when_clients_gone();
                } else {
                    spdlog::info("SIGINT: waiting for servers to be released");
                    shutdown_when_servers_idle();
                }
                break;
            case SIGQUIT:
                spdlog::info("SIGQUIT: exiting now");
                shutdown_now();
                break;
            case SIGUSR1:
                spdlog::info("SIGUSR1: PAUSE");
                rt_.paused = true;
                rt_.pools.pause("");
                break;
            case SIGUSR2:
                spdlog::info("SIGUSR2: RESUME");
                rt_.paused = false;
                rt_.pools.resume("");
                break;
        }
    }
}

void server::supervise(const char* name, std::function<asio::awaitable<void>()> start,
                       asio::io_context* on) {
    if (on == nullptr) on = &main_;
    asio::co_spawn(*on, start(), [this, name, start, on](std::exception_ptr e) {
        if (!e) return;  // ended by itself (listener closed, stopping)
        rt_.task_failures++;
        spdlog::error("{} failed: {}; restarting it", name, proxy::runtime::exception_text(e));
        // The restart is decided on the main thread, which owns stop_.
        asio::post(main_, [this, name, start, on] {
            if (stop_ == stop_mode::now) return;
            auto t = std::make_shared<asio::steady_timer>(main_, 100ms);
            t->async_wait([this, name, start, on, t](error_code ec) {
                if (!ec && stop_ != stop_mode::now) supervise(name, start, on);
            });
        });
    });
}

asio::awaitable<void> server::janitor_loop() {
    asio::steady_timer t(main_);
    int tick = 0;
    for (;;) {
        t.expires_after(200ms);
        auto [ec] = co_await t.async_wait(use_nothrow);
        if (ec) co_return;
        if (++tick % 5 == 0) {
            for (auto& p : rt_.pools.all()) {
                p->maintain();
                if (p->wants_servers() && !rt_.paused.load()) {
                    unsigned w = next_worker_++ % workers_.size();
                    asio::co_spawn(workers_[w]->get_executor(),
                                   p->warm_up(workers_[w]->get_executor(), int(w)),
                                   [p, log = rt_.log_failure("min_pool_size warm-up")](
                                       std::exception_ptr e) { log(e); });  // p: kept alive
                }
            }
            rt_.pools.free_idle(steady_clock::now());
        }
        // Client timeouts: each session keeps timestamps; act only on expired ones.
        auto now = proxy::client_session::now_ns();
        for (auto& s : rt_.sessions.all()) s->check_timeouts(now);
        if (rt_.cfg()->sluice.server_fast_close) {
            std::vector<std::uint64_t> clients;
            for (auto& p : rt_.pools.all())
                for (auto client : p->clients_of_close_needed_servers()) clients.push_back(client);
            for (auto& s : rt_.sessions.find_by_ids(std::move(clients))) s->fast_close_if_idle();
        }
        check_shutdown();
    }
}

void server::shutdown_now() {
    stop_ = stop_mode::now;
    if (!rt_.shutting_down.exchange(true)) service::notify_stopping();
    close_listeners();
    main_.stop();
}

void server::shutdown_when_clients_gone() {
    stop_ = stop_mode::clients_gone;
    if (!rt_.shutting_down.exchange(true)) service::notify_stopping();
    close_listeners();
    check_shutdown();
}

void server::shutdown_when_servers_idle() {
    stop_ = stop_mode::servers_idle;
    if (!rt_.shutting_down.exchange(true)) service::notify_stopping();
    close_listeners();
    check_shutdown();
}

void server::check_shutdown() {
    switch (stop_) {
        case stop_mode::none:
        case stop_mode::now:
            return;
        case stop_mode::clients_gone:
            if (rt_.client_count.load() == 0) main_.stop();
            return;
        case stop_mode::servers_idle: {
            int busy = 0;
            for (auto& p : rt_.pools.all()) {
                auto snap = p->take_snapshot();
                busy += snap.sv_active + snap.sv_used + snap.sv_login;
            }
            if (busy == 0) main_.stop();
            return;
        }
    }
}

namespace {
// SHOW TENANTS: the rate limiter's view, one row per tenant.
admin::table tenants_table(proxy::runtime& rt) {
    admin::table t;
    for (auto c : {"tenant", "mode", "queries_per_second", "transactions_per_second",
                   "connections_per_second", "max_connections", "current_connections"})
        t.column(c);
    for (auto c : {"allowed", "rejected", "delayed"}) t.column(c, admin::int8_oid);
    t.column("current_rate");
    if (!rt.limiter) return t;
    auto num = [](double v) {
        std::string s = fmt::format("{:.2f}", v);
        return std::optional<std::string>(s);
    };
    for (auto& r : rt.limiter->snapshot())
        t.rows.push_back({r.tenant, r.mode, num(r.queries_per_second),
                          num(r.transactions_per_second), num(r.connections_per_second),
                          std::to_string(r.max_connections), std::to_string(r.current_connections),
                          std::to_string(r.allowed), std::to_string(r.rejected),
                          std::to_string(r.delayed), num(r.current_rate)});
    return t;
}
}  // namespace

int server::run() {
    try {
        rt_.limiter = ratelimit::make_limiter(rt_.cfg()->limits, rt_.workers, main_.get_executor());
        if (rt_.limiter) {
            rt_.extra_metrics = [this] { return rt_.limiter ? rt_.limiter->metrics_text() : ""; };
            admin::register_show("TENANTS", [](proxy::runtime& rt) { return tenants_table(rt); });
        }
    } catch (const std::exception& e) {
        spdlog::error("rate_limits: {}", e.what());
        return 1;
    }
    if (!open_listeners() || (after_listen && !after_listen())) {
        close_listeners();
        return 1;
    }
    // Databases with a forced user have their pool from the start, so that
    // min_pool_size connections exist before the first client (as PgBouncer).
    for (auto& [name, db] : rt_.cfg()->databases)
        if (name != "*" && !db.user.empty()) rt_.pools.get(name, db.user);
    // What sessions call into is set before any worker runs: with one worker the accept
    // loop runs there, and takes the clients already queued as soon as it starts.
    rt_.client_ended = [this] {
        if (--rt_.client_count == 0) asio::post(main_, [this] { check_shutdown(); });
    };
    rt_.request_shutdown = [this](int how) {
        asio::post(main_, [this, how] {
            if (how == 0) shutdown_now();
            else if (how == 1) shutdown_when_servers_idle();
            else shutdown_when_clients_gone();
        });
    };
    for (auto& w : workers_) threads_.emplace_back([ctx = w.get()] { ctx->run(); });
    supervise("signal loop", [this] { return signal_loop(); });
    supervise("janitor", [this] { return janitor_loop(); });
    admin::start_background(rt_, main_.get_executor());
    for (auto& a : acceptors_) {
        auto* acceptor = a.get();
        supervise("accept loop", [this, acceptor] { return accept_loop(*acceptor); },
                  &accept_context());
    }
    spdlog::info("Sluice started with {} workers", workers_.size());
    service::ready("accepting connections");
    main_.run();
    close_listeners();
    spdlog::info("Sluice stopped");
    for (auto& g : guards_) g.reset();
    for (auto& w : workers_) w->stop();
    for (auto& t : threads_)
        if (t.joinable()) t.join();
    // Sockets that belong to the workers' contexts go before the contexts do: the
    // limiter's Redis connections and every server connection.
    rt_.limiter.reset();
    for (auto& p : rt_.pools.all()) p->close_all_now();
    return exit_code_;
}

}  // namespace sluice::net
