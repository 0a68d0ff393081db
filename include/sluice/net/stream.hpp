#pragma once
// One byte stream over a connected socket, plain or TLS, so that the session, console and
// server code has a single path for both. Plain: async_read_some/async_write_some go to
// the socket. After start_tls() and a handshake they go through OpenSSL.
//
// TLS without a second buffer layer. OpenSSL talks to the socket through a small BIO of
// our own (stream.cpp):
//   - writing, the BIO sends each record straight to the socket (send, MSG_DONTWAIT); only
//     when the socket is full does an operation wait (for writability);
//   - reading, ciphertext is read by an ordinary speculative socket read, into a 256-byte
//     buffer in the stream's TLS state when a read starts (an idle client's next
//     request, a typical response fit), or, after that filled up, into a pooled 16 KiB
//     byte_buffer (bulk transfers); the BIO hands those bytes to OpenSSL, which decrypts into the caller's
//     buffer. An idle client holds nothing but the SSL object and this state (OpenSSL
//     releases its record buffers between records); Sluice's end of a server connection
//     keeps OpenSSL's (about 34 KiB: a pool has few servers, each busy, and releasing
//     them cost a malloc and a free per record).
// (Asio's ssl::stream copies every record twice through a BIO pair, keeps two 17 KiB
// buffers per connection for its lifetime, and turns each buffer of a gathered write
// into its own record.)
//
// Flow of one TLS read:   nothing buffered anywhere -> socket read first, then SSL_read
//                         SSL_read -> data: complete (posted, never inline)
//                                  -> WANT_READ: socket read into cipher_space(), then again
//                                  -> WANT_WRITE (a TLS 1.3 KeyUpdate reply): wait writable
// Flow of one TLS write:  gather the first pieces (up to a record) -> SSL_write
//                                  -> written: complete -> WANT_WRITE: wait writable, again
//
// Invariants:
//   - the stream is not movable: the BIO points at it;
//   - start_tls() only on a connected socket with no operation pending, once;
//   - at most one read and one write in flight at a time;
//   - a TLS read waits on the socket only when OpenSSL has consumed every buffered
//     ciphertext byte (so the buffer a pending socket read fills is never touched);
//   - completions are never invoked from inside the initiating call;
//   - a write that failed or was cancelled may leave a record inside OpenSSL: the
//     connection is then unusable, and every caller closes it (a later write of other
//     bytes would send the old record as theirs).
// Known limit: a peer's TLS 1.3 KeyUpdate asking for an answer while a write is stuck on
// a full socket fails the connection (OpenSSL cannot interleave the reply with the
// pending record). Renegotiation is off (tls.cpp), so a write never needs input.
#include <openssl/ssl.h>

#include <array>
#include <cassert>
#include <boost/asio/ssl.hpp>
#include <memory>
#include <span>
#include <string>

#include "sluice/net/io.hpp"

namespace sluice::net {

class stream {
public:
    using executor_type = stream_socket::executor_type;

    explicit stream(const asio::any_io_executor& ex) : socket_(to_io_executor(ex)) {}
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
    SSL* ssl() { return tls_ ? tls_->ssl : nullptr; }
    // `already_read`: bytes of the ClientHello that were read before TLS was known to
    // start (direct TLS). Returns the handshake's error, if any.
    asio::awaitable<error_code> handshake(asio::ssl::stream_base::handshake_type type,
                                          std::string already_read = {});
    // Decrypted or undecrypted bytes held inside OpenSSL or this stream (not visible to
    // poll()). Used to tell whether an idle server said something.
    bool has_buffered() const;
    // TLS only: where an idle connection's next bytes are decrypted to, while it waits
    // (a plaintext connection waits for readability and needs none).
    asio::mutable_buffer idle_space() {
        assert(tls_);
        return asio::buffer(tls_->idle);
    }
    // "TLSv1.3/TLS_AES_256_GCM_SHA384" (PgBouncer's `tls=` wording), "" when plain.
    std::string tls_description() const;

    // Plain only: the bytes the socket has now, never waiting (asio's synchronous
    // read_some would block the whole worker in poll() on a socket not set
    // non-blocking). would_block when there are none, eof when the peer closed.
    std::size_t read_now(asio::mutable_buffer b, error_code& ec);
    // Sends what the socket takes now, never waiting, and returns how much that was
    // (plain: one sendmsg; TLS: record by record until the socket is full); would_block
    // when it stopped short, the error when the peer is gone. The rest goes with
    // async_write from the returned count, the pieces unchanged.
    std::size_t write_now(std::span<const asio::const_buffer> pieces, error_code& ec);

    // Re-homes the connection onto another worker's executor. Only with no operation
    // pending. False if the socket could not be moved (it is then closed).
    bool migrate(asio::any_io_executor ex);

    template <class MutableBuffers, class Token>
    auto async_read_some(const MutableBuffers& buffers, Token&& token) {
        return asio::async_initiate<Token, void(error_code, std::size_t)>(
            [this](auto handler, const MutableBuffers& b) {
                if (!tls_) return socket_.async_read_some(b, std::move(handler));
                asio::async_compose<decltype(handler), void(error_code, std::size_t)>(
                    tls_read_op<MutableBuffers>{this, b}, handler, socket_);
            },
            token, buffers);
    }
    template <class ConstBuffers, class Token>
    auto async_write_some(const ConstBuffers& buffers, Token&& token) {
        return asio::async_initiate<Token, void(error_code, std::size_t)>(
            [this](auto handler, const ConstBuffers& b) {
                if (!tls_) return socket_.async_write_some(b, std::move(handler));
                asio::async_compose<decltype(handler), void(error_code, std::size_t)>(
                    tls_write_op<ConstBuffers>{this, b}, handler, socket_);
            },
            token, buffers);
    }

