// Byte-by-byte tests of the sans-io protocol codec: every message written and read back,
// framing across every split point, bad lengths, the startup phase, and decoders fed
// every truncation of a valid body.
#include "sluice/protocol/codec.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace sluice::protocol {
namespace {

constexpr std::size_t max_packet = 1 << 20;

std::span<const std::uint8_t> as_bytes(std::string_view s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

std::string body_string(std::span<const std::uint8_t> b) {
    return {reinterpret_cast<const char*>(b.data()), b.size()};
}

// A message copied out of the buffer so results from different buffers can be compared.
struct owned_message {
    char type;
    std::string body;
    bool operator==(const owned_message&) const = default;
};

// Frames exactly one message that must fill `buf` completely.
owned_message frame_one(const std::string& buf) {
    message_view m;
    std::size_t consumed = 0;
    std::error_code ec;
    auto st = next_message(as_bytes(buf), max_packet, m, consumed, ec);
    EXPECT_EQ(st, scan_status::complete) << ec.message();
    EXPECT_EQ(consumed, buf.size());
    return {m.type, body_string(m.body)};
}

// Frames every whole message at the front of `buf`; returns them and how much was used.
std::vector<owned_message> frame_all(std::span<const std::uint8_t> buf, std::size_t& used) {
    std::vector<owned_message> out;
    used = 0;
    for (;;) {
        message_view m;
        std::size_t consumed = 0;
        std::error_code ec;
        auto st = next_message(buf.subspan(used), max_packet, m, consumed, ec);
        if (st != scan_status::complete) {
            EXPECT_EQ(st, scan_status::need_more) << ec.message();
            return out;
        }
        out.push_back({m.type, body_string(m.body)});
        used += consumed;
    }
}

std::string header_bytes(char type, std::uint32_t length) {
    std::string s(1, type);
    s.push_back(char(length >> 24));
    s.push_back(char(length >> 16));
    s.push_back(char(length >> 8));
    s.push_back(char(length));
    return s;
}

std::string be32(std::uint32_t v) {
    return header_bytes('x', v).substr(1);
}

// ---------------------------------------------------------------------------------------
// Error category

TEST(CodecErrors, MessagesAndCategory) {
    std::error_code ec = protocol_errc::invalid_length;
    EXPECT_EQ(&ec.category(), &protocol_category());
    EXPECT_EQ(ec.message(), "invalid message length");
    EXPECT_EQ(make_error_code(protocol_errc::oversized).message(),
              "message exceeds max_packet_size");
    EXPECT_FALSE(make_error_code(protocol_errc::malformed).message().empty());
    EXPECT_FALSE(make_error_code(protocol_errc::unsupported_version).message().empty());
    EXPECT_FALSE(make_error_code(protocol_errc::unknown_request).message().empty());
}

// ---------------------------------------------------------------------------------------
// Writers read back through the framer and the decoders

TEST(CodecRoundTrip, Authentication) {
    {
        std::string b;
        writer(b).authentication_ok();
        EXPECT_EQ(b, std::string("R\0\0\0\x08\0\0\0\0", 9));
        auto m = frame_one(b);
        auto a = decode_authentication(as_bytes(m.body));
        ASSERT_TRUE(a);
        EXPECT_EQ(a->code, 0u);
    }
    {
        std::string b;
        writer(b).authentication_cleartext();
        auto a = decode_authentication(as_bytes(frame_one(b).body));
        ASSERT_TRUE(a);
        EXPECT_EQ(a->code, 3u);
    }
    {
        std::string b;
        writer(b).authentication_md5({1, 2, 0xfe, 0xff});
        auto m = frame_one(b);
        EXPECT_EQ(m.type, msg::authentication);
        auto a = decode_authentication(as_bytes(m.body));
        ASSERT_TRUE(a);
        EXPECT_EQ(a->code, 5u);
        EXPECT_EQ(a->md5_salt, (std::array<std::uint8_t, 4>{1, 2, 0xfe, 0xff}));
    }
    {
        std::string b;
        writer(b).authentication_sasl("SCRAM-SHA-256");
        auto a = decode_authentication(as_bytes(frame_one(b).body));
        ASSERT_TRUE(a);
        EXPECT_EQ(a->code, 10u);
        EXPECT_EQ(a->sasl_mechanisms, std::vector<std::string>{"SCRAM-SHA-256"});
    }
    {
        std::string b;
        writer(b).authentication_sasl_continue("r=abc,s=def,i=4096");
        auto a = decode_authentication(as_bytes(frame_one(b).body));
        ASSERT_TRUE(a);
        EXPECT_EQ(a->code, 11u);
        EXPECT_EQ(a->sasl_data, "r=abc,s=def,i=4096");
    }
    {
        std::string b;
        writer(b).authentication_sasl_final("v=xyz");
        auto a = decode_authentication(as_bytes(frame_one(b).body));
        ASSERT_TRUE(a);
        EXPECT_EQ(a->code, 12u);
        EXPECT_EQ(a->sasl_data, "v=xyz");
    }
}

TEST(CodecRoundTrip, ParameterStatusBackendKeyReadyForQuery) {
    std::string b;
    writer w(b);
    w.parameter_status("server_version", "16.2");
    w.backend_key_data(4242, 0xdeadbeef);
    w.ready_for_query('I');
    w.ready_for_query('T');
    w.ready_for_query('E');
    std::size_t used = 0;
    auto msgs = frame_all(as_bytes(b), used);
    EXPECT_EQ(used, b.size());
    ASSERT_EQ(msgs.size(), 5u);

    EXPECT_EQ(msgs[0].type, msg::parameter_status);
    auto ps = decode_parameter_status(as_bytes(msgs[0].body));
    ASSERT_TRUE(ps);
    EXPECT_EQ(ps->first, "server_version");
    EXPECT_EQ(ps->second, "16.2");

    EXPECT_EQ(msgs[1].type, msg::backend_key_data);
    auto k = decode_backend_key_data(as_bytes(msgs[1].body));
    ASSERT_TRUE(k);
    EXPECT_EQ(k->process_id, 4242u);
    EXPECT_EQ(k->secret_key, 0xdeadbeefu);

    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(msgs[2 + i].type, msg::ready_for_query);
        auto s = decode_ready_for_query(as_bytes(msgs[2 + i].body));
        ASSERT_TRUE(s);
        EXPECT_EQ(*s, "ITE"[i]);
    }
    // The status byte is one of I, T, E.
    EXPECT_FALSE(decode_ready_for_query(as_bytes("X")));
    EXPECT_FALSE(decode_ready_for_query(as_bytes("II")));
}

TEST(CodecRoundTrip, ErrorResponse) {
    std::string b;
    writer(b).error_response("53400", "rate limit exceeded", "retry after 20 ms", "ERROR",
                             "tenant acme");
    auto m = frame_one(b);
    EXPECT_EQ(m.type, msg::error_response);
    auto e = decode_error(as_bytes(m.body));
    ASSERT_TRUE(e);
    EXPECT_EQ(e->severity, "ERROR");
    EXPECT_EQ(e->sqlstate, "53400");
    EXPECT_EQ(e->message, "rate limit exceeded");
    EXPECT_EQ(e->detail, "tenant acme");
    EXPECT_EQ(e->hint, "retry after 20 ms");

    // Without detail and hint those fields are not written at all.
    std::string b2;
    writer(b2).error_response("08P01", "bad");
    EXPECT_EQ(frame_one(b2).body, std::string("SERROR\0VERROR\0C08P01\0Mbad\0\0", 27));
    auto e2 = decode_error(as_bytes(frame_one(b2).body));
    ASSERT_TRUE(e2);
    EXPECT_TRUE(e2->detail.empty());
    EXPECT_TRUE(e2->hint.empty());
    EXPECT_EQ(e2->severity, "ERROR");
}

TEST(CodecRoundTrip, NoticeResponse) {
    std::string b;
    writer(b).notice_response("00000", "hello");
    auto m = frame_one(b);
    EXPECT_EQ(m.type, msg::notice_response);
    auto e = decode_error(as_bytes(m.body));
    ASSERT_TRUE(e);
    EXPECT_EQ(e->severity, "NOTICE");
    EXPECT_EQ(e->sqlstate, "00000");
    EXPECT_EQ(e->message, "hello");
}

TEST(CodecDecode, ErrorPrefersNonLocalizedSeverityAndSkipsUnknownFields) {
    std::string body("SFEHLER\0VERROR\0C42P01\0Mnope\0Pfoo\0Wctx\0Zzzz\0\0", 44);
    auto e = decode_error(as_bytes(body));
    ASSERT_TRUE(e);
    EXPECT_EQ(e->severity, "ERROR");
    EXPECT_EQ(e->sqlstate, "42P01");
    EXPECT_EQ(e->message, "nope");
    // Only 'S' (pre-9.6 servers): it is used.
    auto old = decode_error(as_bytes(std::string("SFATAL\0C28P01\0Mx\0\0", 18)));
    ASSERT_TRUE(old);
    EXPECT_EQ(old->severity, "FATAL");
    // Trailing bytes after the terminator are an inconsistency.
    EXPECT_FALSE(decode_error(as_bytes(std::string("SFATAL\0\0x", 9))));
}

TEST(CodecRoundTrip, NegotiateProtocolVersion) {
    std::string b;
    writer(b).negotiate_protocol_version(0, {"_pq.foo", "_pq.bar"});
    auto m = frame_one(b);
    EXPECT_EQ(m.type, msg::negotiate_protocol_version);
    auto n = decode_negotiate_protocol_version(as_bytes(m.body));
    ASSERT_TRUE(n);
    EXPECT_EQ(n->newest_minor, 0u);
    EXPECT_EQ(n->unsupported_options, (std::vector<std::string>{"_pq.foo", "_pq.bar"}));

    std::string e;
    writer(e).negotiate_protocol_version(2, {});
    auto n2 = decode_negotiate_protocol_version(as_bytes(frame_one(e).body));
    ASSERT_TRUE(n2);
    EXPECT_EQ(n2->newest_minor, 2u);
    EXPECT_TRUE(n2->unsupported_options.empty());
}

TEST(CodecRoundTrip, RowDescriptionDataRowCommandComplete) {
    std::string b;
    writer w(b);
    w.row_description({"database", "cl_active"}, {25, 20});
    w.data_row({std::string("app"), std::nullopt});
    w.data_row({std::string(""), std::string("17")});
    w.command_complete("SHOW");
    w.empty_query_response();
    w.parse_complete();
    w.close_complete();
    std::size_t used = 0;
    auto msgs = frame_all(as_bytes(b), used);
    EXPECT_EQ(used, b.size());
    ASSERT_EQ(msgs.size(), 7u);

    EXPECT_EQ(msgs[0].type, msg::row_description);
    auto rd = decode_row_description(as_bytes(msgs[0].body));
    ASSERT_TRUE(rd);
    ASSERT_EQ(rd->fields.size(), 2u);
    EXPECT_EQ(rd->fields[0].name, "database");
    EXPECT_EQ(rd->fields[0].type_oid, 25u);
    EXPECT_EQ(rd->fields[1].name, "cl_active");
    EXPECT_EQ(rd->fields[1].type_oid, 20u);
    for (const auto& f : rd->fields) {
        EXPECT_EQ(f.table_oid, 0u);
        EXPECT_EQ(f.column_attnum, 0u);
        EXPECT_EQ(f.type_length, -1);
        EXPECT_EQ(f.type_modifier, -1);
        EXPECT_EQ(f.format, 0u);
    }

    EXPECT_EQ(msgs[1].type, msg::data_row);
    auto r1 = decode_data_row(as_bytes(msgs[1].body));
    ASSERT_TRUE(r1);
    ASSERT_EQ(r1->size(), 2u);
    EXPECT_EQ((*r1)[0], std::optional<std::string_view>("app"));
    EXPECT_FALSE((*r1)[1].has_value());
    auto r2 = decode_data_row(as_bytes(msgs[2].body));
    ASSERT_TRUE(r2);
    ASSERT_EQ(r2->size(), 2u);
    EXPECT_EQ((*r2)[0], std::optional<std::string_view>(""));  // empty is not NULL
    EXPECT_EQ((*r2)[1], std::optional<std::string_view>("17"));

    EXPECT_EQ(msgs[3].type, msg::command_complete);
    EXPECT_EQ(decode_cstring(as_bytes(msgs[3].body)), std::optional<std::string_view>("SHOW"));
    EXPECT_EQ(msgs[4], (owned_message{msg::empty_query_response, ""}));
    EXPECT_EQ(msgs[5], (owned_message{msg::parse_complete, ""}));
    EXPECT_EQ(msgs[6], (owned_message{msg::close_complete, ""}));
}

TEST(CodecRoundTrip, FrontendMessages) {
    std::string b;
    writer w(b);
    w.password("secret");
    w.sasl_initial_response("SCRAM-SHA-256", "n,,n=,r=nonce");
    w.sasl_response("c=biws,r=nonce,p=proof");
    w.query("SELECT 1");
    w.parse("s1", "SELECT $1");
    w.close('S', "s1");
    w.close('P', "");
    w.sync();
    w.terminate();
    std::size_t used = 0;
    auto msgs = frame_all(as_bytes(b), used);
    EXPECT_EQ(used, b.size());
    ASSERT_EQ(msgs.size(), 9u);

    EXPECT_EQ(msgs[0].type, msg::password);
    EXPECT_EQ(decode_cstring(as_bytes(msgs[0].body)), std::optional<std::string_view>("secret"));

    EXPECT_EQ(msgs[1].type, msg::password);
    auto sir = decode_sasl_initial_response(as_bytes(msgs[1].body));
    ASSERT_TRUE(sir);
    EXPECT_EQ(sir->mechanism, "SCRAM-SHA-256");
    EXPECT_EQ(sir->data, "n,,n=,r=nonce");

    EXPECT_EQ(msgs[2], (owned_message{msg::password, "c=biws,r=nonce,p=proof"}));

    EXPECT_EQ(msgs[3].type, msg::query);
    EXPECT_EQ(decode_cstring(as_bytes(msgs[3].body)), std::optional<std::string_view>("SELECT 1"));

    EXPECT_EQ(msgs[4].type, msg::parse);
    auto p = decode_parse(as_bytes(msgs[4].body));
    ASSERT_TRUE(p);
    EXPECT_EQ(p->name, "s1");
    EXPECT_EQ(p->query, "SELECT $1");
    EXPECT_EQ(body_string(p->parameter_types), std::string("\0\0", 2));

    EXPECT_EQ(msgs[5].type, msg::close);
    auto c1 = decode_describe_or_close(as_bytes(msgs[5].body));
    ASSERT_TRUE(c1);
    EXPECT_EQ(c1->kind, 'S');
    EXPECT_EQ(c1->name, "s1");
    auto c2 = decode_describe_or_close(as_bytes(msgs[6].body));
    ASSERT_TRUE(c2);
    EXPECT_EQ(c2->kind, 'P');
    EXPECT_EQ(c2->name, "");

    EXPECT_EQ(msgs[7], (owned_message{msg::sync, ""}));
    EXPECT_EQ(msgs[8], (owned_message{msg::terminate, ""}));
}

TEST(CodecRoundTrip, RawMessages) {
    std::string b;
    writer w(b);
    w.raw('d', std::string_view("copy bytes"));
    const std::uint8_t body[] = {0, 1, 2, 0xff};
    w.raw('?', std::span<const std::uint8_t>(body));
    std::size_t used = 0;
    auto msgs = frame_all(as_bytes(b), used);
    ASSERT_EQ(msgs.size(), 2u);
    EXPECT_EQ(msgs[0], (owned_message{'d', "copy bytes"}));
    EXPECT_EQ(msgs[1], (owned_message{'?', std::string("\0\1\2\xff", 4)}));
}

// A Bind with two parameters (one NULL) and one result format.
std::string bind_body(std::string_view portal, std::string_view statement) {
    std::string b;
    writer w(b);
    w.header(msg::bind);
    w.cstring(portal);
    w.cstring(statement);
    w.u16(1);  // parameter formats
    w.u16(0);
    w.u16(2);  // parameters
    w.u32(3);
    w.bytes("abc");
    w.u32(0xffffffff);
    w.u16(1);  // result formats
    w.u16(1);
    w.finish();
    return frame_one(b).body;
}

TEST(CodecDecode, BindHead) {
    const auto body = bind_body("p1", "stmt");
    auto h = decode_bind_head(as_bytes(body));
    ASSERT_TRUE(h);
    EXPECT_EQ(h->portal, "p1");
    EXPECT_EQ(h->statement, "stmt");
    EXPECT_EQ(h->rest_offset, 8u);
    // Unnamed portal and statement, no parameters: the smallest valid Bind.
    auto min = decode_bind_head(as_bytes(std::string(8, '\0')));
    ASSERT_TRUE(min);
    EXPECT_EQ(min->rest_offset, 2u);
    // A negative parameter length other than -1 is malformed.
    std::string bad("\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0", 12);
    EXPECT_FALSE(decode_bind_head(as_bytes(bad)));
}

TEST(CodecDecode, DescribeAndParseWithTypes) {
    auto d = decode_describe_or_close(as_bytes(std::string("Pportal\0", 8)));
    ASSERT_TRUE(d);
    EXPECT_EQ(d->kind, 'P');
    EXPECT_EQ(d->name, "portal");
    EXPECT_FALSE(decode_describe_or_close(as_bytes(std::string("Xname\0", 6))));

    std::string parse_body("n\0SELECT $1, $2\0\0\x02\0\0\0\x17\0\0\0\x19", 26);
    auto p = decode_parse(as_bytes(parse_body));
    ASSERT_TRUE(p);
    EXPECT_EQ(p->name, "n");
    EXPECT_EQ(p->query, "SELECT $1, $2");
    ASSERT_EQ(p->parameter_types.size(), 10u);
    EXPECT_EQ(read_u16(p->parameter_types.data()), 2);
    EXPECT_EQ(read_u32(p->parameter_types.data() + 2), 23u);
    EXPECT_EQ(read_u32(p->parameter_types.data() + 6), 25u);
}

TEST(CodecDecode, SaslInitialResponseWithoutData) {
    // Length -1: no initial response.
    std::string body = std::string("SCRAM-SHA-256\0", 14) + be32(0xffffffff);
    auto s = decode_sasl_initial_response(as_bytes(body));
    ASSERT_TRUE(s);
    EXPECT_EQ(s->mechanism, "SCRAM-SHA-256");
    EXPECT_TRUE(s->data.empty());
    // A length larger than what follows is malformed.
    std::string lying = std::string("M\0", 2) + be32(10) + "abc";
    EXPECT_FALSE(decode_sasl_initial_response(as_bytes(lying)));
}

// Every strict prefix of a valid body must be refused, and so must the body with one
// extra byte; nothing may read past the span (the sanitizer builds check that).
TEST(CodecDecode, TruncatedBodiesAreRefused) {
    struct decoder_case {
        const char* name;
        std::string body;
        std::function<bool(std::span<const std::uint8_t>)> decode;
    };
    auto frame_body = [](const std::function<void(writer&)>& write) {
        std::string b;
        writer w(b);
        write(w);
        return frame_one(b).body;
    };
    std::vector<decoder_case> cases = {
        {"error", frame_body([](writer& w) { w.error_response("53400", "m", "h", "ERROR", "d"); }),
         [](auto b) { return decode_error(b).has_value(); }},
        {"auth ok", frame_body([](writer& w) { w.authentication_ok(); }),
         [](auto b) { return decode_authentication(b).has_value(); }},
        {"auth md5", frame_body([](writer& w) {
             w.authentication_md5({1, 2, 3, 4});
         }),
         [](auto b) { return decode_authentication(b).has_value(); }},
        {"auth sasl", frame_body([](writer& w) { w.authentication_sasl("SCRAM-SHA-256"); }),
         [](auto b) { return decode_authentication(b).has_value(); }},
        {"parameter status", frame_body([](writer& w) { w.parameter_status("a", "b"); }),
         [](auto b) { return decode_parameter_status(b).has_value(); }},
        {"backend key", frame_body([](writer& w) { w.backend_key_data(1, 2); }),
         [](auto b) { return decode_backend_key_data(b).has_value(); }},
        {"ready", frame_body([](writer& w) { w.ready_for_query('I'); }),
         [](auto b) { return decode_ready_for_query(b).has_value(); }},
        {"query", frame_body([](writer& w) { w.query("SELECT 1"); }),
         [](auto b) { return decode_cstring(b).has_value(); }},
        {"parse", std::string("n\0SELECT $1\0\0\x01\0\0\0\x17", 18),
         [](auto b) { return decode_parse(b).has_value(); }},
        {"bind", bind_body("p", "s"), [](auto b) { return decode_bind_head(b).has_value(); }},
        {"close", frame_body([](writer& w) { w.close('S', "s1"); }),
         [](auto b) { return decode_describe_or_close(b).has_value(); }},
        {"sasl initial",
         frame_body([](writer& w) { w.sasl_initial_response("SCRAM-SHA-256", "n,,n=,r=x"); }),
         [](auto b) { return decode_sasl_initial_response(b).has_value(); }},
        {"negotiate", frame_body([](writer& w) { w.negotiate_protocol_version(0, {"_pq.a"}); }),
         [](auto b) { return decode_negotiate_protocol_version(b).has_value(); }},
        {"row description", frame_body([](writer& w) {
             w.row_description({"a", "b"}, {25, 23});
         }),
         [](auto b) { return decode_row_description(b).has_value(); }},
        {"data row", frame_body([](writer& w) {
             w.data_row({std::string("x"), std::nullopt, std::string()});
         }),
         [](auto b) { return decode_data_row(b).has_value(); }},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.name);
        ASSERT_TRUE(c.decode(as_bytes(c.body)));
        for (std::size_t n = 0; n < c.body.size(); ++n) {
            // A fresh copy of exactly n bytes, so a read past it is a real overflow.
            std::vector<std::uint8_t> prefix(c.body.begin(), c.body.begin() + n);
            EXPECT_FALSE(c.decode(std::span<const std::uint8_t>(prefix.data(), n)))
                << "prefix of " << n << " bytes accepted";
        }
        std::string longer = c.body + 'x';
        EXPECT_FALSE(c.decode(as_bytes(longer)));
    }
}

