#include "sluice/net/tls.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <cctype>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

namespace sluice::net {

namespace {

std::string lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

std::string openssl_error() {
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (!e) return "unknown OpenSSL error";
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    return buf;
}

// Named cipher lists, as PgBouncer offers them; anything else is an OpenSSL cipher string.
std::string cipher_list(const std::string& value) {
    const std::string v = lower(value);
    if (v == "default" || v.empty()) return {};  // OpenSSL's own default
    if (v == "secure" || v == "fast" || v == "normal") return "HIGH:!aNULL:!eNULL:!MD5:!3DES";
    if (v == "compat" || v == "legacy" || v == "all") return "ALL:!aNULL:!eNULL";
    return value;
}

bool apply_common(SSL_CTX* c, const std::string& prefix, const std::string& protocols,
                  const std::string& ciphers, const std::string& tls13_ciphers,
                  std::string& error) {
    SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    auto range = parse_tls_protocols(protocols);
    if (!range) {
        error = prefix + "_protocols: '" + protocols +
                "' is not secure, all, legacy or a list of tlsv1.0, tlsv1.1, tlsv1.2, tlsv1.3";
        return false;
    }
    SSL_CTX_set_min_proto_version(c, range->min_version);
    SSL_CTX_set_max_proto_version(c, range->max_version);
    if (range->excluded_options) SSL_CTX_set_options(c, range->excluded_options);
    if (auto list = cipher_list(ciphers); !list.empty() && !SSL_CTX_set_cipher_list(c, list.c_str())) {
        error = prefix + "_ciphers: '" + ciphers + "': " + openssl_error();
        return false;
    }
    if (!tls13_ciphers.empty() && lower(tls13_ciphers) != "default" &&
        !SSL_CTX_set_ciphersuites(c, tls13_ciphers.c_str())) {
        error = prefix + "13_ciphers: '" + tls13_ciphers + "': " + openssl_error();
        return false;
    }
    return true;
}

bool load_key_pair(SSL_CTX* c, const std::string& prefix, const std::string& cert,
                   const std::string& key, std::string& error) {
    if (SSL_CTX_use_certificate_chain_file(c, cert.c_str()) != 1) {
        error = prefix + "_cert_file: cannot use " + cert + ": " + openssl_error();
        return false;
    }
    if (SSL_CTX_use_PrivateKey_file(c, key.c_str(), SSL_FILETYPE_PEM) != 1) {
        error = prefix + "_key_file: cannot use " + key + ": " + openssl_error();
        return false;
    }
    if (SSL_CTX_check_private_key(c) != 1) {
        error = prefix + "_key_file: " + key + " does not match " + cert;
        return false;
    }
    return true;
}

// PostgreSQL's ALPN name (PostgreSQL 17). A client that offers ALPN without it is talking
// some other protocol: refuse the handshake, as PostgreSQL does.
int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void*) {
    static const unsigned char name[] = "postgresql";
    for (unsigned int i = 0; i < inlen;) {
        unsigned len = in[i];
        if (i + 1 + len > inlen) break;
        if (len == sizeof name - 1 && std::memcmp(in + i + 1, name, len) == 0) {
            *out = in + i + 1;
            *outlen = static_cast<unsigned char>(len);
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + len;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

std::shared_ptr<asio::ssl::context> make_client_side(const config::general& g, sslmode mode,
                                                     std::string& error) {
    if (g.client_tls_cert_file.empty() || g.client_tls_key_file.empty()) {
        error = std::string("client_tls_sslmode is ") + to_string(mode) +
                " but client_tls_cert_file and client_tls_key_file are not both set";
        return nullptr;
    }
    if (mode >= sslmode::verify_ca && g.client_tls_ca_file.empty()) {
        error = std::string("client_tls_sslmode is ") + to_string(mode) +
                " but client_tls_ca_file is not set (needed to verify client certificates)";
        return nullptr;
    }
    auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
    SSL_CTX* c = ctx->native_handle();
    if (!apply_common(c, "client_tls", g.client_tls_protocols, g.client_tls_ciphers,
                      g.client_tls13_ciphers, error))
        return nullptr;
    SSL_CTX_set_options(c, SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (!load_key_pair(c, "client_tls", g.client_tls_cert_file, g.client_tls_key_file, error))
        return nullptr;
    const std::string curve = lower(g.client_tls_ecdhcurve);
    if (!curve.empty() && curve != "auto" && SSL_CTX_set1_groups_list(c, g.client_tls_ecdhcurve.c_str()) != 1) {
        error = "client_tls_ecdhcurve: '" + g.client_tls_ecdhcurve + "': " + openssl_error();
        return nullptr;
    }
    const std::string dh = lower(g.client_tls_dheparams);
    if (dh == "auto" || dh.empty()) {
        SSL_CTX_set_dh_auto(c, 1);
    } else if (dh != "none") {
        error = "client_tls_dheparams: '" + g.client_tls_dheparams +
                "' is not supported (use auto or none; legacy 1024-bit groups are not offered)";
        return nullptr;
    }
    if (!g.client_tls_ca_file.empty()) {
        if (SSL_CTX_load_verify_locations(c, g.client_tls_ca_file.c_str(), nullptr) != 1) {
            error = "client_tls_ca_file: cannot use " + g.client_tls_ca_file + ": " + openssl_error();
            return nullptr;
        }
        if (auto* names = SSL_load_client_CA_file(g.client_tls_ca_file.c_str()))
            SSL_CTX_set_client_CA_list(c, names);
        // As PostgreSQL with ssl_ca_file: a certificate is asked for, and one that is
        // presented must verify. verify-ca/verify-full make it mandatory.
        int verify = SSL_VERIFY_PEER;
        if (mode >= sslmode::verify_ca) verify |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(c, verify, nullptr);
    }
    static const unsigned char session_context[] = "sluice";
    SSL_CTX_set_session_id_context(c, session_context, sizeof session_context - 1);
    SSL_CTX_set_alpn_select_cb(c, select_alpn, nullptr);
    return ctx;
}

std::shared_ptr<asio::ssl::context> make_server_side(const config::general& g, sslmode mode,
                                                     std::string& error) {
    auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
    SSL_CTX* c = ctx->native_handle();
    if (!apply_common(c, "server_tls", g.server_tls_protocols, g.server_tls_ciphers,
                      g.server_tls13_ciphers, error))
        return nullptr;
    if (mode >= sslmode::verify_ca) {
        int ok = g.server_tls_ca_file.empty()
                     ? SSL_CTX_set_default_verify_paths(c)
                     : SSL_CTX_load_verify_locations(c, g.server_tls_ca_file.c_str(), nullptr);
        if (ok != 1) {
            error = "server_tls_ca_file: cannot use " + g.server_tls_ca_file + ": " + openssl_error();
            return nullptr;
        }
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
    } else {
        // require/prefer/allow encrypt without authenticating the server (libpq's meaning).
        SSL_CTX_set_verify(c, SSL_VERIFY_NONE, nullptr);
    }
    if (!g.server_tls_cert_file.empty() || !g.server_tls_key_file.empty()) {
        if (g.server_tls_cert_file.empty() || g.server_tls_key_file.empty()) {
            error = "server_tls_cert_file and server_tls_key_file must be set together";
            return nullptr;
        }
        if (!load_key_pair(c, "server_tls", g.server_tls_cert_file, g.server_tls_key_file, error))
            return nullptr;
    }
    static const unsigned char alpn[] = "\x0apostgresql";
    SSL_CTX_set_alpn_protos(c, alpn, sizeof alpn - 1);
    return ctx;
}

std::string file_contents(const std::string& path) {
    if (path.empty()) return {};
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::atomic<std::uint64_t> next_generation{1};

}  // namespace

std::optional<sslmode> parse_sslmode(std::string_view text) {
    const std::string t = lower(text);
    for (auto m : {sslmode::disable, sslmode::allow, sslmode::prefer, sslmode::require,
                   sslmode::verify_ca, sslmode::verify_full})
        if (t == to_string(m)) return m;
    return std::nullopt;
}

const char* to_string(sslmode m) {
    switch (m) {
    case sslmode::disable: return "disable";
    case sslmode::allow: return "allow";
    case sslmode::prefer: return "prefer";
    case sslmode::require: return "require";
    case sslmode::verify_ca: return "verify-ca";
    case sslmode::verify_full: return "verify-full";
    }
    return "disable";
}

std::optional<tls_protocol_range> parse_tls_protocols(std::string_view text) {
    static const struct {
        const char* name;
        int version;
        long no_option;
    } versions[] = {{"tlsv1.0", TLS1_VERSION, SSL_OP_NO_TLSv1},
                    {"tlsv1.1", TLS1_1_VERSION, SSL_OP_NO_TLSv1_1},
                    {"tlsv1.2", TLS1_2_VERSION, SSL_OP_NO_TLSv1_2},
                    {"tlsv1.3", TLS1_3_VERSION, SSL_OP_NO_TLSv1_3}};
    bool on[4] = {false, false, false, false};
    std::string t = lower(text), word;
    auto take = [&](const std::string& w) {
        if (w.empty()) return true;
        if (w == "secure") return on[2] = on[3] = true;
        if (w == "all" || w == "legacy") return on[0] = on[1] = on[2] = on[3] = true;
        for (int i = 0; i < 4; ++i)
            if (w == versions[i].name) return on[i] = true;
        return false;
    };
    for (char c : t + ",") {
        if (c == ',' || c == ' ' || c == '\t' || c == ':') {
            if (!take(word)) return std::nullopt;
            word.clear();
        } else {
            word.push_back(c);
        }
    }
    int lo = -1, hi = -1;
    for (int i = 0; i < 4; ++i)
        if (on[i]) {
            if (lo < 0) lo = i;
            hi = i;
        }
    if (lo < 0) return std::nullopt;
    tls_protocol_range r;
    r.min_version = versions[lo].version;
    r.max_version = versions[hi].version;
    for (int i = lo; i <= hi; ++i)
        if (!on[i]) r.excluded_options |= versions[i].no_option;
    return r;
}

std::shared_ptr<const tls_config> make_tls_config(const config::general& g,
                                                  const tls_config* previous,
                                                  std::string& error) {
    auto out = std::make_shared<tls_config>();
    auto cm = parse_sslmode(g.client_tls_sslmode);
    auto sm = parse_sslmode(g.server_tls_sslmode);
    if (!cm || !sm) {
        error = "client_tls_sslmode/server_tls_sslmode: unknown mode";
        return nullptr;
    }
    out->client_mode = *cm;
    out->server_mode = *sm;
    if (*cm != sslmode::disable) {
        out->client_side = make_client_side(g, *cm, error);
        if (!out->client_side) return nullptr;
    }
    if (*sm != sslmode::disable) {
        out->server_side = make_server_side(g, *sm, error);
        if (!out->server_side) return nullptr;
    }
    out->server_fingerprint = g.server_tls_sslmode + '\n' + g.server_tls_protocols + '\n' +
                              g.server_tls_ciphers + '\n' + g.server_tls13_ciphers + '\n' +
                              g.server_tls_ca_file + '\n' + file_contents(g.server_tls_ca_file) +
                              '\n' + g.server_tls_cert_file + '\n' +
                              file_contents(g.server_tls_cert_file) + '\n' +
                              g.server_tls_key_file + '\n' + file_contents(g.server_tls_key_file);
    out->server_generation = previous && previous->server_fingerprint == out->server_fingerprint
                                 ? previous->server_generation
                                 : next_generation++;
    return out;
}

bool prepare_server_tls(SSL* ssl, sslmode mode, const std::string& host, std::string& error) {
    error_code ec;
    auto address = asio::ip::make_address(host, ec);
    const bool is_address = !ec;
    if (!is_address && SSL_set_tlsext_host_name(ssl, host.c_str()) != 1) {
        error = "cannot set TLS server name " + host + ": " + openssl_error();
        return false;
    }
    if (mode != sslmode::verify_full) return true;
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    int ok = is_address ? X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str())
                        : X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size());
    if (ok != 1) {
        error = "cannot check the server certificate against " + host + ": " + openssl_error();
        return false;
    }
    return true;
}

std::string verify_failure_reason(SSL* ssl, const error_code& ec) {
    if (ssl) {
        long r = SSL_get_verify_result(ssl);
        if (r != X509_V_OK)
            return std::string("certificate verify failed: ") + X509_verify_cert_error_string(r);
    }
    std::string m = ec.message();
    if (ec.category() == asio::error::get_ssl_category()) {
        char buf[256];
        ERR_error_string_n(static_cast<unsigned long>(ec.value()), buf, sizeof buf);
        m = buf;
    }
    return m;
}

std::optional<std::string> peer_common_name(SSL* ssl) {
    if (!ssl) return std::nullopt;
    X509* cert = SSL_get0_peer_certificate(ssl);
    if (!cert || SSL_get_verify_result(ssl) != X509_V_OK) return std::nullopt;
    X509_NAME* subject = X509_get_subject_name(cert);
    int idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    if (idx < 0) return std::nullopt;
    ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx));
    unsigned char* utf8 = nullptr;
    int n = ASN1_STRING_to_UTF8(&utf8, data);
    if (n < 0) return std::nullopt;
    std::string cn(reinterpret_cast<char*>(utf8), std::size_t(n));
    OPENSSL_free(utf8);
    if (cn.find('\0') != std::string::npos) return std::nullopt;  // an embedded NUL is a forgery
    return cn;
}

std::string negotiated_alpn(SSL* ssl) {
    const unsigned char* p = nullptr;
    unsigned int n = 0;
    SSL_get0_alpn_selected(ssl, &p, &n);
    return p ? std::string(reinterpret_cast<const char*>(p), n) : std::string();
}

}  // namespace sluice::net
