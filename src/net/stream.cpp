#include "sluice/net/stream.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

namespace sluice::net {

// --- the BIO: OpenSSL's view of the stream ---------------------------------------------

namespace {

stream* owner(BIO* b) { return static_cast<stream*>(BIO_get_data(b)); }

int bio_read_cb(BIO* b, char* out, int len) { return owner(b)->bio_read(out, len); }
int bio_write_cb(BIO* b, const char* in, int len) { return owner(b)->bio_write(in, len); }

long bio_ctrl_cb(BIO* b, int cmd, long, void*) {
    // FLUSH: records go to the socket as they are written. EOF: the peer closed and every
    // byte was taken (OpenSSL then reports an unexpected EOF, not a clean close). Nothing
    // else is supported (PENDING is not needed: has_buffered() looks at the stream).
    if (cmd == BIO_CTRL_FLUSH) return 1;
    if (cmd == BIO_CTRL_EOF) return owner(b)->cipher_at_eof() ? 1 : 0;
    return 0;
}

int bio_create_cb(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
}

const BIO_METHOD* stream_bio_method() {
    static BIO_METHOD* m = [] {
        BIO_METHOD* x = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "sluice-stream");
        BIO_meth_set_read(x, bio_read_cb);
        BIO_meth_set_write(x, bio_write_cb);
        BIO_meth_set_ctrl(x, bio_ctrl_cb);
        BIO_meth_set_create(x, bio_create_cb);
        return x;
    }();
    return m;
}

// The error of a failed SSL_read/SSL_write/SSL_do_handshake, as Asio's TLS layer names it
// (so that verify_failure_reason() reads OpenSSL's reason the same way).
error_code ssl_error(int code, bool eof) {
    if (code == SSL_ERROR_ZERO_RETURN) return asio::error::eof;
    if (code == SSL_ERROR_SSL || ERR_peek_error() != 0) {
        unsigned long e = ERR_get_error();
        // The peer closed without close_notify: an EOF, as for a plain socket.
        if (ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) return asio::error::eof;
        if (e != 0) return error_code(int(e), asio::error::get_ssl_category());
    }
    if (eof) return asio::error::eof;  // closed without close_notify
    if (errno != 0) return error_code(errno, asio::error::get_system_category());
    return asio::error::connection_reset;
}

// Before an SSL_read/SSL_write: SSL_get_error reads the thread's error queue, so it must
// hold nothing from before. ERR_clear_error wipes all sixteen slots whether or not any is
// set (about 600 instructions, 10% of a small record's cost); the queue is nearly always
// empty already, and looking costs a tenth of that.
void clear_stale_errors() {
    if (ERR_peek_error() != 0) ERR_clear_error();
}

}  // namespace

int stream::bio_read(char* out, int len) {
    BIO* b = SSL_get_rbio(tls_->ssl);
    BIO_clear_retry_flags(b);
    std::size_t want = std::size_t(std::max(len, 0)), got = 0;
    if (tls_->small_begin < tls_->small_end) {
        got = std::min<std::size_t>(want, tls_->small_end - tls_->small_begin);
        std::memcpy(out, tls_->small.data() + tls_->small_begin, got);
        tls_->small_begin = std::uint16_t(tls_->small_begin + got);
    }
    if (got < want && !tls_->bulk.empty()) {
        std::size_t more = std::min(want - got, tls_->bulk.size());
        std::memcpy(out + got, tls_->bulk.readable(), more);
        tls_->bulk.consume(more);
        got += more;
        tls_->bulk.shrink_if_empty();  // back to the worker's block cache
    }
    if (got > 0) return int(got);
    if (tls_->cipher_eof) return 0;
    BIO_set_retry_read(b);
    return -1;
}

int stream::bio_write(const char* in, int len) {
    BIO* b = SSL_get_wbio(tls_->ssl);
    BIO_clear_retry_flags(b);
    for (;;) {
        ssize_t n = ::send(socket_.native_handle(), in, std::size_t(len), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n >= 0) return int(n);
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_write(b);
        return -1;
    }
}

asio::mutable_buffer stream::cipher_space(bool fresh) {
    // Both buffers are drained here: OpenSSL asks for more (WANT_READ) only after the BIO
    // came up empty, as long as SSL_MODE_AUTO_RETRY is on (the default). Should bytes be
    // left all the same, they move to the bulk buffer rather than being lost.
    if (tls_->small_begin < tls_->small_end) {
        std::size_t left = tls_->small_end - tls_->small_begin;
        tls_->bulk.reserve_tail(left);
        std::memcpy(tls_->bulk.writable().data(), tls_->small.data() + tls_->small_begin, left);
        tls_->bulk.commit(left);
    }
    tls_->small_begin = tls_->small_end = 0;
    tls_->reading_small = tls_->bulk.empty() && (fresh || !tls_->last_read_full);
    if (tls_->reading_small) return asio::buffer(tls_->small);
    tls_->bulk.reserve_tail(byte_buffer::standard_size);
    return tls_->bulk.writable();
}

