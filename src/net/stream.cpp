#include "sluice/net/stream.hpp"

#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace sluice::net {

void stream::start_tls(std::shared_ptr<asio::ssl::context> ctx) {
    ctx_ = std::move(ctx);
    tls_ = std::make_unique<asio::ssl::stream<stream_socket&>>(socket_, *ctx_);
}

asio::awaitable<error_code> stream::handshake(asio::ssl::stream_base::handshake_type type,
                                              std::string already_read) {
    if (!tls_) co_return asio::error::operation_not_supported;
    if (already_read.empty()) {
        auto [ec] = co_await tls_->async_handshake(type, use_nothrow);
        co_return ec;
    }
    auto [ec, used] = co_await tls_->async_handshake(type, asio::buffer(already_read), use_nothrow);
    co_return ec;
}

std::size_t stream::read_now(asio::mutable_buffer b, error_code& ec) {
    for (;;) {
        ssize_t n = ::recv(socket_.native_handle(), b.data(), b.size(), MSG_DONTWAIT);
        if (n > 0) {
            ec = {};
            return std::size_t(n);
        }
        if (n == 0) {
            ec = b.size() == 0 ? error_code() : error_code(asio::error::eof);
            return 0;
        }
        if (errno == EINTR) continue;
        ec = (errno == EAGAIN || errno == EWOULDBLOCK)
                 ? error_code(asio::error::would_block)
                 : error_code(errno, asio::error::get_system_category());
        return 0;
    }
}

void stream::reset() {
    tls_.reset();
    ctx_.reset();
    error_code ignored;
    socket_.close(ignored);
}

bool stream::has_buffered() const {
    if (!tls_) return false;
    SSL* s = const_cast<asio::ssl::stream<stream_socket&>&>(*tls_).native_handle();
    // Records OpenSSL has taken in, and ciphertext Asio has put into the BIO pair that
    // OpenSSL has not read yet. (Asio's own input buffer only holds bytes beyond what the
    // BIO took, more than a record's worth.)
    BIO* rbio = SSL_get_rbio(s);
    return SSL_has_pending(s) != 0 || (rbio && BIO_ctrl_pending(rbio) > 0);
}

std::string stream::tls_description() const {
    if (!tls_) return {};
    SSL* s = const_cast<asio::ssl::stream<stream_socket&>&>(*tls_).native_handle();
    std::string out = SSL_get_version(s);
    if (const char* c = SSL_get_cipher_name(s)) out += std::string("/") + c;
    return out;
}

bool stream::migrate(asio::any_io_executor ex) {
    if (socket_.get_executor() == ex) return true;
    // The TLS session outlives the Asio wrapper, whose internals (timers) belong to the
    // old executor: take a reference to the SSL object, drop the wrapper, build a new one
    // on the new executor around the same session. An idle connection has nothing
    // buffered inside the wrapper (the pool checks that before handing it out).
    SSL* session = nullptr;
    if (tls_) {
        session = tls_->native_handle();
        SSL_up_ref(session);
        tls_.reset();
    }
    error_code ec;
    auto protocol = socket_.local_endpoint(ec).protocol();
    int fd = ec ? -1 : socket_.release(ec);
    socket_ = stream_socket(ex);
    if (fd >= 0) socket_.assign(protocol, fd, ec);
    if (fd < 0 || ec) {
        if (fd >= 0) ::close(fd);
        if (session) SSL_free(session);
        return false;
    }
    if (session) tls_ = std::make_unique<asio::ssl::stream<stream_socket&>>(socket_, session);
    return true;
}

}  // namespace sluice::net
