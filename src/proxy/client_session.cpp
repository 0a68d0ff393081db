#include "sluice/proxy/client_session.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>

#include "sluice/admin/console.hpp"
#include "sluice/auth/md5.hpp"
#include "sluice/auth/scram.hpp"
#include "sluice/proxy/parameters.hpp"
#include "sluice/proxy/runtime.hpp"

namespace sluice::proxy {

namespace proto = sluice::protocol;
using namespace std::chrono_literals;

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
    rt_.sessions.remove(*this);
    error_code ignored;
    socket_.shutdown(asio::socket_base::shutdown_both, ignored);
    socket_.close(ignored);
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
            if (!co_await write_client(std::string("N"))) co_return false;
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

    if (!co_await authenticate(secret, secret.has_value() || g.auth_type_ == config::auth_type::trust ||
                                           g.auth_type_ == config::auth_type::any))
        co_return false;

    if (console) {
        auto role = admin::role_of(*cfg, user);
        if (role == admin::console_role::none) {
            co_await send_error("28000", "not allowed to connect to the admin console",
                                "only admin_users and stats_users may use the console");
            co_return false;
        }
        state = client_state::active;
        co_await admin::serve(rt_, *this, socket_, in_, role, out);
        co_return false;  // the console session is over
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
    pool_ = &rt_.pools.get(database, pool_user);
    pool_->clients++;
    pool_->stats.client_login_count++;
    mode_ = pool_->current_settings().mode;

    // Welcome without a server round trip when the pool already knows what a server says;
    // the very first client of a pool waits for the first server login.
    auto welcome = pool_->welcome_parameters();
    if (welcome.empty()) {
        if (!co_await link_server()) co_return false;
        welcome = pool_->welcome_parameters();
    }
    for (auto& [k, v] : welcome)
        if (is_tracked(k, g.track_extra_parameters)) wanted_params_[k] = v;
    for (auto& [k, v] : startup_values) wanted_params_[k] = v;

    w.authentication_ok();
    for (auto& [k, v] : welcome) {
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

        const std::uint8_t* data = in_.readable();
        const std::size_t avail = in_.size();
        std::size_t fwd = 0;
        bool terminate = false;
        bool starts_request = passthrough_ == 0 && outstanding_ == 0 && !unsynced_extended_;
        while (fwd < avail) {
            if (passthrough_ > 0) {
                auto take = std::min<std::size_t>(passthrough_, avail - fwd);
                fwd += take;
                passthrough_ -= std::uint32_t(take);
                continue;
            }
            proto::frame_header h;
            std::error_code ec;
            auto st = proto::scan_header({data + fwd, avail - fwd}, max_packet_, h, ec);
            if (st == proto::scan_status::need_more) break;
            if (st == proto::scan_status::error) {
                stats.errors_client++;
                co_await send_error("08P01", "invalid message from client: " + ec.message());
                co_return;
            }
            switch (h.type) {
                case proto::msg::terminate:
                    terminate = true;
                    break;
                case proto::msg::query:
                case proto::msg::function_call:
                    if (outstanding_++ == 0) query_start_ = steady_clock::now();
                    break;
                case proto::msg::sync:
                    if (outstanding_++ == 0) query_start_ = steady_clock::now();
                    unsynced_extended_ = false;
                    break;
                case proto::msg::parse:
                case proto::msg::bind:
                case proto::msg::describe:
                case proto::msg::execute:
                case proto::msg::close:
                case proto::msg::flush:
                    unsynced_extended_ = true;
                    break;
                default:  // CopyData/CopyDone/CopyFail and anything PostgreSQL will judge
                    break;
            }
            if (terminate) break;
            fwd += 5;
            passthrough_ = h.body_length;
        }

        if (fwd > 0) {
            if (!server_) {
                if (starts_request && transaction_status_ == 'I') xact_start_ = steady_clock::now();
                if (!co_await link_server()) co_return;
            }
            request_time = steady_clock::now();
            state = client_state::active;
            auto [wec, wn] = co_await asio::async_write(server_->socket, asio::buffer(data, fwd),
                                                        use_nothrow);
            if (wec) {
                pool_->stats.errors_server++;
                co_await send_error("08006", "server connection lost while sending the request");
                co_return;
            }
            stats.bytes_received += fwd;
            in_.consume(fwd);
        }
        if (terminate) {
            client_gone_ = true;
            co_return;
        }
    }
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
        sql += "SET " + quote_identifier(k) + " = " + quote_literal(v) + ";";
    }
    if (sql.empty()) co_return true;
    if (!co_await s.run_internal_query(sql, max_packet_)) co_return false;
    // Parameters PostgreSQL does not report (search_path before 18, ...) are recorded by hand.
    for (auto& [k, v] : wanted_params_) s.parameters[k] = v;
    co_return true;
}

