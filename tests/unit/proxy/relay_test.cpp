// The relay core, driven by scripts of byte exchanges (in the manner of Boost.MySQL's
// algo tests): the client says, the server says, and what each side receives is checked
// message by message. Every script is re-run with its inputs cut into chunks of every
// size from 1 byte up, and must give the same bytes on both sides; the scripts that check
// release are also checked with the client vanishing after every step (server_clean()).
#include <gtest/gtest.h>

#include <functional>

#include "sluice/protocol/codec.hpp"
#include "sluice/proxy/relay.hpp"

namespace {

namespace proto = sluice::protocol;
using namespace sluice;
using proxy::relay::client_event;
using proxy::relay::machine;
using proxy::relay::settings;

// --- message builders --------------------------------------------------------------------

std::string msg(char type, std::string_view body) {
    std::string out;
    proto::writer(out).raw(type, body);
    return out;
}
std::string z(std::string_view s) { return std::string(s.data(), s.size()) + '\0'; }
std::string u16(int v) { return {char(v >> 8), char(v)}; }
std::string u32(std::uint32_t v) {
    return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
}

// frontend
std::string parse(std::string_view name, std::string_view sql) {
    return msg('P', z(name) + z(sql) + u16(0));
}
std::string bind_msg(std::string_view stmt, std::string_view value = "1", std::string_view portal = "") {
    return msg('B', z(portal) + z(stmt) + u16(0) + u16(1) + u32(std::uint32_t(value.size())) +
                        std::string(value) + u16(0));
}
std::string execute(std::string_view portal = "") { return msg('E', z(portal) + u32(0)); }
std::string describe(char kind, std::string_view name) { return msg('D', std::string(1, kind) + z(name)); }
std::string close(char kind, std::string_view name) { return msg('C', std::string(1, kind) + z(name)); }
std::string sync() { return msg('S', ""); }
std::string flush() { return msg('H', ""); }
std::string query(std::string_view sql) { return msg('Q', z(sql)); }
std::string copy_data(std::string_view d) { return msg('d', d); }
std::string copy_done() { return msg('c', ""); }
std::string terminate() { return msg('X', ""); }

// backend
std::string parse_complete() { return msg('1', ""); }
std::string bind_complete() { return msg('2', ""); }
std::string close_complete() { return msg('3', ""); }
std::string no_data() { return msg('n', ""); }
std::string row_description() { return msg('T', u16(1) + z("c") + u32(0) + u16(0) + u32(23) + u16(4) + u32(0) + u16(0)); }
std::string data_row(std::string_view v) { return msg('D', u16(1) + u32(std::uint32_t(v.size())) + std::string(v)); }
std::string command_complete(std::string_view tag) { return msg('C', z(tag)); }
std::string ready(char status) { return msg('Z', std::string(1, status)); }
std::string error(std::string_view sqlstate, std::string_view severity = "ERROR") {
    return msg('E', "S" + z(severity) + "V" + z(severity) + "C" + z(sqlstate) + "M" + z("failed") + '\0');
}
std::string copy_in_response() { return msg('G', std::string(1, '\0') + u16(0)); }
std::string copy_out_response() { return msg('H', std::string(1, '\0') + u16(0)); }
std::string notification() { return msg('A', u32(7) + z("chan") + z("payload")); }

// The server-side name the core gives a statement text (what parse() carries after the name).
std::string server_name(std::string_view sql) {
    return proxy::server_statement_name(z(sql) + u16(0));
}

// Message types in a byte string, for readable failures: "P B E S".
std::string types(const std::string& bytes) {
    std::string out;
    std::size_t pos = 0;
    while (pos + 5 <= bytes.size()) {
        auto len = proto::read_u32(reinterpret_cast<const std::uint8_t*>(bytes.data()) + pos + 1);
        if (!out.empty()) out += ' ';
        out += bytes[pos];
        pos += 1 + len;
    }
    if (pos != bytes.size()) out += " +" + std::to_string(bytes.size() - pos) + "b";
    return out;
}

// --- the scripted driver -------------------------------------------------------------------

struct counting_observer : proxy::relay::observer {
    int ready = 0, parses = 0, server_parses = 0;
    std::vector<std::pair<std::string, std::string>> parameters;
    void on_ready_for_query(char, char, bool) override { ++ready; }
    void on_parameter_status(std::string_view n, std::string_view v) override {
        parameters.emplace_back(n, v);
    }
    void on_client_parse() override { ++parses; }
    void on_server_parse() override { ++server_parses; }
};

// Plays the driver's part: feeds bytes in chunks of `chunk` (0 = whole), links the fake
// server on need_server, answers need_admission with `admit`, collects what each side got.
struct harness {
    explicit harness(settings s, std::size_t chunk = 0) : m(s, obs), chunk(chunk) {}

