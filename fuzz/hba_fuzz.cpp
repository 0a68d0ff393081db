// Fuzzes the pg_hba.conf and pg_ident.conf parsers and the matchers (auth/hba). The files
// come from an operator, but a malformed one must give a positioned error, never a crash,
// a hang or a rule that matches differently from what check() says.
//
// The input is split at the first NUL: before it, the hba text (also read as an ident map);
// after it, up to five NUL-separated fields of a login (address, database, user, system
// user, flags) matched against what parsed. @file references read back the hba text itself
// (bounded nesting in the parser), so includes are exercised too.
//
// Asserts: parse() fails exactly when check() reports errors, and with its first error;
// errors have a line inside the text and a positive column; a matched rule is one of the
// file's rules; match() and allows() are deterministic.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_check.hpp"
#include "sluice/auth/hba.hpp"

namespace a = sluice::auth;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size > 64 * 1024) return 0;
    const std::string input(reinterpret_cast<const char*>(data), size);
    const std::size_t cut = input.find('\0');
    const std::string text = input.substr(0, cut);
    std::vector<std::string> fields;
    if (cut != std::string::npos) {
        std::string rest = input.substr(cut + 1), cur;
        for (char c : rest + '\0') {
            if (c == '\0') {
                fields.push_back(cur);
                cur.clear();
            } else {
                cur.push_back(c);
            }
        }
    }
    fields.resize(5);
    // Short names: the patterns come from the input too, and std::regex backtracking on a
    // pathological pattern is exponential in the subject (see hba_max_regex_subject).
    for (auto& f : fields) f.resize(std::min<std::size_t>(f.size(), 16));
    const int lines = int(std::count(text.begin(), text.end(), '\n')) + 2;
    auto include = [&](const std::string&) -> std::optional<std::string> { return text; };

    auto errors = a::hba_file::check(text, include);
    auto parsed = a::hba_file::parse(text, include);
    FUZZ_CHECK(std::holds_alternative<a::hba_error>(parsed) == !errors.empty());
    if (auto* e = std::get_if<a::hba_error>(&parsed)) {
        FUZZ_CHECK(e->line == errors.front().line && e->message == errors.front().message);
    }
    for (auto& e : errors) FUZZ_CHECK(e.line >= 1 && e.line <= lines && e.column >= 1 && !e.message.empty());

    const std::uint8_t flags = fields[4].empty() ? 0 : std::uint8_t(fields[4][0]);
    a::hba_request req;
    req.unix_socket = flags & 1;
    req.tls = flags & 2;
    req.replication = flags & 4;
    if (!req.unix_socket) req.address = fields[0];
    req.database = fields[1];
    req.user = fields[2];
    auto in_group = [&](const std::string& g, const std::string& u) { return (flags & 8) && g.size() == u.size(); };
    if (auto* file = std::get_if<a::hba_file>(&parsed)) {
        const a::hba_rule* r = file->match(req, in_group);
        FUZZ_CHECK(r == file->match(req, in_group));
        if (r) {
            const auto& rules = file->rules();
            FUZZ_CHECK(r >= rules.data() && r < rules.data() + rules.size());
            if (r->connection == a::hba_connection::local) FUZZ_CHECK(req.unix_socket);
            if (r->connection == a::hba_connection::hostssl) FUZZ_CHECK(req.tls && !req.unix_socket);
            if (r->connection == a::hba_connection::hostnossl) FUZZ_CHECK(!req.tls && !req.unix_socket);
        }
    }

    auto ident_errors = a::ident_map::check(text);
    auto ident = a::ident_map::parse(text);
    FUZZ_CHECK(std::holds_alternative<a::hba_error>(ident) == !ident_errors.empty());
    if (auto* map = std::get_if<a::ident_map>(&ident)) {
        for (auto& e : map->entries()) {
            bool once = map->allows(e.map, fields[3], fields[2]);
            FUZZ_CHECK(once == map->allows(e.map, fields[3], fields[2]));
        }
    }
    return 0;
}
