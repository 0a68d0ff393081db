#include "sluice/proxy/client_session.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>

#include "sluice/admin/console.hpp"
#include "sluice/auth/md5.hpp"
#include "sluice/auth/scram.hpp"
#include "sluice/proxy/parameters.hpp"
#include "sluice/ratelimit/limiter.hpp"
#include "sluice/proxy/runtime.hpp"

namespace sluice::proxy {

namespace proto = sluice::protocol;
using namespace std::chrono_literals;

namespace {
std::string parse_message(std::string_view name, std::string_view rest) {
    std::string m;
    proto::writer w(m);
    w.header(proto::msg::parse);
    w.cstring(name);
    w.bytes(rest);
    w.finish();
    return m;
}
std::string close_statement_message(std::string_view name) {
    std::string m;
    proto::writer(m).close('S', name);
    return m;
}
std::string_view as_view(std::span<const std::uint8_t> s) {
    return {reinterpret_cast<const char*>(s.data()), s.size()};
}
bool is_frontend_type(char t) {
    switch (t) {
        case 'B': case 'C': case 'D': case 'E': case 'F': case 'H': case 'P': case 'Q':
        case 'S': case 'X': case 'c': case 'd': case 'f': case 'p':
            return true;
        default:
            return false;
    }
}
}  // namespace

client_session::client_session(runtime& rt, stream_socket socket, int worker, std::uint64_t id_)
    : id(id_),
      rt_(rt),
      socket_(std::move(socket)),
      worker_(worker),
      server_loop_done_(socket_.get_executor()) {
    // Random, Sluice's own cancel key: the server's key never leaves Sluice.
    auth::random_bytes(reinterpret_cast<std::uint8_t*>(&cancel_key), sizeof cancel_key);
    error_code ec;
    auto remote = socket_.remote_endpoint(ec);
    if (!ec && (remote.protocol().family() == AF_INET || remote.protocol().family() == AF_INET6)) {
        asio::ip::tcp::endpoint tcp_ep;
        std::memcpy(tcp_ep.data(), remote.data(), remote.size());
        addr = tcp_ep.address().to_string();
        port = tcp_ep.port();
        int one = 1;
        ::setsockopt(socket_.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    } else {
        addr = "unix";
    }
    auto local = socket_.local_endpoint(ec);
    if (!ec && (local.protocol().family() == AF_INET || local.protocol().family() == AF_INET6)) {
        asio::ip::tcp::endpoint tcp_ep;
        std::memcpy(tcp_ep.data(), local.data(), local.size());
        local_addr = tcp_ep.address().to_string();
        local_port = tcp_ep.port();
    } else {
        local_addr = "unix";
    }
}

client_session::~client_session() = default;

// ---------------------------------------------------------------------------------------
// Lifecycle

asio::awaitable<void> client_session::run() {
    auto self = shared_from_this();
    rt_.sessions.add(self);
    auto cfg = rt_.cfg();
    max_packet_ = std::size_t(cfg->sluice.max_packet_size);

    // client_login_timeout: one watchdog for the whole login.
    asio::steady_timer login_watchdog(executor());
    bool logged_in = false;
    if (cfg->sluice.client_login_timeout.count() > 0) {
        login_watchdog.expires_after(cfg->sluice.client_login_timeout);
        login_watchdog.async_wait([this, self, &logged_in](error_code ec) {
            if (ec || logged_in) return;
            spdlog::info("client {} ({}:{}) did not log in within client_login_timeout", id,
                         addr, port);
            error_code ignored;
            socket_.close(ignored);
        });
    }
    bool ok = co_await startup();
    logged_in = true;
    login_watchdog.cancel();
    if (ok && console_role_ != admin::console_role::none) {
        // The console lives outside the login timeout and the pools.
        state = client_state::active;
        co_await admin::serve(rt_, *this, socket_, in_, console_role_, std::string());
        ok = false;
    }

    if (ok) {
        state = client_state::idle;
        if (cfg->sluice.log_connections)
            spdlog::info("client {} login: db={} user={} addr={}:{} app={}", id, database, user,
                         addr, port, application_name);
        co_await client_loop();
        co_await finish_server();
        if (cfg->sluice.log_disconnections)
            spdlog::info("client {} closing: db={} user={}", id, database, user);
    }
    if (pool_) pool_->clients--;
    if (tenant_connection_open_) tenant_->close_connection();
    rt_.sessions.remove(*this);
    error_code ignored;
    socket_.shutdown(asio::socket_base::shutdown_both, ignored);
    socket_.close(ignored);
}

void client_session::check_timeouts(std::int64_t now) {
    auto expired = [now](std::atomic<std::int64_t>& since, std::int64_t limit) {
        auto t = since.load(std::memory_order_relaxed);
        return limit > 0 && t != 0 && now - t > limit && since.compare_exchange_strong(t, 0);
    };
    if (expired(query_since_ns, query_timeout_ns)) {
        // As PgBouncer's query_timeout: cancel the query; PostgreSQL answers 57014.
        spdlog::info("client {}: query_timeout, cancelling its query", id);
        asio::co_spawn(executor(), forward_cancel(shared_from_this()), asio::detached);
    }
    if (expired(idle_in_xact_since_ns, idle_transaction_timeout_ns))
        kill("25P03", "idle transaction timeout (idle_transaction_timeout)");
    if (expired(xact_since_ns, transaction_timeout_ns))
        kill("25P04", "transaction timeout (transaction_timeout)");
    if (expired(idle_since_ns, client_idle_timeout_ns))
        kill("57P05", "client idle timeout (client_idle_timeout)");
}

void client_session::kill(std::string sqlstate, std::string message) {
    asio::post(executor(), [self = shared_from_this(), sqlstate, message] {
        if (self->fatal_) return;
        self->fatal_ = true;
        if (!self->writing_client_ && self->socket_.is_open()) {
            // Best effort: a FATAL the client can show, without waiting on a slow reader.
            std::string out;
            proto::writer(out).error_response(sqlstate, message, {}, "FATAL");
            [[maybe_unused]] auto n = ::send(self->socket_.native_handle(), out.data(), out.size(),
                                             MSG_DONTWAIT | MSG_NOSIGNAL);
        }
        error_code ignored;
        self->socket_.shutdown(asio::socket_base::shutdown_both, ignored);
        self->socket_.close(ignored);
        if (self->server_ && self->server_loop_running_) self->server_->socket.cancel(ignored);
    });
}

// ---------------------------------------------------------------------------------------
// Writing to the client

asio::awaitable<bool> client_session::write_client(std::span<const asio::const_buffer> buffers) {
    // server_loop and client_loop run on the same thread but may both have something to
    // say; one async_write at a time.
    while (writing_client_) {
        asio::steady_timer turn(executor(), steady_clock::time_point::max());
        write_waiters_.push_back(&turn);
        co_await turn.async_wait(use_nothrow);
    }
    writing_client_ = true;
    auto [ec, n] = co_await asio::async_write(socket_, buffers, use_nothrow);
    writing_client_ = false;
    if (!write_waiters_.empty()) {
        write_waiters_.front()->cancel();
        write_waiters_.pop_front();
    }
    co_return !ec;
}

asio::awaitable<bool> client_session::write_client(const std::string& bytes) {
    asio::const_buffer b(bytes.data(), bytes.size());
    co_return co_await write_client(std::span<const asio::const_buffer>(&b, 1));
}

asio::awaitable<void> client_session::send_error(std::string sqlstate, std::string message,
                                                 std::string hint, bool fatal) {
    std::string out;
    proto::writer w(out);
    w.error_response(sqlstate, message, hint, fatal ? "FATAL" : "ERROR");
    if (!fatal) w.ready_for_query(transaction_status_);
    co_await write_client(out);
    if (fatal) {
        fatal_ = true;
        spdlog::info("client {} ({}:{}): {} {}", id, addr, port, sqlstate, message);
    }
}

// ---------------------------------------------------------------------------------------
// Startup and authentication

asio::awaitable<bool> client_session::read_startup_packet(proto::startup_packet& out) {
    for (;;) {
        std::size_t consumed = 0;
        std::error_code ec;
        auto st = proto::decode_startup({in_.readable(), in_.size()}, out, consumed, ec);
        if (st == proto::scan_status::complete) {
            in_.consume(consumed);
            co_return true;
        }
        if (st == proto::scan_status::error) {
            if (ec == proto::protocol_errc::unsupported_version)
                co_await send_error("0A000",
                                    "unsupported frontend protocol: Sluice supports 3.0 only");
            else
                co_await send_error("08P01", "invalid startup packet: " + ec.message());
            co_return false;
        }
        in_.reserve_tail(512);
        auto [rec, n] = co_await socket_.async_read_some(in_.writable(), use_nothrow);
        if (rec) co_return false;
        in_.commit(n);
    }
}

asio::awaitable<bool> client_session::read_client_message(proto::message_view& out) {
    // Only used during login, where messages are small: a password or a SASL exchange.
    constexpr std::size_t max_login_message = 16384;
    for (;;) {
        std::size_t consumed = 0;
        std::error_code ec;
        auto st = proto::next_message({in_.readable(), in_.size()}, max_login_message, out,
                                      consumed, ec);
        if (st == proto::scan_status::complete) {
            in_.begin += consumed;  // view stays valid until the next read
            co_return true;
        }
        if (st == proto::scan_status::error) {
            co_await send_error("08P01", "invalid message during authentication: " + ec.message());
            co_return false;
        }
        if (in_.empty()) in_.begin = in_.end = 0;
        in_.reserve_tail(1024);
        auto [rec, n] = co_await socket_.async_read_some(in_.writable(), use_nothrow);
        if (rec) co_return false;
        in_.commit(n);
    }
}

asio::awaitable<void> client_session::handle_cancel_request(proto::cancel_request req) {
    // As PostgreSQL: the requester gets no answer either way, the connection is closed.
    if (auto target = rt_.sessions.find_by_key(req.process_id, req.secret_key)) {
        asio::co_spawn(target->executor(), forward_cancel(target), [](std::exception_ptr e) {
            if (e) spdlog::error("cancel forwarding failed with an exception");
        });
    } else {
        spdlog::debug("cancel request with an unknown key from {}:{}", addr, port);
    }
    co_return;
}

asio::awaitable<void> client_session::forward_cancel(std::shared_ptr<client_session> self) {
    // Runs on the target session's thread, so server_ and outstanding_ are stable here.
    auto s = self->server_;
    if (!s || self->outstanding_ == 0) co_return;  // nothing running: nothing to cancel
    s->cancels_in_flight++;
    struct done_guard {
        pool::server_ptr s;
        ~done_guard() { s->cancels_in_flight--; }
    } guard{s};
    auto key = s->backend_key;
    stream_socket sock(self->executor());
    std::string error;
    auto timeout = self->rt_.cfg()->sluice.cancel_wait_timeout;
    asio::steady_timer watchdog(self->executor(), timeout.count() > 0 ? timeout : 10s);
    watchdog.async_wait([&sock](error_code ec) {
        if (!ec) {
            error_code ignored;
            sock.close(ignored);
        }
    });
    if (!co_await pool::connect_socket(sock, s->host, s->port, error)) {
        spdlog::warn("cancel for client {}: {}", self->id, error);
        watchdog.cancel();
        co_return;
    }
    std::string out;
    proto::writer(out).cancel(key.process_id, key.secret_key);
    co_await asio::async_write(sock, asio::buffer(out), use_nothrow);
    // PostgreSQL closes the connection once it has signalled the backend; until then the
    // server must not be handed to anyone else.
    std::uint8_t b;
    co_await sock.async_read_some(asio::buffer(&b, 1), use_nothrow);
    watchdog.cancel();
    spdlog::debug("cancel forwarded for client {} to server {}", self->id, s->id);
}

asio::awaitable<bool> client_session::startup() {
    proto::startup_packet packet;
    proto::startup_message startup_msg;
    for (;;) {
        if (!co_await read_startup_packet(packet)) co_return false;
        if (std::holds_alternative<proto::ssl_request>(packet) ||
            std::holds_alternative<proto::gssenc_request>(packet)) {
            // No TLS yet: 'N' lets sslmode=prefer clients go on in plaintext.
            std::string no = "N";
            bool sent = co_await write_client(no);
            if (!sent) co_return false;
            continue;
        }
        if (auto* cancel = std::get_if<proto::cancel_request>(&packet)) {
            co_await handle_cancel_request(*cancel);
            co_return false;
        }
        startup_msg = std::get<proto::startup_message>(std::move(packet));
        break;
    }

    if (!refuse_sqlstate.empty()) {
        co_await send_error(refuse_sqlstate, refuse_message);
        co_return false;
    }
    auto cfg = rt_.cfg();
    const auto& g = cfg->sluice;
    std::string out;
    proto::writer w(out);

    // Protocol 3.x with x > 0 or _pq_ options: say what we support (PostgreSQL does the same).
    auto options = startup_msg.protocol_options();
    if (startup_msg.minor > 0 || !options.empty()) {
        w.negotiate_protocol_version(0, options);
        if (!co_await write_client(out)) co_return false;
        out.clear();
    }

    const std::string* user_param = startup_msg.find("user");
    if (!user_param || user_param->empty()) {
        co_await send_error("28000", "no PostgreSQL user name specified in startup packet");
        co_return false;
    }
    user = *user_param;
    const std::string* db_param = startup_msg.find("database");
    database = db_param && !db_param->empty() ? *db_param : user;

    // Startup parameters: tracked ones become this client's wanted values; the rest must
    // be listed in ignore_startup_parameters (as PgBouncer).
    std::map<std::string, std::string, std::less<>> startup_values;
    std::string fallback_app;
    for (auto& [key, value] : startup_msg.parameters) {
        if (key == "user" || key == "database" || key.starts_with("_pq_.")) continue;
        if (key == "fallback_application_name") {
            fallback_app = value;
            continue;
        }
        if (key == "replication") {
            co_await send_error("08P01", "replication connections are not supported by Sluice");
            co_return false;
        }
        if (auto canonical = tracked_parameter_name(key, g.track_extra_parameters)) {
            startup_values[*canonical] = value;
            continue;
        }
        bool ignored = std::any_of(g.ignore_startup_parameters.begin(),
                                   g.ignore_startup_parameters.end(),
                                   [&](const std::string& k) { return iequals(k, key); });
        if (!ignored) {
            co_await send_error("08P01", "unsupported startup parameter: " + key,
                                "add it to ignore_startup_parameters to let clients send it");
            co_return false;
        }
    }
    if (!startup_values.count("application_name") && !fallback_app.empty())
        startup_values["application_name"] = fallback_app;
    if (auto it = startup_values.find("application_name"); it != startup_values.end())
        application_name = it->second;

    // Admin console: the virtual database `sluice` (and `pgbouncer` for existing tools).
    bool console = database == "sluice" || database == "pgbouncer";
    const config::database* db = console ? nullptr : cfg->find_database(database);
    auto users = rt_.users();
    auto secret = users->find(user);

    // As PgBouncer: the user pgbouncer (or sluice) may enter the console over the unix
    // socket without a password when it runs as the same OS user as Sluice.
    if (console && (user == "pgbouncer" || user == "sluice") && addr == "unix") {
        ucred peer{};
        socklen_t len = sizeof peer;
        if (::getsockopt(socket_.native_handle(), SOL_SOCKET, SO_PEERCRED, &peer, &len) == 0 &&
            peer.uid == ::getuid()) {
            console_role_ = admin::console_role::admin;
            co_return true;
        }
    }

    bool known = secret.has_value() || g.auth_type_ == config::auth_type::trust ||
                 g.auth_type_ == config::auth_type::any;
    bool authenticated = co_await authenticate(secret, known);
    if (!authenticated) co_return false;

    if (console) {
        auto role = admin::role_of(*cfg, user);
        if (role == admin::console_role::none) {
            co_await send_error("28000", "not allowed to connect to the admin console",
                                "only admin_users and stats_users may use the console");
            co_return false;
        }
        console_role_ = role;
        co_return true;  // run() serves the console once the login timeout is off
    }
    if (db && rt_.database_disabled(database)) {
        co_await send_error("57P03", "database \"" + database + "\" is disabled",
                            "an administrator ran DISABLE; ENABLE lets clients in again");
        co_return false;
    }
    if (!db) {
        co_await send_error("3D000", "database \"" + database + "\" does not exist",
                            "no such entry in the [databases] section of Sluice's configuration");
        co_return false;
    }

    std::string pool_user = db->user.empty() ? user : db->user;
    {
        // max_db_client_connections / max_user_client_connections: clients, not servers.
        int db_max = db->max_db_client_connections.value_or(g.max_db_client_connections);
        const config::user* u = cfg->find_user(user);
        int user_max = u && u->max_user_client_connections ? *u->max_user_client_connections
                                                           : g.max_user_client_connections;
        if (db_max > 0 || user_max > 0) {
            int db_clients = 0, user_clients = 0;
            for (auto& s : rt_.sessions.all()) {
                if (s.get() == this || s->state.load() == client_state::login) continue;
                db_clients += s->database == database;
                user_clients += s->user == user;
            }
            if (db_max > 0 && db_clients >= db_max) {
                co_await send_error("53300", "too many client connections for database \"" +
                                                 database + "\" (max_db_client_connections)");
                co_return false;
            }
            if (user_max > 0 && user_clients >= user_max) {
                co_await send_error("53300", "too many client connections for user \"" + user +
                                                 "\" (max_user_client_connections)");
                co_return false;
            }
        }
    }
    if (auto* lim = rt_.limiter.get()) {
        // Rate limits at login: connection attempts per second, then concurrent
        // connections of this tenant.
        tenant_ = lim->tenant_for(
            lim->tenant_name(user, database, application_name, startup_msg.parameters));
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
    pool_ = &rt_.pools.get(database, pool_user);
    pool_->clients++;
    pool_->stats.client_login_count++;
    mode_ = pool_->current_settings().mode;
    {
        const config::user* u = cfg->find_user(user);
        auto ns = [](config::duration d) {
            return std::int64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
        };
        query_timeout_ns = ns(u && u->query_timeout ? *u->query_timeout : g.query_timeout);
        idle_transaction_timeout_ns = ns(u && u->idle_transaction_timeout
                                             ? *u->idle_transaction_timeout
                                             : g.idle_transaction_timeout);
        client_idle_timeout_ns =
            ns(u && u->client_idle_timeout ? *u->client_idle_timeout : g.client_idle_timeout);
        transaction_timeout_ns = ns(g.transaction_timeout);
    }
    prepared_mode_ = mode_ != config::pool_mode::session && g.max_prepared_statements > 0;
    reset_query_always_ = g.server_reset_query_always;

    // Welcome without a server round trip when the pool already knows what a server says;
    // the very first client of a pool waits for the first server login.
    auto welcome = pool_->welcome_parameters();
    if (welcome.empty()) {
        // Log in one server to learn its parameters, and give it straight back: in
        // transaction mode this client may not send anything for a long while.
        auto r = co_await pool_->acquire(executor(), worker_);
        if (!r.server) {
            std::string sqlstate = r.sqlstate.empty() ? std::string("08006") : r.sqlstate;
            co_await send_error(sqlstate, r.message);
            co_return false;
        }
        pool_->release(std::move(r.server));
        welcome = pool_->welcome_parameters();
    }
    for (auto& [k, v] : welcome)
        if (is_tracked(k, g.track_extra_parameters)) wanted_params_[k] = v;
    for (auto& [k, v] : startup_values) wanted_params_[k] = v;

    w.authentication_ok();
    for (auto& [k, v] : welcome) {
        if (!reported_by_server(k) && !is_server_status_parameter(k)) continue;
        auto it = wanted_params_.find(k);
        w.parameter_status(k, it != wanted_params_.end() ? it->second : v);
    }
    for (auto& [k, v] : startup_values)
        if (!welcome.count(k) && reported_by_server(k)) w.parameter_status(k, v);
    w.backend_key_data(cancel_key.process_id, cancel_key.secret_key);
    w.ready_for_query('I');
    // A server linked for the welcome stays linked: in transaction mode it goes back at
    // the end of the client's first transaction.
    co_return co_await write_client(out);
}

asio::awaitable<bool> client_session::authenticate(const std::optional<std::string>& secret,
                                                   bool known) {
    auto cfg = rt_.cfg();
    auto type = cfg->sluice.auth_type_;
    std::string out;
    proto::writer w(out);
    auto refuse = [&]() -> asio::awaitable<bool> {
        // The same answer for an unknown user and a wrong password: no user enumeration.
        if (pool_) pool_->stats.errors_login++;
        co_await send_error("28P01", "password authentication failed for user \"" + user + "\"");
        co_return false;
    };

    if (type == config::auth_type::trust || type == config::auth_type::any) co_return true;
    if (type == config::auth_type::cert || type == config::auth_type::hba) {
        co_await send_error("28000", std::string("auth_type ") + config::to_string(type) +
                                         " is not supported by this Sluice build");
        co_return false;
    }

    std::optional<std::string> s = known ? secret : std::nullopt;
    bool use_scram = type == config::auth_type::scram_sha_256;
    if (s && auth::is_scram_secret(*s)) use_scram = true;         // md5 cannot check a verifier
    if (s && auth::is_md5_secret(*s) && use_scram) use_scram = false;  // SCRAM cannot check md5

    proto::message_view m;
    if (type == config::auth_type::plain && !(s && auth::is_scram_secret(*s))) {
        w.authentication_cleartext();
        if (!co_await write_client(out)) co_return false;
        if (!co_await read_client_message(m) || m.type != proto::msg::password) co_return false;
        auto pw = proto::decode_cstring(m.body);
        if (!pw || !s) co_return co_await refuse();
        bool ok = auth::is_md5_secret(*s) ? auth::md5_stored(*pw, user) == *s : *pw == *s;
        if (!ok) co_return co_await refuse();
        co_return true;
    }

    if (!use_scram) {
        std::array<std::uint8_t, 4> salt;
        auth::random_bytes(salt.data(), salt.size());
        w.authentication_md5(salt);
        if (!co_await write_client(out)) co_return false;
        if (!co_await read_client_message(m) || m.type != proto::msg::password) co_return false;
        auto pw = proto::decode_cstring(m.body);
        if (!pw || !s || !auth::md5_verify(*s, user, salt, *pw)) co_return co_await refuse();
        co_return true;
    }

    auth::scram_server scram(s, cfg->sluice.scram_iterations, user);
    w.authentication_sasl("SCRAM-SHA-256");
    if (!co_await write_client(out)) co_return false;
    if (!co_await read_client_message(m) || m.type != proto::msg::password) co_return false;
    auto initial = proto::decode_sasl_initial_response(m.body);
    if (!initial || initial->mechanism != "SCRAM-SHA-256") {
        co_await send_error("28000", "client selected an invalid SASL authentication mechanism");
        co_return false;
    }
    auto server_first = scram.client_first(initial->data);
    if (!server_first) {
        co_await send_error("08P01", "malformed SCRAM message");
        co_return false;
    }
    out.clear();
    w.authentication_sasl_continue(*server_first);
    if (!co_await write_client(out)) co_return false;
    if (!co_await read_client_message(m) || m.type != proto::msg::password) co_return false;
    auto server_final = scram.client_final(
        std::string_view(reinterpret_cast<const char*>(m.body.data()), m.body.size()));
    if (!server_final) co_return co_await refuse();
    out.clear();
    w.authentication_sasl_final(*server_final);
    if (!co_await write_client(out)) co_return false;
    // With only a verifier in the auth file, the client's proof is what lets Sluice log in
    // to PostgreSQL as this user (SCRAM pass-through).
    if (s && auth::is_scram_secret(*s)) {
        auto cfgdb = cfg->find_database(database);
        std::string pool_user = cfgdb && !cfgdb->user.empty() ? cfgdb->user : user;
        if (cfgdb && pool_user == user)
            rt_.pools.get(database, pool_user)
                .learn_scram_keys(scram.client_key(), scram.secret().server_key);
    }
    co_return true;
}

// ---------------------------------------------------------------------------------------
// Relay: client -> server

asio::awaitable<void> client_session::client_loop() {
    auto& stats = pool_->stats;
    for (;;) {
        if (fatal_ || !socket_.is_open()) co_return;
        if (in_.empty()) {
            // Idle: hold no buffer while waiting (an idle client costs a few hundred bytes).
            in_.shrink_if_empty();
            if (!server_) idle_since_ns.store(now_ns(), std::memory_order_relaxed);
            auto [wec] = co_await socket_.async_wait(asio::socket_base::wait_read, use_nothrow);
            if (wec) co_return;
        }
        in_.reserve_tail(4096);
        error_code rec;
        std::size_t n = socket_.read_some(in_.writable(), rec);
        if (rec == asio::error::would_block || rec == asio::error::try_again) {
            auto [wec] = co_await socket_.async_wait(asio::socket_base::wait_read, use_nothrow);
            if (wec) co_return;
            continue;
        }
        if (rec) co_return;  // EOF or reset: the client is gone
        in_.commit(n);
        idle_since_ns.store(0, std::memory_order_relaxed);
        idle_in_xact_since_ns.store(0, std::memory_order_relaxed);

        const std::uint8_t* data = in_.readable();
        const std::size_t avail = in_.size();
        std::size_t pos = 0;
        bool terminate = false;
        client_out_.reset(data);
        while (pos < avail) {
            if (passthrough_ > 0) {
                auto take = std::min<std::size_t>(passthrough_, avail - pos);
                if (discard_client_bytes_) client_out_.skip(pos, take);
                pos += take;
                passthrough_ -= std::uint32_t(take);
                continue;
            }
            proto::frame_header h;
            std::error_code ec;
            auto st = proto::scan_header({data + pos, avail - pos}, max_packet_, h, ec);
            if (st == proto::scan_status::need_more) break;
            if (st == proto::scan_status::error) {
                stats.errors_client++;
                co_await send_error("08P01", "invalid message from client: " + ec.message());
                co_return;
            }
            const char type = char(h.type);
            if (type == proto::msg::terminate) {
                terminate = true;
                break;
            }
            const bool rewrites = prepared_mode_ && (type == proto::msg::parse ||
                                                     type == proto::msg::bind ||
                                                     type == proto::msg::describe ||
                                                     type == proto::msg::close);
            if (rewrites && avail - pos < h.total()) break;  // need the names: whole message

            // A request starts with a Query, or with the first extended message after a
            // Sync. The rate limiter decides here, before anything reaches a server.
            if (!rejecting_ && tenant_ &&
                (type == proto::msg::query || type == proto::msg::function_call ||
                 (!in_extended_batch_ && (is_extended(type) || type == proto::msg::sync)))) {
                // Fast path without a coroutine call: tokens from the local lease.
                bool new_xact = transaction_status_ == 'I' && outstanding_ == 0;
                bool xact_ok = !new_xact || tenant_->try_take(ratelimit::kind::transaction);
                if (!xact_ok || !tenant_->try_take(ratelimit::kind::query)) {
                    auto v = co_await admit_request(!xact_ok);
                    if (!v.allowed) {
                        rejecting_ = true;
                        reject_retry_after_ = v.retry_after;
                    }
                }
            }
            if (rejecting_) {
                // Nothing of a rejected request reaches PostgreSQL. In the extended
                // protocol the whole batch up to Sync is answered, as PostgreSQL does
                // after an error; the connection stays usable.
                client_out_.skip(pos, 5);
                pos += 5;
                passthrough_ = h.body_length;
                discard_client_bytes_ = true;
                if (type == proto::msg::query || type == proto::msg::function_call ||
                    type == proto::msg::sync) {
                    rejecting_ = false;
                    in_extended_batch_ = false;
                    queue_rejection();
                } else {
                    in_extended_batch_ = true;
                }
                continue;
            }
            discard_client_bytes_ = false;

            if (!is_frontend_type(type)) {
                // As PostgreSQL: an unknown message type is a protocol violation.
                stats.errors_client++;
                co_await send_error("08P01", "invalid frontend message type " +
                                                 std::to_string(int(std::uint8_t(type))));
                co_return;
            }
            const bool extended = is_extended(type) || type == proto::msg::sync;
            if (type == proto::msg::parse) stats.client_parse_count++;
            if (type == proto::msg::bind) stats.bind_count++;

            // Answered by Sluice itself, without a server: a named Parse or Close in
            // transaction/statement mode, a Sync ending a batch that reached no server,
            // a Flush with nothing to flush. (A pgbench -M prepared client preparing
            // while its siblings hold every server would otherwise deadlock.)
            if (rewrites && (type == proto::msg::parse || type == proto::msg::close)) {
                std::span<const std::uint8_t> body(data + pos + 5, h.body_length);
                auto local = answer_locally(type, body);
                if (!local) {
                    stats.errors_client++;
                    co_await send_error("08P01", "malformed extended-protocol message");
                    co_return;
                }
                if (*local) {
                    client_out_.skip(pos, h.total());
                    pos += h.total();
                    in_extended_batch_ = true;
                    continue;
                }
            }
            if (!server_ && !batch_forwarded_ &&
                (type == proto::msg::sync || type == proto::msg::flush)) {
                client_out_.skip(pos, h.total());
                if (type == proto::msg::sync) {
                    pending_.push_back({'S', pending_reply::inject, {}, {}, {}});
                    in_extended_batch_ = false;
                }
                pos += 5;
                passthrough_ = h.body_length;
                discard_client_bytes_ = true;
                continue;
            }

            // Everything else goes to a server: link one if none is linked.
            if (!server_) {
                if (transaction_status_ == 'I') xact_start_ = steady_clock::now();
                if (!co_await link_server()) co_return;
            }
            if (extended) in_extended_batch_ = type != proto::msg::sync;
            switch (type) {
                case proto::msg::query:
                case proto::msg::function_call:
                    if (outstanding_++ == 0) mark_query_start();
                    pending_.push_back({type, pending_reply::forward, {}, {}, {}});
                    break;
                case proto::msg::sync:
                    if (outstanding_++ == 0) mark_query_start();
                    unsynced_extended_ = false;
                    batch_forwarded_ = false;
                    pending_.push_back({type, pending_reply::forward, {}, {}, {}});
                    break;
                case proto::msg::flush:
                    break;
                case proto::msg::parse:
                case proto::msg::bind:
                case proto::msg::describe:
                case proto::msg::execute:
                case proto::msg::close:
                    unsynced_extended_ = true;
                    batch_forwarded_ = true;
                    if (rewrites) {
                        std::span<const std::uint8_t> body(data + pos + 5, h.body_length);
                        if (!rewrite_extended(type, body, pos, h.total())) {
                            stats.errors_client++;
                            co_await send_error("08P01", "malformed extended-protocol message");
                            co_return;
                        }
                        pos += h.total();
                        continue;
                    }
                    pending_.push_back({type, pending_reply::forward, {}, {}, {}});
                    break;
                default:  // CopyData/CopyDone/CopyFail and anything PostgreSQL will judge
                    break;
            }
            pos += 5;
            passthrough_ = h.body_length;
        }

        const auto& pieces = client_out_.finish(pos);
        if (client_out_.size() > 0 && server_) {
            request_time = steady_clock::now();
            state = client_state::active;
            write_pieces_.clear();
            for (auto& [p, len] : pieces) write_pieces_.emplace_back(p, len);
            auto [wec, wn] =
                co_await asio::async_write(server_->socket, write_pieces_, use_nothrow);
            if (wec) {
                pool_->stats.errors_server++;
                co_await send_error("08006", "server connection lost while sending the request");
                co_return;
            }
            stats.bytes_received += client_out_.size();
        }
        in_.consume(pos);
        // Replies Sluice gives itself (a rejected request, ParseComplete for a statement
        // the server already has) go out now if nothing is ahead of them.
        if (!pending_.empty() && pending_.front().action == pending_reply::inject)
            if (!co_await flush_front_injections()) co_return;
        if (terminate) {
            client_gone_ = true;
            co_return;
        }
    }
}

void client_session::mark_query_start() {
    query_start_ = steady_clock::now();
    query_since_ns.store(now_ns(), std::memory_order_relaxed);
}

void client_session::queue_rejection() {
    std::string bytes;
    auto ms = reject_retry_after_.count();
    proto::writer(bytes).error_response(
        "53400", "rate limit exceeded for tenant \"" + (tenant_ ? tenant_->name() : user) + "\"",
        "retry after " + std::to_string(ms > 0 ? ms : 1) + " ms");
    pending_.push_back({'S', pending_reply::inject, {}, {}, std::move(bytes)});
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

// Sends the replies Sluice answers itself that are at the front of the queue.
void client_session::take_front_injections(std::string& out) {
    while (!pending_.empty() && pending_.front().action == pending_reply::inject) {
        auto& f = pending_.front();
        out += f.bytes;
        // A rejected request ends like any request: ReadyForQuery with the client's true
        // transaction state (known now that everything before it has been answered).
        if (f.request == 'S') proto::writer(out).ready_for_query(transaction_status_);
        pending_.pop_front();
    }
}

asio::awaitable<bool> client_session::flush_front_injections() {
    std::string out;
    take_front_injections(out);
    if (out.empty()) co_return true;
    co_return co_await write_client(out);
}

// --- prepared statements -----------------------------------------------------------------


void client_session::ensure_prepared(const client_statement& st, std::size_t pos) {
    auto& srv = *server_;
    if (auto it = srv.prepared.find(st.server_name); it != srv.prepared.end()) {
        srv.prepared_lru.splice(srv.prepared_lru.begin(), srv.prepared_lru, it->second);
        return;
    }
    auto limit = std::size_t(std::max(1, rt_.cfg()->sluice.max_prepared_statements));
    while (srv.prepared.size() >= limit) {
        // Evict the least recently used statement from this server.
        auto victim = srv.prepared_lru.back();
        srv.prepared_lru.pop_back();
        srv.prepared.erase(victim);
        client_out_.insert(pos, close_statement_message(victim));
        pending_.push_back({'C', pending_reply::swallow, {}, {}, {}});
    }
    client_out_.insert(pos, parse_message(st.server_name, st.parse_rest));
    pending_.push_back({'P', pending_reply::swallow, st.server_name, {}, {}});
    srv.prepared_lru.push_front(st.server_name);
    srv.prepared[st.server_name] = srv.prepared_lru.begin();
    pool_->stats.server_parse_count++;
}

void client_session::forget_prepared(const std::string& server_name) {
    if (!server_) return;
    auto& srv = *server_;
    if (auto it = srv.prepared.find(server_name); it != srv.prepared.end()) {
        srv.prepared_lru.erase(it->second);
        srv.prepared.erase(it);
    }
}

std::optional<bool> client_session::answer_locally(char type, std::span<const std::uint8_t> body) {
    if (type == proto::msg::parse) {
        auto p = proto::decode_parse(body);
        if (!p) return std::nullopt;
        if (p->name.empty()) return false;  // the unnamed statement goes to the server as is
        // Remember it; it is prepared on a server when a Bind or Describe needs it.
        std::string rest(as_view(body.subspan(p->name.size() + 1)));
        client_statements_[std::string(p->name)] =
            client_statement{rt_.statements.name_for(rest), std::move(rest)};
        std::string reply;
        proto::writer(reply).parse_complete();
        pending_.push_back({'P', pending_reply::inject, {}, {}, std::move(reply)});
        return true;
    }
    auto d = proto::decode_describe_or_close(body);
    if (!d) return std::nullopt;
    auto it = client_statements_.find(std::string(d->name));
    if (d->kind != 'S' || d->name.empty() || it == client_statements_.end()) return false;
    // The server copy is shared and LRU-managed: only the client's name goes.
    client_statements_.erase(it);
    std::string reply;
    proto::writer(reply).close_complete();
    pending_.push_back({'C', pending_reply::inject, {}, {}, std::move(reply)});
    return true;
}

bool client_session::rewrite_extended(char type, std::span<const std::uint8_t> body,
                                      std::size_t pos, std::size_t total) {
    auto forward_as_is = [&] {
        pending_.push_back({type, pending_reply::forward, {}, {}, {}});
        return true;
    };
    switch (type) {
        case proto::msg::bind: {
            auto b = proto::decode_bind_head(body);
            if (!b) return false;
            auto it = client_statements_.find(std::string(b->statement));
            if (b->statement.empty() || it == client_statements_.end()) return forward_as_is();
            client_out_.skip(pos, total);
            ensure_prepared(it->second, pos);
            std::string m;
            proto::writer w(m);
            w.header(proto::msg::bind);
            w.cstring(b->portal);
            w.cstring(it->second.server_name);
            w.bytes(as_view(body.subspan(b->rest_offset)));
            w.finish();
            client_out_.insert(pos, std::move(m));
            return forward_as_is();
        }
        case proto::msg::describe:
        case proto::msg::close: {
            auto d = proto::decode_describe_or_close(body);
            if (!d) return false;
            auto it = client_statements_.find(std::string(d->name));
            if (d->kind != 'S' || d->name.empty() || it == client_statements_.end())
                return forward_as_is();
            if (type == proto::msg::close) return forward_as_is();  // a portal, or unknown
            client_out_.skip(pos, total);
            ensure_prepared(it->second, pos);
            std::string m;
            proto::writer w(m);
            w.header(proto::msg::describe);
            w.u8('S');
            w.cstring(it->second.server_name);
            w.finish();
            client_out_.insert(pos, std::move(m));
            return forward_as_is();
        }
    }
    return forward_as_is();
}

asio::awaitable<bool> client_session::link_server() {
    state = client_state::waiting;
    request_time = steady_clock::now();
    auto r = co_await pool_->acquire(executor(), worker_);
    auto waited_us = std::chrono::duration_cast<std::chrono::microseconds>(r.waited).count();
    pool_->stats.wait_time_us += waited_us;
    pool_->stats.wait_latency.record(waited_us);
    if (!r.server) {
        // (no conditional expression inside co_await: gcc 12 mishandles its temporaries)
        std::string sqlstate = r.sqlstate;
        if (sqlstate.empty()) sqlstate = "08006";
        co_await send_error(sqlstate, r.message);
        co_return false;
    }
    if (fatal_ || !socket_.is_open()) {
        // The client went away (KILL) while waiting: the server is clean, give it back.
        release_server(std::move(r.server), true);
        co_return false;
    }
    server_ = std::move(r.server);
    server_->link_client_id = id;
    linked_server_id = server_->id;
    if (!co_await sync_parameters(*server_)) {
        auto s = std::move(server_);
        linked_server_id = 0;
        pool_->discard(s);
        co_await send_error("08006", "could not set session parameters on the server: " +
                                         s->last_error);
        co_return false;
    }
    pool_->active_clients++;
    server_loop_running_ = true;
    asio::co_spawn(executor(), server_loop(server_),
                   [self = shared_from_this()](std::exception_ptr e) {
                       if (e) spdlog::error("client {}: server relay ended with an exception", self->id);
                       self->server_loop_done();
                   });
    state = client_state::active;
    co_return true;
}

asio::awaitable<bool> client_session::sync_parameters(pool::server_connection& s) {
    // One round trip with every SET the server needs to match what this client believes.
    std::string sql;
    for (auto& [k, v] : wanted_params_) {
        auto it = s.parameters.find(k);
        if (it != s.parameters.end() && it->second == v) continue;
        // set_config() takes the value as the setting's own text (SET with a quoted
        // literal would turn a list like search_path into a single element).
        sql += (sql.empty() ? "SELECT " : ", ") + std::string("pg_catalog.set_config(") +
               quote_literal(k) + ", " + quote_literal(v) + ", false)";
    }
    if (sql.empty()) co_return true;
    bool ok = co_await s.run_internal_query(std::move(sql), max_packet_);
    if (!ok) co_return false;
    // Parameters PostgreSQL does not report (search_path before 18, ...) are recorded by hand.
    for (auto& [k, v] : wanted_params_) s.parameters[k] = v;
    co_return true;
}

// ---------------------------------------------------------------------------------------
// Relay: server -> client

asio::awaitable<void> client_session::server_loop(pool::server_ptr server) {
    auto& sbuf = server->buffer;
    auto& stats = pool_->stats;
    std::uint32_t passthrough = 0;  // bytes of the current server message still to handle
    bool discard = false;           // ... and whether they are dropped (swallowed reply)
    for (;;) {
        sbuf.reserve_tail(4096);
        auto [rec, n] = co_await server->socket.async_read_some(sbuf.writable(), use_nothrow);
        if (rec) {
            if (client_gone_ || fatal_) break;  // finish_server() decides what happens
            spdlog::warn("server {} of {}/{} failed: {}", server->id, pool_->database(),
                         pool_->user(), rec.message());
            server->close_needed = true;
            server->transaction_status = 'E';
            stats.errors_server++;
            if (socket_.is_open())
                co_await send_error("08006", "server connection closed unexpectedly");
            error_code ignored;
            socket_.close(ignored);  // client_loop ends; finish_server discards the server
            break;
        }
        sbuf.commit(n);

        const std::uint8_t* data = sbuf.readable();
        const std::size_t avail = sbuf.size();
        std::size_t pos = 0;
        bool ready_idle = false;
        bool statement_violation = false;
        server_out_.reset(data);
        std::string injected;
        while (pos < avail) {
            if (passthrough > 0) {
                auto take = std::min<std::size_t>(passthrough, avail - pos);
                if (discard) server_out_.skip(pos, take);
                pos += take;
                passthrough -= std::uint32_t(take);
                continue;
            }
            proto::frame_header h;
            std::error_code ec;
            auto st = proto::scan_header({data + pos, avail - pos}, max_packet_, h, ec);
            if (st == proto::scan_status::need_more) break;
            if (st == proto::scan_status::error) {
                server->close_needed = true;
                co_await send_error("08P01", "invalid message from server: " + ec.message());
                error_code ignored;
                socket_.close(ignored);
                co_return;
            }
            const char t = char(h.type);
            const bool needs_body = t == proto::msg::ready_for_query ||
                                    t == proto::msg::parameter_status ||
                                    t == proto::msg::command_complete;
            if (needs_body && avail - pos < h.total()) break;

            // Replies Sluice gives itself go out in their turn, before this one.
            injected.clear();
            take_front_injections(injected);
            if (!injected.empty()) server_out_.insert(pos, std::move(injected));
            ready_idle = false;

            bool swallow = false;
            const bool async_message = t == proto::msg::notice_response ||
                                       t == proto::msg::notification_response ||
                                       t == proto::msg::parameter_status;
            if (!pending_.empty() && !async_message) {
                auto& front = pending_.front();
                swallow = front.action == pending_reply::swallow && t != proto::msg::error_response;
                if (t == proto::msg::copy_in_response && front.request == 'E')
                    drop_sync_ignored_during_copy();
                if (completes(front.request, t)) complete_front_reply(t == proto::msg::error_response);
            }

            if (needs_body) {
                std::span<const std::uint8_t> body(data + pos + 5, h.body_length);
                if (t == proto::msg::ready_for_query) {
                    char status = proto::decode_ready_for_query(body).value_or('E');
                    on_ready_for_query(status, *server);
                    ready_idle = status == 'I';
                    if (status != 'I' && mode_ == config::pool_mode::statement) {
                        // Statement mode: the server goes back after every statement, so a
                        // transaction block cannot work. As PgBouncer: refuse and close (the
                        // error replaces the ReadyForQuery; the server is dirty).
                        statement_violation = true;
                        std::string err;
                        proto::writer(err).error_response(
                            "25000", "transaction blocks not allowed in statement pooling mode",
                            "use pool_mode transaction for clients that open transactions",
                            "FATAL");
                        server_out_.skip(pos, h.total());
                        server_out_.insert(pos + h.total(), std::move(err));
                        pos += h.total();
                        break;
                    }
                } else if (t == proto::msg::parameter_status) {
                    if (auto ps = proto::decode_parameter_status(body)) {
                        // The client changed a parameter (SET ...): remember it for this
                        // client and for this server.
                        server->parameters[ps->first] = ps->second;
                        if (wanted_params_.count(ps->first)) wanted_params_[ps->first] = ps->second;
                    }
                } else if (auto tag = proto::decode_cstring(body)) {
                    on_command_complete(*tag, *server);
                }
                if (swallow) server_out_.skip(pos, h.total());
                pos += h.total();
                continue;
            }
            if (swallow) server_out_.skip(pos, 5);
            pos += 5;
            passthrough = h.body_length;
            discard = swallow;
        }
        if (passthrough == 0) {
            injected.clear();
            take_front_injections(injected);
            if (!injected.empty()) server_out_.insert(pos, std::move(injected));
        }

        const bool idle_now = ready_idle && outstanding_ == 0 && !unsynced_extended_ &&
                              pending_.empty() && transaction_status_ == 'I' && pos == avail &&
                              passthrough == 0;
        if (idle_now && refresh_untracked_ && mode_ != config::pool_mode::session) {
            // A SET/RESET may have changed parameters PostgreSQL does not report: read
            // them before the client gets its ReadyForQuery (it cannot send more yet).
            std::string copy;
            for (auto& [p, len] : server_out_.finish(pos))
                copy.append(static_cast<const char*>(p), len);
            sbuf.consume(pos);
            refresh_untracked_ = false;
            if (!co_await refresh_untracked_parameters(*server)) server->close_needed = true;
            if (!co_await write_client(copy)) break;
            stats.bytes_sent += copy.size();
        } else {
            const auto& pieces = server_out_.finish(pos);
            if (server_out_.size() > 0) {
                auto& bufs = server_pieces_;  // reused: no allocation per batch
                bufs.clear();
                for (auto& [p, len] : pieces) bufs.emplace_back(p, len);
                bool sent = co_await write_client(bufs);
                if (!sent) {
                    // The client is gone; client_loop will notice and finish_server() decides.
                    sbuf.consume(pos);
                    break;
                }
                stats.bytes_sent += server_out_.size();
            }
            sbuf.consume(pos);
        }

        if (statement_violation) {
            server->close_needed = true;
            fatal_ = true;
            error_code ignored;
            socket_.close(ignored);
            break;
        }

        if (ready_idle && spdlog::should_log(spdlog::level::trace))
            spdlog::trace("client {}: idle server {}: outstanding={} unsynced={} pending={} "
                          "front={} buffered={}",
                          id, server->id, outstanding_, unsynced_extended_, pending_.size(),
                          pending_.empty() ? '-' : pending_.front().request, sbuf.size());
        // Back to the pool at the end of a transaction, once nothing the client sent is
        // still unanswered (checked after the write: the client may have sent more since).
        if (ready_idle && mode_ != config::pool_mode::session && outstanding_ == 0 &&
            !unsynced_extended_ && pending_.empty() && transaction_status_ == 'I' &&
            sbuf.empty() && passthrough == 0 && server_ == server) {
            server_ = nullptr;
            linked_server_id = 0;
            state = client_state::idle;
            sbuf.shrink_if_empty();
            release_server(server, true);
            co_return;
        }
    }
    sbuf.shrink_if_empty();
}

void client_session::on_ready_for_query(char status, pool::server_connection& server) {
    auto& stats = pool_->stats;
    auto now = steady_clock::now();
    if (outstanding_ > 0) outstanding_--;
    stats.query_count++;
    auto query_us = std::chrono::duration_cast<std::chrono::microseconds>(now - query_start_).count();
    stats.query_time_us += query_us;
    stats.query_latency.record(query_us);
    if (outstanding_ > 0) mark_query_start();
    else query_since_ns.store(0, std::memory_order_relaxed);
    if (status == 'I') {
        // A transaction ended: an explicit one, or a single autocommit query.
        auto began = transaction_status_ != 'I' ? xact_start_ : now - std::chrono::microseconds(query_us);
        auto xact_us = std::chrono::duration_cast<std::chrono::microseconds>(now - began).count();
        stats.xact_count++;
        stats.xact_time_us += xact_us;
        stats.xact_latency.record(xact_us);
        xact_since_ns.store(0, std::memory_order_relaxed);
        idle_in_xact_since_ns.store(0, std::memory_order_relaxed);
    } else {
        if (transaction_status_ == 'I') {
            xact_start_ = now - std::chrono::microseconds(query_us);
            xact_since_ns.store(now_ns(), std::memory_order_relaxed);
        }
        if (outstanding_ == 0) idle_in_xact_since_ns.store(now_ns(), std::memory_order_relaxed);
    }
    transaction_status_ = status;
    server.transaction_status = status;
}

void client_session::on_command_complete(std::string_view tag, pool::server_connection& server) {
    if (tag == "SET" || tag == "RESET") {
        refresh_untracked_ = true;
    } else if (tag == "DISCARD ALL" || tag == "DEALLOCATE ALL") {
        // Every prepared statement of the server session is gone, the client's too.
        server.prepared.clear();
        server.prepared_lru.clear();
        client_statements_.clear();
        if (tag == "DISCARD ALL") refresh_untracked_ = true;
    }
}

void client_session::complete_front_reply(bool error) {
    auto front = std::move(pending_.front());
    pending_.pop_front();
    if (!error) return;
    // A Parse that failed created nothing.
    if (front.request == 'P') {
        if (!front.server_statement.empty()) forget_prepared(front.server_statement);
        if (!front.client_statement.empty()) client_statements_.erase(front.client_statement);
    }
    if (!is_extended(front.request)) return;
    // After an error PostgreSQL skips extended messages until Sync: so do their replies.
    while (!pending_.empty() && is_extended(pending_.front().request)) {
        auto& e = pending_.front();
        if (e.request == 'P') {
            if (!e.server_statement.empty()) forget_prepared(e.server_statement);
            if (!e.client_statement.empty()) client_statements_.erase(e.client_statement);
        }
        pending_.pop_front();
    }
}

void client_session::drop_sync_ignored_during_copy() {
    // COPY FROM STDIN through the extended protocol: PostgreSQL ignores a Sync received in
    // copy-in mode, so the Sync the client sent right after Execute gets no reply.
    if (pending_.size() >= 2 && pending_[1].request == 'S' &&
        pending_[1].action == pending_reply::forward) {
        pending_.erase(pending_.begin() + 1);
        if (outstanding_ > 0) outstanding_--;
    }
}

asio::awaitable<bool> client_session::refresh_untracked_parameters(pool::server_connection& s) {
    std::vector<std::string> names;
    for (auto& [k, v] : wanted_params_)
        if (!reported_by_server(k)) names.push_back(k);
    if (names.empty()) co_return true;
    std::string sql = "SELECT ";
    for (std::size_t i = 0; i < names.size(); ++i)
        sql += (i ? ", " : "") + std::string("current_setting(") + quote_literal(names[i]) + ", true)";
    std::vector<std::optional<std::string>> row;
    bool ok = co_await s.run_internal_query(std::move(sql), max_packet_, &row);
    if (!ok || row.size() != names.size()) co_return false;
    for (std::size_t i = 0; i < names.size(); ++i)
        if (row[i]) wanted_params_[names[i]] = s.parameters[names[i]] = *row[i];
    co_return true;
}

void client_session::server_loop_done() {
    server_loop_running_ = false;
    if (pool_) pool_->active_clients--;
    server_loop_done_.cancel();
}

asio::awaitable<void> client_session::finish_server() {
    client_gone_ = true;
    if (server_loop_running_ && server_) {
        error_code ignored;
        server_->socket.cancel(ignored);
        socket_.cancel(ignored);  // a relay blocked writing to a vanished client
        while (server_loop_running_) {
            server_loop_done_.expires_at(steady_clock::time_point::max());
            co_await server_loop_done_.async_wait(use_nothrow);
        }
    }
    if (!server_) co_return;
    auto s = std::move(server_);
    linked_server_id = 0;
    // A server is clean only if the client left between transactions with nothing in
    // flight; anything else (open transaction, pending results, COPY) closes it.
    bool replies_due = std::any_of(pending_.begin(), pending_.end(), [](const pending_reply& e) {
        return e.action != pending_reply::inject;
    });
    bool clean = outstanding_ == 0 && !unsynced_extended_ && !replies_due && transaction_status_ == 'I' &&
                 s->buffer.empty() && passthrough_ == 0 && s->socket.is_open() &&
                 !s->close_needed;
    if (!clean)
        spdlog::info("client {} left with its server {} not idle: closing the server", id, s->id);
    release_server(std::move(s), clean);
}

namespace {

// Runs the reset query (session mode) and waits out in-flight cancels before the server
// goes back to the pool. Runs on the server's own executor.
asio::awaitable<void> reset_and_release(pool::server_ptr s, std::string reset_query,
                                        std::size_t max_packet, steady_clock::duration cancel_wait) {
    auto deadline = steady_clock::now() + cancel_wait;
    asio::steady_timer t(s->socket.get_executor());
    while (s->cancels_in_flight.load() > 0 && steady_clock::now() < deadline) {
        t.expires_after(std::chrono::milliseconds(5));
        co_await t.async_wait(use_nothrow);
    }
    if (s->cancels_in_flight.load() > 0) {
        s->owner->discard(s);
        co_return;
    }
    if (!reset_query.empty()) {
        s->state = pool::server_state::used;
        bool ok = co_await s->run_internal_query(reset_query, max_packet);
        if (!ok) {
            spdlog::warn("reset query failed on server {}: {}", s->id, s->last_error);
            s->owner->discard(s);
            co_return;
        }
        // DISCARD ALL / DEALLOCATE ALL drop every prepared statement, and RESET ALL
        // puts unreported parameters back to their defaults.
        s->prepared.clear();
        s->prepared_lru.clear();
        s->owner->restore_defaults(*s);
    }
    s->owner->release(s);
}

}  // namespace

void client_session::release_server(pool::server_ptr s, bool clean) {
    if (!clean) {
        pool_->discard(std::move(s));
        return;
    }
    // The hot path (transaction mode, no cancel in flight) reads no configuration.
    if (mode_ != config::pool_mode::session && !reset_query_always_ &&
        s->cancels_in_flight.load() == 0) {
        pool_->release(std::move(s));
        return;
    }
    auto cfg = rt_.cfg();
    bool reset = mode_ == config::pool_mode::session || cfg->sluice.server_reset_query_always;
    std::string query = reset ? cfg->sluice.server_reset_query : std::string();
    if (query.empty() && s->cancels_in_flight.load() == 0) {
        pool_->release(std::move(s));
        return;
    }
    auto ex = s->socket.get_executor();
    asio::co_spawn(ex,
                   reset_and_release(s, query, max_packet_,
                                     steady_clock::duration(cfg->sluice.cancel_wait_timeout)),
                   [s](std::exception_ptr e) {
                       if (e) {
                           spdlog::error("server {}: reset failed with an exception", s->id);
                           s->owner->discard(s);
                       }
                   });
}

}  // namespace sluice::proxy
