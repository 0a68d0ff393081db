#pragma once
// One connection from Sluice to PostgreSQL: connect, log in, and the state the pooler keeps
// about it (parameters, cancel key, transaction status, prepared statements).
#include <atomic>
#include <list>
#include <map>
#include <mutex>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "sluice/net/io.hpp"
#include "sluice/net/stream.hpp"
#include "sluice/net/tls.hpp"
#include "sluice/net/tcp_options.hpp"
#include "sluice/pool/server_parameters.hpp"
#include "sluice/pool/server_statements.hpp"
#include "sluice/protocol/codec.hpp"

namespace sluice::pool {

class pool;

// What a server login needs. The secret is a plaintext password or an md5 secret; for a
// SCRAM-only secret Sluice uses the keys it learnt from a client's own SCRAM exchange.
struct login_params {
    std::vector<std::string> hosts;  // the entry's list; '/'-prefixed = unix socket directory
    int port = 5432;
    std::string user, database;
    std::optional<std::string> password;
    std::vector<std::uint8_t> scram_client_key, scram_server_key;
    std::vector<std::pair<std::string, std::string>> startup_parameters;  // extra ones
    // server_connect_timeout: the login, and every internal query (reset, check, SET).
    std::chrono::milliseconds connect_timeout{15000};
    net::tcp_options tcp;
    std::size_t max_packet_size = 1 << 30;
    // server_tls_*: the mode and context of the moment (null = the defaults, plaintext).
    std::shared_ptr<const net::tls_config> tls;
};

enum class server_state { login, idle, active, tested, used };

class server_connection {
public:
    server_connection(asio::any_io_executor ex, std::uint64_t id);
    server_connection(const server_connection&) = delete;

    // Connects to `host` (one of params.hosts; pool/host_state.hpp chooses) and performs
    // the startup/authentication exchange up to the first ReadyForQuery. On failure
    // last_error holds a message (and last_error_fields the server's, if it sent any) for
    // the client, and last_error_transient says whether trying again later may succeed.
    asio::awaitable<bool> connect(login_params params, std::string host);
    // Back to the state before connect(), for another host or another try.
    void reset_for_retry();
    // Sends Terminate (without waiting) and closes.
    void terminate();

    // Runs one simple query and discards its results, up to ReadyForQuery. Used for the
    // reset query, parameter synchronisation and health checks. ParameterStatus messages
    // update `parameters`. Returns false if the server failed or answered with an error.
    // `row`, when given, receives the first DataRow.
    asio::awaitable<bool> run_internal_query(
        std::string sql, std::size_t max_packet_size,
        std::vector<std::optional<std::string>>* row = nullptr,
        std::vector<std::optional<std::string>> bind_values = {});

    // The same without the time limit. With `bind_values` the query runs through the
    // extended protocol ($1, $2... bound as text), so no value is ever spliced into SQL.
    asio::awaitable<bool> run_internal_query_unbounded(
        std::string sql, std::size_t max_packet_size, std::vector<std::optional<std::string>>* row,
        std::vector<std::optional<std::string>> bind_values = {});

    // Moves the socket to another worker's executor. Only when no operation is pending.
    void migrate(asio::any_io_executor ex);
    // True if the peer closed or sent unexpected bytes while the connection sat idle.
    bool broken_while_idle();
    void close();

    net::stream socket;
    byte_buffer buffer;  // bytes read from the server and not yet handled
    std::uint64_t id;
    pool* owner = nullptr;
    int worker = 0;

    // Where it is connected (cancel requests, SHOW SERVERS): set during connect while the
    // console may already list the server, so behind a lock.
    std::string host() const {
        std::lock_guard lk(host_mutex_);
        return host_;
    }
    void set_host(std::string h, int p) {
        std::lock_guard lk(host_mutex_);
        host_ = std::move(h);
        port = p;
    }
    std::atomic<int> port{0};
    protocol::cancel_request backend_key{};
    server_parameters parameters;  // last ParameterStatus values, and the set they match
    // Read by the console and other workers while the owner writes them: atomics.
    std::atomic<char> transaction_status{'I'};
    std::atomic<server_state> state{server_state::login};
    std::atomic<bool> close_needed{false};  // RECONNECT, reload or an error: close when released
    steady_clock::time_point connect_time, last_used, request_time;
    std::string last_error;
    // The last failure may pass (down, unreachable, timed out, starting up or shutting
    // down); false for what only a configuration change fixes (TLS demands not met, an
    // authentication Sluice cannot do, PostgreSQL's refusal of the login).
    bool last_error_transient = true;
    // The host of the entry's list it is on, and what that server is: 'p' primary,
    // 's' standby, '?' not known (target_session_attrs any on a server that does not report
    // in_hot_standby). Set before the server leaves the login state.
    std::size_t host_index = 0;
    std::uint64_t host_role_changes = 0;  // host_state::role_changes when it was made
    std::atomic<char> role{'?'};
    steady_clock::time_point lag_checked_at;  // max_replica_lag: when last measured
    std::chrono::milliseconds internal_query_timeout{15000};  // from login_params
    std::optional<protocol::error_fields> last_error_fields;

    // Cancel requests forwarded to this server and not finished yet: the server is not
    // handed to another client until they are (a late cancel must not hit its query).
    std::atomic<int> cancels_in_flight{0};

    // Protocol-level prepared statements that exist on this server (server-side names).
    server_statements statements;

    std::atomic<std::uint64_t> link_client_id{0};  // for SHOW SERVERS

    // The server TLS settings this connection was made under (tls_config's generation),
    // and what was negotiated ("" = plaintext). Set during connect, before the server
    // leaves the login state.
    std::uint64_t tls_generation = 0;
    std::string tls_info;

private:
    // One try: connect to `host` and log in, with TLS as `mode` says.
    asio::awaitable<bool> connect_with(login_params p, net::sslmode mode, const std::string& host);
    // SSLRequest and the handshake on a fresh TCP connection to `host`. False (with
    // last_error) when the mode's demands are not met.
    asio::awaitable<bool> negotiate_tls(std::shared_ptr<const net::tls_config> tls,
                                        net::sslmode mode, std::string host, int port);
    mutable std::mutex host_mutex_;
    std::string host_;
};

using server_ptr = std::shared_ptr<server_connection>;

// Connects `socket` to a PostgreSQL address: a '/'-prefixed host is a unix socket
// directory (".s.PGSQL.<port>" inside it), anything else a TCP host name or address.
asio::awaitable<bool> connect_socket(stream_socket& socket, const std::string& host, int port,
                                     std::string& error);

}  // namespace sluice::pool
