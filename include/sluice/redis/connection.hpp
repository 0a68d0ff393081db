#pragma once
// An asynchronous Redis connection on Asio: one per worker, pipelined (requests are
// written in batches as they come, replies are matched to requests in order).
//
// Flow of a connection: connecting (TCP connect with a timeout, then AUTH / SELECT / the
// `on_connect` commands, pipelined) -> up (reader and writer loops; exec() sends) -> on
// any I/O or protocol error: down (every pending request fails at once, the breaker is
// tripped), wait a backoff (doubling, capped), connect again.
//
// Behind Sentinel (settings.sentinel.sentinels not empty; sentinel_state.hpp has the
// rules): every connect first asks the sentinels where the master is, and the handshake
// starts with ROLE, so that a stale answer or a demoted master is dropped and asked about
// again. A second, long-lived connection to a sentinel is SUBSCRIBEd to +switch-master:
// when it names our master with a new address the master connection is dropped, so that
// it reconnects to the new master at once. While there is no master the connection is
// down like any other time, and callers get the failure policy.
//
// Callers never wait on an unwell Redis: exec() fails at once when the connection is down
// or the circuit breaker is open, and a request gets no more than `timeout` otherwise.
// All members run on the connection's executor (a worker's single-threaded io_context);
// only up(), master_address() and the counters are read from other threads.
#include <atomic>
#include <boost/asio/ssl.hpp>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "sluice/config/loader.hpp"
#include "sluice/net/io.hpp"
#include "sluice/ratelimit/breaker.hpp"
#include "sluice/redis/resp.hpp"
#include "sluice/redis/sentinel_state.hpp"

namespace sluice::redis {

enum class redis_errc {
    not_connected = 1,  // down, or the breaker is open: the failure policy applies
    timeout,            // no reply within the timeout
    connection_lost,    // the connection closed with the request outstanding
    protocol_error,     // Redis sent bytes that are not RESP
    tls_unsupported,    // (unused since rediss:// is supported; kept for the numbering)
    stopped,
    no_master,  // Sentinel: no sentinel named the master (or none answered)
};
const boost::system::error_category& redis_category();
inline error_code make_error_code(redis_errc e) {
    return {int(e), redis_category()};
}

struct sentinel_settings {
    std::vector<sentinel::address> sentinels;  // empty: the endpoint's host:port is used
    std::string master;                        // the name they monitor it by
    std::string password;                      // AUTH to the sentinels; empty = none
    // The +switch-master link sends PING after this much silence and is dropped when
    // that goes unanswered as long again (a sentinel that vanished without a FIN).
    std::chrono::milliseconds watch_ping{5000};
};

struct connection_settings {
    // Credentials, db and TLS; and the address unless `sentinel` names sentinels.
    config::redis_endpoint endpoint;
    sentinel_settings sentinel;
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
    // host:port of the Redis this connection is up to; empty while down. Any thread.
    std::string master_address() const;

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
    // One command of the connection setup; `expect_master`: its reply is ROLE's and must
    // say master.
    struct setup_step {
        std::string command;
        bool expect_master = false;
    };
    asio::awaitable<void> handshake(std::shared_ptr<connection> self, std::uint64_t gen,
                                    std::vector<setup_step> steps);
    // Sentinel: sets target_ to the master's address, asking the sentinels in turn.
    asio::awaitable<error_code> discover();
    // One exchange with a sentinel on a short-lived connection: `commands`, then `n`
    // replies, all within connect_timeout.
    asio::awaitable<error_code> ask_sentinel(sentinel::address at, std::string commands,
                                             std::size_t n, std::vector<value>& replies);
    // The +switch-master subscription, for as long as the connection runs.
    asio::awaitable<void> watch(std::shared_ptr<connection> self);
    asio::awaitable<error_code> watch_once(sentinel::address at);
    void on_switch_master(const sentinel::switch_master& m, const sentinel::address& from);
    bool use_sentinels() const { return !s_.sentinel.sentinels.empty(); }
    // For log lines: "host:port", or "master NAME at host:port" behind Sentinel.
    std::string where() const;
    void set_master_address(std::string a);
    // Queues a request and awaits its reply (or the timeout). No up/breaker check.
    asio::awaitable<std::pair<error_code, value>> send(std::string command,
                                                       std::chrono::milliseconds timeout);
    void fail_all(error_code ec);
    std::vector<setup_step> handshake_commands() const;
    void note_breaker();
    void close_socket();
    bool socket_open() const;
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
    // Where the next connect goes: the endpoint's address, or what a sentinel said.
    sentinel::address target_;
    sentinel::sentinel_list sentinels_;
    std::string last_discovery_;  // "master at (from sentinel)", logged when it changes
    std::string last_discovery_error_;
    asio::ip::tcp::socket watch_socket_;  // the +switch-master subscription
    asio::steady_timer watch_timer_;
    mutable std::mutex address_mutex_;
    std::string master_address_;  // guarded by address_mutex_
    ratelimit::breaker breaker_;
    std::atomic<bool> up_{false}, healthy_{false};
    std::atomic<std::uint64_t> errors_{0}, reconnects_{0};
};

}  // namespace sluice::redis

namespace boost::system {
template <>
struct is_error_code_enum<sluice::redis::redis_errc> : std::true_type {};
}  // namespace boost::system
