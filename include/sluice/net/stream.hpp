#pragma once
// One byte stream over a connected socket, plain or TLS, so that the session, console and
// server code has a single path for both. Plain: async_read_some/async_write_some go to
// the socket. After start_tls() and a handshake they go through OpenSSL (asio::ssl).
//
// Invariants:
//   - the stream is not movable: the TLS layer refers to socket_;
//   - start_tls() only on a connected socket with no operation pending, once;
//   - at most one read and one write in flight at a time (what asio::ssl allows).
#include <boost/asio/ssl.hpp>
#include <memory>
#include <string>

#include "sluice/net/io.hpp"

namespace sluice::net {

class stream {
public:
    using executor_type = stream_socket::executor_type;

    explicit stream(asio::any_io_executor ex) : socket_(std::move(ex)) {}
    explicit stream(stream_socket s) : socket_(std::move(s)) {}
    stream(const stream&) = delete;
    stream& operator=(const stream&) = delete;

    stream_socket& lowest_layer() { return socket_; }
    executor_type get_executor() { return socket_.get_executor(); }
    bool is_open() const { return socket_.is_open(); }
    int native_handle() { return socket_.native_handle(); }
    void cancel(error_code& ec) { socket_.cancel(ec); }
    void shutdown(error_code& ec) { socket_.shutdown(asio::socket_base::shutdown_both, ec); }
    void close(error_code& ec) { socket_.close(ec); }

    // Drops any TLS state and closes the socket, ready for a new connect (the next host).
    void reset();

    // TLS. The context is kept alive as long as the connection (a RELOAD may replace it).
    void start_tls(std::shared_ptr<asio::ssl::context> ctx);
    bool tls() const { return tls_ != nullptr; }
    SSL* ssl() { return tls_ ? tls_->native_handle() : nullptr; }
    // `already_read`: bytes of the ClientHello that were read before TLS was known to
    // start (direct TLS). Returns the handshake's error, if any.
    asio::awaitable<error_code> handshake(asio::ssl::stream_base::handshake_type type,
                                          std::string already_read = {});
    // Decrypted or undecrypted bytes held inside OpenSSL (not visible to poll()). Used to
    // tell whether an idle server said something; the session never waits on it.
    bool has_buffered() const;
    // "TLSv1.3/TLS_AES_256_GCM_SHA384" (PgBouncer's `tls=` wording), "" when plain.
    std::string tls_description() const;

    // Plain only: the bytes the socket has now, never waiting (asio's synchronous
    // read_some would block the whole worker in poll() on a socket not set
    // non-blocking). would_block when there are none, eof when the peer closed.
    std::size_t read_now(asio::mutable_buffer b, error_code& ec);

    // Re-homes the connection onto another worker's executor. Only with no operation
    // pending. False if the socket could not be moved (it is then closed).
    bool migrate(asio::any_io_executor ex);

    template <class MutableBuffers, class Token>
    auto async_read_some(const MutableBuffers& buffers, Token&& token) {
        return asio::async_initiate<Token, void(error_code, std::size_t)>(
            [this](auto handler, const MutableBuffers& b) {
                if (tls_) tls_->async_read_some(b, std::move(handler));
                else socket_.async_read_some(b, std::move(handler));
            },
            token, buffers);
    }
    template <class ConstBuffers, class Token>
    auto async_write_some(const ConstBuffers& buffers, Token&& token) {
        return asio::async_initiate<Token, void(error_code, std::size_t)>(
            [this](auto handler, const ConstBuffers& b) {
                if (tls_) tls_->async_write_some(b, std::move(handler));
                else socket_.async_write_some(b, std::move(handler));
            },
            token, buffers);
    }

private:
    stream_socket socket_;
    std::shared_ptr<asio::ssl::context> ctx_;
    std::unique_ptr<asio::ssl::stream<stream_socket&>> tls_;
};

}  // namespace sluice::net
