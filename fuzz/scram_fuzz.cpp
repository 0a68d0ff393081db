// Fuzzes SCRAM-SHA-256 (both sides) and the secrets it is built from. The first byte picks
// what is fuzzed; the rest is split on '\n' into the peer's messages:
//   'S'  scram_server with a known verifier: client-first, client-final, then one call out
//        of order (must fail: an exchange never resumes).
//   'U'  scram_server for a missing user: whatever the client sends, it never succeeds.
//   'C'  scram_client (pass-through keys, so no PBKDF2 per input): server-first and
//        server-final from the fuzzer.
//   'X'  an honest exchange, client against server, with a fuzzed user name and client
//        nonce: it must succeed whenever the nonce is legal, and both sides must agree.
//   'P'  the secret formats: parse_scram_secret/format, base64, md5 and the userlist parser.
// Any other first byte runs 'S' on the whole input.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.hpp"
#include "scram_fixture.hpp"
#include "sluice/auth/md5.hpp"
#include "sluice/auth/scram.hpp"
#include "sluice/auth/userlist.hpp"

namespace a = sluice::auth;

namespace {

using scram_fixture::client_key;
using scram_fixture::iterations;
using scram_fixture::password;
using scram_fixture::secret;
using scram_fixture::server_nonce;
using scram_fixture::verifier;

std::vector<std::string_view> split_lines(std::string_view s) {
    std::vector<std::string_view> out;
    while (true) {
        auto nl = s.find('\n');
        out.push_back(s.substr(0, nl));
        if (nl == std::string_view::npos) return out;
        s.remove_prefix(nl + 1);
    }
}

std::string_view line(const std::vector<std::string_view>& lines, std::size_t i) {
    return i < lines.size() ? lines[i] : std::string_view{};
}

void fuzz_server(const std::vector<std::string_view>& lines, bool known_user) {
    a::scram_server s(known_user ? std::optional<std::string>(verifier()) : std::nullopt,
                      iterations, "fuzzuser");
    s.set_nonce_for_test(std::string(server_nonce));
    auto first = s.client_first(line(lines, 0));
    if (!first) {
        FUZZ_CHECK(!s.client_final(line(lines, 1)));
        return;
    }
    FUZZ_CHECK(first->starts_with("r="));
    FUZZ_CHECK(first->find(server_nonce) != std::string::npos);
    auto final_message = s.client_final(line(lines, 1));
    if (final_message) {
        FUZZ_CHECK(known_user);
        FUZZ_CHECK(final_message->starts_with("v="));
        FUZZ_CHECK(s.client_key() == client_key());
    }
    FUZZ_CHECK(!s.client_first(line(lines, 2)));
    FUZZ_CHECK(!s.client_final(line(lines, 2)));
}

void fuzz_client(const std::vector<std::string_view>& lines) {
    a::scram_client c = a::scram_client::with_keys(client_key(), secret().server_key);
    c.set_nonce_for_test(std::string(scram_fixture::client_nonce));
    FUZZ_CHECK(c.client_first() == "n,,n=,r=" + std::string(scram_fixture::client_nonce));
    auto final_message = c.server_first(line(lines, 0));
    if (!final_message) {
        FUZZ_CHECK(!c.server_final(line(lines, 1)));
        return;
    }
    FUZZ_CHECK(final_message->starts_with("c=biws,r=" + std::string(scram_fixture::client_nonce)));
    c.server_final(line(lines, 1));
    FUZZ_CHECK(!c.server_final(line(lines, 1)));  // done either way
}

void fuzz_exchange(const std::vector<std::string_view>& lines) {
    const std::string_view user = line(lines, 0), nonce = line(lines, 1);
    a::scram_client c = a::scram_client::with_password(std::string(password));
    c.set_username(user);
    c.set_nonce_for_test(std::string(nonce));
    a::scram_server s(verifier(), iterations, user);
    s.set_nonce_for_test(std::string(server_nonce));

    // An empty nonce makes the client draw a fresh (always legal) one.
    bool legal_nonce = user.find('\0') == std::string_view::npos;
    for (char ch : nonce) legal_nonce &= ch >= 0x21 && ch <= 0x7e && ch != ',';

    // With an illegal nonce (a comma splits it into other attributes, a control byte is not
    // "printable") either side may refuse; but whatever completes must still be a real
    // agreement on the key.
    auto server_first = s.client_first(c.client_first());
    if (legal_nonce) FUZZ_CHECK(server_first);
    if (!server_first) return;
    auto client_final = c.server_first(*server_first);
    if (legal_nonce) FUZZ_CHECK(client_final);
    if (!client_final) return;
    auto server_final = s.client_final(*client_final);
    if (legal_nonce) FUZZ_CHECK(server_final);
    if (!server_final) return;
    FUZZ_CHECK(c.server_final(*server_final));
    FUZZ_CHECK(s.client_key() == client_key());
}

void fuzz_secrets(std::string_view text) {
    if (auto parsed = a::parse_scram_secret(text)) {
        FUZZ_CHECK(parsed->iterations >= 1 && !parsed->salt.empty());
        FUZZ_CHECK(parsed->stored_key.size() == 32 && parsed->server_key.size() == 32);
        auto again = a::parse_scram_secret(a::format_scram_secret(*parsed));
        FUZZ_CHECK(again && again->iterations == parsed->iterations &&
                   again->salt == parsed->salt && again->stored_key == parsed->stored_key &&
                   again->server_key == parsed->server_key);
        FUZZ_CHECK(a::is_scram_secret(text));
    }
    const auto* raw = reinterpret_cast<const std::uint8_t*>(text.data());
    const std::string encoded = a::base64_encode(raw, text.size());
    auto decoded = a::base64_decode(encoded);
    FUZZ_CHECK(decoded && std::string_view(reinterpret_cast<const char*>(decoded->data()),
                                           decoded->size()) == text);
    if (auto d = a::base64_decode(text)) FUZZ_CHECK(d->size() == text.size() / 4 * 3 - (text.ends_with("==") ? 2 : text.ends_with("=") ? 1 : 0));

    const std::array<std::uint8_t, 4> salt{1, 2, 3, 4};
    const std::string stored = a::md5_stored(password, "fuzzuser");
    FUZZ_CHECK(a::is_md5_secret(stored));
    FUZZ_CHECK(a::md5_verify(stored, "fuzzuser", salt, a::md5_response(stored, "fuzzuser", salt)));
    if (a::md5_verify(stored, "fuzzuser", salt, text))
        FUZZ_CHECK(text == a::md5_response(stored, "fuzzuser", salt));
    a::is_md5_secret(text);

    auto list = a::parse_userlist(std::string(text));
    for (const auto& e : list.errors) FUZZ_CHECK(e.line >= 1 && !e.message.empty());
    for (const auto& [user, sec] : list.secrets) FUZZ_CHECK(list.find(user) == sec);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::string_view all(reinterpret_cast<const char*>(data), size);
    const std::string_view rest = all.substr(1);
    switch (all[0]) {
        case 'S': fuzz_server(split_lines(rest), true); break;
        case 'U': fuzz_server(split_lines(rest), false); break;
        case 'C': fuzz_client(split_lines(rest)); break;
        case 'X': fuzz_exchange(split_lines(rest)); break;
        case 'P': fuzz_secrets(rest); break;
        default: fuzz_server(split_lines(all), true); break;
    }
    return 0;
}
