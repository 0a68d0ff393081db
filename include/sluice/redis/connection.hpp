#pragma once
// An asynchronous Redis connection on Asio: one per worker, pipelined (requests are
// written in batches as they come, replies are matched to requests in order).
//
// Flow of a connection: connecting (TCP connect with a timeout, then AUTH / SELECT / the
// `on_connect` commands, pipelined) -> up (reader and writer loops; exec() sends) -> on
// any I/O or protocol error: down (every pending request fails at once, the breaker is
// tripped), wait a backoff (doubling, capped), connect again.
//
// Callers never wait on an unwell Redis: exec() fails at once when the connection is down
// or the circuit breaker is open, and a request gets no more than `timeout` otherwise.
// All members run on the connection's executor (a worker's single-threaded io_context);
// only up() and the counters are read from other threads.
#include <atomic>
#include <boost/asio/ssl.hpp>
#include <deque>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "sluice/config/loader.hpp"
#include "sluice/net/io.hpp"
#include "sluice/ratelimit/breaker.hpp"
#include "sluice/redis/resp.hpp"

namespace sluice::redis {

enum class redis_errc {
    not_connected = 1,  // down, or the breaker is open: the failure policy applies
    timeout,            // no reply within the timeout
    connection_lost,    // the connection closed with the request outstanding
    protocol_error,     // Redis sent bytes that are not RESP
    tls_unsupported,    // (unused since rediss:// is supported; kept for the numbering)
    stopped,
};
const boost::system::error_category& redis_category();
inline error_code make_error_code(redis_errc e) {
    return {int(e), redis_category()};
}

struct connection_settings {
    config::redis_endpoint endpoint;
    std::chrono::milliseconds timeout{50};           // per request (and per handshake step)
    std::chrono::milliseconds connect_timeout{500};  // TCP connect + handshake
    std::chrono::milliseconds backoff_min{50}, backoff_max{1000};
    ratelimit::breaker::settings breaker;
    std::vector<std::string> on_connect;  // encoded commands sent after AUTH/SELECT
};

class connection : public std::enable_shared_from_this<connection> {
  public:
    connection(asio::any_io_executor ex, connection_settings s);
    ~connection();

    // Starts the connect/reconnect loop (co_spawned on the executor).
    void start();
    // Closes the socket and ends the loops; pending requests fail with `stopped`.
    void stop();

    // Sends one encoded command and awaits its reply. Must be awaited from a coroutine
    // running on executor(). A reply that is a Redis error (-ERR ...) is a value with
    // is_error(), not an error_code.
    asio::awaitable<std::pair<error_code, value>> exec(std::string command);

    asio::any_io_executor executor() const { return ex_; }
    bool up() const { return up_.load(std::memory_order_relaxed); }
    // Up and the breaker closed: global enforcement is in effect. Any thread.
    bool healthy() const { return healthy_.load(std::memory_order_relaxed); }
    ratelimit::breaker::state breaker_state() const { return breaker_.current(); }
    std::uint64_t errors() const { return errors_.load(std::memory_order_relaxed); }
    std::uint64_t reconnects() const { return reconnects_.load(std::memory_order_relaxed); }

  private:
    struct request {
        explicit request(asio::any_io_executor ex) : timer(ex) {}
        asio::steady_timer timer;
        bool done = false;
        error_code ec;
        value reply;
    };
    asio::awaitable<void> run(std::shared_ptr<connection> self);
    asio::awaitable<error_code> connect_once();
    asio::awaitable<void> writer(std::shared_ptr<connection> self, std::uint64_t generation);
    asio::awaitable<error_code> reader();
    asio::awaitable<void> handshake(std::shared_ptr<connection> self, std::uint64_t gen,
                                    std::vector<std::string> commands);
    // Queues a request and awaits its reply (or the timeout). No up/breaker check.
    asio::awaitable<std::pair<error_code, value>> send(std::string command,
                                                       std::chrono::milliseconds timeout);
    void fail_all(error_code ec);
    std::vector<std::string> handshake_commands() const;
    void note_breaker();
    void close_socket();
    static std::int64_t now_ns();

    asio::any_io_executor ex_;
    connection_settings s_;
    asio::ip::tcp::socket socket_;  // plain redis://
    // rediss://: TLS over TCP, the server certificate checked against the system CA store
    // (or SSL_CERT_FILE / SSL_CERT_DIR) and the URL's host name.
    std::unique_ptr<asio::ssl::context> tls_ctx_;
    std::unique_ptr<asio::ssl::stream<asio::ip::tcp::socket>> tls_;
    asio::steady_timer write_signal_;
    asio::steady_timer backoff_timer_;
    std::deque<std::shared_ptr<request>> pending_;  // written or queued, awaiting replies
    std::string write_queue_;                       // encoded commands not yet written
    byte_buffer rbuf_;
    bool stopping_ = false;
    bool connected_ = false;  // TCP up (handshake may still be running)
    std::uint64_t generation_ = 0;
    std::string last_setup_error_;
    ratelimit::breaker breaker_;
    std::atomic<bool> up_{false}, healthy_{false};
    std::atomic<std::uint64_t> errors_{0}, reconnects_{0};
};

}  // namespace sluice::redis

namespace boost::system {
template <>
struct is_error_code_enum<sluice::redis::redis_errc> : std::true_type {};
}  // namespace boost::system
