// Fuzzes the startup-phase decoder (StartupMessage, CancelRequest, SSLRequest,
// GSSENCRequest): the first packet a client sends, before any authentication, so the one
// an attacker reaches first.
//
// Asserts: consumed never passes the buffer or max_startup_packet; every shorter prefix of
// a complete packet is need_more; a decoded protocol 3.0 StartupMessage or CancelRequest is
// re-written byte for byte by the codec's writer; errors always carry an error code.
#include <cstdint>
#include <span>
#include <string>
#include <variant>

#include "fuzz_check.hpp"
#include "sluice/protocol/codec.hpp"

namespace p = sluice::protocol;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::span<const std::uint8_t> buf(data, size);
    p::startup_packet out;
    std::size_t consumed = 0;
    std::error_code ec;
    const auto st = p::decode_startup(buf, out, consumed, ec);
    if (st == p::scan_status::error) {
        FUZZ_CHECK(ec && ec.category() == p::protocol_category());
        FUZZ_CHECK(!ec.message().empty());
        return 0;
    }
    if (st == p::scan_status::need_more) {
        FUZZ_CHECK(size < 4 || size < p::read_u32(data));
        return 0;
    }
    FUZZ_CHECK(consumed >= 8 && consumed <= size && consumed <= p::max_startup_packet);
    FUZZ_CHECK(consumed == p::read_u32(data));

    for (std::size_t cut : {std::size_t(0), std::size_t(3), std::size_t(7), consumed - 1}) {
        if (cut >= consumed) continue;
        p::startup_packet po;
        std::size_t pc = 0;
        std::error_code pec;
        FUZZ_CHECK(p::decode_startup(buf.first(cut), po, pc, pec) == p::scan_status::need_more);
    }

    const std::string packet(reinterpret_cast<const char*>(data), consumed);
    if (const auto* m = std::get_if<p::startup_message>(&out)) {
        FUZZ_CHECK(m->major == 3);
        for (const auto& [k, v] : m->parameters) {
            FUZZ_CHECK(!k.empty());
            FUZZ_CHECK(m->find(k) != nullptr);
        }
        for (const auto& o : m->protocol_options()) FUZZ_CHECK(o.starts_with("_pq."));
        if (m->minor == 0) {
            std::string again;
            p::writer(again).startup(m->parameters);
            FUZZ_CHECK(again == packet);
        }
    } else if (const auto* c = std::get_if<p::cancel_request>(&out)) {
        std::string again;
        p::writer(again).cancel(c->process_id, c->secret_key);
        FUZZ_CHECK(again == packet);
    } else {
        FUZZ_CHECK(consumed == 8);
    }
    return 0;
}
