// Fuzzes the configuration loader from memory (load_string): each input is read both as
// YAML and as a PgBouncer .ini, plus the value parsers it is built on (durations, Redis
// URLs). A configuration comes from an operator, not a peer, but the contract is the same:
// problems are returned as FILE:LINE:COL diagnostics, never a crash, a hang or a half-read
// model.
//
// Asserts: a result has a model exactly when it has no errors; every diagnostic names the
// file, a line inside the text (or 0), a positive column with a line, and a message.
#include <algorithm>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "sluice/config/loader.hpp"

namespace c = sluice::config;

namespace {

void check_result(const c::load_result& r, const std::string& text, const std::string& path) {
    FUZZ_CHECK(r.cfg.has_value() == r.errors.empty());
    FUZZ_CHECK(r.ok() == r.errors.empty());
    const int lines = int(std::count(text.begin(), text.end(), '\n')) + 1;
    for (const auto& d : r.errors) {
        FUZZ_CHECK(d.file == path);
        FUZZ_CHECK(!d.message.empty());
        FUZZ_CHECK(d.line >= 0 && d.line <= lines + 1);
        FUZZ_CHECK(d.line == 0 || d.column >= 1);
        FUZZ_CHECK(d.to_string().starts_with(path + ":"));
    }
    if (r.cfg) {
        const auto& g = r.cfg->sluice;
        FUZZ_CHECK(g.listen_port >= 1 && g.listen_port <= 65535);
        FUZZ_CHECK(!g.listen_addr.empty() || !g.unix_socket_dir.empty());
        FUZZ_CHECK(c::to_string(g.pool_mode_) != nullptr && c::to_string(g.auth_type_) != nullptr);
        for (const auto& [name, db] : r.cfg->databases) FUZZ_CHECK(!name.empty());
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);

    for (const std::string path : {"/fuzz/sluice.yaml", "/fuzz/pgbouncer.ini"})
        check_result(c::load_string(text, path), text, path);

    if (size <= 256) {
        if (auto d = c::parse_duration(text)) FUZZ_CHECK(d->count() >= 0);
        if (auto ep = c::parse_redis_url(text)) {
            FUZZ_CHECK(ep->port >= 1 && ep->port <= 65535);
            FUZZ_CHECK(ep->db >= 0 && !ep->host.empty());
        }
    }
    return 0;
}
