// Sentinel commands and replies. See sentinel_state.hpp for the flow; the reply shapes are
// those of https://redis.io/docs/management/sentinel/ (get-master-addr-by-name, the
// +switch-master event) and https://redis.io/commands/role/.
#include "sluice/redis/sentinel_state.hpp"

#include <algorithm>
#include <charconv>

namespace sluice::redis::sentinel {

namespace {

bool is_text(const value& v) {
    return v.t == value::type::bulk_string || v.t == value::type::simple_string;
}

bool parse_port(std::string_view s, int& port) {
    int v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc{} || p != s.data() + s.size() || v < 1 || v > 65535)
        return false;
    port = v;
    return true;
}

// A host as a sentinel announces it: an IP address or, with resolve-hostnames, a name.
// Never empty, never with spaces or control bytes (it ends up in a connect and in logs).
bool plausible_host(std::string_view h) {
    return !h.empty() && h.size() <= 255 && std::all_of(h.begin(), h.end(), [](char c) {
        return c > ' ' && c < 0x7f;
    });
}

std::optional<address> make_address(std::string_view host, std::string_view port) {
    address a;
    if (!plausible_host(host) || !parse_port(port, a.port)) return std::nullopt;
    a.host = std::string(host);
    return a;
}

}  // namespace

std::string address::to_string() const {
    if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
    return host + ":" + std::to_string(port);
}

std::string auth_command(std::string_view password) {
    return encode_command({"AUTH", password});
}

std::string get_master_addr_command(std::string_view master) {
    return encode_command({"SENTINEL", "get-master-addr-by-name", master});
}

std::string subscribe_switch_master_command() {
    return encode_command({"SUBSCRIBE", "+switch-master"});
}

std::string role_command() {
    return encode_command({"ROLE"});
}

std::string ping_command() {
    return encode_command({"PING"});
}

master_answer parse_master_addr(const value& reply) {
    master_answer r;
    if (reply.t == value::type::nil) {
        r.kind = answer::unknown_master;
        return r;
    }
    if (reply.is_error()) {
        r.kind = answer::refused;
        r.error = reply.str;
        return r;
    }
    if (reply.t != value::type::array || reply.elements.size() != 2 ||
        !is_text(reply.elements[0]) || !is_text(reply.elements[1]))
        return r;
    auto a = make_address(reply.elements[0].str, reply.elements[1].str);
    if (!a) return r;
    r.kind = answer::found;
    r.addr = std::move(*a);
    return r;
}

master_answer parse_discovery(const std::vector<value>& replies, bool sent_auth) {
    const std::size_t expected = sent_auth ? 2 : 1;
    if (replies.size() != expected) return {};
    if (sent_auth) {
        const value& auth = replies[0];
        if (auth.is_error()) return {answer::refused, {}, auth.str};
        if (auth.t != value::type::simple_string || auth.str != "OK") return {};
    }
    return parse_master_addr(replies.back());
}

role parse_role(const value& reply) {
    if (reply.t != value::type::array || reply.elements.empty() || !is_text(reply.elements[0]))
        return role::unknown;
    const std::string& r = reply.elements[0].str;
    if (r == "master") return role::master;
    if (r == "slave" || r == "replica") return role::replica;
    if (r == "sentinel") return role::sentinel;
    return role::unknown;
}

const char* to_string(role r) {
    switch (r) {
        case role::master:
            return "master";
        case role::replica:
            return "slave";
        case role::sentinel:
            return "sentinel";
        case role::unknown:
            break;
    }
    return "unknown";
}

std::optional<switch_master> parse_switch_master_payload(std::string_view payload) {
    // Five fields separated by single spaces: name old-ip old-port new-ip new-port.
    std::string_view f[5];
    std::size_t start = 0;
    for (int i = 0; i < 5; ++i) {
        std::size_t sp = payload.find(' ', start);
        if (i == 4) {
            if (sp != std::string_view::npos) return std::nullopt;  // a sixth field
            sp = payload.size();
        } else if (sp == std::string_view::npos) {
            return std::nullopt;
        }
        f[i] = payload.substr(start, sp - start);
        if (f[i].empty()) return std::nullopt;
        start = sp + 1;
    }
    auto from = make_address(f[1], f[2]);
    auto to = make_address(f[3], f[4]);
    if (!plausible_host(f[0]) || !from || !to) return std::nullopt;
    return switch_master{std::string(f[0]), std::move(*from), std::move(*to)};
}

std::optional<switch_master> parse_switch_master(const value& message) {
    if (message.t != value::type::array || message.elements.size() != 3) return std::nullopt;
    const auto& e = message.elements;
    if (!is_text(e[0]) || !is_text(e[1]) || !is_text(e[2])) return std::nullopt;
    if (e[0].str != "message" || e[1].str != "+switch-master") return std::nullopt;
    return parse_switch_master_payload(e[2].str);
}

bool is_subscribed(const value& reply) {
    return reply.t == value::type::array && reply.elements.size() == 3 &&
           is_text(reply.elements[0]) && reply.elements[0].str == "subscribe" &&
           is_text(reply.elements[1]) && reply.elements[1].str == "+switch-master" &&
           reply.elements[2].t == value::type::integer;
}

void sentinel_list::answered(std::size_t i) {
    if (i == 0 || i >= order_.size()) return;
    // [a b c d], answered(2) -> [c a b d]
    std::rotate(order_.begin(), order_.begin() + std::ptrdiff_t(i),
                order_.begin() + std::ptrdiff_t(i) + 1);
}

}  // namespace sluice::redis::sentinel