// Random bytes must never crash a decoder, whatever they return.
TEST(CodecDecode, RandomBytesNeverCrash) {
    std::mt19937 rng(12345);
    std::uniform_int_distribution<int> len_dist(0, 40);
    std::uniform_int_distribution<int> byte_dist(0, 255);
    for (int i = 0; i < 20000; ++i) {
        std::vector<std::uint8_t> buf(std::size_t(len_dist(rng)));
        for (auto& b : buf) b = std::uint8_t(byte_dist(rng) % 4 == 0 ? 0 : byte_dist(rng));
        std::span<const std::uint8_t> s(buf.data(), buf.size());
        (void)decode_error(s);
        (void)decode_authentication(s);
        (void)decode_parameter_status(s);
        (void)decode_backend_key_data(s);
        (void)decode_ready_for_query(s);
        (void)decode_cstring(s);
        (void)decode_parse(s);
        (void)decode_bind_head(s);
        (void)decode_describe_or_close(s);
        (void)decode_sasl_initial_response(s);
        (void)decode_negotiate_protocol_version(s);
        (void)decode_row_description(s);
        (void)decode_data_row(s);
        startup_packet sp;
        std::size_t consumed = 0;
        std::error_code ec;
        (void)decode_startup(s, sp, consumed, ec);
        message_view m;
        (void)next_message(s, max_packet, m, consumed, ec);
    }
}

