#include "sluice/pool/server_connection.hpp"

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "sluice/auth/md5.hpp"
#include "sluice/auth/scram.hpp"

namespace sluice::pool {

namespace proto = sluice::protocol;

server_connection::server_connection(asio::any_io_executor ex, std::uint64_t id_)
    : socket(std::move(ex)), id(id_) {}

namespace {

// Reads until one whole message is buffered; returns it (valid until the buffer is next
// touched) and consumes it. False on I/O error or a malformed frame.
asio::awaitable<bool> read_message(net::stream& socket, byte_buffer& buf, std::size_t max,
                                   proto::message_view& out, std::string& error) {
    for (;;) {
        std::size_t consumed = 0;
        std::error_code ec;
        auto st = proto::next_message({buf.readable(), buf.size()}, max, out, consumed, ec);
        if (st == proto::scan_status::complete) {
            buf.begin += consumed;  // the view stays valid: no compaction until next read
            co_return true;
        }
        if (st == proto::scan_status::error) {
            error = "invalid message from server: " + ec.message();
            co_return false;
        }
        if (buf.begin == buf.end) buf.begin = buf.end = 0;
        buf.reserve_tail(8192);
        auto [rec, n] = co_await socket.async_read_some(buf.writable(), use_nothrow);
        if (rec) {
            error = rec == asio::error::eof ? "server closed the connection" : rec.message();
            co_return false;
        }
        buf.commit(n);
    }
}

asio::awaitable<bool> write_all(net::stream& socket, const std::string& data,
                                std::string& error) {
    auto [ec, n] = co_await asio::async_write(socket, asio::buffer(data), use_nothrow);
    if (ec) error = ec.message();
    co_return !ec;
}

}  // namespace

asio::awaitable<bool> connect_socket(stream_socket& socket, const std::string& host, int port,
                                     std::string& error) {
    if (!host.empty() && host[0] == '/') {
        std::string path = host + "/.s.PGSQL." + std::to_string(port);
        asio::local::stream_protocol::endpoint ep(path);
        asio::generic::stream_protocol::endpoint gep(ep.data(), ep.size());
        auto [ec] = co_await socket.async_connect(gep, use_nothrow);
        if (!ec) co_return true;
        error = "could not connect to " + path + ": " + ec.message();
        socket.close(ec);
        co_return false;
    }
    asio::ip::tcp::resolver resolver(socket.get_executor());
    auto [rec, results] = co_await resolver.async_resolve(host, std::to_string(port), use_nothrow);
    if (rec) {
        error = "could not resolve " + host + ": " + rec.message();
        co_return false;
    }
    for (const auto& entry : results) {
        asio::generic::stream_protocol::endpoint gep(entry.endpoint().data(),
                                                     entry.endpoint().size());
        auto [ec] = co_await socket.async_connect(gep, use_nothrow);
        if (!ec) {
            net::tcp_options{}.apply(socket.native_handle());  // NODELAY, keepalive
            co_return true;
        }
        error = "could not connect to server " + host + ":" + std::to_string(port) + ": " +
                ec.message();
        socket.close(ec);
    }
    co_return false;
}

asio::awaitable<bool> server_connection::connect(login_params p, std::string host) {
    const net::sslmode mode = p.tls ? p.tls->server_mode : net::sslmode::disable;
    tls_generation = p.tls ? p.tls->server_generation : 0;
    if (mode != net::sslmode::allow) co_return co_await connect_with(p, mode, host);
    // allow (libpq's meaning): plaintext first, TLS only if the server insists, which
    // PostgreSQL says with 28000 (no pg_hba.conf entry ... no encryption).
    if (co_await connect_with(p, net::sslmode::disable, host)) co_return true;
    if (!last_error_fields || last_error_fields->sqlstate != "28000") co_return false;
    reset_for_retry();
    co_return co_await connect_with(p, net::sslmode::require, host);
}

void server_connection::reset_for_retry() {
    socket.reset();
    buffer.consume(buffer.size());
    parameters.clear();
    last_error_fields.reset();
    last_error_transient = true;
    backend_key = {};
    tls_info.clear();
    transaction_status = 'I';
    state = server_state::login;
}

void server_connection::terminate() {
    if (socket.is_open()) {
        // Best effort and without waiting: PostgreSQL logs a client that leaves without
        // Terminate as "unexpected EOF"; a full send buffer here is not worth waiting on.
        std::string out;
        proto::writer(out).terminate();
        ::send(socket.native_handle(), out.data(), out.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    close();
}

asio::awaitable<bool> server_connection::negotiate_tls(std::shared_ptr<const net::tls_config> tls,
                                                       net::sslmode mode, std::string host,
                                                       int port) {
    const std::string where = host + ":" + std::to_string(port);
    // SSLRequest: int32 length 8, int32 80877103. The answer is one byte, read alone so
    // that nothing of the handshake is taken from the socket here.
    std::string request;
    proto::writer(request).ssl_request();
    std::string err;
    if (!co_await write_all(socket, request, err)) {
        last_error = "could not send SSLRequest to " + where + ": " + err;
        co_return false;
    }
    char answer = 0;
    auto [rec, n] = co_await asio::async_read(socket.lowest_layer(), asio::buffer(&answer, 1),
                                              use_nothrow);
    if (rec) {
        last_error = "server " + where + " closed the connection during TLS negotiation";
        co_return false;
    }
    if (answer == 'N') {
        if (mode >= net::sslmode::require) {
            last_error_transient = false;  // the server's configuration, not its state
            last_error = "server " + where + " does not accept TLS, and server_tls_sslmode is " +
                         net::to_string(mode);
            spdlog::error("{}", last_error);
            co_return false;
        }
        co_return true;  // prefer: plaintext
    }
    if (answer != 'S') {
        last_error = "server " + where + " sent an invalid answer to SSLRequest";
        co_return false;
    }
    socket.start_tls(tls->server_side);
    if (!net::prepare_server_tls(socket.ssl(), mode, host, err)) {
        last_error_transient = false;
        last_error = err;
        co_return false;
    }
    error_code ec = co_await socket.handshake(asio::ssl::stream_base::client);
    if (ec) {
        // A certificate that does not verify stays so; a reset mid-handshake may pass.
        if (SSL_get_verify_result(socket.ssl()) != X509_V_OK) last_error_transient = false;
        last_error = "TLS handshake with server " + where +
                     " failed: " + net::verify_failure_reason(socket.ssl(), ec);
        spdlog::error("{}", last_error);
        co_return false;
    }
    tls_info = socket.tls_description();
    co_return true;
}

asio::awaitable<bool> server_connection::connect_with(login_params p, net::sslmode mode,
                                                      const std::string& h) {
    connect_time = last_used = steady_clock::now();
    internal_query_timeout = p.connect_timeout;
    state = server_state::login;

    // A watchdog rather than a timeout per operation: one timer for the whole login.
    auto timed_out = std::make_shared<bool>(false);
    asio::steady_timer watchdog(socket.get_executor(), p.connect_timeout);
    watchdog.async_wait([this, timed_out](error_code ec) {
        if (ec) return;
        *timed_out = true;
        error_code ignored;
        socket.cancel(ignored);
        socket.close(ignored);
    });
    struct cancel_on_exit {
        asio::steady_timer& t;
        ~cancel_on_exit() { t.cancel(); }
    } guard{watchdog};

    auto fail = [&](std::string why) {
        if (*timed_out) why = "server_connect_timeout: no answer from the server in time";
        last_error = std::move(why);
        error_code ignored;
        socket.close(ignored);
        return false;
    };
    // An authentication exchange Sluice cannot complete: retrying will not change it.
    auto refuse = [&](std::string why) {
        last_error_transient = false;
        return fail(std::move(why));
    };

    if (!co_await connect_socket(socket.lowest_layer(), h, p.port, last_error))
        co_return fail(last_error);
    const bool unix_socket = !h.empty() && h[0] == '/';
    if (!unix_socket) p.tcp.apply(socket.native_handle());
    set_host(h, p.port);
    // As libpq: TLS is never used over a Unix socket.
    if (mode != net::sslmode::disable && !unix_socket && p.tls && p.tls->server_side &&
        !co_await negotiate_tls(p.tls, mode, h, p.port)) {
        // (negotiate_tls says whether waiting may help: a certificate that does not
        // verify, or a server refusing TLS that is required, is a configuration matter.)
        co_return fail(last_error);
    }

    std::string out;
    proto::writer w(out);
    std::vector<std::pair<std::string, std::string>> params{{"user", p.user},
                                                            {"database", p.database}};
    for (auto& kv : p.startup_parameters) params.push_back(kv);
    w.startup(params);
    std::string err;
    if (!co_await write_all(socket, out, err)) co_return fail(err);

    std::optional<auth::scram_client> scram;
    proto::message_view m;
    for (;;) {
        if (!co_await read_message(socket, buffer, p.max_packet_size, m, err))
            co_return fail(err);
        switch (m.type) {
            case proto::msg::authentication: {
                auto req = proto::decode_authentication(m.body);
                if (!req) co_return refuse("malformed authentication request from server");
                out.clear();
                switch (req->code) {
                    case 0:
                        continue;
                    case 3:  // cleartext
                        if (!p.password || auth::is_md5_secret(*p.password) ||
                            auth::is_scram_secret(*p.password))
                            co_return refuse("server asks for a cleartext password, which "
                                           "Sluice does not have for user " + p.user);
                        w.password(*p.password);
                        break;
                    case 5:  // md5
                        if (!p.password || auth::is_scram_secret(*p.password))
                            co_return refuse("server asks for md5 authentication, which needs "
                                           "a plaintext or md5 password for user " + p.user);
                        w.password(auth::md5_response(*p.password, p.user, req->md5_salt));
                        break;
                    case 10: {  // SASL
                        bool offered = false;
                        for (auto& mech : req->sasl_mechanisms)
                            offered |= mech == "SCRAM-SHA-256";
                        if (!offered) co_return refuse("server offers no SASL mechanism Sluice knows");
                        if (p.password && !auth::is_md5_secret(*p.password) &&
                            !auth::is_scram_secret(*p.password)) {
                            scram = auth::scram_client::with_password(*p.password);
                        } else if (!p.scram_client_key.empty()) {
                            scram = auth::scram_client::with_keys(p.scram_client_key,
                                                                  p.scram_server_key);
                        } else {
                            co_return refuse("server asks for SCRAM authentication; Sluice needs "
                                           "a plaintext password or a client's SCRAM login "
                                           "for user " + p.user);
                        }
                        w.sasl_initial_response("SCRAM-SHA-256", scram->client_first());
                        break;
                    }
                    case 11: {
                        if (!scram) co_return refuse("unexpected SASL continue from server");
                        auto final_msg = scram->server_first(req->sasl_data);
                        if (!final_msg) co_return refuse("malformed SCRAM message from server");
                        w.sasl_response(*final_msg);
                        break;
                    }
                    case 12:
                        if (!scram || !scram->server_final(req->sasl_data))
                            co_return refuse("server's SCRAM signature does not verify");
                        continue;
                    default:
                        co_return refuse("unsupported authentication method " +
                                       std::to_string(req->code) + " requested by server");
                }
                if (!co_await write_all(socket, out, err)) co_return fail(err);
                break;
            }
            case proto::msg::error_response: {
                last_error_fields = proto::decode_error(m.body);
                // PostgreSQL's refusal: final, except while it starts up or shuts down
                // (57P03 cannot_connect_now, 57P01/57P02), which a failover goes through,
                // and a server full for now (53300 too_many_connections): another host,
                // or the same one a little later, may take the connection.
                last_error_transient =
                    last_error_fields && (last_error_fields->sqlstate.rfind("57P0", 0) == 0 ||
                                          last_error_fields->sqlstate == "53300");
                co_return fail(last_error_fields ? last_error_fields->message
                                                 : "server refused the login");
            }
            case proto::msg::parameter_status:
                if (auto ps = proto::decode_parameter_status(m.body)) parameters.set(ps->first, ps->second);
                break;
            case proto::msg::backend_key_data:
                if (auto k = proto::decode_backend_key_data(m.body)) backend_key = *k;
                break;
            case proto::msg::ready_for_query:
                transaction_status = proto::decode_ready_for_query(m.body).value_or('I');
                state = server_state::idle;
                buffer.shrink_if_empty();
                co_return true;
            default:  // NoticeResponse, NegotiateProtocolVersion: nothing to do
                break;
        }
    }
}

asio::awaitable<bool> server_connection::run_internal_query(
    std::string sql, std::size_t max_packet_size, std::vector<std::optional<std::string>>* row,
    std::vector<std::optional<std::string>> bind_values) {
    // A server that does not answer an internal query in time is closed: the caller then
    // discards it (a reset or check query must never hold a client or slot for ever).
    auto timed_out = std::make_shared<bool>(false);
    asio::steady_timer watchdog(socket.get_executor(), internal_query_timeout);
    watchdog.async_wait([this, timed_out](error_code ec) {
        if (ec) return;
        *timed_out = true;
        error_code ignored;
        socket.close(ignored);
    });
    struct cancel_on_exit {
        asio::steady_timer& t;
        ~cancel_on_exit() { t.cancel(); }
    } guard{watchdog};
    bool ok = co_await run_internal_query_unbounded(std::move(sql), max_packet_size, row,
                                                    std::move(bind_values));
    if (!ok && *timed_out)
        last_error = "internal query timed out (server_connect_timeout): " + last_error;
    co_return ok;
}

asio::awaitable<bool> server_connection::run_internal_query_unbounded(
    std::string sql, std::size_t max_packet_size, std::vector<std::optional<std::string>>* row,
    std::vector<std::optional<std::string>> bind_values) {
    std::string out;
    proto::writer w(out);
    if (bind_values.empty()) {
        w.query(sql);
    } else {
        w.parse("", sql);
        w.bind("", "", bind_values);
        w.execute("");
        w.sync();
    }
    std::string err;
    if (!co_await write_all(socket, out, err)) {
        last_error = err;
        co_return false;
    }
    bool ok = true;
    proto::message_view m;
    for (;;) {
        if (!co_await read_message(socket, buffer, max_packet_size, m, err)) {
            last_error = err;
            co_return false;
        }
        if (m.type == proto::msg::error_response) {
            ok = false;
            last_error_fields = proto::decode_error(m.body);
            last_error = last_error_fields ? last_error_fields->message : "error";
        } else if (m.type == proto::msg::parameter_status) {
            if (auto ps = proto::decode_parameter_status(m.body)) parameters.set(ps->first, ps->second);
        } else if (m.type == proto::msg::data_row && row && row->empty()) {
            if (auto values = proto::decode_data_row(m.body))
                for (auto& v : *values)
                    row->push_back(v ? std::optional<std::string>(std::string(*v)) : std::nullopt);
        } else if (m.type == proto::msg::ready_for_query) {
            transaction_status = proto::decode_ready_for_query(m.body).value_or('I');
            buffer.shrink_if_empty();
            co_return ok && transaction_status == 'I';
        }
    }
}

void server_connection::migrate(asio::any_io_executor ex) {
    if (!socket.migrate(std::move(ex))) close_needed = true;
}

bool server_connection::broken_while_idle() {
    if (!socket.is_open()) return true;
    if (socket.has_buffered()) return true;  // TLS bytes OpenSSL holds are unread bytes too
    pollfd pfd{socket.native_handle(), POLLIN, 0};
    int r = ::poll(&pfd, 1, 0);
    // An idle server has nothing to say: readable means EOF, an error, or a stray message
    // (e.g. a FATAL from an administrator's pg_terminate_backend).
    return r != 0;
}

void server_connection::close() {
    error_code ignored;
    socket.close(ignored);
}

}  // namespace sluice::pool
