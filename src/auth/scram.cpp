// SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it (src/backend/libpq/auth-scram.c,
// src/interfaces/libpq/fe-auth-scram.c). Everything here handles bytes from a peer, so parsing
// never throws and any malformed input ends the exchange with nullopt/false.
#include "sluice/auth/scram.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>

#include "sluice/auth/md5.hpp"

namespace sluice::auth {

namespace {

constexpr std::size_t key_len = 32;        // SHA-256 output
constexpr std::size_t raw_nonce_len = 18;  // as PostgreSQL: 18 random bytes, 24 base64 chars
constexpr std::size_t salt_len = 16;       // PostgreSQL's SCRAM_DEFAULT_SALT_LEN
constexpr int max_client_iterations = 10'000'000;  // refuse to burn CPU for a hostile server
constexpr std::string_view secret_prefix = "SCRAM-SHA-256$";

using key = std::array<std::uint8_t, key_len>;

// SHA-256 through a digest fetched once, and a context per thread. EVP_sha256() is a
// legacy handle in OpenSSL 3 that every EVP_DigestInit resolves again in the provider
// store, and HMAC() goes through EVP_Q_mac, which fetches the MAC and the digest on every
// call: callgrind put one HMAC of a short message at about 17,000 instructions, and a
// login makes three of them. A digest failure here means no memory or a broken OpenSSL;
// like random_bytes, stop rather than compare against a zero key.
class sha256_digest {
public:
    sha256_digest() : ctx_(EVP_MD_CTX_new()) {
        if (ctx_ == nullptr) std::abort();
    }
    ~sha256_digest() { EVP_MD_CTX_free(ctx_); }
    sha256_digest(const sha256_digest&) = delete;
    sha256_digest& operator=(const sha256_digest&) = delete;