// ---------------------------------------------------------------------------------------
// Relay: server -> client

asio::awaitable<void> client_session::server_loop(pool::server_ptr server) {
    auto& sbuf = server->buffer;
    auto& stats = pool_->stats;
    std::uint32_t passthrough = 0;  // bytes of the current server message still to forward
    bool released = false;
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
        while (pos < avail) {
            if (passthrough > 0) {
                auto take = std::min<std::size_t>(passthrough, avail - pos);
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
            ready_idle = false;
            if (h.type == proto::msg::ready_for_query || h.type == proto::msg::parameter_status) {
                if (avail - pos < h.total()) break;  // need the whole body
                std::span<const std::uint8_t> body(data + pos + 5, h.body_length);
                if (h.type == proto::msg::ready_for_query) {
                    auto now = steady_clock::now();
                    char status = proto::decode_ready_for_query(body).value_or('E');
                    if (outstanding_ > 0) outstanding_--;
                    stats.query_count++;
                    auto query_us =
                        std::chrono::duration_cast<std::chrono::microseconds>(now - query_start_).count();
                    stats.query_time_us += query_us;
                    stats.query_latency.record(query_us);
                    if (outstanding_ > 0) query_start_ = now;
                    if (status == 'I') {
                        // A transaction ended: an explicit one, or a single autocommit query.
                        auto began = transaction_status_ != 'I' ? xact_start_ : now - std::chrono::microseconds(query_us);
                        auto xact_us = std::chrono::duration_cast<std::chrono::microseconds>(now - began).count();
                        stats.xact_count++;
                        stats.xact_time_us += xact_us;
                        stats.xact_latency.record(xact_us);
                    } else if (transaction_status_ == 'I') {
                        xact_start_ = query_start_;
                    }
                    transaction_status_ = status;
                    server->transaction_status = status;
                    ready_idle = status == 'I';
                } else if (auto ps = proto::decode_parameter_status(body)) {
                    // The client changed a parameter (SET ...): remember it for this client
                    // and for this server.
                    server->parameters[ps->first] = ps->second;
                    if (wanted_params_.count(ps->first)) wanted_params_[ps->first] = ps->second;
                }
                pos += h.total();
                continue;
            }
            pos += 5;
            passthrough = h.body_length;
        }

        if (pos > 0) {
            asio::const_buffer b(data, pos);
            if (!co_await write_client(std::span<const asio::const_buffer>(&b, 1))) {
                // The client is gone; client_loop will notice and finish_server() decides.
                sbuf.consume(pos);
                break;
            }
            stats.bytes_sent += pos;
            sbuf.consume(pos);
        }

        // Back to the pool at the end of a transaction, once nothing the client sent is
        // still unanswered (checked after the write: the client may have sent more since).
        if (ready_idle && mode_ != config::pool_mode::session && outstanding_ == 0 &&
            !unsynced_extended_ && transaction_status_ == 'I' && sbuf.empty() &&
            passthrough == 0 && server_ == server) {
            server_ = nullptr;
            linked_server_id = 0;
            state = client_state::idle;
            sbuf.shrink_if_empty();
            released = true;
            release_server(server, true);
            break;
        }
    }
    if (!released) sbuf.shrink_if_empty();
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
    bool clean = outstanding_ == 0 && !unsynced_extended_ && transaction_status_ == 'I' &&
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
        // DISCARD ALL / DEALLOCATE ALL drop every prepared statement.
        s->prepared.clear();
        s->prepared_lru.clear();
    }
    s->owner->release(s);
}

}  // namespace

void client_session::release_server(pool::server_ptr s, bool clean) {
    if (!clean) {
        pool_->discard(std::move(s));
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
