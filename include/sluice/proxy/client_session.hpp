#pragma once
// One client connection, from the startup packet to Terminate: the socket driver.
//
//   startup.cpp     SSLRequest -> 'S' + TLS handshake (or 'N'), a TLS ClientHello first
//                   (direct TLS) -> handshake, GSSENCRequest -> 'N'; CancelRequest ->
//                   cancel.cpp;
//                   StartupMessage -> authenticate -> admission.cpp (client limits, rate
//                   limits at login) -> welcome (AuthenticationOk, ParameterStatus...,
//                   BackendKeyData, ReadyForQuery)
//   client_session  the relay driver: reads both sockets, feeds the relay core
//                   (relay.hpp, where every protocol rule lives) and performs what it says
//   server_link.cpp linking a server (pool checkout, parameter sync) and giving it back
//   timeouts.cpp    query/idle/transaction timeouts and KILL
//
// The relay has two sides on the session's worker thread: the client side reads the
// client, the server side (while a server is linked) reads the server. Both only move
// bytes and call the core; the core is not thread-safe and needs none: both sides run on
// one thread.
//
// Lifetime: run() is the login. After it, the client waits in await_request(): a recv
// that finds nothing, then a drained wait for readability (TLS: a small read), with a
// plain handler that holds the session. The bytes
// are read and relayed in that handler (drive_client), and on the server side in a read
// handler too
// (on_server_read): the usual transaction runs without any coroutine. A request that
// must wait for a server parks in the pool's queue (pool::park) and goes on in a plain
// handler too. A step that must wait otherwise (a full socket, a rate limit, TLS, a
// server to test or to connect) goes on in a coroutine (client_loop in relay_input,
// server_loop) from where the handler stopped. So an idle
// client holds no coroutine frame, no relay scratch (given back by whichever side
// finishes last, never while the other may still write a batch that lives in it; in
// session mode the linked server keeps it) and no buffer. finish() ends the session,
// leave_runtime() once.
#include <array>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sluice/admin/console.hpp"
#include "sluice/auth/hba.hpp"
#include "sluice/net/io.hpp"
#include "sluice/net/stream.hpp"
#include "sluice/pool/pool.hpp"
#include "sluice/protocol/codec.hpp"
#include "sluice/proxy/prepared.hpp"
#include "sluice/proxy/relay.hpp"
#include "sluice/ratelimit/limiter.hpp"
#include "sluice/stats/event_clock.hpp"

