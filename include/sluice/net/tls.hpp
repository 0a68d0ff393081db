#pragma once
// TLS contexts built from the configuration, for both sides:
//   client side  Sluice as the TLS server that clients connect to (client_tls_*)
//   server side  Sluice as a TLS client of PostgreSQL (server_tls_*)
// A built set is immutable. RELOAD and SET build a new one; connections keep the context
// they started with, and a server connection made under older server TLS settings is
// closed when released (its generation no longer matches).
#include <boost/asio/ssl.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "sluice/config/config.hpp"
#include "sluice/net/io.hpp"

namespace sluice::net {

// PgBouncer's (and libpq's) six modes, in increasing strictness.
enum class sslmode { disable, allow, prefer, require, verify_ca, verify_full };
std::optional<sslmode> parse_sslmode(std::string_view text);
const char* to_string(sslmode m);

// `client_tls_protocols` / `server_tls_protocols`: "secure" (TLS 1.2 and 1.3), "all" and
// "legacy" (1.0 to 1.3), or a list of tlsv1.0 / tlsv1.1 / tlsv1.2 / tlsv1.3. Returns
// the OpenSSL version range [min, max] plus options excluding the versions inside it that
// are not listed; nullopt if the text is not valid.
struct tls_protocol_range {
    int min_version = 0, max_version = 0;  // TLS1_x_VERSION
    long excluded_options = 0;             // SSL_OP_NO_TLSv1_x for holes in the list
};
std::optional<tls_protocol_range> parse_tls_protocols(std::string_view text);

struct tls_config {
    sslmode client_mode = sslmode::disable;
    std::shared_ptr<asio::ssl::context> client_side;  // null when client TLS is off

    sslmode server_mode = sslmode::disable;
    std::shared_ptr<asio::ssl::context> server_side;  // null when server TLS is off
    // Changes whenever any server_tls_* setting changes (a reload that leaves them alone
    // keeps it, so servers are not closed for nothing).
    std::uint64_t server_generation = 0;
    std::string server_fingerprint;  // the server_tls_* settings the generation stands for
};

// Builds both contexts. On error (unreadable file, a key that does not match its
// certificate, bad cipher list) returns null and `error` says which setting and why.
// `previous` lets the server generation carry over when nothing server-side changed.
std::shared_ptr<const tls_config> make_tls_config(const config::general& g,
                                                  const tls_config* previous,
                                                  std::string& error);

// Sets up a server-side (to PostgreSQL) TLS session for `host`: SNI for a name, and for
// verify-full the name or address check. Call before the client handshake.
bool prepare_server_tls(SSL* ssl, sslmode mode, const std::string& host, std::string& error);
// The reason a peer's certificate was not accepted, for the log.
std::string verify_failure_reason(SSL* ssl, const error_code& ec);
// The subject's CommonName of the peer certificate, if there is a verified one.
std::optional<std::string> peer_common_name(SSL* ssl);
// The ALPN protocol the handshake agreed on ("" if none).
std::string negotiated_alpn(SSL* ssl);

}  // namespace sluice::net
