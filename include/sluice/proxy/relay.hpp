#pragma once
// The relay core: a sans-io state machine for one client's traffic after login. It takes
// the bytes each side sent and returns what to do; the socket driver (client_session)
// performs it and knows no protocol rule. Every decision about framing, replies, prepared
// statements and when a server may go back to the pool is made here.
//
// Flow
//   client bytes -> on_client_data(): frame by frame (type byte + length; bodies only for
//     the messages the pooler acts on). Each message is forwarded unchanged (to_server()),
//     rewritten (prepared statements in transaction/statement mode), answered locally
//     (queued as an injected reply), or dropped (a rejected request, or the rest of an
//     extended batch the server is known to skip). It stops early to ask the driver for a
//     server (need_server) or for a rate-limit decision (need_admission); the driver calls
//     again with the bytes not consumed.
//   server bytes -> on_server_data(): forwards the replies (to_client()), drops the replies
//     to messages Sluice added (on-demand Parse, LRU Close), inserts injected replies in
//     their turn, and follows the transaction status.
//   After writing, the driver asks release() whether to keep the server, give it back
//   (can_release()) or close it: at the end of a transaction a server that said something
//   nobody asked for (a FATAL, a notification for another client's LISTEN) is closed.
//
// Invariants
//   - Every request that will be answered has one entry in the reply queue (`scratch::pending`), in
//     the order the answers will come: forwarded requests, requests Sluice added (answers
//     dropped), and requests answered locally (answers injected in their turn).
//   - After an ErrorResponse to an extended-protocol message, PostgreSQL skips every
//     extended message until Sync: their entries go, their side effects are undone
//     (a skipped Parse created nothing, a skipped Close removed nothing), and extended
//     messages that arrive after the error are not forwarded at all (`server_skipping_`).
//   - Only what must be rewritten or answered locally is held whole (a named Parse,
//     Describe, Close; limited by `max_held`); a Bind or an unnamed Parse needs only its
//     head, the rest is streamed, so no client message is ever buffered whole otherwise.
//   - can_release() is the one place that says a server may go back: the reply queue is
//     empty, no message is half-forwarded in either direction, the last ReadyForQuery said
//     'I', no extended message is unsynced, and the server said nothing unexpected.
//   - The working storage of a request (the reply queue and both batch builders: about
//     1.5 KiB) exists only while the client has work. It comes from a per-thread free list
//     at the first byte of a request and goes back when the driver says the client is
//     idle (release_scratch()) with nothing in flight, so an idle client holds only its
//     state proper: flags and its prepared statements.
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>

#include "sluice/config/config.hpp"
#include "sluice/pool/server_statements.hpp"
#include "sluice/proxy/prepared.hpp"

namespace sluice::proxy::relay {

// (32-bit sizes: every idle client's machine holds a copy; both settings are int32.)
struct settings {
    config::pool_mode mode = config::pool_mode::session;
    bool track_prepared = false;          // transaction/statement mode, max_prepared_statements > 0
    bool rate_limited = false;            // ask for admission at the start of each request
    std::uint32_t max_prepared = 200;     // per server connection
    std::uint32_t max_packet = 1u << 30;  // max_packet_size
    std::uint32_t max_held = 16u << 20;   // max_held_message_size: a message held whole
};

// Bookkeeping the driver does for the core's events (stats, timeouts, parameters). No
// protocol decision is delegated: these only report what happened.
class observer {
public:
    virtual ~observer() = default;
    virtual void on_query_start() {}
    // `previous` is the status before this ReadyForQuery; `more` whether other requests
    // are still outstanding.
    virtual void on_ready_for_query(char status, char previous, bool more) {}
    virtual void on_parameter_status(std::string_view name, std::string_view value) {}
    virtual void on_client_parse() {}
    virtual void on_client_bind() {}
    virtual void on_server_parse() {}
};

enum class client_event {
    need_more,       // everything complete was handled: read more client bytes
    need_server,     // link a server, then on_server_linked() and call again
    need_admission,  // ask the rate limiter, then on_admission() and call again
    close,           // send `sqlstate`/`message` as FATAL and close the client
    terminate,       // the client sent Terminate
};
// Why the core asks to close: rare, so held out of line. A result is returned and moved
// a few times per transaction, and moves as one pointer rather than two strings.
struct close_reason {
    std::string sqlstate, message;
    static std::unique_ptr<close_reason> make(std::string sqlstate, std::string message) {
        return std::make_unique<close_reason>(
            close_reason{std::move(sqlstate), std::move(message)});
    }
};
// The empty string an accessor returns for details that are not there.
inline const std::string& no_text() {
    static const std::string empty;
    return empty;
}
struct client_result {
    client_event event = client_event::need_more;
    std::size_t consumed = 0;       // input bytes handled (after to_server() is written)
    bool new_transaction = false;   // need_admission: this request starts a transaction
    std::unique_ptr<close_reason> why;  // close
    const std::string& sqlstate() const { return why ? why->sqlstate : no_text(); }
    const std::string& message() const { return why ? why->message : no_text(); }
};

enum class server_event {
    need_more,  // read more server bytes (after to_client() is written)
    close,      // write to_client() (it may hold a FATAL), then close client and server
};
struct server_result {
    server_event event = server_event::need_more;
    std::size_t consumed = 0;
    std::unique_ptr<close_reason> why;  // close: why (for the log; also sent if not empty)
    const std::string& sqlstate() const { return why ? why->sqlstate : no_text(); }
    const std::string& message() const { return why ? why->message : no_text(); }
};

class machine {
public:
    machine(settings s, observer& obs);
    ~machine();
    machine(const machine&) = delete;
    machine& operator=(const machine&) = delete;