namespace sluice::proxy {

class runtime;

enum class client_state { login, idle, active, waiting };

class client_session : public std::enable_shared_from_this<client_session>,
                       private relay::observer {
public:
    client_session(runtime& rt, stream_socket socket, int worker, std::uint64_t id);
    ~client_session();

    // The login, then the relay (in handlers). `refuse`: the client is to be refused
    // (max_client_conn, shutdown) once its startup packet is read, so that it gets a
    // proper ErrorResponse; one of the static refusals below.
    struct refusal {
        const char* sqlstate;
        const char* message;
    };
    static constexpr refusal too_many_clients{"53300", "no more connections allowed (max_client_conn)"};
    static constexpr refusal shutting_down{"57P01", "Sluice is shutting down"};
    asio::awaitable<void> run(const refusal* refuse = nullptr);

    // Cancels the query this client is running, if any. Runs on the session's executor.
    static asio::awaitable<void> forward_cancel(std::shared_ptr<client_session> self);
    // Closes the client connection (KILL, shutdown). Any thread.
    void kill(std::string sqlstate, std::string message);
    void kill_now(const std::string& sqlstate, const std::string& message);  // on its executor

    asio::any_io_executor executor() { return socket_.get_executor(); }
    // Leaves the registry and the client count (once; finish() does it, or the handler
    // of a coroutine that ended with an exception).
    void leave_runtime();
    bool unix_socket() const { return addr == "unix"; }

    const std::uint64_t id;
    protocol::cancel_request cancel_key{};  // the key Sluice handed to the client
    // Who the client says it is: settled during login (set_identity), read by other
    // threads (the console) only once the session left login. Shared with the pool's
    // clients that say the same once logged in: a pointer per client, not three strings.
    const std::string& user() const { return who_->user; }
    const std::string& database() const { return who_->database; }
    const std::string& application_name() const { return who_->application_name; }
    std::string addr;
    // Shared texts (net::interned): every client of one listener has the same local
    // address, and a TLS description is one of a few. local_addr is set by the
    // constructor; tls_info ("" until TLS is up) during login, while the console may read
    // it: atomic.
    const std::string* local_addr = &empty_text;
    std::atomic<const std::string*> tls_info{&empty_text};
    std::uint16_t port = 0, local_port = 0;
    // (Small fields side by side: every idle client holds them, padding included.)
    admin::console_role console_role_ = admin::console_role::none;
    bool tenant_connection_open_ = false;
    bool client_counted_ = false;  // in runtime::client_limits (given back on leaving)
    steady_clock::time_point connect_time = steady_clock::now();
    std::atomic<steady_clock::time_point> request_time{steady_clock::now()};
    std::atomic<std::uint64_t> linked_server_id{0};
    std::atomic<client_state> state{client_state::login};
    // The client's prepared statements that Sluice tracks (transaction/statement mode),
    // for SHOW CLIENTS; kept by the session's own thread after each relay step.
    std::atomic<std::uint32_t> prepared_statements{0};
    std::shared_ptr<pool::pool> pool_;  // attached at login (counted in its clients)

    // Timestamps (steady clock, ns; 0 = not in that state) read by the timeout sweeper
    // on another thread: query_timeout, idle_transaction_timeout, transaction_timeout,
    // client_idle_timeout.
    std::atomic<std::int64_t> query_since_ns{0}, idle_in_xact_since_ns{0}, xact_since_ns{0},
        idle_since_ns{0};
    // Effective timeouts for this client (user overrides applied), in ns; 0 = off. Set at
    // login on the session's worker, read by the sweeper: atomics.
    std::atomic<std::int64_t> query_timeout_ns{0}, idle_transaction_timeout_ns{0},
        transaction_timeout_ns{0}, client_idle_timeout_ns{0};
    // Called by the sweeper (any thread): acts on an expired timeout.
    void check_timeouts(std::int64_t now);
    // server_fast_close (any thread): a session-mode client whose server is marked
    // close_needed (RECONNECT, RELOAD) is closed with it once between transactions, so
    // that it notices its session ended.
    void fast_close_if_idle();
    static std::int64_t to_ns(steady_clock::time_point t) {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
    }
    static std::int64_t now_ns() { return stats::event_clock::now_ns(); }
    static const std::string empty_text;
    std::shared_ptr<ratelimit::tenant> tenant_;

private:
    // startup and authentication
    asio::awaitable<bool> startup(const refusal* refuse);
    asio::awaitable<bool> read_startup_packet(protocol::startup_packet& out);
    // TLS for this client: after 'S' to an SSLRequest, or direct (`already_read` holds the
    // start of the ClientHello). False if the handshake failed (the client is gone).
    asio::awaitable<bool> start_tls(std::string already_read);
    // The method comes from auth_type, or under hba from the first matching rule; `map` is
    // that rule's ident map (peer, cert).
    asio::awaitable<bool> authenticate(auth::hba_method method, std::string map,
                                       const std::optional<std::string>& secret, bool known);
    // cert and peer: the name the certificate or the OS vouches for, checked against the
    // user (directly, or through the ident map). Sends the error itself.
    asio::awaitable<bool> check_cert(std::string map, bool full);
    asio::awaitable<bool> check_peer(std::string map);
    // The OS user or certificate CN may log in as `user`: the same name, or through `map`.
    bool may_log_in_as_user(const std::string& system_user, const std::string& map) const;
    asio::awaitable<bool> read_client_message(protocol::message_view& out);
    asio::awaitable<bool> send_welcome();
    asio::awaitable<void> handle_cancel_request(protocol::cancel_request req);

    // relay driver
    // Relays what the client sent; true when all of it is handled and the client is idle
    // (between messages), false when the session ends.
    // The client side's steps (client_session.cpp explains the flow): where drive_client
    // goes on, and the wait it stopped at.
    enum class client_stage : std::uint8_t { fresh, written, event };
    enum class client_step : std::uint8_t {
        start, idle, end, write_server, flush_injections, refuse, link_server, admission,
        read_more
    };
    struct client_pending {
        client_stage stage = client_stage::fresh;
        relay::client_result r;          // the core's answer to the request in hand
        std::size_t sent = 0;            // bytes of its to_server() already written
        pool::server_ptr taken;          // link_server: a server already checked out
        bool round_trips_due = false;    // ... that must still pass its round trips
        bool need_transaction = false;   // admission: the transaction token is missing
        // A parked wait for a server (park_for_server) and how it ended, for link_server:
        steady_clock::time_point wait_start{};  // when it began (wait statistics)
        bool slot_held = false;                  // it won a slot: connect in it
        std::string wait_sqlstate, wait_message; // it failed (query_wait_timeout)
        bool parked_wait_ended() const { return slot_held || !wait_sqlstate.empty(); }
    };
    client_step drive_client(client_pending& p);
    // Where the client side goes once drive_client stopped at `step` (pending_ holds the
    // rest): wait for the next request, park for a server, or a coroutine for the wait.
    void after_drive(client_step step);
    // The request needs a server and none is idle: it waits in the pool's queue without a
    // coroutine (pool::park); on_park_wake goes on from there.
    void park_for_server();
    static void on_park_wake(const std::shared_ptr<void>& ctx, pool::pool::park_outcome out);
    // Takes what `out` holds as it goes: should it throw, what is left in `out` is given
    // back by the caller (give_back).
    void resume_parked(pool::pool::park_outcome& out);
    // A server checked out for this client, or a slot won for it, that it will not use
    // (no memory to go on): back to the pool.
    void give_back(pool::server_ptr& server, bool& slot_held);
    asio::awaitable<bool> client_loop(client_step step);
    // client_loop, then await_request() or finish()
    asio::awaitable<void> relay_input(client_step step);
    void on_client_bytes();  // in_ has new bytes after an idle wait
    void await_request();    // the idle wait: a wait (TLS: a small read), a plain handler
    void arm_idle_wait(bool drained);  // the wait itself (drained: the socket just read empty)
    static constexpr std::size_t idle_probe_size = 512;  // arm_idle_wait's recv, on the stack
    void on_client_readable(error_code ec, std::size_t n, bool in_hand);  // its handler
    // The end of the session: the server given back or closed, counters, the log line
    // (for a pooled client that logged in), the socket closed.
    asio::awaitable<void> finish(bool logged_in);
    // The server side (client_session.cpp explains the flow).
    // drained: the server's socket was seen empty in this handler (net/drained_wait.hpp),
    // so the wait needs no system call to start.
    void await_server(pool::server_ptr server, bool drained = false);
    void on_server_readable(pool::server_ptr server, error_code ec);  // after such a wait
    void on_server_read(pool::server_ptr server, error_code ec, std::size_t n);
    // What a plain server-side handler does when it throws (no memory): the server is
    // closed, and the session ends.
    void server_relay_failed(pool::server_connection& server, const std::exception& e);
    void continue_server_loop(pool::server_ptr server, error_code failed,
                              std::optional<relay::server_result> pending, std::size_t sent);
    asio::awaitable<void> server_loop(pool::server_ptr server, error_code failed = {},
                                      std::optional<relay::server_result> pending = std::nullopt,
                                      std::size_t sent = 0);
    // At the end of a transaction: gives the server back. True if it did.
    bool release_if_done(const pool::server_ptr& server);
    // What the relay put in to_server(): write_server_now() sends it with one sendmsg
    // when the socket takes all of it (`sent`: how much went), write_server() the rest.
    bool write_server_now(std::size_t& sent);
    asio::awaitable<bool> write_server(std::size_t sent);
    void note_client_gone(const error_code& ec);  // sets close_reason_ for an EOF or reset
    // server_link.cpp
    bool link_server_now(pool::server_ptr& taken, bool& round_trips_due);
    // client_loop's link_server step: what `p` holds (a server taken, a slot won, a failed
    // parked wait), else a wait in acquire().
    asio::awaitable<bool> link_server(client_pending& p);
    void note_wait(steady_clock::time_point started);  // wait_time, wait_latency
    void attach_server(pool::server_ptr s);  // server_ and the ids that name the link
    // The server just linked: its reads start. checked_now: it was checked out in this
    // handler (the checkout's poll() saw it empty), so the first wait costs no system call.
    void start_server_side(bool checked_now = false);
    asio::awaitable<bool> sync_parameters(pool::server_connection& s);
    asio::awaitable<bool> refresh_untracked_parameters(pool::server_connection& s);
    void server_loop_done();
    asio::awaitable<void> finish_server();
    void release_server(pool::server_ptr s, bool clean);
    // admission.cpp
    asio::awaitable<bool> admit_login(const config::config& cfg, const config::database& db,
                                      const protocol::startup_message& startup_msg);
    asio::awaitable<ratelimit::verdict> admit_request(bool need_xact);
    // relay::observer
    void on_query_start() override;
    void on_ready_for_query(char status, char previous, bool more) override;
    void on_parameter_status(std::string_view name, std::string_view value) override;
    void on_client_parse() override;
    void on_client_bind() override;
    void on_server_parse() override;

    asio::awaitable<bool> flush_injections();

    // writing to the client: server_loop and client_loop may both want to, one at a time
    asio::awaitable<bool> write_client(std::span<const asio::const_buffer> buffers);
    asio::awaitable<bool> write_client(const std::string& bytes);
    void note_prepared_statements() {
        auto n = std::uint32_t(relay_->statement_count());
        if (n != prepared_statements.load(std::memory_order_relaxed))
            prepared_statements.store(n, std::memory_order_relaxed);
    }
    // query_wait_notify: the NOTICE a client queued for a server gets (pool::acquire).
    asio::awaitable<void> send_queued_notice();
    // Parameters by value: coroutine arguments must own their data (gcc 12).
    asio::awaitable<void> send_error(std::string sqlstate, std::string message,
                                     std::string hint = {}, bool fatal = true);

    // During login only (other threads do not read it yet): an own copy until the pool is
    // known, then the pool's shared one.
    void set_identity(pool::client_identity who);
    pool::shared_identity who_;

    runtime& rt_;
    net::stream socket_;
    int worker_;
    config::pool_mode mode_ = config::pool_mode::session;
    byte_buffer in_;  // client bytes not yet forwarded
    // max_packet_size for this client's internal queries: the relay's, once it exists.
    std::size_t max_packet() const;

    // tracked parameters: what this client believes its session has
    // (immutable and usually shared with the pool's other clients: pool::intern_parameters;
    // a change makes a new set)
    pool::shared_params wanted_params_;

    // relay state
    std::optional<relay::machine> relay_;  // from the end of login
    pool::server_ptr server_;              // linked server, if any
    // finish_server() waits here for server_loop to end (its own timer, only then).
    asio::steady_timer* server_loop_done_ = nullptr;
    // Why the session ended, for the log_disconnections line in PgBouncer's words
    // ("closing because: client close request"); set where the end is decided.
    // (null: "client unexpected eof"; a pointer, not a string, while the session lives)
    std::unique_ptr<std::string> close_reason_;
    void set_close_reason(std::string reason) {
        close_reason_ = std::make_unique<std::string>(std::move(reason));
    }
    steady_clock::time_point query_start_{}, xact_start_{};
    // Where client_loop goes on: only while it runs or the request is parked for a server
    // (the usual request needs none). Its memory comes from exact_allocator's per-thread
    // free lists: with more clients than servers, every request parks, and a malloc and
    // free per transaction showed in callgrind at 200 clients.
    struct pending_delete {
        void operator()(client_pending* p) const noexcept;
    };
    using pending_ptr = std::unique_ptr<client_pending, pending_delete>;
    // Moves from `p` only once the memory is there: should the allocation throw, `p`
    // still holds what the caller must give back.
    static pending_ptr make_pending(client_pending&& p);
    pending_ptr pending_;
    // (The flags sit together: every idle client holds them, padding included.)
    bool server_loop_running_ = false;
    bool client_gone_ = false;
    bool fatal_ = false;            // the session is being torn down
    bool reset_query_always_ = false;
    bool left_runtime_ = false;
    bool relaying_client_ = false;  // the client side is running (it may use the scratch)
    bool login_over_ = false;       // client_login_timeout's watchdog has nothing to do
    bool writing_client_ = false;   // one writer at a time (write_client)
    // Who waits for a turn to write (write_client): the other loop, at most; each waiter
    // lives in its coroutine frame, linked from here (one pointer per idle client).
    struct write_turn {
        asio::steady_timer timer;
        write_turn* next = nullptr;
    };
    write_turn* write_waiters_ = nullptr;
};

}  // namespace sluice::proxy
