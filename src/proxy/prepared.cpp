#include "sluice/proxy/prepared.hpp"

#include <openssl/evp.h>

namespace sluice::proxy {

std::string server_statement_name(std::string_view parse_rest) {
    // 128 bits of SHA-256: a collision (two texts sharing a server-side statement) would
    // need about 2^64 distinct statements, so the name can stand for the text.
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(parse_rest.data(), parse_rest.size(), digest, &len, EVP_sha256(), nullptr);
    static constexpr char hex[] = "0123456789abcdef";
    std::string name = "sluice_";
    for (int i = 0; i < 16; ++i) {
        name += hex[digest[i] >> 4];
        name += hex[digest[i] & 15];
    }
    return name;
}

}  // namespace sluice::proxy
