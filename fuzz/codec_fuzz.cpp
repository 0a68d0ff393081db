// Fuzzes the typed-message codec: the input is a stream of backend/frontend messages,
// framed with next_message until it stops, and every body goes through every decoder
// (type bytes are shared between directions, and a peer may send anything under any type).
//
// Beyond "no crash, no sanitizer report", it asserts what callers rely on:
//   - framing: consumed == 5 + body, never past the buffer; any shorter prefix of a
//     complete message is need_more; a smaller max_packet_size refuses exactly the
//     messages whose length exceeds it;
//   - decoders: a body that decodes is re-written byte for byte by the codec's writer
//     wherever a writer for that message exists (so decoder and writer agree on the layout).
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "sluice/protocol/codec.hpp"

namespace p = sluice::protocol;

namespace {

constexpr std::size_t max_packet = 1 << 20;
constexpr std::size_t small_max_packet = 300;

std::string_view view_of(std::span<const std::uint8_t> s) {
    return {reinterpret_cast<const char*>(s.data()), s.size()};
}

// The body the writer produced (everything after the 5-byte header), with the header's
// length checked on the way.
std::string_view written_body(const std::string& out) {
    FUZZ_CHECK(out.size() >= 5);
    FUZZ_CHECK(p::read_u32(reinterpret_cast<const std::uint8_t*>(out.data()) + 1) ==
               out.size() - 1);
    return std::string_view(out).substr(5);
}

void decode_all(std::span<const std::uint8_t> body) {
    const std::string_view raw = view_of(body);

    if (auto ps = p::decode_parameter_status(body)) {
        std::string out;
        p::writer(out).parameter_status(ps->first, ps->second);
        FUZZ_CHECK(written_body(out) == raw);
    }
    if (auto k = p::decode_backend_key_data(body)) {
        std::string out;
        p::writer(out).backend_key_data(k->process_id, k->secret_key);
        FUZZ_CHECK(written_body(out) == raw);
    }
    if (auto z = p::decode_ready_for_query(body)) {
        std::string out;
        p::writer(out).ready_for_query(*z);
        FUZZ_CHECK(written_body(out) == raw);
    }
    if (auto tag = p::decode_cstring(body)) {
        std::string out;
        p::writer(out).command_complete(*tag);
        FUZZ_CHECK(written_body(out) == raw);
    }
    if (auto d = p::decode_describe_or_close(body)) {
        FUZZ_CHECK(d->kind == 'S' || d->kind == 'P');
        std::string out;
        p::writer(out).close(d->kind, d->name);
        FUZZ_CHECK(written_body(out) == raw);
    }
    if (auto n = p::decode_negotiate_protocol_version(body)) {
        std::string out;
        p::writer(out).negotiate_protocol_version(n->newest_minor, n->unsupported_options);
        FUZZ_CHECK(written_body(out) == raw);
    }
    if (auto row = p::decode_data_row(body)) {
        std::vector<std::optional<std::string>> values;
        for (const auto& v : *row) values.emplace_back(v ? std::optional<std::string>(*v) : std::nullopt);
        std::string out;
        p::writer(out).data_row(values);
        FUZZ_CHECK(written_body(out) == raw);
    }
    if (auto rd = p::decode_row_description(body)) {
        FUZZ_CHECK(body.size() >= 2 && rd->fields.size() == p::read_u16(body.data()));
        // Each field takes at least 19 bytes (an empty name's NUL plus 18 fixed bytes).
        FUZZ_CHECK(2 + rd->fields.size() * 19 <= body.size());
    }
    if (auto e = p::decode_error(body)) {
        FUZZ_CHECK(e->message.size() + e->sqlstate.size() + e->severity.size() <= body.size());
    }
    if (auto a = p::decode_authentication(body)) {
        std::string out;
        p::writer w(out);
        switch (a->code) {
            case 0: w.authentication_ok(); break;
            case 3: w.authentication_cleartext(); break;
            case 5: w.authentication_md5(a->md5_salt); break;
            case 10:
                FUZZ_CHECK(!a->sasl_mechanisms.empty());
                if (a->sasl_mechanisms.size() == 1) w.authentication_sasl(a->sasl_mechanisms[0]);
                break;
            case 11: w.authentication_sasl_continue(a->sasl_data); break;
            case 12: w.authentication_sasl_final(a->sasl_data); break;
            default:
                FUZZ_CHECK(a->sasl_data.size() + 4 == body.size());
                break;
        }
        if (!out.empty()) FUZZ_CHECK(written_body(out) == raw);
    }
    if (auto parse = p::decode_parse(body)) {
        FUZZ_CHECK(parse->parameter_types.size() >= 2);
        const std::size_t n = p::read_u16(parse->parameter_types.data());
        FUZZ_CHECK(parse->parameter_types.size() == 2 + 4 * n);
        if (n == 0) {
            std::string out;
            p::writer(out).parse(parse->name, parse->query);
            FUZZ_CHECK(written_body(out) == raw);
        }
    }
    if (auto b = p::decode_bind_head(body)) {
        FUZZ_CHECK(b->rest_offset == b->portal.size() + b->statement.size() + 2);
        FUZZ_CHECK(b->rest_offset + 6 <= body.size());  // three Int16 counts at least
    }
    if (auto s = p::decode_sasl_initial_response(body)) {
        std::string out;
        p::writer(out).sasl_initial_response(s->mechanism, s->data);
        // The writer never sends length -1 (no initial response); the decoder accepts it
        // and reports empty data.
        const bool no_response = s->data.empty() &&
                                 raw == std::string(s->mechanism) + '\0' + "\xff\xff\xff\xff";
        FUZZ_CHECK(written_body(out) == raw || no_response);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::span<const std::uint8_t> buf(data, size);
    while (!buf.empty()) {
        p::frame_header h;
        std::error_code hec;
        const auto hst = p::scan_header(buf, max_packet, h, hec);

        p::message_view m;
        std::size_t consumed = 0;
        std::error_code ec;
        const auto st = p::next_message(buf, max_packet, m, consumed, ec);

        // A smaller limit refuses exactly the messages longer than it.
        p::frame_header hs;
        std::error_code sec;
        const auto sst = p::scan_header(buf, small_max_packet, hs, sec);
        if (hst == p::scan_status::complete)
            FUZZ_CHECK((sst == p::scan_status::error) == (h.total() > small_max_packet));

        if (st == p::scan_status::need_more) {
            FUZZ_CHECK(hst == p::scan_status::need_more || buf.size() < h.total());
            break;
        }
        if (st == p::scan_status::error) {
            FUZZ_CHECK(hst == p::scan_status::error && ec && ec == hec);
            break;
        }
        FUZZ_CHECK(hst == p::scan_status::complete);
        FUZZ_CHECK(consumed == h.total() && consumed == 5 + m.body.size());
        FUZZ_CHECK(consumed <= buf.size());
        FUZZ_CHECK(m.type == char(buf[0]) && m.body.data() == buf.data() + 5);

        // Every shorter prefix is need_more (bytes arrive in any split).
        for (std::size_t cut : {std::size_t(0), std::size_t(4), consumed / 2, consumed - 1}) {
            if (cut >= consumed) continue;
            p::message_view pm;
            std::size_t pc = 0;
            std::error_code pec;
            const auto pst = p::next_message(buf.first(cut), max_packet, pm, pc, pec);
            FUZZ_CHECK(pst == p::scan_status::need_more);
        }

        decode_all(m.body);
        buf = buf.subspan(consumed);
    }
    return 0;
}
