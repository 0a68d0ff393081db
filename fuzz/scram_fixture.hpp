#pragma once
// The fixed SCRAM verifier shared by scram_fuzz.cpp and the seed corpus generator, so that
// seeds hold messages that are valid against exactly the fuzz target's server.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.hpp"
#include "sluice/auth/scram.hpp"

namespace scram_fixture {

inline constexpr std::string_view password = "pencil";
inline constexpr int iterations = 16;  // few: the honest exchange runs PBKDF2 once per input
inline constexpr std::string_view server_nonce = "3rfcNHYJY1ZVvWVs7j";  // fixed: inputs replay
inline constexpr std::string_view client_nonce = "fuzzclientnonce";    // scram_client's, 'C'

inline const sluice::auth::scram_secret& secret() {
    static const sluice::auth::scram_secret s = [] {
        std::vector<std::uint8_t> salt(16);
        for (std::size_t i = 0; i < salt.size(); ++i) salt[i] = std::uint8_t(0x41 + i);
        return sluice::auth::make_scram_secret(password, salt, iterations);
    }();
    return s;
}

inline const std::string& verifier() {
    static const std::string v = sluice::auth::format_scram_secret(secret());
    return v;
}

// ClientKey for the fixed verifier, as the server learns it from an honest client.
inline const std::vector<std::uint8_t>& client_key() {
    static const std::vector<std::uint8_t> k = [] {
        auto c = sluice::auth::scram_client::with_password(std::string(password));
        c.set_nonce_for_test("n");
        sluice::auth::scram_server s(verifier(), iterations);
        s.set_nonce_for_test(std::string(server_nonce));
        auto sf = s.client_first(c.client_first());
        FUZZ_CHECK(sf);
        auto cf = c.server_first(*sf);
        FUZZ_CHECK(cf);
        FUZZ_CHECK(s.client_final(*cf));
        return s.client_key();
    }();
    return k;
}

}  // namespace scram_fixture