    // --- client side
    client_result on_client_data(std::span<const std::uint8_t> in);
    // What to send to the server for the last on_client_data(): ranges of its input and
    // bytes the core built. Valid until the next call.
    const batch_builder& to_server() const;
    void on_server_linked(pool::server_statements* statements);
    void on_admission(bool allowed, std::chrono::milliseconds retry_after, std::string tenant);
    // Replies due to the client now (injected replies at the front of the queue).
    void take_injections(std::string& out);
    bool injections_due() const;

    // --- server side
    server_result on_server_data(std::span<const std::uint8_t> in);
    const batch_builder& to_client() const;

    // --- decisions
    // The one rule for giving a server back between transactions (transaction/statement
    // mode); the driver also checks that it has no unread server bytes.
    bool can_release() const { return mode_allows_release() && server_clean(); }
    enum class verdict { keep, give_back, close };
    verdict release() const {
        if (!mode_allows_release() || !at_boundary()) return verdict::keep;
        return server_dirty_ ? verdict::close : verdict::give_back;
    }
    // The same without the pool mode: a client leaving now leaves its server clean.
    bool server_clean() const { return at_boundary() && !server_dirty_; }
    // Between transactions with nothing in flight in either direction.
    bool at_boundary() const;
    // A SET/RESET/DISCARD ran: parameters PostgreSQL does not report must be read again
    // before the server goes back. Clears the flag.
    bool take_parameter_refresh();
    bool parameter_refresh_due() const {
        return refresh_parameters_ && settings_.mode != config::pool_mode::session;
    }
    void on_server_released();  // the driver gave the server back (or lost it)
    // The client is idle (the driver waits for its next request): the request storage goes
    // back to this thread's free list, unless something is still in flight. Returns whether
    // it did. The batches from the last calls are invalid afterwards.
    bool release_scratch();
    bool holds_scratch() const { return scratch_ != nullptr; }
    static std::size_t scratch_bytes();  // what one request storage takes (SHOW MEM)