// ---------------------------------------------------------------------------------------
// Framing

// Typical server traffic after a query: several messages of different sizes.
std::string sample_stream() {
    std::string b;
    writer w(b);
    w.row_description({"id", "name"}, {23, 25});
    w.data_row({std::string("1"), std::string("alice")});
    w.data_row({std::string("2"), std::nullopt});
    w.command_complete("SELECT 2");
    w.raw('!', std::string_view());  // unknown type, empty body
    w.ready_for_query('I');
    return b;
}

TEST(FrameScan, SplitAtEveryOffsetGivesTheSameMessages) {
    const std::string stream = sample_stream();
    std::size_t used = 0;
    const auto expected = frame_all(as_bytes(stream), used);
    ASSERT_EQ(expected.size(), 6u);
    ASSERT_EQ(used, stream.size());

    for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
        SCOPED_TRACE(cut);
        // First delivery: the prefix, copied so that nothing can peek beyond it.
        std::vector<std::uint8_t> buf(stream.begin(), stream.begin() + cut);
        std::size_t used1 = 0;
        auto got = frame_all(std::span<const std::uint8_t>(buf.data(), buf.size()), used1);
        // Second delivery: the unconsumed remainder plus the rest of the stream.
        buf.erase(buf.begin(), buf.begin() + used1);
        buf.insert(buf.end(), stream.begin() + cut, stream.end());
        std::size_t used2 = 0;
        auto more = frame_all(std::span<const std::uint8_t>(buf.data(), buf.size()), used2);
        EXPECT_EQ(used2, buf.size());
        got.insert(got.end(), more.begin(), more.end());
        EXPECT_EQ(got, expected);
    }
}

