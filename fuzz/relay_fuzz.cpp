// The relay core (proxy/relay.hpp) driven by a fuzzed script. Byte 0 picks the settings
// (pool mode, prepared-statement tracking, rate limiting); then each step is a byte whose
// low bits say who acts (client bytes, server bytes, admission refused for the next
// request, the server released by the driver) and a length byte, followed by that many
// bytes. The driver's part is played as client_session plays it.
//
// Invariants checked beyond "no crash, no sanitizer report":
//   - consumed never exceeds the input; what stays unconsumed after need_more is bounded
//     by max_held_message_size (nothing is buffered whole beyond the limit);
//   - can_release() implies an empty reply queue, nothing outstanding and status 'I';
//   - every output piece lies inside the input or was built by the core (sizes add up).
#include <cstdint>
#include <cstring>
#include <string>

#include "fuzz_check.hpp"
#include "sluice/proxy/relay.hpp"

namespace {

using namespace sluice;
namespace relay = sluice::proxy::relay;

struct quiet_observer : relay::observer {};

std::size_t total(const proxy::batch_builder& b) {
    std::size_t n = 0;
    for (auto& [p, len] : b.pieces()) {
        FUZZ_CHECK(p != nullptr || len == 0);
        n += len;
    }
    FUZZ_CHECK(n == b.size());
    return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    relay::settings s;
    const std::uint8_t mode = data[0] % 3;
    s.mode = mode == 0 ? config::pool_mode::session
                       : mode == 1 ? config::pool_mode::transaction : config::pool_mode::statement;
    s.track_prepared = mode != 0 && (data[0] & 4);
    s.max_prepared = 1 + ((data[0] >> 3) & 3);
    s.rate_limited = data[0] & 32;
    s.max_held = 512;
    s.max_packet = 1 << 16;
    quiet_observer obs;
    relay::machine m(s, obs);
    pool::server_statements server;
    std::string cbuf, sbuf;
    bool admit = true;
    bool client_done = false;

    std::size_t pos = 1;
    while (pos + 2 <= size && !client_done) {
        const std::uint8_t who = data[pos] & 3;
        std::size_t n = std::min<std::size_t>(data[pos + 1], size - pos - 2);
        const std::uint8_t* bytes = data + pos + 2;
        pos += 2 + n;
        if (who == 0) {  // the client speaks
            cbuf.append(reinterpret_cast<const char*>(bytes), n);
            for (;;) {
                const std::size_t before = cbuf.size();
                auto r = m.on_client_data(
                    {reinterpret_cast<const std::uint8_t*>(cbuf.data()), cbuf.size()});
                FUZZ_CHECK(r.consumed <= before);
                total(m.to_server());
                if (!m.linked()) FUZZ_CHECK(m.to_server().size() == 0);
                cbuf.erase(0, r.consumed);
                std::string injected;
                m.take_injections(injected);
                if (r.event == relay::client_event::need_more) {
                    FUZZ_CHECK(cbuf.size() <= s.max_held + 5);
                    // The driver gives the request storage back while the client waits;
                    // only a reply still due keeps it (and nothing else may be lost).
                    if (cbuf.empty()) FUZZ_CHECK(m.release_scratch() || m.pending() > 0);
                    break;
                }
                if (r.event == relay::client_event::need_server) {
                    FUZZ_CHECK(!m.linked());
                    m.on_server_linked(&server);
                    continue;
                }
                if (r.event == relay::client_event::need_admission) {
                    m.on_admission(admit, std::chrono::milliseconds(5), "t");
                    admit = true;
                    continue;
                }
                client_done = true;  // close or terminate
                break;
            }
        } else if (who == 1) {  // the server speaks
            if (!m.linked()) continue;
            sbuf.append(reinterpret_cast<const char*>(bytes), n);
            auto r = m.on_server_data({reinterpret_cast<const std::uint8_t*>(sbuf.data()), sbuf.size()});
            FUZZ_CHECK(r.consumed <= sbuf.size());
            total(m.to_client());
            sbuf.erase(0, r.consumed);
            if (r.event == relay::server_event::close) {
                FUZZ_CHECK(!m.server_clean());
                break;
            }
            FUZZ_CHECK(sbuf.size() <= s.max_held + 5);
            if (m.can_release()) FUZZ_CHECK(m.release() == relay::machine::verdict::give_back);
            if (m.release() != relay::machine::verdict::keep) {
                FUZZ_CHECK(m.pending() == 0 && m.outstanding() == 0 &&
                           m.transaction_status() == 'I');
                if (sbuf.empty()) {
                    m.on_server_released();
                    server.clear();  // the next link may be another server
                }
            }
        } else if (who == 2) {
            admit = false;  // the next request is refused by the rate limiter
        } else if (m.linked() && m.server_clean()) {
            m.on_server_released();  // the client left between transactions
            sbuf.clear();
        }
    }
    return 0;
}
