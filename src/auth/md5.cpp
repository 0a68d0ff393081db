// PostgreSQL md5 authentication (src/backend/libpq/auth.c, src/common/md5_common.c).
#include "sluice/auth/md5.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>

namespace sluice::auth {

namespace {

constexpr std::string_view hex_digits = "0123456789abcdef";

std::string to_hex(const unsigned char* data, std::size_t n) {
    std::string out;
    out.reserve(n * 2);
    for (std::size_t i = 0; i < n; ++i) {
        out.push_back(hex_digits[data[i] >> 4]);
        out.push_back(hex_digits[data[i] & 0x0f]);
    }
    return out;
}

}  // namespace

std::string md5_hex(std::string_view data) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    // EVP_Digest with the default provider; md5 is only missing under a FIPS-only
    // configuration, where md5 auth cannot work anyway (empty result never matches).
    if (EVP_Digest(data.data(), data.size(), digest, &len, EVP_md5(), nullptr) != 1) return {};
    return to_hex(digest, len);
}

std::string md5_stored(std::string_view password, std::string_view user) {
    std::string buf;
    buf.reserve(password.size() + user.size());
    buf.append(password).append(user);
    return "md5" + md5_hex(buf);
}

bool is_md5_secret(std::string_view secret) {
    // Same test as PostgreSQL's get_password_type(): lowercase hex only.
    if (secret.size() != 35 || secret.substr(0, 3) != "md5") return false;
    return secret.substr(3).find_first_not_of(hex_digits) == std::string_view::npos;
}

std::string md5_response(std::string_view secret, std::string_view user,
                         const std::array<std::uint8_t, 4>& salt) {
    std::string stored = is_md5_secret(secret) ? std::string(secret) : md5_stored(secret, user);
    std::string buf = stored.substr(3);
    buf.append(reinterpret_cast<const char*>(salt.data()), salt.size());
    return "md5" + md5_hex(buf);
}

bool md5_verify(std::string_view secret, std::string_view user,
                const std::array<std::uint8_t, 4>& salt, std::string_view response) {
    std::string expected = md5_response(secret, user, salt);
    if (expected.size() != 35 || response.size() != expected.size()) return false;
    return CRYPTO_memcmp(expected.data(), response.data(), expected.size()) == 0;
}

}  // namespace sluice::auth