void stream::cipher_commit(std::size_t n, const error_code& ec) {
    if (ec == asio::error::eof) tls_->cipher_eof = true;
    if (tls_->reading_small) {
        tls_->small_end = std::uint16_t(n);
        tls_->last_read_full = n == tls_->small.size();
    } else {
        tls_->last_read_full = n == tls_->bulk.writable().size();
        tls_->bulk.commit(n);
        tls_->bulk.shrink_if_empty();
    }
}

// --- TLS steps ----------------------------------------------------------------------------

stream::tls_step stream::tls_read(asio::mutable_buffer out, std::size_t& n, error_code& ec) {
    n = 0;
    ec = {};
    if (out.size() == 0) return tls_step::done;
    clear_stale_errors();
    errno = 0;
    if (SSL_read_ex(tls_->ssl, out.data(), out.size(), &n) == 1) return tls_step::done;
    int code = SSL_get_error(tls_->ssl, 0);
    if (code == SSL_ERROR_WANT_READ) return tls_step::want_read;
    if (code == SSL_ERROR_WANT_WRITE) return tls_step::want_write;
    ec = ssl_error(code, tls_->cipher_eof);
    return tls_step::done;
}

stream::tls_step stream::tls_write(const asio::const_buffer* pieces, std::size_t count,
                                   std::size_t& n, error_code& ec) {
    n = 0;
    ec = {};
    if (count == 0) return tls_step::done;
    // Small pieces of one batch (a relay batch is several) go out as one record, not a
    // record each: gathered into a per-thread buffer, up to a record's worth. (Partial
    // writes are on, and a retry after WANT_WRITE gathers the same bytes again: the caller
    // keeps its buffers until the write completes.)
    const void* data = pieces[0].data();
    std::size_t size = pieces[0].size();
    if (count > 1 && size < 16384) {
        static thread_local std::vector<char> gathered;
        gathered.clear();
        for (std::size_t i = 0; i < count && gathered.size() < 16384; ++i) {
            std::size_t take = std::min<std::size_t>(pieces[i].size(), 16384 - gathered.size());
            auto p = static_cast<const char*>(pieces[i].data());
            gathered.insert(gathered.end(), p, p + take);
        }
        data = gathered.data();
        size = gathered.size();
    }
    clear_stale_errors();
    errno = 0;
    if (SSL_write_ex(tls_->ssl, data, size, &n) == 1) return tls_step::done;
    int code = SSL_get_error(tls_->ssl, 0);
    if (code == SSL_ERROR_WANT_WRITE) return tls_step::want_write;
    if (code == SSL_ERROR_WANT_READ) return tls_step::want_read;
    ec = ssl_error(code, tls_->cipher_eof);
    return tls_step::done;
}

// --- set-up and the rest --------------------------------------------------------------------

void stream::start_tls(std::shared_ptr<asio::ssl::context> ctx) {
    tls_ = std::make_unique<tls_state>();
    tls_->ctx = std::move(ctx);
    tls_->ssl = SSL_new(tls_->ctx->native_handle());
    BIO* b = BIO_new(stream_bio_method());
    BIO_set_data(b, this);
    SSL_set_bio(tls_->ssl, b, b);  // (the same BIO both ways: one reference)
    SSL_set_mode(tls_->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                           SSL_MODE_RELEASE_BUFFERS);
    error_code ignored;
    socket_.native_non_blocking(true, ignored);  // the BIO's send must never block
}

asio::awaitable<error_code> stream::handshake(asio::ssl::stream_base::handshake_type type,
                                              std::string already_read) {
    if (!tls_) co_return asio::error::operation_not_supported;
    if (type == asio::ssl::stream_base::client) {
        SSL_set_connect_state(tls_->ssl);
        // Sluice's end of a server connection: one of a pool's few, busy ones. OpenSSL's
        // record buffers stay (released, they cost a malloc and free of 16 KiB or more per
        // record); a client's are released, so that an idle TLS client holds none.
        SSL_clear_mode(tls_->ssl, SSL_MODE_RELEASE_BUFFERS);
    } else {
        SSL_set_accept_state(tls_->ssl);
    }
    if (!already_read.empty()) {
        tls_->bulk.reserve_tail(already_read.size());
        std::memcpy(tls_->bulk.writable().data(), already_read.data(), already_read.size());
        tls_->bulk.commit(already_read.size());
    }
    for (;;) {
        ERR_clear_error();
        errno = 0;
        int r = SSL_do_handshake(tls_->ssl);
        if (r == 1) co_return error_code();
        int code = SSL_get_error(tls_->ssl, r);
        if (code == SSL_ERROR_WANT_READ) {
            auto [ec, n] = co_await socket_.async_read_some(cipher_space(false), use_nothrow);
            cipher_commit(n, ec);
            if (ec && ec != asio::error::eof) co_return ec;
        } else if (code == SSL_ERROR_WANT_WRITE) {
            auto [ec] = co_await socket_.async_wait(asio::socket_base::wait_write, use_nothrow);
            if (ec) co_return ec;
        } else {
            co_return ssl_error(code, tls_->cipher_eof);
        }
    }
}