    // --- state, for the driver and the tests
    bool linked() const { return linked_; }
    std::size_t max_packet() const { return settings_.max_packet; }
    char transaction_status() const { return transaction_status_; }
    int outstanding() const { return outstanding_; }
    std::size_t pending() const;
    bool has_statement(const std::string& client_name) const {
        return statements_.count(client_name) != 0;
    }
    std::size_t statement_count() const { return statements_.size(); }
    bool server_skipping() const { return server_skipping_; }
    // The body of a client message is still arriving (it is streamed, not held).
    bool client_mid_message() const { return client_pass_ > 0; }

private:
    struct reply {
        enum action_t : std::uint8_t {
            forward,  // the client sent it: pass the replies on
            swallow,  // Sluice added it (on-demand Parse, LRU Close): drop its replies
            inject,   // answered by Sluice: send `bytes` in its turn (+ ReadyForQuery for 'S')
        };
        // What only the replies Sluice adds or answers itself carry. Behind a pointer so
        // that a forwarded request's reply (one per message, every transaction) is 16
        // bytes to queue and dequeue, not a few hundred.
        struct details {
            std::string server_statement;  // Parse: the server-side name it creates; Close: removes
            std::string client_name;       // local Parse/Close: the client's name (to undo)
            std::optional<proxy::client_statement> restore;  // local Close: put back if skipped
            std::string bytes;             // inject
        };
        char request = 0;   // 'P' 'B' 'D' 'E' 'C' 'S' 'Q' 'F'
        action_t action = forward;
        bool evicted = false;           // swallowed Close of an LRU victim
        std::uint32_t copy_ends = 0;    // CopyDone/CopyFail the client had sent before it
        std::unique_ptr<details> more;  // null: all of them empty

        details& extra() {
            if (!more) more = std::make_unique<details>();
            return *more;
        }
        const std::string& server_statement() const {
            return more ? more->server_statement : no_text();
        }
        const std::string& client_name() const { return more ? more->client_name : no_text(); }
    };
    static_assert(sizeof(reply) <= 16, "a forwarded request's reply stays small (see details)");
    enum class skip : std::uint8_t { none, rejected, failed };
    class reply_queue;  // the pending replies, oldest first (relay.cpp)
    struct scratch;     // reply queue and batch builders (relay.cpp), see the invariants

    scratch& work();  // the request storage, taken from the free list if not held
    reply_queue& queue();
    batch_builder& out_server();
    batch_builder& out_client();
    bool queue_empty() const;

    client_result scan_client(std::span<const std::uint8_t> in);
    server_result scan_server(std::span<const std::uint8_t> in);
    bool mode_allows_release() const { return settings_.mode != config::pool_mode::session; }
    bool is_request_start(char type) const;
    client_result handle_held(char type, const std::uint8_t* msg, std::size_t avail,
                              std::size_t total, std::size_t& pos, bool& done);
    void fail_batch(std::string sqlstate, std::string message);
    void drop_message(std::size_t& pos, std::uint32_t body_length);
    void forwarded(char type);
    void ensure_prepared(const client_statement& st, std::size_t pos);
    void on_error_completing_front();
    void undo_skipped(reply& r);
    void drop_syncs_ignored_during_copy();
    void on_ready_for_query(char status);
    void on_command_complete(std::string_view tag);
    void inject_front(std::size_t pos);

    // (Ordered by size, flags together: every idle client holds a machine.)
    settings settings_;
    observer& obs_;
    std::unique_ptr<scratch> scratch_;  // only while the client has work
    client_statements statements_;  // the client's names
    pool::server_statements* server_statements_ = nullptr;
    // The ErrorResponse for a rejected request, kept until the batch's Sync (null: none;
    // a rejection is rare, so a pointer, not a string per client).
    std::unique_ptr<std::string> rejection_;

    // client side
    std::uint64_t client_pass_ = 0;   // bytes of the current client message still to handle
    // server side
    std::uint64_t server_pass_ = 0;
    int outstanding_ = 0;             // Query/Sync/FunctionCall whose ReadyForQuery is due
    // client side
    std::uint32_t copy_ends_sent_ = 0;
    skip skip_ = skip::none;          // dropping the rest of an extended batch
    bool client_discard_ = false;     // ... dropped rather than forwarded
    bool in_batch_ = false;           // extended messages received since the last Sync
    bool batch_forwarded_ = false;    // ... and some of them reached the server
    bool unsynced_ = false;           // extended messages forwarded since the last Sync
    bool admitted_ = false;           // the request at the front of the input was admitted
    bool linked_ = false;
    // server side
    bool server_discard_ = false;
    bool server_skipping_ = false;    // an extended message failed; Sync not yet forwarded
    bool server_dirty_ = false;       // FATAL or a message nobody asked for
    bool refresh_parameters_ = false;
    bool client_listens_ = false;     // this client ran LISTEN (transaction mode: unsupported)
    char transaction_status_ = 'I';
};

}  // namespace sluice::proxy::relay