TEST(FrameScan, EveryPrefixOfAMessageNeedsMore) {
    const std::string stream = sample_stream();
    std::size_t off = 0;
    while (off < stream.size()) {
        frame_header h;
        std::error_code ec;
        ASSERT_EQ(scan_header(as_bytes(stream).subspan(off), max_packet, h, ec),
                  scan_status::complete);
        for (std::size_t n = 0; n < h.total(); ++n) {
            std::vector<std::uint8_t> prefix(stream.begin() + off, stream.begin() + off + n);
            message_view m;
            std::size_t consumed = 0;
            EXPECT_EQ(next_message(std::span<const std::uint8_t>(prefix.data(), n), max_packet, m,
                                   consumed, ec),
                      scan_status::need_more)
                << "offset " << off << " prefix " << n;
        }
        off += h.total();
    }
    EXPECT_EQ(off, stream.size());
}

TEST(FrameScan, TwoMessagesInOneBuffer) {
    std::string b;
    writer w(b);
    w.command_complete("INSERT 0 1");
    w.ready_for_query('T');
    message_view m;
    std::size_t consumed = 0;
    std::error_code ec;
    auto span = as_bytes(b);
    ASSERT_EQ(next_message(span, max_packet, m, consumed, ec), scan_status::complete);
    EXPECT_EQ(m.type, msg::command_complete);
    EXPECT_EQ(body_string(m.body), std::string("INSERT 0 1\0", 11));
    EXPECT_EQ(consumed, 16u);
    span = span.subspan(consumed);
    ASSERT_EQ(next_message(span, max_packet, m, consumed, ec), scan_status::complete);
    EXPECT_EQ(m.type, msg::ready_for_query);
    EXPECT_EQ(body_string(m.body), "T");
    EXPECT_EQ(consumed, span.size());
}

