#include "sluice/proxy/relay.hpp"

#include <cassert>
#include <cstring>
#include <vector>

#include "sluice/protocol/codec.hpp"
#include "sluice/stats/held.hpp"

namespace sluice::proxy::relay {

namespace proto = sluice::protocol;

namespace {

bool is_frontend_type(char t) {
    switch (t) {
        case 'B': case 'C': case 'D': case 'E': case 'F': case 'H': case 'P': case 'Q':
        case 'S': case 'X': case 'c': case 'd': case 'f':
            return true;
        default:
            return false;
    }
}

// Position of the NUL ending the C string that starts at `from`, or npos.
std::size_t cstring_end(const std::uint8_t* p, std::size_t from, std::size_t size) {
    if (from >= size) return std::string::npos;
    auto* nul = static_cast<const std::uint8_t*>(std::memchr(p + from, 0, size - from));
    return nul ? std::size_t(nul - p) : std::string::npos;
}

std::string_view as_view(const std::uint8_t* p, std::size_t n) {
    return {reinterpret_cast<const char*>(p), n};
}

std::string header_bytes(char type, std::uint64_t body_length) {
    std::string h(5, '\0');
    h[0] = type;
    auto len = std::uint32_t(body_length + 4);
    h[1] = char(len >> 24);
    h[2] = char(len >> 16);
    h[3] = char(len >> 8);
    h[4] = char(len);
    return h;
}

// The rest of a message body the core does not read: forwarded, or dropped, as it comes.
void pass_body(std::uint64_t& remaining, bool discard, proxy::batch_builder& out,
               std::size_t& pos, std::size_t size) {
    auto take = std::min<std::uint64_t>(remaining, size - pos);
    if (discard) out.skip(pos, take);
    pos += take;
    remaining -= take;
}

bool is_fatal_error(std::span<const std::uint8_t> body) {
    auto e = proto::decode_error(body);
    return e && (e->severity == "FATAL" || e->severity == "PANIC");
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Request storage: held while the client has work, otherwise on this thread's free list
// (each session stays on one worker thread, so a free list per thread is a free list per
// worker; a unit test's single thread has one too).

// A FIFO over a vector that keeps its capacity: once warm, a request costs no allocation
// (a std::deque frees and allocates a node every few requests). Popped slots are
// compacted away when they outnumber the live ones, so a pipeline that never drains
// cannot grow it without bound.
class machine::reply_queue {
public:
    using iterator = std::vector<reply>::iterator;
    bool empty() const { return head_ == items_.size(); }
    std::size_t size() const { return items_.size() - head_; }
    reply& front() { return items_[head_]; }
    void push_back(reply&& r) {
        if (empty()) clear();
        items_.push_back(std::move(r));
    }
    void pop_front() {
        items_[head_] = reply{};  // (frees what it held: injected bytes can be large)
        if (++head_ == items_.size()) {
            clear();
        } else if (head_ >= 64 && head_ > size()) {
            items_.erase(items_.begin(), items_.begin() + std::ptrdiff_t(head_));
            head_ = 0;
        }
    }
    iterator begin() { return items_.begin() + std::ptrdiff_t(head_); }
    iterator end() { return items_.end(); }
    iterator erase(iterator it) { return items_.erase(it); }

private:
    void clear() {
        items_.clear();
        head_ = 0;
    }
    std::vector<reply> items_;
    std::size_t head_ = 0;
};

struct machine::scratch {
    batch_builder to_server, to_client;
    reply_queue pending;
};

namespace {

// Bounded: beyond it, released storage is freed. 128 x ~1.5 KiB per thread at most.
constexpr std::size_t max_free_scratch = 128;

template <class T>
std::vector<std::unique_ptr<T>>& free_list() {
    thread_local std::vector<std::unique_ptr<T>> list;
    return list;
}

const batch_builder& empty_batch() {
    static const batch_builder b;
    return b;
}

}  // namespace

machine::machine(settings s, observer& obs) : settings_(s), obs_(obs) {}

machine::~machine() {
    // Back to the free list when it can go; otherwise (a reply was still due: the client
    // left mid-request) it is freed with the machine, and no longer counted either way.
    if (!release_scratch()) stats::held_add(stats::held::scratch_used, -1);
}

machine::scratch& machine::work() {
    if (!scratch_) {
        auto& list = free_list<scratch>();
        if (list.empty()) {
            scratch_ = std::make_unique<scratch>();
        } else {
            scratch_ = std::move(list.back());
            list.pop_back();
            stats::held_add(stats::held::scratch_free, -1);
        }
        stats::held_add(stats::held::scratch_used, 1);
    }
    return *scratch_;
}

machine::reply_queue& machine::queue() { return work().pending; }
batch_builder& machine::out_server() { return work().to_server; }
batch_builder& machine::out_client() { return work().to_client; }
bool machine::queue_empty() const { return !scratch_ || scratch_->pending.empty(); }
std::size_t machine::pending() const { return scratch_ ? scratch_->pending.size() : 0; }
const batch_builder& machine::to_server() const {
    return scratch_ ? scratch_->to_server : empty_batch();
}
const batch_builder& machine::to_client() const {
    return scratch_ ? scratch_->to_client : empty_batch();
}

std::size_t machine::scratch_bytes() {
    // The struct, plus what the builders' deques allocate when built (libstdc++: a map of
    // 8 pointers and one node of 512 bytes) and room for a few replies.
    constexpr std::size_t map = 8 * sizeof(void*);
    return sizeof(scratch) + 2 * (map + 512 / sizeof(std::string) * sizeof(std::string)) +
           4 * sizeof(reply);
}

bool machine::release_scratch() {
    if (!scratch_) return true;
    // A reply still due: the queue is in use. (The builders only hold the last call's
    // batches, and a message half-read on either side is followed by fields, not by them.)
    if (!scratch_->pending.empty()) return false;
    scratch_->to_server.reset(nullptr);
    scratch_->to_client.reset(nullptr);
    auto& list = free_list<scratch>();
    stats::held_add(stats::held::scratch_used, -1);
    if (list.size() < max_free_scratch) {
        list.push_back(std::move(scratch_));
        stats::held_add(stats::held::scratch_free, 1);
    }
    scratch_.reset();
    return true;
}

void machine::on_server_linked(pool::server_statements* statements) {
    linked_ = true;
    server_statements_ = statements;
    server_dirty_ = false;
    server_pass_ = 0;
    server_discard_ = false;
}

void machine::on_server_released() {
    linked_ = false;
    server_statements_ = nullptr;
}

void machine::on_admission(bool allowed, std::chrono::milliseconds retry_after,
                           std::string tenant) {
    if (allowed) {
        admitted_ = true;
        return;
    }
    // Nothing of a rejected request reaches PostgreSQL. In the extended protocol the whole
    // batch up to Sync is answered, as PostgreSQL does after an error.
    rejection_ = std::make_unique<std::string>();
    skip_ = skip::rejected;
    auto ms = retry_after.count();
    proto::writer(*rejection_).error_response(
        "53400", "rate limit exceeded for tenant \"" + tenant + "\"",
        "retry after " + std::to_string(ms > 0 ? ms : 1) + " ms");
}

bool machine::is_request_start(char type) const {
    // A request starts with a Query or FunctionCall, or with the first message of an
    // extended batch.
    return type == proto::msg::query || type == proto::msg::function_call ||
           (!in_batch_ && (is_extended(type) || type == proto::msg::sync));
}

void machine::drop_message(std::size_t& pos, std::uint32_t body_length) {
    out_server().skip(pos, 5);
    pos += 5;
    client_pass_ = body_length;
    client_discard_ = true;
}

// A request Sluice answers with an error itself (duplicate statement name, a message too
// large to hold): like PostgreSQL, the rest of the batch is skipped until Sync.
void machine::fail_batch(std::string sqlstate, std::string message) {
    reply r;
    r.request = 'P';  // an extended request: dropped if an earlier one fails on the server
    r.action = reply::inject;
    proto::writer(r.extra().bytes).error_response(sqlstate, message);
    queue().push_back(std::move(r));
    skip_ = skip::failed;
    in_batch_ = true;
}

void machine::forwarded(char type) {
    switch (type) {
        case proto::msg::query:
        case proto::msg::function_call:
        case proto::msg::sync: {
            if (outstanding_++ == 0) obs_.on_query_start();
            reply r;
            r.request = type;
            r.copy_ends = copy_ends_sent_;
            queue().push_back(std::move(r));
            if (type == proto::msg::sync) {
                unsynced_ = false;
                batch_forwarded_ = false;
                in_batch_ = false;
                server_skipping_ = false;  // the server resumes at this Sync
            }
            break;
        }
        case proto::msg::parse:
        case proto::msg::bind:
        case proto::msg::describe:
        case proto::msg::execute:
        case proto::msg::close: {
            unsynced_ = true;
            batch_forwarded_ = true;
            in_batch_ = true;
            reply r;
            r.request = type;
            r.copy_ends = copy_ends_sent_;
            queue().push_back(std::move(r));
            break;
        }
        case proto::msg::flush:
            break;
        case proto::msg::copy_done:
        case proto::msg::copy_fail:
            ++copy_ends_sent_;
            break;
        default:  // CopyData
            break;
    }
}

void machine::ensure_prepared(const client_statement& st, std::size_t pos) {
    auto& srv = *server_statements_;
    if (srv.touch(st.server_name)) return;
    while (srv.size() >= std::max<std::size_t>(1, settings_.max_prepared)) {
        // Evict the least recently used statement from this server. If an earlier message
        // of this batch fails, PostgreSQL skips the Close: undo_skipped() puts it back.
        reply r;
        r.request = 'C';
        r.action = reply::swallow;
        r.evicted = true;
        auto& evicted = r.extra();  // (allocated before the name leaves srv's list)
        evicted.server_statement = srv.pop_oldest();
        std::string close;
        proto::writer(close).close('S', r.server_statement());
        out_server().insert(pos, std::move(close));
        queue().push_back(std::move(r));
    }
    std::string parse = header_bytes(proto::msg::parse,
                                     st.server_name.size() + 1 + st.parse_rest.size());
    parse += st.server_name;
    parse += '\0';
    parse += st.parse_rest;
    out_server().insert(pos, std::move(parse));
    reply r;
    r.request = 'P';
    r.action = reply::swallow;
    r.extra().server_statement = st.server_name;
    queue().push_back(std::move(r));
    srv.add(st.server_name);
    obs_.on_server_parse();
}

// Parse, Bind, Describe and Close in transaction/statement mode: the statement names are
// the client's and must be mapped to the server's. `avail` bytes of the message (of
// `total`) are in the input at `msg`. Sets `done` when the message was handled and `pos`
// moved past what was handled; otherwise returns what the driver must do first.
client_result machine::handle_held(char type, const std::uint8_t* msg, std::size_t avail,
                                   std::size_t total, std::size_t& pos, bool& done) {
    done = false;
    const std::size_t body_length = total - 5;
    auto need_more = [&] {
        client_result r;
        r.consumed = pos;
        return r;
    };
    auto malformed = [&] {
        client_result r{client_event::close, pos};
        r.why = close_reason::make("08P01", "malformed extended-protocol message");
        return r;
    };
    auto too_large = [&](std::string what) {
        // Beyond the limit the message is not held: the batch fails, the server sees none
        // of it, and the connection stays usable.
        fail_batch("54000", what + " is larger than max_held_message_size (" +
                                std::to_string(settings_.max_held) + " bytes)");
        drop_message(pos, std::uint32_t(body_length));
        done = true;
        return client_result{};
    };

    if (type == proto::msg::parse || type == proto::msg::bind) {
        // Only the head is needed: Parse's name, Bind's portal and statement names.
        std::size_t first = cstring_end(msg, 5, avail);
        std::size_t second = first == std::string::npos || type == proto::msg::parse
                                 ? first
                                 : cstring_end(msg, first + 1, avail);
        if (second == std::string::npos) {
            if (avail >= total) {
                return malformed();
            }
            if (avail >= std::min<std::size_t>(total, settings_.max_held)) return too_large("a message head");
            return need_more();
        }
        if (type == proto::msg::parse) {
            std::string name(as_view(msg + 5, first - 5));
            if (name.empty()) {
                // The unnamed statement goes to the server as it is, streamed.
                if (!linked_) return client_result{client_event::need_server, pos};
                obs_.on_client_parse();
                forwarded(type);
                pos += 5;
                client_pass_ = body_length;
                client_discard_ = false;
                done = true;
                return {};
            }
            // A named Parse is answered here and remembered: it is prepared on a server when
            // a Bind or Describe needs it. Its text is kept, so it is held whole.
            if (total > settings_.max_held) return too_large("prepared statement \"" + name + "\"");
            if (avail < total) return need_more();
            if (!proto::decode_parse({msg + 5, body_length})) {
                return malformed();
            }
            obs_.on_client_parse();
            out_server().skip(pos, total);
            pos += total;
            done = true;
            in_batch_ = true;
            if (statements_.count(name)) {
                // As PostgreSQL: a name is not silently redefined.
                fail_batch("42P05", "prepared statement \"" + name + "\" already exists");
                return {};
            }
            std::string rest(as_view(msg + first + 1, total - first - 1));
            statements_[name] = client_statement{server_statement_name(rest), std::move(rest)};
            reply r;
            r.request = 'P';
            r.action = reply::inject;
            r.extra().client_name = name;
            proto::writer(r.extra().bytes).parse_complete();
            queue().push_back(std::move(r));
            return {};
        }
        // Bind: a client statement is renamed; the parameters that follow are streamed.
        std::string statement(as_view(msg + first + 1, second - first - 1));
        client_statement* st = statement.empty() ? nullptr : statements_.find(statement);
        if (!linked_) return client_result{client_event::need_server, pos};
        obs_.on_client_bind();
        if (st) {
            out_server().skip(pos, second + 1);
            ensure_prepared(*st, pos);
            const auto& server_name = st->server_name;
            std::string head =
                header_bytes(type, body_length - statement.size() + server_name.size());
            head.append(as_view(msg + 5, first + 1 - 5));  // portal and its NUL
            head += server_name;
            head += '\0';
            out_server().insert(pos, std::move(head));
            pos += second + 1;
            client_pass_ = total - (second + 1);
        } else {
            pos += 5;
            client_pass_ = body_length;
        }
        client_discard_ = false;
        forwarded(type);
        done = true;
        return {};
    }

    // Describe and Close: small, held whole.
    if (total > settings_.max_held) return too_large("a Describe or Close message");
    if (avail < total) return need_more();
    auto d = proto::decode_describe_or_close({msg + 5, body_length});
    if (!d) {
        return malformed();
    }
    std::string name(d->name);
    client_statement* st = d->kind == 'S' && !name.empty() ? statements_.find(name) : nullptr;
    if (type == proto::msg::close && st) {
        // The server copy is shared and LRU-managed: only the client's name goes.
        reply r;
        r.request = 'C';
        r.action = reply::inject;
        r.extra().client_name = name;
        r.extra().restore = std::move(*st);
        statements_.erase(name);
        proto::writer(r.extra().bytes).close_complete();
        queue().push_back(std::move(r));
        out_server().skip(pos, total);
        pos += total;
        in_batch_ = true;
        done = true;
        return {};
    }
    if (!linked_) return client_result{client_event::need_server, pos};
    if (type == proto::msg::describe && st) {
        out_server().skip(pos, total);
        ensure_prepared(*st, pos);
        std::string m;
        proto::writer w(m);
        w.header(proto::msg::describe);
        w.u8('S');
        w.cstring(st->server_name);
        w.finish();
        out_server().insert(pos, std::move(m));
        pos += total;
    } else {
        pos += total;  // forwarded unchanged (a portal, an unnamed or unknown statement)
    }
    forwarded(type);
    done = true;
    return {};
}

client_result machine::on_client_data(std::span<const std::uint8_t> in) {
    auto r = scan_client(in);
    out_server().finish(r.consumed);
    return r;
}

server_result machine::on_server_data(std::span<const std::uint8_t> in) {
    auto r = scan_server(in);
    out_client().finish(r.consumed);
    return r;
}

client_result machine::scan_client(std::span<const std::uint8_t> in) {
    const std::uint8_t* data = in.data();
    const std::size_t size = in.size();
    out_server().reset(data);
    std::size_t pos = 0;
    auto stop = [&](client_event e, std::string sqlstate = {}, std::string message = {}) {
        client_result r;
        r.event = e;
        r.consumed = pos;
        if (!sqlstate.empty() || !message.empty())
            r.why = close_reason::make(std::move(sqlstate), std::move(message));
        return r;
    };
    // An admission holds for the message it was asked for until that message is handled:
    // the core may stop at it first (to link a server, or to read the rest of it).
    std::size_t admitted_at = admitted_ ? 0 : std::string::npos;
    auto settle_admission = [&] {
        if (admitted_at != std::string::npos && pos > admitted_at) {
            admitted_ = false;
            admitted_at = std::string::npos;
        }
    };
    while (pos < size) {
        settle_admission();
        if (client_pass_ > 0) {
            pass_body(client_pass_, client_discard_, out_server(), pos, size);
            continue;
        }
        proto::frame_header h;
        std::error_code ec;
        auto st = proto::scan_header({data + pos, size - pos}, settings_.max_packet, h, ec);
        if (st == proto::scan_status::need_more) break;
        if (st == proto::scan_status::error)
            return stop(client_event::close, "08P01", "invalid message from client: " + ec.message());
        const char type = char(h.type);
        if (type == proto::msg::terminate) return stop(client_event::terminate);
        if (!is_frontend_type(type))  // as PostgreSQL: a protocol violation
            return stop(client_event::close, "08P01",
                        "invalid frontend message type " + std::to_string(int(h.type)));

        if (settings_.rate_limited && skip_ == skip::none && is_request_start(type)) {
            if (!admitted_) {
                client_result r = stop(client_event::need_admission);
                r.new_transaction = transaction_status_ == 'I' && outstanding_ == 0;
                return r;
            }
            admitted_at = pos;
        }

        const bool ends_request = type == proto::msg::query ||
                                  type == proto::msg::function_call || type == proto::msg::sync;
        if (skip_ == skip::rejected) {
            drop_message(pos, h.body_length);
            if (ends_request) {
                reply r;
                r.request = 'S';
                r.action = reply::inject;
                r.extra().bytes = std::move(*rejection_);
                rejection_.reset();
                queue().push_back(std::move(r));
                skip_ = skip::none;
                in_batch_ = false;
            } else {
                in_batch_ = true;
            }
            continue;
        }
        if (skip_ == skip::failed) {
            if (!ends_request) {
                drop_message(pos, h.body_length);
                continue;
            }
            skip_ = skip::none;  // the Sync (or Query) itself is handled as usual below
        }
        if (server_skipping_ && (is_extended(type) || type == proto::msg::flush)) {
            // PostgreSQL skips these until Sync after an error: they get no reply.
            drop_message(pos, h.body_length);
            continue;
        }
        if (!linked_ && !batch_forwarded_ &&
            (type == proto::msg::sync || type == proto::msg::flush)) {
            // A Sync ending a batch that reached no server is answered here (a client
            // preparing while its siblings hold every server would otherwise wait), and a
            // Flush with nothing to flush is dropped.
            drop_message(pos, h.body_length);
            if (type == proto::msg::sync) {
                reply r;
                r.request = 'S';
                r.action = reply::inject;
                queue().push_back(std::move(r));
                in_batch_ = false;
            }
            continue;
        }

        if (settings_.track_prepared &&
            (type == proto::msg::parse || type == proto::msg::bind ||
             type == proto::msg::describe || type == proto::msg::close)) {
            bool done = false;
            auto r = handle_held(type, data + pos, std::min<std::size_t>(size - pos, h.total()),
                                 h.total(), pos, done);
            if (!done) return r;
            continue;
        }

        if (!linked_) return stop(client_event::need_server);
        if (type == proto::msg::parse) obs_.on_client_parse();
        if (type == proto::msg::bind) obs_.on_client_bind();
        forwarded(type);
        pos += 5;
        client_pass_ = h.body_length;
        client_discard_ = false;
    }
    settle_admission();
    return stop(client_event::need_more);
}

bool machine::injections_due() const {
    return !queue_empty() && scratch_->pending.front().action == reply::inject;
}

void machine::take_injections(std::string& out) {
    while (!queue_empty() && queue().front().action == reply::inject) {
        auto& f = queue().front();
        if (f.more) out += f.more->bytes;
        // A request answered here ends like any request: ReadyForQuery with the client's
        // true transaction state (known now that everything before it was answered).
        if (f.request == 'S') proto::writer(out).ready_for_query(transaction_status_);
        queue().pop_front();
    }
}

void machine::inject_front(std::size_t pos) {
    if (!injections_due()) return;
    std::string bytes;
    take_injections(bytes);
    out_client().insert(pos, std::move(bytes));
}

// A skipped request had side effects Sluice applied in advance: undo them.
void machine::undo_skipped(reply& r) {
    if (r.request == 'P') {
        if (!r.server_statement().empty() && server_statements_)
            server_statements_->erase(r.server_statement());  // never created
        if (!r.client_name().empty()) statements_.erase(r.client_name());
    } else if (r.request == 'C') {
        if (r.evicted && server_statements_)
            server_statements_->add_oldest(r.server_statement());  // still on the server
        if (r.more && r.more->restore)
            statements_[r.client_name()] = std::move(*r.more->restore);
    }
}

void machine::on_error_completing_front() {
    // The front request failed. If it was an extended message, PostgreSQL now skips every
    // extended message until Sync: so do their replies, and whatever they were meant to do.
    reply front = std::move(queue().front());
    queue().pop_front();
    if (front.request == 'P' && !front.server_statement().empty() && server_statements_)
        server_statements_->erase(front.server_statement());  // a failed Parse created nothing
    if (front.request == 'P' && !front.client_name().empty())
        statements_.erase(front.client_name());
    if (front.evicted && server_statements_) server_statements_->erase(front.server_statement());
    if (!is_extended(front.request)) return;
    while (!queue_empty() && is_extended(queue().front().request)) {
        undo_skipped(queue().front());
        queue().pop_front();
    }
    // No Sync forwarded yet: extended messages the client sends from now on are skipped
    // by the server too.
    // (A Sync already forwarded ends the skipping; unsynced_ alone could belong to the next
    // batch.)
    const bool sync_next = !queue_empty() && queue().front().request == 'S' &&
                           queue().front().action == reply::forward;
    server_skipping_ = unsynced_ && !sync_next;
}

void machine::drop_syncs_ignored_during_copy() {
    // PostgreSQL ignores Sync (and Flush) received in copy-in mode. The Syncs the client sent
    // after the request that started this COPY and before its CopyDone/CopyFail get no
    // reply (libpq and JDBC send Execute and Sync together).
    const std::uint32_t stamp = queue().front().copy_ends;
    for (auto it = std::next(queue().begin()); it != queue().end();) {
        if (it->request == 'S' && it->action == reply::forward && it->copy_ends == stamp) {
            it = queue().erase(it);
            if (outstanding_ > 0) outstanding_--;
        } else {
            ++it;
        }
    }
}

void machine::on_ready_for_query(char status) {
    if (outstanding_ > 0) outstanding_--;
    char previous = transaction_status_;
    transaction_status_ = status;
    obs_.on_ready_for_query(status, previous, outstanding_ > 0);
    if (outstanding_ > 0) obs_.on_query_start();
}

void machine::on_command_complete(std::string_view tag) {
    if (tag == "LISTEN") {
        client_listens_ = true;
    } else if (tag == "SET" || tag == "RESET") {
        refresh_parameters_ = true;
    } else if (tag == "DISCARD ALL" || tag == "DEALLOCATE ALL") {
        // Every prepared statement of the server session is gone, the client's too.
        if (server_statements_) server_statements_->clear();
        statements_.clear();
        if (tag == "DISCARD ALL") refresh_parameters_ = true;
    }
}

server_result machine::scan_server(std::span<const std::uint8_t> in) {
    const std::uint8_t* data = in.data();
    const std::size_t size = in.size();
    out_client().reset(data);
    std::size_t pos = 0;
    while (pos < size) {
        if (server_pass_ > 0) {
            pass_body(server_pass_, server_discard_, out_client(), pos, size);
            continue;
        }
        proto::frame_header h;
        std::error_code ec;
        auto st = proto::scan_header({data + pos, size - pos}, settings_.max_packet, h, ec);
        if (st == proto::scan_status::need_more) break;
        if (st == proto::scan_status::error) {
            server_dirty_ = true;
            server_result r;
            r.event = server_event::close;
            r.consumed = pos;
            r.why = close_reason::make("08P01", "invalid message from server: " + ec.message());
            return r;
        }
        const char t = char(h.type);
        const bool needs_body = t == proto::msg::ready_for_query ||
                                t == proto::msg::parameter_status ||
                                t == proto::msg::command_complete ||
                                t == proto::msg::error_response;
        if (needs_body && size - pos < h.total()) {
            if (h.total() > settings_.max_held) {
                // Nothing the pooler reads is this large: the server misbehaves.
                server_dirty_ = true;
                return {server_event::close, pos,
                        close_reason::make("08P01", "oversized message from server")};
            }
            break;
        }
        inject_front(pos);  // replies Sluice gives itself go out in their turn, before this

        const bool async_message = t == proto::msg::notice_response ||
                                   t == proto::msg::notification_response ||
                                   t == proto::msg::parameter_status;
        bool swallow = false;
        if (t == proto::msg::notification_response && mode_allows_release() && !client_listens_) {
            // A notification for a LISTEN another client left on this server (it can arrive
            // after the checkout found the server quiet): never this client's. The server
            // is closed at the end of the transaction, so the stale LISTEN goes with it.
            swallow = true;
            server_dirty_ = true;
        }
        if (!async_message) {
            if (queue_empty()) {
                // Nobody asked: a FATAL after pg_terminate_backend, or a confused server.
                // It still reaches the client, but the server never goes back to the pool.
                server_dirty_ = true;
            } else {
                const char request = queue().front().request;
                swallow = queue().front().action == reply::swallow &&
                          t != proto::msg::error_response;
                // (This erases from the queue: no reference into it may be held across.)
                if (t == proto::msg::copy_in_response && (request == 'E' || request == 'Q'))
                    drop_syncs_ignored_during_copy();
                if (completes(request, t)) {
                    if (t == proto::msg::error_response)
                        on_error_completing_front();
                    else
                        queue().pop_front();
                }
            }
        }

        if (needs_body) {
            std::span<const std::uint8_t> body(data + pos + 5, h.body_length);
            if (t == proto::msg::ready_for_query) {
                char status = proto::decode_ready_for_query(body).value_or('E');
                on_ready_for_query(status);
                if (status != 'I' && settings_.mode == config::pool_mode::statement) {
                    // Statement mode: the server goes back after every statement, so a
                    // transaction block cannot work. As PgBouncer: refuse and close (the
                    // error replaces the ReadyForQuery; the server is dirty).
                    server_dirty_ = true;
                    std::string err;
                    proto::writer(err).error_response(
                        "25000", "transaction blocks not allowed in statement pooling mode",
                        "use pool_mode transaction for clients that open transactions",
                        "FATAL");
                    out_client().skip(pos, h.total());
                    out_client().insert(pos + h.total(), std::move(err));
                    pos += h.total();
                    return {server_event::close, pos,
                            close_reason::make({}, "transaction block in statement mode")};
                }
            } else if (t == proto::msg::parameter_status) {
                if (auto ps = proto::decode_parameter_status(body))
                    obs_.on_parameter_status(ps->first, ps->second);
            } else if (t == proto::msg::command_complete) {
                if (auto tag = proto::decode_cstring(body)) on_command_complete(*tag);
            } else if (is_fatal_error(body)) {
                server_dirty_ = true;  // the server is closing this session
            }
            if (swallow) out_client().skip(pos, h.total());
            pos += h.total();
            continue;
        }
        if (swallow) out_client().skip(pos, 5);
        pos += 5;
        server_pass_ = h.body_length;
        server_discard_ = swallow;
    }
    if (server_pass_ == 0) inject_front(pos);
    return {server_event::need_more, pos, nullptr};
}

bool machine::at_boundary() const {
    return linked_ && queue_empty() && outstanding_ == 0 && !unsynced_ &&
           transaction_status_ == 'I' && server_pass_ == 0 &&
           !(client_pass_ > 0 && !client_discard_) && skip_ == skip::none;
}

bool machine::take_parameter_refresh() {
    const bool r = parameter_refresh_due();
    refresh_parameters_ = false;
    return r;
}

}  // namespace sluice::proxy::relay
