#include "sluice/admin/console.hpp"

#include <algorithm>

#include "sluice/protocol/codec.hpp"
#include "sluice/proxy/client_session.hpp"
#include "sluice/proxy/runtime.hpp"

namespace sluice::admin {

console_role role_of(const config::config& cfg, const std::string& user) {
    auto in = [&](const std::vector<std::string>& v) {
        return std::find(v.begin(), v.end(), user) != v.end();
    };
    if (in(cfg.sluice.admin_users)) return console_role::admin;
    if (in(cfg.sluice.stats_users)) return console_role::stats;
    return console_role::none;
}

asio::awaitable<void> serve(proxy::runtime& rt, proxy::client_session& session,
                            stream_socket& socket, byte_buffer& in, console_role role,
                            std::string prefix) {
    protocol::writer w(prefix);
    w.error_response("0A000", "the admin console is not built yet", {}, "FATAL");
    co_await asio::async_write(socket, asio::buffer(prefix), use_nothrow);
}

void start_background(proxy::runtime& rt, asio::any_io_executor ex) {}

}  // namespace sluice::admin