TEST(FrameScan, HeaderFields) {
    frame_header h;
    std::error_code ec;
    const std::string hdr = header_bytes('D', 104);
    ASSERT_EQ(scan_header(as_bytes(hdr), max_packet, h, ec), scan_status::complete);
    EXPECT_EQ(h.type, 'D');
    EXPECT_EQ(h.body_length, 100u);
    EXPECT_EQ(h.total(), 105u);
    for (std::size_t n = 0; n < 5; ++n)
        EXPECT_EQ(scan_header(as_bytes(hdr).first(n), max_packet, h, ec), scan_status::need_more);
}

TEST(FrameScan, EmptyBodyIsComplete) {
    const std::string b = header_bytes('S', 4);
    message_view m;
    std::size_t consumed = 0;
    std::error_code ec;
    ASSERT_EQ(next_message(as_bytes(b), max_packet, m, consumed, ec), scan_status::complete);
    EXPECT_EQ(m.type, 'S');
    EXPECT_TRUE(m.body.empty());
    EXPECT_EQ(consumed, 5u);
}

TEST(FrameScan, TruncatedMessageNeedsMore) {
    std::string b;
    writer(b).query("SELECT 1");
    b.pop_back();
    message_view m;
    std::size_t consumed = 123;
    std::error_code ec;
    EXPECT_EQ(next_message(as_bytes(b), max_packet, m, consumed, ec), scan_status::need_more);
    EXPECT_FALSE(ec);
    EXPECT_EQ(consumed, 123u);  // untouched
}