    void init() { check(EVP_DigestInit_ex2(ctx_, md(), nullptr)); }
    void update(const void* p, std::size_t n) { check(EVP_DigestUpdate(ctx_, p, n)); }
    key final() {
        key out{};
        unsigned int len = 0;
        check(EVP_DigestFinal_ex(ctx_, out.data(), &len));
        return out;
    }

private:
    static const EVP_MD* md() {
        static EVP_MD* const fetched = [] {
            EVP_MD* m = EVP_MD_fetch(nullptr, "SHA256", nullptr);
            if (m == nullptr) std::abort();
            return m;
        }();
        return fetched;
    }
    static void check(int ok) {
        if (ok != 1) std::abort();
    }
    EVP_MD_CTX* ctx_;
};

sha256_digest& digest() {
    thread_local sha256_digest d;
    return d;
}

key sha256(const std::uint8_t* data, std::size_t n) {
    auto& d = digest();
    d.init();
    d.update(data, n);
    return d.final();
}

}  // namespace

// HMAC-SHA-256 (RFC 2104): H((K ^ opad) || H((K ^ ipad) || msg)), K padded to the 64-byte
// block (hashed first when longer).
std::array<std::uint8_t, 32> hmac_sha256(const std::uint8_t* k, std::size_t kn,
                                         std::string_view msg) {
    constexpr std::size_t block_len = 64;
    std::array<std::uint8_t, block_len> block{};
    if (kn > block_len) {
        key hashed = sha256(k, kn);
        std::copy(hashed.begin(), hashed.end(), block.begin());
        OPENSSL_cleanse(hashed.data(), hashed.size());
    } else {
        std::copy(k, k + kn, block.begin());
    }
    std::array<std::uint8_t, block_len> pad;
    auto& d = digest();
    for (std::size_t i = 0; i < block_len; ++i) pad[i] = block[i] ^ 0x36;
    d.init();
    d.update(pad.data(), pad.size());
    d.update(msg.data(), msg.size());
    key inner = d.final();
    for (std::size_t i = 0; i < block_len; ++i) pad[i] = block[i] ^ 0x5c;
    d.init();
    d.update(pad.data(), pad.size());
    d.update(inner.data(), inner.size());
    key out = d.final();
    OPENSSL_cleanse(block.data(), block.size());
    OPENSSL_cleanse(pad.data(), pad.size());
    OPENSSL_cleanse(inner.data(), inner.size());
    return out;
}

namespace {

key xor_keys(const key& a, const key& b) {
    key out{};
    for (std::size_t i = 0; i < key_len; ++i) out[i] = a[i] ^ b[i];
    return out;
}

std::vector<std::uint8_t> to_vec(const key& k) {
    return {k.begin(), k.end()};
}

key to_key(const std::vector<std::uint8_t>& v) {
    key out{};
    if (v.size() == key_len) std::copy(v.begin(), v.end(), out.begin());
    return out;
}

bool equal_ct(const std::uint8_t* a, const std::uint8_t* b, std::size_t n) {
    return CRYPTO_memcmp(a, b, n) == 0;
}

// RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. visible ASCII except ','.
bool is_printable_nonce(std::string_view s) {
    if (s.empty()) return false;
    return std::all_of(s.begin(), s.end(),
                       [](char c) { return c >= 0x21 && c <= 0x7e && c != ','; });
}

// Splits "a=1,b=2" on commas. SCRAM values never contain a raw comma (names escape it as
// =2C, nonces exclude it, base64 has none), so splitting is exact.
std::vector<std::string_view> split_attributes(std::string_view s) {
    std::vector<std::string_view> out;
    std::size_t start = 0;
    while (true) {
        std::size_t comma = s.find(',', start);
        if (comma == std::string_view::npos) {
            out.push_back(s.substr(start));
            return out;
        }
        out.push_back(s.substr(start, comma - start));
        start = comma + 1;
    }
}

// "x=value" with the expected attribute letter; returns the value.
std::optional<std::string_view> attribute(std::string_view field, char name) {
    if (field.size() < 2 || field[0] != name || field[1] != '=') return std::nullopt;
    return field.substr(2);
}

// An optional extension (RFC 5802 "attr-val"): one letter, '=', anything. Ignored, as
// PostgreSQL ignores them.
bool is_extension(std::string_view field) {
    return field.size() >= 2 &&
           ((field[0] >= 'a' && field[0] <= 'z') || (field[0] >= 'A' && field[0] <= 'Z')) &&
           field[1] == '=';
}

std::optional<int> parse_positive_int(std::string_view s, int max) {
    if (s.empty() || s.size() > 10) return std::nullopt;
    long long v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return std::nullopt;  // no sign, no spaces
        v = v * 10 + (c - '0');
    }
    if (v < 1 || v > max) return std::nullopt;
    return static_cast<int>(v);
}

std::string fresh_nonce() {
    std::array<std::uint8_t, raw_nonce_len> raw{};
    random_bytes(raw.data(), raw.size());
    return base64_encode(raw.data(), raw.size());
}

// A per-process random key for the made-up salt of missing users: stable within a process
// (asking twice shows the same salt, as for a real user) and unpredictable across processes.
const std::array<std::uint8_t, 32>& mock_salt_key() {
    static const std::array<std::uint8_t, 32> k = [] {
        std::array<std::uint8_t, 32> out{};
        random_bytes(out.data(), out.size());
        return out;
    }();
    return k;
}

// Verifiers derived from plaintext passwords, kept as PostgreSQL keeps one in pg_authid:
// PBKDF2 with 4096 iterations costs about a millisecond of CPU, and deriving it on every
// login made connection churn CPU-bound. Keyed by a digest of (user, password,
// iterations), never by the password itself; a changed password is a new key. Bounded:
// emptied when full (a login then derives again).
scram_secret derived_secret(std::string_view user, const std::string& password, int iterations) {
    static std::mutex mutex;
    static std::unordered_map<std::string, scram_secret> cache;
    constexpr std::size_t max_entries = 4096;
    std::string material;
    material.reserve(user.size() + password.size() + 16);
    material.append(user).push_back('\0');
    material.append(password).push_back('\0');
    material += std::to_string(iterations);
    const key digest = sha256(reinterpret_cast<const std::uint8_t*>(material.data()),
                              material.size());
    OPENSSL_cleanse(material.data(), material.size());
    std::string id(digest.begin(), digest.end());
    {
        std::lock_guard lk(mutex);
        if (auto it = cache.find(id); it != cache.end()) return it->second;
    }
    std::vector<std::uint8_t> salt(salt_len);
    random_bytes(salt.data(), salt.size());
    auto s = make_scram_secret(password, salt, iterations);  // outside the lock: slow
    std::lock_guard lk(mutex);
    if (cache.size() >= max_entries) cache.clear();
    return cache.emplace(std::move(id), std::move(s)).first->second;  // first one wins
}

scram_secret mock_secret(std::string_view user, int iterations) {
    const auto& k = mock_salt_key();
    key digest = hmac_sha256(k.data(), k.size(), user);
    scram_secret s;
    s.iterations = iterations;
    s.salt.assign(digest.begin(), digest.begin() + salt_len);
    // Keys that no proof can match in practice; client_final refuses regardless.
    s.stored_key.assign(key_len, 0);
    s.server_key.assign(key_len, 0);
    return s;
}

constexpr char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int b64_value(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Helpers

std::string base64_encode(const std::uint8_t* data, std::size_t n) {
    std::string out;
    out.reserve((n + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        std::uint32_t v = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
        out.push_back(b64_alphabet[(v >> 18) & 63]);
        out.push_back(b64_alphabet[(v >> 12) & 63]);
        out.push_back(b64_alphabet[(v >> 6) & 63]);
        out.push_back(b64_alphabet[v & 63]);
    }
    if (n - i == 1) {
        std::uint32_t v = data[i] << 16;
        out.push_back(b64_alphabet[(v >> 18) & 63]);
        out.push_back(b64_alphabet[(v >> 12) & 63]);
        out.append("==");
    } else if (n - i == 2) {
        std::uint32_t v = (data[i] << 16) | (data[i + 1] << 8);
        out.push_back(b64_alphabet[(v >> 18) & 63]);
        out.push_back(b64_alphabet[(v >> 12) & 63]);
        out.push_back(b64_alphabet[(v >> 6) & 63]);
        out.push_back('=');
    }
    return out;
}

// Strict: padded, no whitespace, '=' only at the end. (OpenSSL's EVP_DecodeBlock accepts
// whitespace and reports padding as data, so it is not used for peer input.)
std::optional<std::vector<std::uint8_t>> base64_decode(std::string_view text) {
    if (text.size() % 4 != 0) return std::nullopt;
    std::vector<std::uint8_t> out;
    out.reserve(text.size() / 4 * 3);
    for (std::size_t i = 0; i < text.size(); i += 4) {
        bool last = i + 4 == text.size();
        int pad = 0;
        if (last && text[i + 3] == '=') pad = text[i + 2] == '=' ? 2 : 1;
        std::uint32_t v = 0;
        for (int j = 0; j < 4; ++j) {
            int d = 0;
            if (j >= 4 - pad) {
                d = 0;  // padding position, already checked to be '='
            } else {
                d = b64_value(text[i + j]);
                if (d < 0) return std::nullopt;
            }
            v = (v << 6) | static_cast<std::uint32_t>(d);
        }
        out.push_back(static_cast<std::uint8_t>(v >> 16));
        if (pad < 2) out.push_back(static_cast<std::uint8_t>(v >> 8));
        if (pad < 1) out.push_back(static_cast<std::uint8_t>(v));
    }
    return out;
}

void random_bytes(std::uint8_t* out, std::size_t n) {
    // A RAND_bytes call costs about 7,000 instructions whatever its size (the DRBG's lock
    // and reseed checks), and a login asks twice for a few bytes (nonce, cancel key): small
    // requests take their bytes from a per-thread block that RAND_bytes refills. Each byte
    // is handed out once and wiped. (Sluice forks only to daemonize, before it serves, and
    // the parent then exits: no two processes share a block.)
    struct pool {
        std::array<std::uint8_t, 512> bytes;
        std::size_t used = bytes.size();
        ~pool() { OPENSSL_cleanse(bytes.data(), bytes.size()); }
    };
    thread_local pool p;
    auto fill = [](std::uint8_t* to, std::size_t len) {
        if (RAND_bytes(to, static_cast<int>(len)) != 1) {
            // Without a CSPRNG every nonce and salt is guessable; continuing would be worse
            // than stopping.
            std::abort();
        }
    };
    if (n > p.bytes.size() / 8) {
        fill(out, n);
        return;
    }
    if (p.bytes.size() - p.used < n) {
        fill(p.bytes.data(), p.bytes.size());
        p.used = 0;
    }
    std::copy_n(p.bytes.data() + p.used, n, out);
    OPENSSL_cleanse(p.bytes.data() + p.used, n);
    p.used += n;
}

std::optional<scram_secret> parse_scram_secret(std::string_view text) {
    // SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
    if (text.substr(0, secret_prefix.size()) != secret_prefix) return std::nullopt;
    text.remove_prefix(secret_prefix.size());
    std::size_t dollar = text.find('$');
    if (dollar == std::string_view::npos) return std::nullopt;
    std::string_view left = text.substr(0, dollar), right = text.substr(dollar + 1);
    std::size_t c1 = left.find(':'), c2 = right.find(':');
    if (c1 == std::string_view::npos || c2 == std::string_view::npos) return std::nullopt;
    auto iter = parse_positive_int(left.substr(0, c1), INT_MAX);
    auto salt = base64_decode(left.substr(c1 + 1));
    auto stored = base64_decode(right.substr(0, c2));
    auto server = base64_decode(right.substr(c2 + 1));
    if (!iter || !salt || salt->empty() || !stored || stored->size() != key_len || !server ||
        server->size() != key_len)
        return std::nullopt;
    return scram_secret{*iter, std::move(*salt), std::move(*stored), std::move(*server)};
}

bool is_scram_secret(std::string_view text) {
    return parse_scram_secret(text).has_value();
}

scram_secret make_scram_secret(std::string_view password, const std::vector<std::uint8_t>& salt,
                               int iterations) {
    iterations = std::max(iterations, 1);
    key salted{};
    PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()), salt.data(),
                      static_cast<int>(salt.size()), iterations, EVP_sha256(), key_len,
                      salted.data());
    key client_key = hmac_sha256(salted.data(), key_len, "Client Key");
    key server_key = hmac_sha256(salted.data(), key_len, "Server Key");
    key stored_key = sha256(client_key.data(), key_len);
    OPENSSL_cleanse(salted.data(), salted.size());
    OPENSSL_cleanse(client_key.data(), client_key.size());
    return scram_secret{iterations, salt, to_vec(stored_key), to_vec(server_key)};
}

std::string format_scram_secret(const scram_secret& s) {
    return std::string(secret_prefix) + std::to_string(s.iterations) + ":" +
           base64_encode(s.salt.data(), s.salt.size()) + "$" +
           base64_encode(s.stored_key.data(), s.stored_key.size()) + ":" +
           base64_encode(s.server_key.data(), s.server_key.size());
}

// ---------------------------------------------------------------------------------------------
// Server
//
// initial --client_first--> sent_server_first --client_final--> done.
// Any malformed message, or a call out of order, moves to done and fails; an exchange is
// never resumed after a failure.

scram_server::scram_server(std::optional<std::string> secret, int iterations,
                           std::string_view user) {
    if (iterations < 1) iterations = 4096;
    if (!secret) {
        user_known_ = false;
        secret_ = mock_secret(user, iterations);
        return;
    }
    if (auto parsed = parse_scram_secret(*secret)) {
        secret_ = std::move(*parsed);
    } else if (secret->substr(0, secret_prefix.size()) == secret_prefix || is_md5_secret(*secret)) {
        // A corrupt verifier, or an md5 secret (SCRAM cannot be computed from it): fail the
        // exchange rather than treat the text as a plaintext password, which would make the
        // verifier's own text a valid password. PgBouncer likewise refuses SCRAM with an md5
        // secret.
        user_known_ = false;
        secret_ = mock_secret(user, iterations);
    } else {
        // Plaintext: a verifier with a random salt, derived once per (user, password) and
        // kept (derived_secret), so a client sees the same salt on every login, as with
        // PostgreSQL. (PgBouncer derives one with a fresh salt on every login.)
        secret_ = derived_secret(user, *secret, iterations);
    }
    OPENSSL_cleanse(secret->data(), secret->size());
}

std::optional<std::string> scram_server::client_first(std::string_view message) {
    if (state_ != state::initial) {
        state_ = state::done;
        return std::nullopt;
    }
    state_ = state::done;  // until proven well-formed
    if (message.find('\0') != std::string_view::npos) return std::nullopt;

    // gs2-header: "n,," (client does not support channel binding) or "y,," (client does but
    // thinks we do not; true, we advertise no -PLUS). "p=" (channel binding required) and an
    // authzid ("n,a=...") are refused, as by PostgreSQL when -PLUS is not offered.
    if (message.size() < 3) return std::nullopt;
    std::string_view gs2 = message.substr(0, 3);
    if (gs2 != "n,," && gs2 != "y,,") return std::nullopt;
    std::string_view bare = message.substr(3);

    auto fields = split_attributes(bare);
    // client-first-message-bare: [reserved-mext ","] username "," nonce ["," extensions]
    // "m=" marks a mandatory extension we do not know: refuse, as RFC 5802 requires.
    if (fields.size() < 2 || !attribute(fields[0], 'n')) return std::nullopt;
    auto client_nonce = attribute(fields[1], 'r');
    if (!client_nonce || !is_printable_nonce(*client_nonce)) return std::nullopt;
    for (std::size_t i = 2; i < fields.size(); ++i)
        if (!is_extension(fields[i])) return std::nullopt;

    std::string server_nonce = test_nonce_.empty() ? fresh_nonce() : test_nonce_;
    gs2_header_ = std::string(gs2);
    client_first_bare_ = std::string(bare);
    nonce_ = std::string(*client_nonce) + server_nonce;
    server_first_ = "r=" + nonce_ +
                    ",s=" + base64_encode(secret_.salt.data(), secret_.salt.size()) +
                    ",i=" + std::to_string(secret_.iterations);
    state_ = state::sent_server_first;
    return server_first_;
}

std::optional<std::string> scram_server::client_final(std::string_view message) {
    if (state_ != state::sent_server_first) {
        state_ = state::done;
        return std::nullopt;
    }
    state_ = state::done;
    if (message.find('\0') != std::string_view::npos) return std::nullopt;

    // client-final-message: channel-binding "," nonce ["," extensions] "," proof
    auto fields = split_attributes(message);
    if (fields.size() < 3) return std::nullopt;
    // c= must be base64 of exactly the gs2 header sent in client-first (RFC 5802 section 7),
    // which catches a downgrade of the channel-binding flag in between.
    auto cbind = attribute(fields[0], 'c');
    if (!cbind || *cbind != base64_encode(reinterpret_cast<const std::uint8_t*>(gs2_header_.data()),
                                          gs2_header_.size()))
        return std::nullopt;
    auto nonce = attribute(fields[1], 'r');
    if (!nonce || *nonce != nonce_) return std::nullopt;
    for (std::size_t i = 2; i + 1 < fields.size(); ++i)
        if (!is_extension(fields[i])) return std::nullopt;
    auto proof_b64 = attribute(fields.back(), 'p');
    if (!proof_b64) return std::nullopt;
    auto proof = base64_decode(*proof_b64);
    if (!proof || proof->size() != key_len) return std::nullopt;

    std::string_view without_proof = message.substr(0, message.size() - fields.back().size() - 1);
    std::string auth_message =
        client_first_bare_ + "," + server_first_ + "," + std::string(without_proof);

    // ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); valid iff H(ClientKey) ==
    // StoredKey. The work is done even for a missing user so timing does not tell.
    key stored = to_key(secret_.stored_key);
    key client_signature = hmac_sha256(stored.data(), key_len, auth_message);
    key client_key = xor_keys(to_key(*proof), client_signature);
    key check = sha256(client_key.data(), key_len);
    bool ok = equal_ct(check.data(), stored.data(), key_len);
    if (!ok || !user_known_) return std::nullopt;

    client_key_ = to_vec(client_key);
    key server_key = to_key(secret_.server_key);
    key server_signature = hmac_sha256(server_key.data(), key_len, auth_message);
    return "v=" + base64_encode(server_signature.data(), key_len);
}

// ---------------------------------------------------------------------------------------------
// Client
//
// initial --client_first--> sent_client_first --server_first--> sent_client_final
// --server_final--> done. A failure at any step moves to done.

scram_client scram_client::with_password(std::string password) {
    scram_client c;
    c.password_ = std::move(password);
    return c;
}

scram_client scram_client::with_keys(std::vector<std::uint8_t> client_key,
                                     std::vector<std::uint8_t> server_key) {
    scram_client c;
    c.client_key_ = std::move(client_key);
    c.server_key_ = std::move(server_key);
    c.have_keys_ = true;
    return c;
}

void scram_client::set_username(std::string_view user) {
    // RFC 5802 saslname: ',' and '=' are escaped as =2C and =3D.
    username_.clear();
    for (char c : user) {
        if (c == ',')
            username_ += "=2C";
        else if (c == '=')
            username_ += "=3D";
        else
            username_ += c;
    }
}

std::string scram_client::client_first() {
    if (nonce_.empty()) nonce_ = fresh_nonce();
    client_first_bare_ = "n=" + username_ + ",r=" + nonce_;
    state_ = state::sent_client_first;
    return "n,," + client_first_bare_;
}

std::optional<std::string> scram_client::server_first(std::string_view message) {
    if (state_ != state::sent_client_first) {
        state_ = state::done;
        return std::nullopt;
    }
    state_ = state::done;
    if (message.find('\0') != std::string_view::npos) return std::nullopt;

    // server-first-message: [reserved-mext ","] nonce "," salt "," iteration-count
    // ["," extensions]
    auto fields = split_attributes(message);
    if (fields.size() < 3) return std::nullopt;
    auto nonce = attribute(fields[0], 'r');
    // The server's nonce must extend ours (RFC 5802 section 5.1), else this is a replay.
    if (!nonce || nonce->size() <= nonce_.size() || nonce->substr(0, nonce_.size()) != nonce_ ||
        !is_printable_nonce(*nonce))
        return std::nullopt;
    auto salt_b64 = attribute(fields[1], 's');
    if (!salt_b64) return std::nullopt;
    auto salt = base64_decode(*salt_b64);
    if (!salt || salt->empty()) return std::nullopt;
    auto iter_text = attribute(fields[2], 'i');
    if (!iter_text) return std::nullopt;
    auto iterations = parse_positive_int(*iter_text, max_client_iterations);
    if (!iterations) return std::nullopt;
    for (std::size_t i = 3; i < fields.size(); ++i)
        if (!is_extension(fields[i])) return std::nullopt;

    key client_key{}, server_key{};
    if (have_keys_) {
        // Pass-through: the keys come from the verifier the client authenticated against; the
        // server's salt and iterations are not needed (and must match for this to succeed).
        if (client_key_.size() != key_len || server_key_.size() != key_len) return std::nullopt;
        client_key = to_key(client_key_);
        server_key = to_key(server_key_);
    } else {
        key salted{};
        if (PKCS5_PBKDF2_HMAC(password_.data(), static_cast<int>(password_.size()), salt->data(),
                              static_cast<int>(salt->size()), *iterations, EVP_sha256(), key_len,
                              salted.data()) != 1)
            return std::nullopt;
        client_key = hmac_sha256(salted.data(), key_len, "Client Key");
        server_key = hmac_sha256(salted.data(), key_len, "Server Key");
        OPENSSL_cleanse(salted.data(), salted.size());
    }
    key stored_key = sha256(client_key.data(), key_len);

    std::string without_proof = "c=biws,r=" + std::string(*nonce);
    auth_message_ = client_first_bare_ + "," + std::string(message) + "," + without_proof;
    key client_signature = hmac_sha256(stored_key.data(), key_len, auth_message_);
    key proof = xor_keys(client_key, client_signature);
    expected_server_signature_ = to_vec(hmac_sha256(server_key.data(), key_len, auth_message_));
    OPENSSL_cleanse(client_key.data(), client_key.size());
    state_ = state::sent_client_final;
    return without_proof + ",p=" + base64_encode(proof.data(), key_len);
}

bool scram_client::server_final(std::string_view message) {
    if (state_ != state::sent_client_final) {
        state_ = state::done;
        return false;
    }
    state_ = state::done;
    // server-final-message: ("e=" server-error-value / "v=" verifier) ["," extensions]
    auto fields = split_attributes(message);
    auto v = attribute(fields[0], 'v');
    if (!v) return false;  // includes "e=..."
    auto signature = base64_decode(*v);
    if (!signature || signature->size() != key_len || expected_server_signature_.size() != key_len)
        return false;
    return equal_ct(signature->data(), expected_server_signature_.data(), key_len);
}

}  // namespace sluice::auth