    counting_observer obs;
    machine m;
    std::size_t chunk;
    pool::server_statements server;  // the one server connection of this test
    std::string cbuf, sbuf;            // unconsumed input, as a driver's buffers
    std::string to_server, to_client;  // everything delivered so far
    std::size_t max_cbuf = 0;          // the most client bytes held at once
    int links = 0, releases = 0, closes = 0, admissions = 0;
    bool admit = true;
    // As the driver does whenever the client waits idle: the request storage goes back
    // (refused while a reply is due). Done after every step, so that every script below
    // also checks that nothing the core needs later lives in it.
    bool trim = true;
    int trims = 0;
    void trim_if_idle() {
        if (trim && m.release_scratch()) ++trims;
    }
    std::optional<proxy::relay::client_result> closed;
    bool terminated = false, server_closed = false;

    static void append(std::string& out, const sluice::proxy::batch_builder& b) {
        for (auto& [p, n] : b.pieces()) out.append(static_cast<const char*>(p), n);
    }

    void client(const std::string& bytes) {
        std::size_t step = chunk ? chunk : bytes.size();
        for (std::size_t off = 0; off < bytes.size(); off += step) {
            cbuf += bytes.substr(off, step);
            max_cbuf = std::max(max_cbuf, cbuf.size());
            run_client();
        }
    }
    void run_client() {
        for (;;) {
            auto r = m.on_client_data({reinterpret_cast<const std::uint8_t*>(cbuf.data()), cbuf.size()});
            append(to_server, m.to_server());
            cbuf.erase(0, r.consumed);
            m.take_injections(to_client);
            switch (r.event) {
                case client_event::need_more: trim_if_idle(); return;
                case client_event::need_server:
                    ASSERT_FALSE(m.linked());
                    ++links;
                    m.on_server_linked(&server);
                    continue;
                case client_event::need_admission:
                    ++admissions;
                    m.on_admission(admit, std::chrono::milliseconds(250), "acme");
                    continue;
                case client_event::close: closed = std::move(r); return;
                case client_event::terminate: terminated = true; return;
            }
        }
    }
    void backend(const std::string& bytes) {
        std::size_t step = chunk ? chunk : bytes.size();
        for (std::size_t off = 0; off < bytes.size(); off += step) {
            sbuf += bytes.substr(off, step);
            auto r = m.on_server_data({reinterpret_cast<const std::uint8_t*>(sbuf.data()), sbuf.size()});
            append(to_client, m.to_client());
            sbuf.erase(0, r.consumed);
            if (r.event == proxy::relay::server_event::close) {
                server_closed = true;
                return;
            }
            auto v = m.release();
            if (v != machine::verdict::keep && sbuf.empty()) {
                ++(v == machine::verdict::give_back ? releases : closes);
                m.on_server_released();
            }
            trim_if_idle();
        }
    }
    // What each side received since the last check.
    std::string took_server() { return std::exchange(to_server, {}); }
    std::string took_client() { return std::exchange(to_client, {}); }
};

settings transaction_mode(std::size_t max_prepared = 200) {
    settings s;
    s.mode = config::pool_mode::transaction;
    s.track_prepared = true;
    s.max_prepared = max_prepared;
    s.max_held = 4096;
    return s;
}
settings session_mode() {
    settings s;
    s.mode = config::pool_mode::session;
    return s;
}

// Runs `script` whole and then with every chunk size from 1 to `max_chunk`: each run must
// pass the script's own checks.
void for_every_split(const std::function<void(harness&)>& script, settings s,
                     std::size_t max_chunk = 40) {
    for (std::size_t c = 0; c <= max_chunk; ++c) {
        SCOPED_TRACE("chunk size " + std::to_string(c));
        harness h(s, c);
        script(h);
        if (::testing::Test::HasFatalFailure()) return;
    }
}

// Message types first (readable), then the exact bytes. Each argument is evaluated once.
#define EXPECT_BYTES(actual, expected)                \
    do {                                              \
        const std::string a_ = (actual), e_ = (expected); \
        EXPECT_EQ(types(a_), types(e_));              \
        EXPECT_EQ(a_, e_);                            \
    } while (0)

// --- simple query ------------------------------------------------------------------------

TEST(relay, simple_query_is_forwarded_and_the_server_released) {
    for_every_split([](harness& h) {
        h.client(query("SELECT 1"));
        EXPECT_EQ(h.links, 1);
        EXPECT_BYTES(h.took_server(), query("SELECT 1"));
        EXPECT_FALSE(h.m.can_release());
        h.backend(row_description() + data_row("1") + command_complete("SELECT 1") + ready('I'));
        EXPECT_BYTES(h.took_client(), row_description() + data_row("1") + command_complete("SELECT 1") + ready('I'));
        EXPECT_EQ(h.releases, 1);
        EXPECT_EQ(h.obs.ready, 1);
    }, transaction_mode());
}

TEST(relay, an_idle_client_holds_no_request_storage) {
    harness h(transaction_mode());
    h.trim = false;
    EXPECT_FALSE(h.m.holds_scratch());
    h.client(query("SELECT 1"));
    EXPECT_TRUE(h.m.holds_scratch());
    // The reply is due: the queue is in use and stays.
    EXPECT_FALSE(h.m.release_scratch());
    EXPECT_TRUE(h.m.holds_scratch());
    EXPECT_EQ(h.m.pending(), 1u);
    h.backend(row_description() + data_row("1") + command_complete("SELECT 1") + ready('I'));
    EXPECT_EQ(h.releases, 1);
    EXPECT_TRUE(h.m.release_scratch());
    EXPECT_FALSE(h.m.holds_scratch());
    EXPECT_EQ(h.m.pending(), 0u);
    EXPECT_EQ(h.m.to_server().size(), 0u);  // an empty batch, not a dangling one
    // The next request takes storage again and is relayed as the first was.
    h.took_server();
    h.took_client();
    h.client(query("SELECT 2"));
    EXPECT_BYTES(h.took_server(), query("SELECT 2"));
    h.backend(command_complete("SELECT 1") + ready('I'));
    EXPECT_BYTES(h.took_client(), command_complete("SELECT 1") + ready('I'));
    EXPECT_EQ(h.releases, 2);
}

TEST(relay, an_open_transaction_keeps_the_server) {
    for_every_split([](harness& h) {
        h.client(query("BEGIN"));
        h.backend(command_complete("BEGIN") + ready('T'));
        EXPECT_EQ(h.releases, 0);
        EXPECT_EQ(h.m.transaction_status(), 'T');
        h.client(query("COMMIT"));
        EXPECT_EQ(h.links, 1);
        h.backend(command_complete("COMMIT") + ready('I'));
        EXPECT_EQ(h.releases, 1);
    }, transaction_mode());
}

TEST(relay, session_mode_never_releases_between_transactions) {
    for_every_split([](harness& h) {
        h.client(query("SELECT 1"));
        h.backend(command_complete("SELECT 1") + ready('I'));
        EXPECT_EQ(h.releases, 0);
        EXPECT_TRUE(h.m.server_clean());  // but a client leaving now leaves it clean
    }, session_mode());
}

TEST(relay, pipelined_queries_release_only_after_the_last_answer) {
    for_every_split([](harness& h) {
        h.client(query("SELECT 1") + query("SELECT 2"));
        h.backend(command_complete("SELECT 1") + ready('I'));
        EXPECT_EQ(h.releases, 0);
        h.backend(command_complete("SELECT 2") + ready('I'));
        EXPECT_EQ(h.releases, 1);
    }, transaction_mode());
}

TEST(relay, unknown_frontend_message_closes_with_08P01) {
    harness h(transaction_mode());
    h.client(msg('x', "junk"));
    ASSERT_TRUE(h.closed);
    EXPECT_EQ(h.closed->sqlstate(), "08P01");
    EXPECT_EQ(h.links, 0);
}

TEST(relay, terminate_is_reported) {
    harness h(transaction_mode());
    h.client(terminate());
    EXPECT_TRUE(h.terminated);
}

// --- extended protocol and prepared statements -----------------------------------------

TEST(relay, named_parse_is_answered_locally_and_prepared_on_demand) {
    const std::string sn = server_name("SELECT $1");
    for_every_split([&](harness& h) {
        h.client(parse("s1", "SELECT $1"));
        EXPECT_EQ(h.links, 0);  // nothing needs a server yet
        EXPECT_BYTES(h.took_client(), parse_complete());
        h.client(bind_msg("s1") + execute() + sync());
        EXPECT_BYTES(h.took_server(), parse(sn, "SELECT $1") + bind_msg(sn) + execute() + sync());
        h.backend(parse_complete() + bind_complete() + data_row("1") + command_complete("SELECT 1") + ready('I'));
        // The ParseComplete of the Parse Sluice added is not the client's.
        EXPECT_BYTES(h.took_client(), bind_complete() + data_row("1") + command_complete("SELECT 1") + ready('I'));
        EXPECT_EQ(h.releases, 1);
        // Next transaction, same server: already prepared there.
        h.client(bind_msg("s1") + execute() + sync());
        EXPECT_BYTES(h.took_server(), bind_msg(sn) + execute() + sync());
        EXPECT_EQ(h.obs.server_parses, 1);
    }, transaction_mode());
}

TEST(relay, describe_of_a_client_statement_is_renamed) {
    const std::string sn = server_name("SELECT 1");
    for_every_split([&](harness& h) {
        h.client(parse("s1", "SELECT 1") + describe('S', "s1") + sync());
        EXPECT_BYTES(h.took_server(), parse(sn, "SELECT 1") + describe('S', sn) + sync());
        h.backend(parse_complete() + msg('t', u16(0)) + row_description() + ready('I'));
        EXPECT_BYTES(h.took_client(), parse_complete() + msg('t', u16(0)) + row_description() + ready('I'));
        EXPECT_EQ(h.releases, 1);
    }, transaction_mode());
}

TEST(relay, close_of_a_client_statement_is_answered_locally) {
    for_every_split([&](harness& h) {
        h.client(parse("s1", "SELECT 1") + close('S', "s1") + sync());
        EXPECT_EQ(h.links, 0);
        EXPECT_BYTES(h.took_client(), parse_complete() + close_complete() + ready('I'));
        EXPECT_FALSE(h.m.has_statement("s1"));
        EXPECT_TRUE(h.took_server().empty());
    }, transaction_mode());
}

TEST(relay, duplicate_statement_name_fails_with_42P05_and_skips_to_sync) {
    for_every_split([&](harness& h) {
        h.client(parse("s1", "SELECT 1") + sync());
        h.took_client();
        h.client(parse("s1", "SELECT 2") + bind_msg("s1") + execute() + sync());
        std::string got = h.took_client();
        EXPECT_EQ(types(got), "E Z");
        EXPECT_NE(got.find("42P05"), std::string::npos);
        EXPECT_TRUE(h.took_server().empty());  // nothing of the failed batch is sent
        EXPECT_EQ(h.links, 0);
        // The connection is usable, and s1 is still the first text.
        h.client(bind_msg("s1") + execute() + sync());
        EXPECT_BYTES(h.took_server(), parse(server_name("SELECT 1"), "SELECT 1") +
                                          bind_msg(server_name("SELECT 1")) + execute() + sync());
    }, transaction_mode());
}

TEST(relay, error_skips_to_sync_even_for_messages_sent_after_it) {
    // psycopg's pipeline: a statement fails, the client sends the rest of the batch and the
    // Sync only after the error arrived. Those messages must not wait for replies that
    // PostgreSQL never sends (this hung).
    for_every_split([&](harness& h) {
        h.client(parse("", "SELECT 1/0") + bind_msg("") + execute() + flush());
        EXPECT_BYTES(h.took_server(), parse("", "SELECT 1/0") + bind_msg("") + execute() + flush());
        h.backend(parse_complete() + bind_complete() + error("22012"));
        EXPECT_EQ(types(h.took_client()), "1 2 E");
        EXPECT_TRUE(h.m.server_skipping());
        h.client(parse("", "SELECT 2") + bind_msg("") + execute() + sync());
        EXPECT_BYTES(h.took_server(), sync());  // the rest is skipped by the server anyway
        h.backend(ready('I'));
        EXPECT_BYTES(h.took_client(), ready('I'));
        EXPECT_EQ(h.releases, 1);
        // Then a prepared statement is answered normally.
        const std::string sn = server_name("SELECT $1");
        h.client(parse("p1", "SELECT $1") + bind_msg("p1") + execute() + sync());
        EXPECT_BYTES(h.took_server(), parse(sn, "SELECT $1") + bind_msg(sn) + execute() + sync());
        h.backend(parse_complete() + bind_complete() + data_row("1") + command_complete("SELECT 1") + ready('I'));
        EXPECT_EQ(types(h.took_client()), "1 2 D C Z");
        EXPECT_EQ(h.releases, 2);
    }, transaction_mode());
}

TEST(relay, error_with_the_batch_already_sent_skips_its_replies) {
    const std::string sn = server_name("SELECT $1");
    for_every_split([&](harness& h) {
        h.client(parse("", "SELECT 1/0") + bind_msg("") + execute() + parse("s1", "SELECT $1") +
                 bind_msg("s1") + execute() + sync());
        EXPECT_BYTES(h.took_server(), parse("", "SELECT 1/0") + bind_msg("") + execute() +
                                          parse(sn, "SELECT $1") + bind_msg(sn) + execute() + sync());
        h.backend(parse_complete() + bind_complete() + error("22012") + ready('I'));
        // The local ParseComplete of s1 comes in its turn... but PostgreSQL skipped that
        // Parse after the error, so the client gets no ParseComplete for it.
        EXPECT_EQ(types(h.took_client()), "1 2 E Z");
        EXPECT_FALSE(h.m.has_statement("s1"));
        EXPECT_FALSE(h.server.contains(sn));  // the added Parse was skipped: not prepared
        EXPECT_EQ(h.releases, 1);
    }, transaction_mode());
}

TEST(relay, eviction_close_skipped_after_an_error_keeps_the_statement_known) {
    const std::string sa = server_name("SELECT 'a'"), sb = server_name("SELECT 'b'");
    for_every_split([&](harness& h) {
        h.client(parse("a", "SELECT 'a'") + parse("b", "SELECT 'b'") + bind_msg("a") + execute() + sync());
        h.backend(parse_complete() + bind_complete() + command_complete("SELECT 1") + ready('I'));
        h.took_server();
        h.took_client();
        ASSERT_TRUE(h.server.contains(sa));
        // An error before the eviction, in the same batch: PostgreSQL skips the Close.
        h.client(bind_msg("missing") + execute() + bind_msg("b") + execute() + sync());
        EXPECT_BYTES(h.took_server(), bind_msg("missing") + execute() + close('S', sa) +
                                          parse(sb, "SELECT 'b'") + bind_msg(sb) + execute() + sync());
        h.backend(error("26000") + ready('I'));
        EXPECT_EQ(types(h.took_client()), "E Z");
        EXPECT_TRUE(h.server.contains(sa));   // still on the server
        EXPECT_FALSE(h.server.contains(sb));  // never created
        // So the next eviction closes it again instead of a Parse failing with 42P05.
        h.client(bind_msg("b") + execute() + sync());
        EXPECT_BYTES(h.took_server(), close('S', sa) + parse(sb, "SELECT 'b'") + bind_msg(sb) + execute() + sync());
        h.backend(close_complete() + parse_complete() + bind_complete() + command_complete("SELECT 1") + ready('I'));
        EXPECT_EQ(types(h.took_client()), "2 C Z");
        EXPECT_FALSE(h.server.contains(sa));
        EXPECT_TRUE(h.server.contains(sb));
    }, transaction_mode(1));
}

TEST(relay, local_close_skipped_after_an_error_puts_the_statement_back) {
    // A Close of a client statement is answered by Sluice, and the name dropped at once.
    // If an earlier message of the batch fails, PostgreSQL would have skipped that Close:
    // so its CloseComplete must not reach the client, and the statement must still work.
    const std::string sn = server_name("SELECT 1");
    for_every_split([&](harness& h) {
        h.client(parse("s1", "SELECT 1") + sync());
        EXPECT_BYTES(h.took_client(), parse_complete() + ready('I'));
        h.client(bind_msg("missing") + execute() + close('S', "s1") + sync());
        EXPECT_BYTES(h.took_server(), bind_msg("missing") + execute() + sync());
        EXPECT_FALSE(h.m.has_statement("s1"));  // dropped while the Close is pending
        h.backend(error("26000") + ready('I'));
        EXPECT_EQ(types(h.took_client()), "E Z");
        EXPECT_TRUE(h.m.has_statement("s1"));   // put back: the Close never happened
        h.client(bind_msg("s1") + execute() + sync());
        EXPECT_BYTES(h.took_server(), parse(sn, "SELECT 1") + bind_msg(sn) + execute() + sync());
    }, transaction_mode());
}

TEST(relay, evictions_mid_pipeline_keep_replies_in_order) {
    for_every_split([&](harness& h) {
        std::string batch, expect_client;
        for (int i = 0; i < 5; ++i) {
            auto name = "s" + std::to_string(i);
            batch += parse(name, "SELECT " + std::to_string(i)) + bind_msg(name) + execute();
        }
        h.client(batch + sync());
        // Server: for each statement, Close (after the first two) + Parse + Bind + Execute.
        std::string reply;
        for (int i = 0; i < 5; ++i) {
            if (i >= 2) reply += close_complete();
            reply += parse_complete() + bind_complete() + command_complete("SELECT 1");
            expect_client += parse_complete() + bind_complete() + command_complete("SELECT 1");
        }
        h.backend(reply + ready('I'));
        EXPECT_EQ(types(h.took_client()), types(expect_client + ready('I')));
        EXPECT_EQ(h.server.size(), 2u);
        EXPECT_EQ(h.releases, 1);
    }, transaction_mode(2), 12);
}

TEST(relay, bind_is_streamed_not_held) {
    // A 100 KB parameter, delivered in 1000-byte reads: the core forwards as it reads.
    const std::string value(100000, 'v');
    const std::string sn = server_name("SELECT $1");
    harness h(transaction_mode(), 1000);
    h.client(parse("s1", "SELECT $1"));
    h.client(bind_msg("s1", value) + execute() + sync());
    EXPECT_LE(h.max_cbuf, 1000u + 64u);
    EXPECT_BYTES(h.took_server(), parse(sn, "SELECT $1") + bind_msg(sn, value) + execute() + sync());
}

TEST(relay, unnamed_parse_is_streamed) {
    const std::string sql = "SELECT '" + std::string(50000, 'q') + "'";
    harness h(transaction_mode(), 777);
    h.client(parse("", sql) + bind_msg("") + execute() + sync());
    EXPECT_LE(h.max_cbuf, 777u + 64u);
    EXPECT_BYTES(h.took_server(), parse("", sql) + bind_msg("") + execute() + sync());
}

TEST(relay, named_parse_over_the_held_limit_fails_with_54000_and_the_session_goes_on) {
    const std::string sql = "SELECT '" + std::string(10000, 'q') + "'";  // limit is 4096
    for_every_split([&](harness& h) {
        h.client(parse("big", sql) + bind_msg("big") + execute() + sync());
        std::string got = h.took_client();
        EXPECT_EQ(types(got), "E Z");
        EXPECT_NE(got.find("54000"), std::string::npos);
        EXPECT_TRUE(h.took_server().empty());
        if (h.chunk > 0) EXPECT_LE(h.max_cbuf, h.chunk + 64);  // not held: dropped as it comes
        h.client(query("SELECT 1"));
        EXPECT_BYTES(h.took_server(), query("SELECT 1"));
    }, transaction_mode(), 3);
}

TEST(relay, lone_sync_without_a_server_is_answered_locally) {
    harness h(transaction_mode());
    h.client(sync());
    EXPECT_EQ(h.links, 0);
    EXPECT_BYTES(h.took_client(), ready('I'));
}

TEST(relay, injected_replies_keep_request_order) {
    for_every_split([&](harness& h) {
        h.client(query("SELECT 1"));
        h.client(parse("s1", "SELECT 1") + sync());  // answered locally, behind the query
        EXPECT_TRUE(h.took_client().empty());
        h.backend(command_complete("SELECT 1") + ready('I') + ready('I'));
        EXPECT_EQ(types(h.took_client()), "C Z 1 Z");
        EXPECT_EQ(h.releases, 1);
    }, transaction_mode());
}

TEST(relay, cancelled_query_mid_result_ends_the_transaction_and_releases) {
    // A cancel (query_timeout, or the client's own) arrives while rows stream: PostgreSQL
    // ends the query with 57014 and ReadyForQuery; the server is clean again.
    for_every_split([&](harness& h) {
        h.client(query("SELECT pg_sleep(1) FROM generate_series(1, 1000)"));
        h.backend(row_description() + data_row("1") + data_row("2"));
        EXPECT_FALSE(h.m.server_clean());
        h.backend(error("57014") + ready('I'));
        EXPECT_EQ(types(h.took_client()), "T D D E Z");
        EXPECT_EQ(h.releases, 1);
    }, transaction_mode());
}

TEST(relay, cancelled_extended_query_skips_to_sync) {
    for_every_split([&](harness& h) {
        h.client(parse("", "SELECT pg_sleep(10)") + bind_msg("") + execute() + sync());
        h.backend(parse_complete() + bind_complete() + error("57014") + ready('I'));
        EXPECT_EQ(types(h.took_client()), "1 2 E Z");
        EXPECT_EQ(h.m.pending(), 0u);
        EXPECT_EQ(h.releases, 1);
    }, transaction_mode());
}

// --- COPY ----------------------------------------------------------------------------------

TEST(relay, copy_in_simple_protocol) {
    for_every_split([&](harness& h) {
        h.client(query("COPY t FROM STDIN"));
        h.backend(copy_in_response());
        EXPECT_EQ(h.releases, 0);
        h.client(copy_data("1\n") + copy_data("2\n") + copy_done());
        EXPECT_BYTES(h.took_server(), query("COPY t FROM STDIN") + copy_data("1\n") + copy_data("2\n") + copy_done());
        h.backend(command_complete("COPY 2") + ready('I'));
        EXPECT_EQ(h.releases, 1);
    }, transaction_mode());
}

TEST(relay, copy_in_extended_with_sync_sent_before_the_data) {
    // libpq and JDBC send Execute and Sync together; PostgreSQL ignores a Sync received in
    // copy-in mode, so only the Sync sent after CopyDone is answered.
    for_every_split([&](harness& h) {
        h.client(parse("", "COPY t FROM STDIN") + bind_msg("") + execute() + sync());
        h.backend(parse_complete() + bind_complete() + copy_in_response());
        h.client(copy_data("1\n") + copy_done() + sync());
        h.backend(command_complete("COPY 1") + ready('I'));
        EXPECT_EQ(types(h.took_client()), "1 2 G C Z");
        EXPECT_EQ(h.m.pending(), 0u);
        EXPECT_EQ(h.m.outstanding(), 0);
        EXPECT_EQ(h.releases, 1);
    }, transaction_mode());
}

TEST(relay, copy_in_with_many_syncs_sent_before_the_data) {
    // Several Syncs (and a long queue) ahead of CopyInResponse: dropping them reshapes the
    // queue while the reply that triggered it is being handled (a use-after-free the
    // relay fuzz target found).
    for_every_split([&](harness& h) {
        std::string batch = parse("", "COPY t FROM STDIN") + bind_msg("") + execute();
        for (int i = 0; i < 40; ++i) batch += sync();
        h.client(batch);
        EXPECT_EQ(h.m.outstanding(), 40);
        h.backend(parse_complete() + bind_complete() + copy_in_response());
        EXPECT_EQ(h.m.outstanding(), 0);
        h.client(copy_data("1\n") + copy_done() + sync());
        h.backend(command_complete("COPY 1") + ready('I'));
        EXPECT_EQ(types(h.took_client()), "1 2 G C Z");
        EXPECT_EQ(h.releases, 1);
    }, transaction_mode(), 8);
}

TEST(relay, copy_in_extended_with_sync_only_after_copy_done) {
    for_every_split([&](harness& h) {
        h.client(parse("", "COPY t FROM STDIN") + bind_msg("") + execute() + flush());
        h.backend(parse_complete() + bind_complete() + copy_in_response());
        h.client(copy_data("1\n") + copy_done() + sync());
        h.backend(command_complete("COPY 1") + ready('I'));
        EXPECT_EQ(h.releases, 1);
    }, transaction_mode());
}

TEST(relay, copy_out_simple_protocol) {
    for_every_split([&](harness& h) {
        h.client(query("COPY t TO STDOUT"));
        h.backend(copy_out_response() + copy_data("1\n"));
        EXPECT_EQ(h.releases, 0);
        h.backend(copy_data("2\n") + msg('c', "") + command_complete("COPY 2") + ready('I'));
        EXPECT_EQ(types(h.took_client()), "H d d c C Z");
        EXPECT_EQ(h.releases, 1);
    }, transaction_mode());
}

// --- what the server says on its own -------------------------------------------------------

TEST(relay, unsolicited_fatal_makes_the_server_unusable) {
    harness h(transaction_mode());
    h.client(query("SELECT 1"));
    h.backend(command_complete("SELECT 1") + ready('I'));
    ASSERT_EQ(h.releases, 1);
    // Linked again for the next query; a FATAL arrives in the middle of it.
    h.client(query("SELECT pg_sleep(10)"));
    h.backend(error("57P01", "FATAL"));
    EXPECT_FALSE(h.m.server_clean());
    EXPECT_EQ(types(h.took_client()), "C Z E");
}

TEST(relay, notification_is_passed_on_and_does_not_complete_anything) {
    harness h(session_mode());
    h.client(query("SELECT 1"));
    h.backend(notification() + command_complete("SELECT 1"));
    EXPECT_EQ(h.m.pending(), 1u);
    h.backend(ready('I'));
    EXPECT_EQ(types(h.took_client()), "A C Z");
    EXPECT_TRUE(h.m.server_clean());
}

TEST(relay, notification_for_another_clients_listen_is_dropped_and_the_server_closed) {
    // A LISTEN left on the server by an earlier client; its notification arrives while
    // this client's query runs. It is not this client's: dropped, and the server closed
    // at the end of the transaction (the stale LISTEN goes with it).
    for_every_split([&](harness& h) {
        h.client(query("SELECT 1"));
        h.backend(notification() + row_description() + data_row("1"));
        h.backend(command_complete("SELECT 1") + ready('I'));
        EXPECT_EQ(types(h.took_client()), "T D C Z");
        EXPECT_EQ(h.releases, 0);
        EXPECT_EQ(h.closes, 1);
    }, transaction_mode());
}

TEST(relay, notification_after_the_clients_own_listen_is_passed_on) {
    harness h(transaction_mode());
    h.client(query("LISTEN chan"));
    h.backend(command_complete("LISTEN") + ready('I'));
    h.client(query("SELECT 1"));
    h.backend(notification() + command_complete("SELECT 1") + ready('I'));
    EXPECT_EQ(types(h.took_client()), "C Z A C Z");
}

TEST(relay, parameter_status_is_reported) {
    harness h(transaction_mode());
    h.client(query("SET TimeZone = 'UTC'"));
    h.backend(msg('S', z("TimeZone") + z("UTC")) + command_complete("SET") + ready('I'));
    ASSERT_EQ(h.obs.parameters.size(), 1u);
    EXPECT_EQ(h.obs.parameters[0].first, "TimeZone");
    EXPECT_TRUE(h.m.take_parameter_refresh());
    EXPECT_FALSE(h.m.take_parameter_refresh());
}

TEST(relay, discard_all_forgets_every_statement) {
    harness h(transaction_mode());
    h.client(parse("s1", "SELECT 1") + bind_msg("s1") + execute() + sync());
    h.backend(parse_complete() + bind_complete() + command_complete("SELECT 1") + ready('I'));
    ASSERT_EQ(h.server.size(), 1u);
    h.client(query("DISCARD ALL"));
    h.backend(command_complete("DISCARD ALL") + ready('I'));
    EXPECT_EQ(h.server.size(), 0u);
    EXPECT_FALSE(h.m.has_statement("s1"));
}

TEST(relay, transaction_block_in_statement_mode_is_refused) {
    settings s = transaction_mode();
    s.mode = config::pool_mode::statement;
    harness h(s);
    h.client(query("BEGIN"));
    h.backend(command_complete("BEGIN") + ready('T'));
    EXPECT_TRUE(h.server_closed);
    std::string got = h.took_client();
    EXPECT_EQ(types(got), "C E");
    EXPECT_NE(got.find("25000"), std::string::npos);
    EXPECT_FALSE(h.m.server_clean());
}

TEST(relay, invalid_server_message_closes) {
    harness h(transaction_mode());
    h.client(query("SELECT 1"));
    std::string bad = "Z" + u32(2);  // a length below 4
    h.backend(bad);
    EXPECT_TRUE(h.server_closed);
    EXPECT_FALSE(h.m.server_clean());
}

// --- rate limiting -------------------------------------------------------------------------

TEST(relay, rejected_query_is_answered_without_a_server) {
    settings s = transaction_mode();
    s.rate_limited = true;
    for_every_split([&](harness& h) {
        h.admit = false;
        h.client(query("SELECT 1"));
        std::string got = h.took_client();
        EXPECT_EQ(types(got), "E Z");
        EXPECT_NE(got.find("53400"), std::string::npos);
        EXPECT_EQ(h.links, 0);
        h.admit = true;
        h.client(parse("", "SELECT 1") + bind_msg("") + execute() + sync());
        EXPECT_EQ(h.links, 1);
    }, s);
}

TEST(relay, one_admission_per_request_even_when_it_waits_for_a_server) {
    // The core stops at the first message of a batch to link a server (and, in
    // transaction mode, to read a held message whole): the request still costs one token.
    for (bool prepared : {false, true}) {
        settings s = prepared ? transaction_mode() : session_mode();
        s.rate_limited = true;
        for_every_split([&](harness& h) {
            h.client(parse("", "SELECT 1") + bind_msg("") + execute() + sync());
            EXPECT_EQ(h.admissions, 1);
            h.backend(parse_complete() + bind_complete() + command_complete("SELECT 1") + ready('I'));
            h.client(parse("s1", "SELECT 1") + bind_msg("s1") + execute() + sync() + query("SELECT 2"));
            EXPECT_EQ(h.admissions, 3);
        }, s);
    }
}

TEST(relay, rejected_extended_batch_is_answered_once_at_sync) {
    settings s = transaction_mode();
    s.rate_limited = true;
    for_every_split([&](harness& h) {
        h.admit = false;
        h.client(parse("", "SELECT 1") + bind_msg("") + execute() + sync());
        EXPECT_EQ(types(h.took_client()), "E Z");
        EXPECT_TRUE(h.took_server().empty());
    }, s);
}

// --- the client vanishing at every step ----------------------------------------------------

// After each step, is the server clean if the client left right then? Only between
// transactions with nothing in flight.
TEST(relay, client_vanishing_at_every_step_leaves_a_clean_server_only_when_idle) {
    struct step {
        bool from_client;
        std::string bytes;
        bool clean_after;
    };
    const std::vector<step> script = {
        {true, query("BEGIN"), false},
        {false, command_complete("BEGIN"), false},
        {false, ready('T'), false},
        {true, parse("", "INSERT 1") + bind_msg(""), false},
        {true, execute() + sync(), false},
        {false, parse_complete() + bind_complete(), false},
        {false, command_complete("INSERT 0 1"), false},
        {false, ready('T'), false},
        {true, query("COMMIT"), false},
        {false, command_complete("COMMIT"), false},
        {false, ready('I'), true},
    };
    for (std::size_t cut = 1; cut <= script.size(); ++cut) {
        SCOPED_TRACE("client gone after step " + std::to_string(cut));
        harness h(session_mode());
        for (std::size_t i = 0; i < cut; ++i)
            script[i].from_client ? h.client(script[i].bytes) : h.backend(script[i].bytes);
        EXPECT_EQ(h.m.server_clean(), script[cut - 1].clean_after);
    }
}

TEST(relay, half_forwarded_client_message_is_not_clean) {
    harness h(session_mode());
    std::string q = query("SELECT 1");
    h.client(q.substr(0, 3));
    h.client(q.substr(3, 4));  // the header is out, part of the body too
    h.client(q.substr(7));
    h.backend(command_complete("SELECT 1") + ready('I'));
    EXPECT_TRUE(h.m.server_clean());
    harness h2(session_mode());
    h2.client(q.substr(0, 7));
    EXPECT_FALSE(h2.m.server_clean());
}

}  // namespace
