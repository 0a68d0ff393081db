#pragma once
// SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it: no channel binding
// ("n,," / "biws"), username taken from the startup packet (the SCRAM "n=" is ignored).
// Both sides are sans-io: they consume a message and produce the next one.
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sluice::auth {

// A parsed "SCRAM-SHA-256$<iter>:<salt-b64>$<StoredKey-b64>:<ServerKey-b64>" verifier.
struct scram_secret {
    int iterations = 0;
    std::vector<std::uint8_t> salt;
    std::vector<std::uint8_t> stored_key;  // 32 bytes
    std::vector<std::uint8_t> server_key;  // 32 bytes
};

std::optional<scram_secret> parse_scram_secret(std::string_view text);
bool is_scram_secret(std::string_view text);
// Builds a verifier from a plaintext password (SASLprep is not applied: ASCII passwords).
scram_secret make_scram_secret(std::string_view password, const std::vector<std::uint8_t>& salt,
                               int iterations);
std::string format_scram_secret(const scram_secret& s);

std::string base64_encode(const std::uint8_t* data, std::size_t n);
std::optional<std::vector<std::uint8_t>> base64_decode(std::string_view text);
// CSPRNG (OpenSSL RAND_bytes; requests up to 64 bytes from a per-thread block of its output)
void random_bytes(std::uint8_t* out, std::size_t n);
// HMAC-SHA-256 (RFC 2104), as SCRAM computes it (public for its tests).
std::array<std::uint8_t, 32> hmac_sha256(const std::uint8_t* key, std::size_t key_len,
                                         std::string_view msg);

// Server side: Sluice authenticating a client.
//   AuthenticationSASL("SCRAM-SHA-256") -> client_first(SASLInitialResponse data)
//   -> AuthenticationSASLContinue(server_first) -> client_final(SASLResponse data)
//   -> AuthenticationSASLFinal(server_final) + AuthenticationOk, or failure.
class scram_server {
public:
    // secret: a SCRAM verifier, or a plaintext password (a verifier is derived from it).
    // A missing user still runs the exchange with a made-up secret so that the reply does
    // not reveal which users exist; pass nullopt for that.
    // user: seeds the made-up salt for a missing user (as PostgreSQL's mock salt), so that
    // asking twice for the same unknown user gives the same salt, like a real one; and,
    // with the password, names the verifier derived from a plaintext password, which is
    // derived once and kept (salt and keys the same on every login, as PostgreSQL's).
    scram_server(std::optional<std::string> secret, int iterations = 4096,
                 std::string_view user = {});

    // Tests only: fixes the server's half of the nonce (normally 18 random bytes, base64).
    // Must be called before client_first.
    void set_nonce_for_test(std::string server_nonce) { test_nonce_ = std::move(server_nonce); }

    // Returns server-first-message, or nullopt if client-first is malformed.
    std::optional<std::string> client_first(std::string_view message);
    // Returns server-final-message ("v=...") if the proof is valid, else nullopt.
    std::optional<std::string> client_final(std::string_view message);

    // After a successful exchange: the client's ClientKey, which lets Sluice log in to
    // PostgreSQL as this user with SCRAM without knowing the password (pass-through).
    const std::vector<std::uint8_t>& client_key() const { return client_key_; }
    const scram_secret& secret() const { return secret_; }

private:
    enum class state { initial, sent_server_first, done };
    state state_ = state::initial;
    scram_secret secret_;
    bool user_known_ = true;
    std::string gs2_header_;  // "n,," or "y,,": c= in client-final must be its base64
    std::string client_first_bare_, server_first_, nonce_, test_nonce_;
    std::vector<std::uint8_t> client_key_;
};

// Client side: Sluice authenticating to PostgreSQL.
class scram_client {
public:
    // Either a plaintext password, or (pass-through) a ClientKey plus the server's verifier
    // keys learnt from the client's exchange.
    static scram_client with_password(std::string password);
    static scram_client with_keys(std::vector<std::uint8_t> client_key,
                                  std::vector<std::uint8_t> server_key);

    // The SCRAM "n=" name. PostgreSQL ignores it and libpq leaves it empty (the default);
    // RFC test vectors need it because it is part of AuthMessage. Escaped per RFC 5802.
    void set_username(std::string_view user);
    // Tests only: fixes the client nonce (normally 18 random bytes, base64).
    void set_nonce_for_test(std::string nonce) { nonce_ = std::move(nonce); }

    std::string client_first();  // SASLInitialResponse data ("n,,n=,r=<nonce>")
    // Returns client-final-message, or nullopt if server-first is malformed or iterations
    // are absurd.
    std::optional<std::string> server_first(std::string_view message);
    // True if the server's signature verifies.
    bool server_final(std::string_view message);

private:
    enum class state { initial, sent_client_first, sent_client_final, done };
    state state_ = state::initial;
    std::string username_;  // already escaped
    std::string password_;
    std::vector<std::uint8_t> client_key_, server_key_;
    bool have_keys_ = false;
    std::string nonce_, client_first_bare_, auth_message_;
    std::vector<std::uint8_t> expected_server_signature_;
};

}  // namespace sluice::auth