TEST(FrameScan, InvalidLengthBelowFour) {
    for (std::uint32_t len = 0; len < 4; ++len) {
        const std::string b = header_bytes('Q', len) + "padding";
        message_view m;
        std::size_t consumed = 0;
        std::error_code ec;
        EXPECT_EQ(next_message(as_bytes(b), max_packet, m, consumed, ec), scan_status::error);
        EXPECT_EQ(ec, make_error_code(protocol_errc::invalid_length));
    }
}

TEST(FrameScan, OversizedIsRefusedFromTheHeaderAlone) {
    const std::size_t limit = 1024;
    message_view m;
    std::size_t consumed = 0;
    std::error_code ec;
    // Exactly max_packet_size in total (type + length + body) is allowed...
    std::string ok = header_bytes('d', std::uint32_t(limit - 1)) + std::string(limit - 5, 'x');
    EXPECT_EQ(next_message(as_bytes(ok), limit, m, consumed, ec), scan_status::complete);
    EXPECT_EQ(consumed, limit);
    // ...one more byte is not, and the error comes before the body has arrived.
    const std::string big = header_bytes('d', std::uint32_t(limit));
    EXPECT_EQ(next_message(as_bytes(big), limit, m, consumed, ec), scan_status::error);
    EXPECT_EQ(ec, make_error_code(protocol_errc::oversized));
    // The largest length a peer can claim must not overflow anything.
    const std::string huge = header_bytes('d', 0xffffffff);
    ec.clear();
    EXPECT_EQ(next_message(as_bytes(huge), max_packet, m, consumed, ec), scan_status::error);
    EXPECT_EQ(ec, make_error_code(protocol_errc::oversized));
}

TEST(FrameScan, UnknownTypesAreFramed) {
    // The framer only looks at the length; what the type means is the caller's business.
    std::string b =
        header_bytes('\xff', 7) + "abc" + header_bytes('\0', 4) + header_bytes('~', 5) + "z";
    std::size_t used = 0;
    auto msgs = frame_all(as_bytes(b), used);
    EXPECT_EQ(used, b.size());
    ASSERT_EQ(msgs.size(), 3u);
    EXPECT_EQ(msgs[0], (owned_message{'\xff', "abc"}));
    EXPECT_EQ(msgs[1], (owned_message{'\0', ""}));
    EXPECT_EQ(msgs[2], (owned_message{'~', "z"}));
}

