// Startup and authentication: from the first byte to the welcome (AuthenticationOk,
// ParameterStatus..., BackendKeyData, ReadyForQuery).
#include "sluice/proxy/client_session.hpp"

#include <spdlog/spdlog.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "sluice/proxy/runtime.hpp"

#include "sluice/admin/console.hpp"
#include "sluice/auth/md5.hpp"
#include "sluice/auth/scram.hpp"
#include "sluice/net/interned.hpp"
#include "sluice/proxy/parameters.hpp"

namespace sluice::proxy {

namespace proto = sluice::protocol;

// What a login reads into: its messages (startup packet, password, SASL) are small; a
// larger one grows the buffer (doubling), up to the protocol's limits.
constexpr std::size_t login_buffer_size = 1024;

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
        in_.reserve_tail(512, login_buffer_size);
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
        in_.reserve_tail(1024, login_buffer_size);
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
    tls_info = &net::interned(socket_.tls_description());
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
asio::awaitable<bool> client_session::startup(const refusal* refuse) {
    proto::startup_packet packet;
    proto::startup_message startup_msg;
    auto tls = rt_.tls();
    const bool tls_offered = tls->client_side && !unix_socket();
    for (;;) {
        if (!socket_.tls() && in_.empty()) {
            in_.reserve_tail(512, login_buffer_size);
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

    if (refuse) {
        co_await send_error(refuse->sqlstate, refuse->message);
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
    const std::string* db_param = startup_msg.find("database");
    set_identity({*user_param, db_param && !db_param->empty() ? *db_param : *user_param, {}});
    if (g.log_connections)
        spdlog::info("client {} login attempt: db={} user={} tls={}", id, database(), user(),
                     tls_info.load()->empty() ? "no" : *tls_info.load());
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
        auto ignored_name = [&](std::string_view name) {
            return std::any_of(g.ignore_startup_parameters.begin(),
                               g.ignore_startup_parameters.end(),
                               [&](const std::string& k) { return iequals(k, name); });
        };
        if (key == "options" && !ignored_name(key)) {
            // psql's PGOPTIONS, JDBC's options: tracked settings become wanted values
            // like startup parameters; ignored ones are dropped; anything else is refused
            // in PgBouncer's words.
            auto options = parse_startup_options(value);
            if (!options) {
                co_await send_error("08P01", "unsupported options startup parameter: only "
                                             "'-c config=val' and '--config=val' are allowed");
                co_return false;
            }
            for (auto& opt : *options) {
                if (auto canonical = tracked_parameter_name(opt.name, g.track_extra_parameters)) {
                    startup_values[*canonical] = opt.value;
                } else if (!ignored_name(opt.name)) {
                    co_await send_error("08P01", "unsupported startup parameter in options: " +
                                                     opt.name);
                    co_return false;
                }
            }
            continue;
        }
        if (auto canonical = tracked_parameter_name(key, g.track_extra_parameters)) {
            startup_values[*canonical] = value;
            continue;
        }
        bool ignored = ignored_name(key);
        if (!ignored) {
            co_await send_error("08P01", "unsupported startup parameter: " + key,
                                "add it to ignore_startup_parameters to let clients send it");
            co_return false;
        }
    }
    if (!startup_values.count("application_name") && !fallback_app.empty())
        startup_values["application_name"] = fallback_app;
    if (g.application_name_add_host) {
        // As PgBouncer: where the client comes from, in what the server (pg_stat_activity,
        // its log) sees, once at login; a later SET application_name replaces it.
        std::string& app = startup_values["application_name"];
        app = (app.empty() ? std::string() : app + " - ") + addr + ":" + std::to_string(port);
    }
    if (auto it = startup_values.find("application_name"); it != startup_values.end())
        set_identity({user(), database(), it->second});

    // Admin console: the virtual database `sluice` (and `pgbouncer` for existing tools).
    bool console = database() == "sluice" || database() == "pgbouncer";
    const config::database* db = console ? nullptr : cfg->find_database(database());
    auto users = rt_.users();
    auto secret = users->find(user());

    // As PgBouncer: the user pgbouncer (or sluice) may enter the console over the unix
    // socket without a password when it runs as the same OS user as Sluice.
    if (console && (user() == "pgbouncer" || user() == "sluice") && addr == "unix") {
        ucred peer{};
        socklen_t len = sizeof peer;
        if (::getsockopt(socket_.native_handle(), SOL_SOCKET, SO_PEERCRED, &peer, &len) == 0 &&
            peer.uid == ::getuid()) {
            console_role_ = admin::console_role::admin;
            co_return true;
        }
    }

    // The method: auth_type, or under hba the first pg_hba rule that matches (none: a
    // rejection, as in PostgreSQL).
    auth::hba_method method = auth::hba_method::md5;
    std::string map;
    bool clientcert_full = false;
    switch (g.auth_type_) {
        case config::auth_type::trust:
        case config::auth_type::any: method = auth::hba_method::trust; break;
        case config::auth_type::plain: method = auth::hba_method::password; break;
        case config::auth_type::md5: method = auth::hba_method::md5; break;
        case config::auth_type::scram_sha_256: method = auth::hba_method::scram_sha_256; break;
        case config::auth_type::cert: method = auth::hba_method::cert; break;
        case config::auth_type::hba: {
            auto rules = rt_.rules();
            auth::hba_request req;
            req.unix_socket = unix_socket();
            req.tls = socket_.tls();
            if (!req.unix_socket) req.address = addr;
            req.database = database();
            req.user = user();
            const auth::hba_rule* rule = rules->hba ? rules->hba->match(req) : nullptr;
            // PostgreSQL's wording, which operators search for.
            const std::string where = "host \"" + (req.unix_socket ? std::string("[local]") : addr) +
                                      "\", user \"" + user() + "\", database \"" + database() +
                                      "\", " + (req.tls ? "SSL encryption" : "no encryption");
            if (!rule) {
                spdlog::info("client {} closing because: no pg_hba.conf entry for {}", id, where);
                co_await send_error("28000", "no pg_hba.conf entry for " + where);
                co_return false;
            }
            if (rule->method == auth::hba_method::reject) {
                spdlog::info("client {} closing because: pg_hba.conf rejects connection for {} "
                             "(line {})", id, where, rule->line);
                co_await send_error("28000", "pg_hba.conf rejects connection for " + where);
                co_return false;
            }
            method = rule->method;
            if (auto it = rule->options.find("map"); it != rule->options.end()) map = it->second;
            // clientcert=verify-ca|verify-full on a password rule: a verified certificate is
            // needed before the password is asked for; verify-full also checks, after it,
            // that the certificate is this user's (as PostgreSQL orders it).
            if (auto it = rule->options.find("clientcert");
                it != rule->options.end() && method != auth::hba_method::cert) {
                if (!co_await check_cert(map, false)) co_return false;
                clientcert_full = it->second == "verify-full";
            }
            spdlog::debug("client {} matched pg_hba line {} ({})", id, rule->line,
                          auth::to_string(method));
            break;
        }
    }

    // auth_user + auth_query: a user not in auth_file is looked up in PostgreSQL (cached,
    // one query for a burst of logins). Only for the methods that need a secret.
    const bool needs_secret = method == auth::hba_method::password ||
                              method == auth::hba_method::md5 ||
                              method == auth::hba_method::scram_sha_256;
    if (!secret && !console && db && needs_secret &&
        !(db->auth_user.empty() ? g.auth_user : db->auth_user).empty()) {
        auto found = co_await rt_.auth_queries.lookup(rt_, database(), user(), executor());
        if (!found.ok) {
            spdlog::warn("client {} closing because: auth_query failed for user {}: {}", id, user(),
                         found.error);
            co_await send_error("28000", "authentication failed: the user lookup (auth_query) "
                                         "did not run; see Sluice's log");
            co_return false;
        }
        secret = found.secret;  // none: fails below like a wrong password
        // An md5 or plaintext secret is what this user's pool logs in with; for a SCRAM
        // verifier the client's own proof is (authenticate() hands its keys over).
        if (secret && !auth::is_scram_secret(*secret) &&
            (db->user.empty() || db->user == user()))
            rt_.pools.get(database(), user()).learn_secret(*secret);
    }

    // auth_type trust asks for no password, but the user must be listed in auth_file, as in
    // PgBouncer (`any` takes any name; the console's users are checked as they are).
    if (g.auth_type_ == config::auth_type::trust && !secret && !console) {
        spdlog::info("client {} closing because: no such user: {}", id, user());
        co_await send_error("08P01", "no such user: " + user());
        co_return false;
    }
    bool known = secret.has_value() || method == auth::hba_method::trust;
    bool authenticated = co_await authenticate(method, map, secret, known);
    if (!authenticated) co_return false;
    if (clientcert_full) {
        auto cn = net::peer_common_name(socket_.ssl());
        if (!cn || !may_log_in_as_user(*cn, map)) {
            // PostgreSQL answers as for a wrong password and logs the real reason.
            spdlog::info("client {} closing because: certificate validation "
                         "(clientcert=verify-full) failed for user \"{}\": CN mismatch", id, user());
            co_await send_error("28P01", "password authentication failed for user \"" + user() + "\"");
            co_return false;
        }
    }

    if (console) {
        auto role = admin::role_of(*cfg, user());
        if (role == admin::console_role::none) {
            co_await send_error("28000", "not allowed to connect to the admin console",
                                "only admin_users and stats_users may use the console");
            co_return false;
        }
        console_role_ = role;
        co_return true;  // run() serves the console once the login timeout is off
    }
    if (db && rt_.database_disabled(database())) {
        co_await send_error("57P03", "database \"" + database() + "\" is disabled",
                            "an administrator ran DISABLE; ENABLE lets clients in again");
        co_return false;
    }
    if (!db) {
        spdlog::info("client {} closing because: no such database: {}", id, database());
        co_await send_error("3D000", "database \"" + database() + "\" does not exist",
                            "no such entry in the [databases] section of Sluice's configuration");
        co_return false;
    }

    std::string pool_user = db->user.empty() ? user() : db->user;
    if (!co_await admit_login(*cfg, *db, startup_msg)) co_return false;
    pool_ = rt_.pools.attach(database(), pool_user);
    // From now on shared with the pool's clients that say the same.
    if (!g.application_name_add_host) who_ = pool_->intern_identity(*who_);
    pool_->stats.client_login_count++;
    mode_ = pool_->current_settings().mode;
    {
        const config::user* u = cfg->find_user(user());
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
    rs.max_prepared = std::uint32_t(std::max(1, g.max_prepared_statements));
    rs.max_packet = std::uint32_t(g.max_packet_size);
    rs.max_held = std::uint32_t(g.max_held_message_size);
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
    pool::param_set wanted;
    for (auto& [k, v] : welcome)
        if (is_tracked(k, g.track_extra_parameters)) wanted[k] = v;
    for (auto& [k, v] : startup_values) wanted[k] = v;
    wanted_params_ = pool_->intern_parameters(std::move(wanted));

    w.authentication_ok();
    for (auto& [k, v] : welcome) {
        if (!reported_by_server(k) && !is_server_status_parameter(k)) continue;
        auto it = wanted_params_->find(k);
        w.parameter_status(k, it != wanted_params_->end() ? it->second : v);
    }
    for (auto& [k, v] : startup_values)
        if (!welcome.count(k) && reported_by_server(k)) w.parameter_status(k, v);
    w.backend_key_data(cancel_key.process_id, cancel_key.secret_key);
    w.ready_for_query('I');
    // Logged in from here, before the client can see ReadyForQuery: its next connection
    // must find this one counted (max_db_client_connections, SHOW CLIENTS). Its identity
    // is settled: other threads read it once the state has left login.
    state = client_state::idle;
    // A server linked for the welcome stays linked: in transaction mode it goes back at
    // the end of the client's first transaction.
    co_return co_await write_client(out);
}

bool client_session::may_log_in_as_user(const std::string& system_user,
                                        const std::string& map) const {
    return map.empty() ? system_user == user() : rt_.rules()->ident->allows(map, system_user, user());
}

asio::awaitable<bool> client_session::check_cert(std::string map, bool full) {
    auto cn = socket_.tls() ? net::peer_common_name(socket_.ssl()) : std::nullopt;
    if (!cn) {
        spdlog::info("client {} closing because: no verified client certificate (user {})", id,
                     user());
        co_await send_error("28000", "connection requires a valid client certificate");
        co_return false;
    }
    if (!full) co_return true;  // clientcert=verify-ca: any certificate of the CA
    if (!may_log_in_as_user(*cn, map)) {
        spdlog::info("client {} closing because: certificate CN \"{}\" is not user \"{}\"{}", id,
                     *cn, user(), map.empty() ? std::string() : " in ident map " + map);
        co_await send_error("28000", "certificate authentication failed for user \"" + user() + "\"");
        co_return false;
    }
    co_return true;
}

asio::awaitable<bool> client_session::check_peer(std::string map) {
    ucred peer{};
    socklen_t len = sizeof peer;
    std::string os_user;
    if (unix_socket() &&
        ::getsockopt(socket_.native_handle(), SOL_SOCKET, SO_PEERCRED, &peer, &len) == 0) {
        std::vector<char> buf(16384);
        passwd pw{};
        passwd* found = nullptr;
        if (::getpwuid_r(peer.uid, &pw, buf.data(), buf.size(), &found) == 0 && found)
            os_user = found->pw_name;
    }
    if (os_user.empty()) {
        spdlog::info("client {} closing because: peer authentication needs a Unix socket with "
                     "a known peer (user {})", id, user());
        co_await send_error("28000", "Peer authentication failed for user \"" + user() + "\"");
        co_return false;
    }
    if (!may_log_in_as_user(os_user, map)) {
        spdlog::info("client {} closing because: peer OS user \"{}\" is not user \"{}\"{}", id,
                     os_user, user(), map.empty() ? std::string() : " in ident map " + map);
        co_await send_error("28000", "Peer authentication failed for user \"" + user() + "\"");
        co_return false;
    }
    co_return true;
}

asio::awaitable<bool> client_session::authenticate(auth::hba_method method, std::string map,
                                                   const std::optional<std::string>& secret,
                                                   bool known) {
    auto cfg = rt_.cfg();
    std::string out;
    proto::writer w(out);
    auto refuse = [&]() -> asio::awaitable<bool> {
        // The same answer for an unknown user and a wrong password: no user enumeration.
        if (pool_) pool_->stats.errors_login++;
        spdlog::info("client {} closing because: password authentication failed for user {}", id,
                     user());
        co_await send_error("28P01", "password authentication failed for user \"" + user() + "\"");
        co_return false;
    };

    switch (method) {
        case auth::hba_method::trust: co_return true;
        case auth::hba_method::reject: co_return co_await refuse();  // (hba handles it first)
        case auth::hba_method::cert: co_return co_await check_cert(map, true);
        case auth::hba_method::peer: co_return co_await check_peer(map);
        default: break;
    }

    std::optional<std::string> s = known ? secret : std::nullopt;
    // scram-sha-256 means SCRAM: an md5 secret cannot be checked by it, and falling back
    // to md5 would give the client a weaker method than the configuration asked for.
    if (method == auth::hba_method::scram_sha_256 && s && auth::is_md5_secret(*s)) {
        spdlog::warn("user {} has an md5 secret in the auth file, which scram-sha-256 cannot "
                     "check: login refused (store a SCRAM secret or a plaintext password)", user());
        s.reset();  // run the exchange against a made-up secret: the same answer as a wrong password
    }
    // md5 with a SCRAM verifier: SCRAM, as PostgreSQL does (md5 cannot check a verifier).
    bool use_scram = method == auth::hba_method::scram_sha_256 ||
                     (method == auth::hba_method::md5 && s && auth::is_scram_secret(*s));
    const bool cleartext = method == auth::hba_method::password && !(s && auth::is_scram_secret(*s));

    proto::message_view m;
    if (cleartext) {
        w.authentication_cleartext();
        if (!co_await write_client(out)) co_return false;
        if (!co_await read_client_message(m) || m.type != proto::msg::password) co_return false;
        auto pw = proto::decode_cstring(m.body);
        if (!pw || !s) co_return co_await refuse();
        bool ok = auth::is_md5_secret(*s) ? auth::md5_stored(*pw, user()) == *s : *pw == *s;
        if (!ok) co_return co_await refuse();
        co_return true;
    }

    if (!use_scram && method != auth::hba_method::password) {
        std::array<std::uint8_t, 4> salt;
        auth::random_bytes(salt.data(), salt.size());
        w.authentication_md5(salt);
        if (!co_await write_client(out)) co_return false;
        if (!co_await read_client_message(m) || m.type != proto::msg::password) co_return false;
        auto pw = proto::decode_cstring(m.body);
        if (!pw || !s || !auth::md5_verify(*s, user(), salt, *pw)) co_return co_await refuse();
        co_return true;
    }

    auth::scram_server scram(s, cfg->sluice.scram_iterations, user());
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
        auto cfgdb = cfg->find_database(database());
        std::string pool_user = cfgdb && !cfgdb->user.empty() ? cfgdb->user : user();
        if (cfgdb && pool_user == user())
            rt_.pools.get(database(), pool_user)
                .learn_scram_keys(scram.client_key(), scram.secret().server_key);
    }
    co_return true;
}

}  // namespace sluice::proxy