namespace {

// A failed non-blocking recv/send: would_block when the socket had nothing (or no room).
error_code errno_code() {
    return errno == EAGAIN || errno == EWOULDBLOCK
               ? error_code(asio::error::would_block)
               : error_code(errno, asio::error::get_system_category());
}

}  // namespace

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
        ec = errno_code();
        return 0;
    }
}

std::size_t stream::write_now(std::span<const asio::const_buffer> pieces, error_code& ec) {
    if (tls_) return tls_write_now(pieces, ec);
    std::array<iovec, 64> iov;
    std::size_t count = 0;
    for (auto& b : pieces) {
        if (b.size() == 0) continue;
        if (count == iov.size()) break;  // (the caller sends the rest later)
        iov[count++] = iovec{const_cast<void*>(b.data()), b.size()};
    }
    if (count == 0) {
        ec = {};
        return 0;
    }
    msghdr msg{};
    msg.msg_iov = iov.data();
    msg.msg_iovlen = count;
    for (;;) {
        // One piece (a -S reply, most requests): send(), which spares the kernel copying
        // in a msghdr and an iovec array (about 0.1 us per call under perf).
        ssize_t n = count == 1 ? ::send(socket_.native_handle(), iov[0].iov_base, iov[0].iov_len,
                                        MSG_DONTWAIT | MSG_NOSIGNAL)
                               : ::sendmsg(socket_.native_handle(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n >= 0) {
            ec = {};
            return std::size_t(n);
        }
        if (errno == EINTR) continue;
        ec = errno_code();
        return 0;
    }
}

std::size_t stream::tls_write_now(std::span<const asio::const_buffer> pieces, error_code& ec) {
    // Record by record, each gathered exactly as tls_write_op gathers it from the same
    // byte on: after WANT_WRITE, OpenSSL must be offered the same bytes again, and the
    // caller's async_write of the rest (from the returned count) does just that.
    std::size_t total = 0;
    for (;;) {
        std::array<asio::const_buffer, 16> view;
        std::size_t count = 0, skip = total;
        for (auto& b : pieces) {
            if (b.size() <= skip) {
                skip -= b.size();
                continue;
            }
            if (count == view.size()) break;
            view[count++] = asio::const_buffer(static_cast<const char*>(b.data()) + skip,
                                               b.size() - skip);
            skip = 0;
        }
        if (count == 0) {
            ec = {};
            return total;
        }
        std::size_t n = 0;
        error_code e;
        if (tls_write(view.data(), count, n, e) != tls_step::done) {
            ec = asio::error::would_block;
            return total;
        }
        if (e) {
            ec = e;
            return total;
        }
        total += n;
    }
}

void stream::reset() {
    tls_.reset();
    error_code ignored;
    socket_.close(ignored);
}

bool stream::has_buffered() const {
    if (!tls_) return false;
    // Records OpenSSL has taken in, and ciphertext read from the socket that OpenSSL has
    // not taken yet.
    return SSL_has_pending(tls_->ssl) != 0 || tls_->small_begin < tls_->small_end || !tls_->bulk.empty();
}

std::string stream::tls_description() const {
    if (!tls_) return {};
    std::string out = SSL_get_version(tls_->ssl);
    if (const char* c = SSL_get_cipher_name(tls_->ssl)) out += std::string("/") + c;
    return out;
}

bool stream::migrate(asio::any_io_executor ex) {
    const io_executor to = to_io_executor(ex);
    if (socket_.get_executor() == to) return true;
    // The descriptor moves to the new executor's reactor under the same number, so the
    // TLS session (whose BIO sends to socket_'s descriptor) carries on as it is.
    error_code ec;
    auto protocol = socket_.local_endpoint(ec).protocol();
    int fd = ec ? -1 : socket_.release(ec);
    socket_ = stream_socket(to);
    if (fd >= 0) socket_.assign(protocol, fd, ec);
    if (fd < 0 || ec) {
        if (fd >= 0) ::close(fd);
        return false;
    }
    if (tls_) socket_.native_non_blocking(true, ec);
    return true;
}

}  // namespace sluice::net