// ---------------------------------------------------------------------------------------
// Startup phase

scan_status decode(const std::string& b, startup_packet& out, std::size_t& consumed,
                   std::error_code& ec) {
    return decode_startup(as_bytes(b), out, consumed, ec);
}

TEST(StartupDecode, V3WithParameters) {
    std::string b;
    writer(b).startup({{"user", "alice"},
                       {"database", "app"},
                       {"application_name", "psql"},
                       {"_pq.compression", "on"},
                       {"options", ""}});
    EXPECT_EQ(read_u32(reinterpret_cast<const std::uint8_t*>(b.data())), b.size());
    startup_packet p;
    std::size_t consumed = 0;
    std::error_code ec;
    ASSERT_EQ(decode(b, p, consumed, ec), scan_status::complete) << ec.message();
    EXPECT_EQ(consumed, b.size());
    auto* s = std::get_if<startup_message>(&p);
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(s->major, 3);
    EXPECT_EQ(s->minor, 0);
    ASSERT_EQ(s->parameters.size(), 5u);
    EXPECT_EQ(s->parameters[0], (std::pair<std::string, std::string>{"user", "alice"}));
    ASSERT_NE(s->find("database"), nullptr);
    EXPECT_EQ(*s->find("database"), "app");
    ASSERT_NE(s->find("options"), nullptr);
    EXPECT_EQ(*s->find("options"), "");
    EXPECT_EQ(s->find("missing"), nullptr);
    EXPECT_EQ(s->protocol_options(), std::vector<std::string>{"_pq.compression"});
}

TEST(StartupDecode, NoParametersAndNewerMinor) {
    // Semantic checks ("user" is required) are the caller's; minor 3.2 is decoded as is
    // so that the caller can answer NegotiateProtocolVersion.
    std::string b = be32(9) + be32(0x00030002) + std::string(1, '\0');
    startup_packet p;
    std::size_t consumed = 0;
    std::error_code ec;
    ASSERT_EQ(decode(b, p, consumed, ec), scan_status::complete);
    auto* s = std::get_if<startup_message>(&p);
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(s->minor, 2);
    EXPECT_TRUE(s->parameters.empty());
}

TEST(StartupDecode, SslGssencAndCancelRequests) {
    startup_packet p;
    std::size_t consumed = 0;
    std::error_code ec;
    ASSERT_EQ(decode(be32(8) + be32(ssl_request_code), p, consumed, ec), scan_status::complete);
    EXPECT_TRUE(std::holds_alternative<ssl_request>(p));
    EXPECT_EQ(consumed, 8u);

    ASSERT_EQ(decode(be32(8) + be32(gssenc_request_code), p, consumed, ec), scan_status::complete);
    EXPECT_TRUE(std::holds_alternative<gssenc_request>(p));

    std::string c;
    writer(c).cancel(777, 0xcafebabe);
    EXPECT_EQ(c, be32(16) + be32(cancel_request_code) + be32(777) + be32(0xcafebabe));
    ASSERT_EQ(decode(c, p, consumed, ec), scan_status::complete);
    auto* cr = std::get_if<cancel_request>(&p);
    ASSERT_NE(cr, nullptr);
    EXPECT_EQ(cr->process_id, 777u);
    EXPECT_EQ(cr->secret_key, 0xcafebabeu);
    EXPECT_EQ(consumed, 16u);
}

TEST(StartupDecode, WrongLengthsForSpecialRequests) {
    startup_packet p;
    std::size_t consumed = 0;
    std::error_code ec;
    EXPECT_EQ(decode(be32(12) + be32(ssl_request_code) + be32(0), p, consumed, ec),
              scan_status::error);
    EXPECT_EQ(ec, make_error_code(protocol_errc::invalid_length));
    ec.clear();
    EXPECT_EQ(decode(be32(12) + be32(cancel_request_code) + be32(1), p, consumed, ec),
              scan_status::error);
    EXPECT_EQ(ec, make_error_code(protocol_errc::invalid_length));
}

TEST(StartupDecode, FollowedByMoreBytes) {
    // SSLRequest then the client's next bytes in one read: only the request is consumed.
    std::string b = be32(8) + be32(ssl_request_code) + "\x16\x03\x01";
    startup_packet p;
    std::size_t consumed = 0;
    std::error_code ec;
    ASSERT_EQ(decode(b, p, consumed, ec), scan_status::complete);
    EXPECT_EQ(consumed, 8u);
}

TEST(StartupDecode, Protocol2AndOtherMajorsAreUnsupported) {
    startup_packet p;
    std::size_t consumed = 0;
    std::error_code ec;
    // Protocol 2.0 StartupPacket is a fixed 296 bytes.
    std::string v2 = be32(296) + be32(0x00020000) + std::string(288, '\0');
    EXPECT_EQ(decode(v2, p, consumed, ec), scan_status::error);
    EXPECT_EQ(ec, make_error_code(protocol_errc::unsupported_version));
    ec.clear();
    EXPECT_EQ(decode(be32(9) + be32(0x00040000) + std::string(1, '\0'), p, consumed, ec),
              scan_status::error);
    EXPECT_EQ(ec, make_error_code(protocol_errc::unsupported_version));
}

