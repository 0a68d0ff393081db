#pragma once
// One shared copy of a short text that many connections repeat and that lives as long as
// the process: a local address ("127.0.0.1"), a TLS description ("TLSv1.3/TLS_AES_256_
// GCM_SHA384"). A connection keeps a pointer (8 bytes) instead of a std::string (32).
// Only for values drawn from a small set (the host's addresses, the TLS versions and
// ciphers OpenSSL offers): entries are never removed. Thread-safe.
#include <string>
#include <string_view>

namespace sluice::net {

const std::string& interned(std::string_view text);

}  // namespace sluice::net
