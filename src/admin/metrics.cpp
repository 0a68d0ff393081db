#include "sluice/admin/metrics.hpp"

#include <spdlog/spdlog.h>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <map>

#include "sluice/proxy/client_session.hpp"
#include "sluice/proxy/runtime.hpp"
#include "sluice/stats/prometheus.hpp"
#include "sluice/version.hpp"

namespace sluice::admin {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

// ---------------------------------------------------------------------------------------
// Rendering

std::string render_metrics(proxy::runtime& rt) {
    stats::prometheus_writer w;
    auto pools = rt.pools.all();
    struct pool_view {
        pool::pool* p;
        stats::label_set labels;
        pool::pool::snapshot snap;
        pool::pool::settings settings;
    };
    std::vector<pool_view> views;
    views.reserve(pools.size());
    for (auto& p : pools)
        views.push_back({p.get(), {{"database", p->database()}, {"user", p->user()}}, p->take_snapshot(),
                         p->current_settings()});
    auto with = [](stats::label_set l, const char* k, std::string v) {
        l.emplace_back(k, std::move(v));
        return l;
    };

    w.family("sluice_info", "gauge", "Sluice build information");
    w.sample("sluice_info", {{"version", SLUICE_VERSION}}, 1);
    w.family("sluice_uptime_seconds", "gauge", "Seconds since Sluice started");
    w.sample("sluice_uptime_seconds", {},
             std::chrono::duration<double>(steady_clock::now() - rt.started).count());
    w.family("sluice_paused", "gauge", "1 while PAUSE or SUSPEND is in effect for every database");
    w.sample("sluice_paused", {}, rt.paused.load() || rt.pools.paused("") ? 1 : 0);
    w.family("sluice_clients", "gauge", "Client connections open, console and logins included");
    w.sample("sluice_clients", {}, rt.client_count.load());

    w.family("sluice_client_connections", "gauge", "Client connections by pool and state");
    for (auto& v : views) {
        int active = v.p->active_clients.load();
        int waiting = v.snap.cl_waiting;
        int idle = std::max(0, v.p->clients.load() - active - waiting);
        w.sample("sluice_client_connections", with(v.labels, "state", "active"), active);
        w.sample("sluice_client_connections", with(v.labels, "state", "waiting"), waiting);
        w.sample("sluice_client_connections", with(v.labels, "state", "idle"), idle);
    }
    w.family("sluice_server_connections", "gauge", "Server connections by pool and state");
    for (auto& v : views) {
        w.sample("sluice_server_connections", with(v.labels, "state", "active"), v.snap.sv_active);
        w.sample("sluice_server_connections", with(v.labels, "state", "idle"), v.snap.sv_idle);
        w.sample("sluice_server_connections", with(v.labels, "state", "used"), v.snap.sv_used);
        w.sample("sluice_server_connections", with(v.labels, "state", "tested"), v.snap.sv_tested);
        w.sample("sluice_server_connections", with(v.labels, "state", "login"), v.snap.sv_login);
    }
    // Which host each pool's servers are on and what that server is (host lists,
    // target_session_attrs): after a failover the primary's address changes here.
    w.family("sluice_server_connections_by_host", "gauge",
             "Server connections by pool, host and role (primary, standby, unknown)");
    for (auto& v : views) {
        std::map<std::pair<std::string, std::string>, int> by_host;
        for (auto& s : v.snap.servers) {
            char r = s->role.load();
            by_host[{s->host(), r == 'p' ? "primary" : r == 's' ? "standby" : "unknown"}]++;
        }
        for (auto& [key, n] : by_host)
            w.sample("sluice_server_connections_by_host",
                     with(with(v.labels, "host", key.first), "role", key.second), n);
    }
    w.family("sluice_client_wait_max_seconds", "gauge", "Longest current wait for a server");
    for (auto& v : views)
        w.sample("sluice_client_wait_max_seconds", v.labels,
                 std::chrono::duration<double>(v.snap.maxwait).count());

    w.family("sluice_pool_size", "gauge", "Configured pool_size");
    for (auto& v : views) w.sample("sluice_pool_size", v.labels, v.settings.pool_size);
    w.family("sluice_pool_min_size", "gauge", "Configured min_pool_size");
    for (auto& v : views) w.sample("sluice_pool_min_size", v.labels, v.settings.min_pool_size);
    w.family("sluice_pool_reserve_size", "gauge", "Configured reserve_pool_size");
    for (auto& v : views) w.sample("sluice_pool_reserve_size", v.labels, v.settings.reserve_pool_size);
    w.family("sluice_pool_paused", "gauge", "1 while the pool is paused");
    for (auto& v : views) w.sample("sluice_pool_paused", v.labels, v.p->paused.load() ? 1 : 0);

    struct counter_def {
        const char* name;
        const char* help;
        std::atomic<std::uint64_t> pool::pool_stats::*member;
        double scale;  // microseconds -> seconds where needed
    };
    const counter_def counters[] = {
        {"sluice_transactions_total", "Transactions completed (SHOW STATS total_xact_count)",
         &pool::pool_stats::xact_count, 1},
        {"sluice_queries_total", "Queries completed (SHOW STATS total_query_count)",
         &pool::pool_stats::query_count, 1},
        {"sluice_received_bytes_total", "Bytes received from clients (total_received)",
         &pool::pool_stats::bytes_received, 1},
        {"sluice_sent_bytes_total", "Bytes sent to clients (total_sent)",
         &pool::pool_stats::bytes_sent, 1},
        {"sluice_transaction_seconds_total", "Time spent in transactions (total_xact_time)",
         &pool::pool_stats::xact_time_us, 1e-6},
        {"sluice_query_seconds_total", "Time spent in queries (total_query_time)",
         &pool::pool_stats::query_time_us, 1e-6},
        {"sluice_wait_seconds_total", "Time clients waited for a server (total_wait_time)",
         &pool::pool_stats::wait_time_us, 1e-6},
        {"sluice_server_assignments_total", "Times a server was assigned to a client",
         &pool::pool_stats::server_assignment_count, 1},
        {"sluice_client_logins_total", "Client logins", &pool::pool_stats::client_login_count, 1},
        {"sluice_client_parses_total", "Parse messages from clients",
         &pool::pool_stats::client_parse_count, 1},
        {"sluice_server_parses_total", "Parse messages sent to servers",
         &pool::pool_stats::server_parse_count, 1},
        {"sluice_binds_total", "Bind messages", &pool::pool_stats::bind_count, 1},
    };
    for (auto& c : counters) {
        w.family(c.name, "counter", c.help);
        for (auto& v : views) {
            auto value = (v.p->stats.*(c.member)).load();
            if (c.scale == 1) w.sample(c.name, v.labels, value);
            else w.sample(c.name, v.labels, double(value) * c.scale);
        }
    }
    w.family("sluice_errors_total", "counter", "Errors by kind");
    for (auto& v : views) {
        auto& s = v.p->stats;
        w.sample("sluice_errors_total", with(v.labels, "kind", "login"), s.errors_login.load());
        w.sample("sluice_errors_total", with(v.labels, "kind", "server"), s.errors_server.load());
        w.sample("sluice_errors_total", with(v.labels, "kind", "wait_timeout"),
                 s.errors_wait_timeout.load());
        w.sample("sluice_errors_total", with(v.labels, "kind", "client"), s.errors_client.load());
    }

    const auto& bounds = stats::prometheus_writer::default_latency_bounds_us();
    w.family("sluice_query_duration_seconds", "histogram", "Query latency");
    for (auto& v : views)
        w.histogram("sluice_query_duration_seconds", v.labels, v.p->stats.query_latency, bounds);
    w.family("sluice_transaction_duration_seconds", "histogram", "Transaction latency");
    for (auto& v : views)
        w.histogram("sluice_transaction_duration_seconds", v.labels, v.p->stats.xact_latency, bounds);
    w.family("sluice_wait_duration_seconds", "histogram", "Time clients waited for a server");
    for (auto& v : views)
        w.histogram("sluice_wait_duration_seconds", v.labels, v.p->stats.wait_latency, bounds);

    if (rt.extra_metrics) {
        try {
            w.raw(rt.extra_metrics());
        } catch (const std::exception& e) {
            spdlog::warn("extra metrics failed: {}", e.what());
        }
    }
    return w.take();
}

// ---------------------------------------------------------------------------------------
// HTTP server

namespace {

constexpr int max_connections = 64;
constexpr std::size_t max_header_bytes = 8192;
constexpr auto request_deadline = 10s;

struct metrics_server {
    metrics_server(proxy::runtime& r, asio::any_io_executor ex) : rt(r), acceptor(ex) {}
    proxy::runtime& rt;
    tcp::acceptor acceptor;
    std::atomic<int> open{0};
};

asio::awaitable<void> serve_http(std::shared_ptr<metrics_server> srv, tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer(max_header_bytes);
    for (;;) {
        http::request_parser<http::empty_body> parser;
        parser.header_limit(max_header_bytes);
        parser.body_limit(0);
        stream.expires_after(request_deadline);
        auto [ec, n] = co_await http::async_read(stream, buffer, parser, use_nothrow);
        if (ec) break;
        auto& req = parser.get();
        http::response<http::string_body> res;
        res.version(req.version());
        res.set(http::field::server, "Sluice");
        std::string_view target(req.target().data(), req.target().size());
        auto path = target.substr(0, target.find('?'));
        if (req.method() != http::verb::get && req.method() != http::verb::head) {
            res.result(http::status::method_not_allowed);
            res.set(http::field::allow, "GET, HEAD");
            res.set(http::field::content_type, "text/plain");
            res.body() = "method not allowed\n";
        } else if (path == "/metrics") {
            res.result(http::status::ok);
            res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
            res.body() = render_metrics(srv->rt);
        } else {
            res.result(http::status::not_found);
            res.set(http::field::content_type, "text/plain");
            res.body() = "not found: try /metrics\n";
        }
        bool keep = req.keep_alive();
        res.keep_alive(keep);
        res.prepare_payload();
        if (req.method() == http::verb::head) {
            auto len = res.body().size();
            res.body().clear();
            res.content_length(len);
        }
        auto [wec, wn] = co_await http::async_write(stream, res, use_nothrow);
        if (wec || !keep) break;
    }
    error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream.socket().close(ignored);
}

asio::awaitable<void> accept_http(std::shared_ptr<metrics_server> srv) {
    for (;;) {
        auto [ec, socket] = co_await srv->acceptor.async_accept(use_nothrow);
        if (ec == asio::error::operation_aborted || !srv->acceptor.is_open()) co_return;
        if (ec) {
            asio::steady_timer t(srv->acceptor.get_executor(), 100ms);
            co_await t.async_wait(use_nothrow);
            continue;
        }
        if (srv->open.load() >= max_connections) {
            error_code ignored;
            socket.close(ignored);  // bounded: scrapers retry
            continue;
        }
        srv->open++;
        asio::co_spawn(srv->acceptor.get_executor(), serve_http(srv, std::move(socket)),
                       [srv](std::exception_ptr e) {
                           srv->open--;
                           if (!e) return;
                           try {
                               std::rethrow_exception(e);
                           } catch (const std::exception& ex) {
                               spdlog::warn("metrics connection failed: {}", ex.what());
                           }
                       });
    }
}

}  // namespace

bool start_metrics(proxy::runtime& rt, asio::any_io_executor ex, const std::string& listen) {
    auto colon = listen.rfind(':');
    if (colon == std::string::npos) {
        spdlog::error("metrics_listen {}: expected host:port", listen);
        return false;
    }
    std::string host = listen.substr(0, colon), port = listen.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    if (host.empty() || host == "*") host = "0.0.0.0";
    error_code ec;
    tcp::resolver resolver(ex);
    auto results = resolver.resolve(host, port, tcp::resolver::passive | tcp::resolver::numeric_service, ec);
    if (ec || results.empty()) {
        spdlog::error("metrics_listen {}: cannot resolve: {}", listen, ec.message());
        return false;
    }
    auto endpoint = results.begin()->endpoint();
    auto srv = std::make_shared<metrics_server>(rt, ex);
    srv->acceptor.open(endpoint.protocol(), ec);
    if (!ec) srv->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) srv->acceptor.bind(endpoint, ec);
    if (!ec) srv->acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
        spdlog::error("metrics_listen {}: cannot listen: {}", listen, ec.message());
        return false;
    }
    spdlog::info("metrics on http://{}/metrics", listen);
    asio::co_spawn(ex, accept_http(srv), [](std::exception_ptr e) {
        if (!e) return;
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            spdlog::error("metrics listener failed: {}", ex.what());
        }
    });
    return true;
}

}  // namespace sluice::admin
