// Startup and authentication: from the first byte to the welcome (AuthenticationOk,
// ParameterStatus..., BackendKeyData, ReadyForQuery).
#include "sluice/proxy/client_session.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "sluice/proxy/runtime.hpp"

#include "sluice/admin/console.hpp"
#include "sluice/auth/md5.hpp"
#include "sluice/auth/scram.hpp"
#include "sluice/proxy/parameters.hpp"

namespace sluice::proxy {

namespace proto = sluice::protocol;

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

asio::awaitable<bool> client_session::start_tls(std::string already_read) {
    auto tls = rt_.tls();
    socket_.start_tls(tls->client_side);
    error_code ec = co_await socket_.handshake(asio::ssl::stream_base::server, std::move(already_read));
    if (ec) {
        // Nothing can be said to the client: there is no channel to say it on.
        spdlog::info("client {} ({}:{}) closing because: TLS handshake failed: {}", id, addr, port,
                     net::verify_failure_reason(socket_.ssl(), ec));
        co_return false;
    }
    tls_info = socket_.tls_description();
    co_return true;
}

// Encryption negotiation, as PostgreSQL 17 does it:
//   SSLRequest      'S' and a TLS handshake when client TLS is on and this is TCP, else 'N'
//                   (PostgreSQL never does TLS over a Unix socket). Bytes that arrived
//                   behind the SSLRequest were sent before the client could know the
//                   answer: they are refused, not read as plaintext after the handshake
//                   (CVE-2021-23214).
//   ClientHello     (first byte 0x16, a TLS handshake record) direct TLS: the handshake
//                   runs on the bytes already read, and ALPN must have agreed on
//                   "postgresql", as PostgreSQL requires.
//   GSSENCRequest   'N': the client falls back to TLS or plaintext.
// After TLS is up, a second SSLRequest or a GSSENCRequest is a protocol violation.
asio::awaitable<bool> client_session::startup() {
    proto::startup_packet packet;
    proto::startup_message startup_msg;
    auto tls = rt_.tls();
    const bool tls_offered = tls->client_side && !unix_socket();
    for (;;) {
        if (!socket_.tls() && in_.empty()) {
            in_.reserve_tail(512);
            auto [rec, n] = co_await socket_.async_read_some(in_.writable(), use_nothrow);
            if (rec) co_return false;
            in_.commit(n);
        }
        if (!socket_.tls() && in_.readable()[0] == 0x16) {
            if (!tls_offered) {
                spdlog::info("client {} ({}:{}) closing because: direct TLS connection but "
                             "client TLS is off", id, addr, port);
                co_return false;
            }
            std::string hello(reinterpret_cast<const char*>(in_.readable()), in_.size());
            in_.consume(in_.size());
            if (!co_await start_tls(std::move(hello))) co_return false;
            if (net::negotiated_alpn(socket_.ssl()) != "postgresql") {
                spdlog::info("client {} ({}:{}) closing because: direct TLS connection without "
                             "ALPN postgresql", id, addr, port);
                co_return false;
            }
            continue;
        }
        if (!co_await read_startup_packet(packet)) co_return false;
        const bool ssl_req = std::holds_alternative<proto::ssl_request>(packet);
        if (ssl_req || std::holds_alternative<proto::gssenc_request>(packet)) {
            if (socket_.tls()) {
                co_await send_error("08P01", "encryption negotiation after TLS is established");
                co_return false;
            }
            if (ssl_req && tls_offered) {
                if (!in_.empty()) {
                    co_await send_error("08P01", "received unencrypted data after SSL request");
                    co_return false;
                }
                std::string yes = "S";
                if (!co_await write_client(yes)) co_return false;
                if (!co_await start_tls({})) co_return false;
                continue;
            }
            // 'N' lets sslmode=prefer clients go on in plaintext.
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
    if (g.log_connections)
        spdlog::info("client {} login attempt: db={} user={} tls={}", id, database, user,
                     tls_info.empty() ? "no" : tls_info);
    // client_tls_sslmode require and stronger: TCP clients must use TLS (a Unix socket is
    // local and never encrypted, as in PostgreSQL and PgBouncer).
    if (tls->client_mode >= net::sslmode::require && !unix_socket() && !socket_.tls()) {
        spdlog::info("client {} ({}:{}) closing because: SSL required (client_tls_sslmode={})",
                     id, addr, port, net::to_string(tls->client_mode));
        co_await send_error("28000", "SSL required",
                            "Sluice's client_tls_sslmode requires TLS: connect with sslmode=require");
        co_return false;
    }

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
    if (!co_await admit_login(*cfg, *db, startup_msg)) co_return false;
    pool_ = rt_.pools.attach(database, pool_user);
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
    reset_query_always_ = g.server_reset_query_always;
    relay::settings rs;
    rs.mode = mode_;
    rs.track_prepared = mode_ != config::pool_mode::session && g.max_prepared_statements > 0;
    rs.max_prepared = std::size_t(std::max(1, g.max_prepared_statements));
    rs.max_packet = max_packet_;
    rs.max_held = std::size_t(g.max_held_message_size);
    rs.rate_limited = tenant_ != nullptr;
    relay_.emplace(rs, static_cast<relay::observer&>(*this));

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

}  // namespace sluice::proxy
