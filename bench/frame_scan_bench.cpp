// Frame scanning speed: how fast the relay path can split server traffic into messages.
// The relay only looks at each message's type byte and length (DESIGN.md 2), so this is
// the per-byte cost every result set pays. The buffer is 64 KiB of typical server output:
// DataRow messages of ~100 bytes, ended by CommandComplete and ReadyForQuery.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "sluice/protocol/codec.hpp"

namespace {

using namespace sluice::protocol;

constexpr std::size_t buffer_size = 64 * 1024;
constexpr std::size_t max_packet_size = 1 << 30;

struct traffic {
    std::string bytes;
    std::size_t messages = 0;
};

// DataRows of four columns (an int, a timestamp, a short and a longer text): 100 bytes
// each on the wire (5 + 2 + 4 * 4 + 6 + 26 + 6 + 39), until the buffer is nearly full, then
// CommandComplete + ReadyForQuery.
const traffic& server_traffic() {
    static const traffic t = [] {
        traffic t;
        writer w(t.bytes);
        const std::vector<std::optional<std::string>> row = {
            std::string("123456"), std::string("2024-05-01 12:34:56.789+00"), std::string("active"),
            std::string(39, 'x')};
        std::string tail;
        writer(tail).command_complete("SELECT 1000000");
        writer(tail).ready_for_query('I');
        for (;;) {
            const auto before = t.bytes.size();
            w.data_row(row);
            if (t.bytes.size() + tail.size() > buffer_size) {
                t.bytes.resize(before);
                break;
            }
            ++t.messages;
        }
        t.bytes += tail;
        t.messages += 2;
        return t;
    }();
    return t;
}

std::span<const std::uint8_t> as_span(const std::string& s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// What the relay does: find message boundaries and look at the type byte.
void bm_next_message(benchmark::State& state) {
    const auto& t = server_traffic();
    const auto buf = as_span(t.bytes);
    for (auto _ : state) {
        std::size_t off = 0, count = 0, ready = 0;
        std::error_code ec;
        for (;;) {
            message_view m;
            std::size_t consumed = 0;
            if (next_message(buf.subspan(off), max_packet_size, m, consumed, ec) !=
                scan_status::complete)
                break;
            ready += (m.type == msg::ready_for_query);
            off += consumed;
            ++count;
        }
        benchmark::DoNotOptimize(count);
        benchmark::DoNotOptimize(ready);
        if (count != t.messages) state.SkipWithError("wrong message count");
    }
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(t.bytes.size()));
    state.counters["msgs/s"] =
        benchmark::Counter(double(state.iterations() * t.messages), benchmark::Counter::kIsRate);
}
BENCHMARK(bm_next_message);

// Header-only scan: skip bodies by length without forming a message_view.
void bm_scan_header(benchmark::State& state) {
    const auto& t = server_traffic();
    const auto buf = as_span(t.bytes);
    for (auto _ : state) {
        std::size_t off = 0, count = 0;
        std::error_code ec;
        frame_header h;
        while (scan_header(buf.subspan(off), max_packet_size, h, ec) == scan_status::complete &&
               off + h.total() <= buf.size()) {
            off += h.total();
            ++count;
        }
        benchmark::DoNotOptimize(count);
        if (count != t.messages) state.SkipWithError("wrong message count");
    }
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(t.bytes.size()));
    state.counters["msgs/s"] =
        benchmark::Counter(double(state.iterations() * t.messages), benchmark::Counter::kIsRate);
}
BENCHMARK(bm_scan_header);

}  // namespace