    // --- the TLS steps the operations below drive (stream.cpp) ---
    enum class tls_step { done, want_read, want_write };
    // One SSL_read into `out`: done (n bytes, or ec), or what it waits for.
    tls_step tls_read(asio::mutable_buffer out, std::size_t& n, error_code& ec);
    // One SSL_write of up to a record gathered from `pieces`.
    tls_step tls_write(const asio::const_buffer* pieces, std::size_t count, std::size_t& n,
                       error_code& ec);
    // Where the next socket read of ciphertext goes (`fresh`: the first of a read
    // operation), and how much it brought (ec: EOF is remembered so that OpenSSL sees the
    // end of the stream).
    asio::mutable_buffer cipher_space(bool fresh);
    bool cipher_at_eof() const {
        return tls_->cipher_eof && tls_->small_begin == tls_->small_end && tls_->bulk.empty();
    }
    void cipher_commit(std::size_t n, const error_code& ec);
    // The BIO's side (stream.cpp).
    int bio_read(char* out, int len);
    int bio_write(const char* in, int len);

private:
    std::size_t tls_write_now(std::span<const asio::const_buffer> pieces, error_code& ec);

    template <class Buffers>
    struct tls_read_op {
        stream* s;
        Buffers buffers;
        enum { starting, reading, waiting, delivering } state = starting;
        error_code result_ec{};
        std::size_t result_n = 0;

        template <class Self>
        void operator()(Self& self, error_code ec = {}, std::size_t n = 0) {
            if (state == delivering) return self.complete(result_ec, result_n);
            // (aborted: the stream may be closing; touch nothing of it)
            if (ec == asio::error::operation_aborted) return self.complete(ec, 0);
            if (state == reading) s->cipher_commit(n, ec);
            if (state == reading && ec && ec != asio::error::eof) return self.complete(ec, 0);
            if (state == waiting && ec) return self.complete(ec, 0);
            asio::mutable_buffer out;
            for (auto it = asio::buffer_sequence_begin(buffers);
                 it != asio::buffer_sequence_end(buffers); ++it)
                if (it->size() > 0) {
                    out = *it;
                    break;
                }
            // Nothing buffered anywhere (the usual start of a read): OpenSSL would only say
            // WANT_READ, so go straight to the socket and save the failed SSL_read.
            const auto step = state == starting && !s->has_buffered() && out.size() > 0
                                  ? tls_step::want_read
                                  : s->tls_read(out, result_n, result_ec);
            switch (step) {
            case tls_step::done:
                if (state != starting) return self.complete(result_ec, result_n);
                state = delivering;  // never complete inside the initiating call
                return asio::post(s->socket_.get_executor(), std::move(self));
            case tls_step::want_read: {
                // A new read starts small (an idle wait holds no block); within one read,
                // after a full buffer, the bulk block.
                const bool fresh = state == starting;
                state = reading;
                return s->socket_.async_read_some(s->cipher_space(fresh), std::move(self));
            }
            case tls_step::want_write:
                state = waiting;
                return s->socket_.async_wait(asio::socket_base::wait_write, std::move(self));
            }
        }
    };

    template <class Buffers>
    struct tls_write_op {
        stream* s;
        Buffers buffers;
        enum { starting, waiting, delivering } state = starting;
        error_code result_ec{};
        std::size_t result_n = 0;

        template <class Self>
        void operator()(Self& self, error_code ec = {}, std::size_t = 0) {
            if (state == delivering) return self.complete(result_ec, result_n);
            if (state == waiting && ec) return self.complete(ec, 0);
            std::array<asio::const_buffer, 16> pieces;
            std::size_t count = 0;
            for (auto it = asio::buffer_sequence_begin(buffers);
                 it != asio::buffer_sequence_end(buffers) && count < pieces.size(); ++it)
                if (it->size() > 0) pieces[count++] = *it;
            switch (s->tls_write(pieces.data(), count, result_n, result_ec)) {
            case tls_step::done:
                if (state != starting) return self.complete(result_ec, result_n);
                state = delivering;
                return asio::post(s->socket_.get_executor(), std::move(self));
            case tls_step::want_read:  // (renegotiation is off; a read-side need all the same)
                state = waiting;
                return s->socket_.async_wait(asio::socket_base::wait_read, std::move(self));
            case tls_step::want_write:
                state = waiting;
                return s->socket_.async_wait(asio::socket_base::wait_write, std::move(self));
            }
        }
    };

    stream_socket socket_;
    // TLS state, allocated by start_tls(): a plaintext connection carries one null pointer.
    struct tls_state {
        std::shared_ptr<asio::ssl::context> ctx;
        SSL* ssl = nullptr;
        // Ciphertext read from the socket and not yet taken by OpenSSL: small first, then
        // bulk. Both are empty whenever a socket read is pending.
        std::array<std::uint8_t, 256> small;
        std::uint16_t small_begin = 0, small_end = 0;
        bool reading_small = false;
        bool last_read_full = false;  // the last socket read filled its buffer: more is coming
        bool cipher_eof = false;
        byte_buffer bulk;
        std::array<std::uint8_t, 128> idle;  // see idle_space()
        tls_state() = default;
        tls_state(const tls_state&) = delete;
        ~tls_state() {
            if (ssl) SSL_free(ssl);
        }
    };
    std::unique_ptr<tls_state> tls_;
};

}  // namespace sluice::net