TEST(StartupDecode, UnknownRequestCode) {
    startup_packet p;
    std::size_t consumed = 0;
    std::error_code ec;
    EXPECT_EQ(decode(be32(8) + be32((1234u << 16) | 9999u), p, consumed, ec), scan_status::error);
    EXPECT_EQ(ec, make_error_code(protocol_errc::unknown_request));
}

TEST(StartupDecode, OversizedAndTooShort) {
    startup_packet p;
    std::size_t consumed = 0;
    std::error_code ec;
    // Refused as soon as the length is known, before the body is buffered.
    EXPECT_EQ(decode(be32(10001), p, consumed, ec), scan_status::error);
    EXPECT_EQ(ec, make_error_code(protocol_errc::oversized));
    // Exactly MAX_STARTUP_PACKET_LENGTH is fine.
    std::string value(10000 - 8 - 2 - 2, 'v');
    std::string at_limit =
        be32(10000) + be32(protocol_v3) + std::string("k\0", 2) + value + std::string("\0\0", 2);
    ASSERT_EQ(at_limit.size(), 10000u);
    ec.clear();
    EXPECT_EQ(decode(at_limit, p, consumed, ec), scan_status::complete) << ec.message();
    for (std::uint32_t len = 0; len < 8; ++len) {
        ec.clear();
        EXPECT_EQ(decode(be32(len) + be32(protocol_v3), p, consumed, ec), scan_status::error);
        EXPECT_EQ(ec, make_error_code(protocol_errc::invalid_length));
    }
}

TEST(StartupDecode, MalformedParameterLists) {
    startup_packet p;
    std::size_t consumed = 0;
    std::error_code ec;
    auto packet = [](std::string body) {
        return be32(std::uint32_t(8 + body.size())) + be32(protocol_v3) + body;
    };
    // No terminator at all.
    EXPECT_EQ(decode(packet(std::string("user\0alice\0", 11)), p, consumed, ec),
              scan_status::error);
    EXPECT_EQ(ec, make_error_code(protocol_errc::malformed));
    // A name without a value.
    ec.clear();
    EXPECT_EQ(decode(packet(std::string("user\0alice\0database\0", 20)), p, consumed, ec),
              scan_status::error);
    EXPECT_EQ(ec, make_error_code(protocol_errc::malformed));
    // Unterminated string.
    ec.clear();
    EXPECT_EQ(decode(packet("user"), p, consumed, ec), scan_status::error);
    EXPECT_EQ(ec, make_error_code(protocol_errc::malformed));
    // Bytes after the terminator.
    ec.clear();
    EXPECT_EQ(decode(packet(std::string("user\0a\0\0junk", 12)), p, consumed, ec),
              scan_status::error);
    EXPECT_EQ(ec, make_error_code(protocol_errc::malformed));
    // Empty body: the terminator is missing.
    ec.clear();
    EXPECT_EQ(decode(packet(""), p, consumed, ec), scan_status::error);
    EXPECT_EQ(ec, make_error_code(protocol_errc::malformed));
}

TEST(StartupDecode, GarbageIsAnError) {
    // An HTTP request, a TLS ClientHello and zeros sent to the PostgreSQL port.
    const std::string inputs[] = {
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11),
        std::string(16, '\0'),
        std::string(16, '\xff'),
    };
    for (const auto& in : inputs) {
        startup_packet p;
        std::size_t consumed = 0;
        std::error_code ec;
        EXPECT_EQ(decode(in, p, consumed, ec), scan_status::error) << in;
        EXPECT_TRUE(ec);
    }
}

TEST(StartupDecode, SplitAtEveryOffset) {
    std::vector<std::string> packets;
    {
        std::string b;
        writer(b).startup({{"user", "bob"}, {"database", "db"}, {"client_encoding", "UTF8"}});
        packets.push_back(b);
    }
    {
        std::string b;
        writer(b).cancel(1, 2);
        packets.push_back(b);
    }
    packets.push_back(be32(8) + be32(ssl_request_code));
    packets.push_back(be32(8) + be32(gssenc_request_code));
    for (const auto& full : packets) {
        for (std::size_t n = 0; n < full.size(); ++n) {
            std::vector<std::uint8_t> prefix(full.begin(), full.begin() + n);
            startup_packet p;
            std::size_t consumed = 0;
            std::error_code ec;
            EXPECT_EQ(
                decode_startup(std::span<const std::uint8_t>(prefix.data(), n), p, consumed, ec),
                scan_status::need_more)
                << "prefix " << n << " of " << full.size();
            EXPECT_FALSE(ec);
        }
        startup_packet p;
        std::size_t consumed = 0;
        std::error_code ec;
        // Followed by a typed message (the client's password, say): only the packet is used.
        std::string with_next = full;
        writer(with_next).password("pw");
        EXPECT_EQ(decode(with_next, p, consumed, ec), scan_status::complete);
        EXPECT_EQ(consumed, full.size());
    }
}

}  // namespace
}  // namespace sluice::protocol
