#pragma once
// TCP keepalive and user timeout, as PgBouncer's tcp_keepalive, tcp_keepcnt, tcp_keepidle,
// tcp_keepintvl and tcp_user_timeout: applied to every client and server TCP socket, so
// that a peer that vanished without a FIN (a host gone, a half-open connection) is noticed
// and its slot freed. 0 keeps the operating system's default for that value.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "sluice/config/config.hpp"

namespace sluice::net {

struct tcp_options {
    bool keepalive = true;
    int keepcnt = 0, keepidle = 0, keepintvl = 0;
    int user_timeout_ms = 0;

    static tcp_options from(const config::general& g) {
        return {g.tcp_keepalive, g.tcp_keepcnt, g.tcp_keepidle, g.tcp_keepintvl,
                g.tcp_user_timeout};
    }
    // Best effort: a socket option the kernel refuses is not worth failing a connection.
    void apply(int fd) const {
        int one = 1, on = keepalive ? 1 : 0;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
        if (keepalive && keepcnt > 0) ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &keepcnt, sizeof keepcnt);
        if (keepalive && keepidle > 0) ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &keepidle, sizeof keepidle);
        if (keepalive && keepintvl > 0)
            ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &keepintvl, sizeof keepintvl);
        if (user_timeout_ms > 0)
            ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
    }
};

}  // namespace sluice::net
