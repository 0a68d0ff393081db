// RESP2 encoder and parser. Each reply starts with a type byte and ends its header line
// with CRLF: '+' simple string, '-' error, ':' integer, '$' bulk string (length, then that
// many bytes and CRLF; -1 = nil), '*' array (count, then the elements; -1 = nil).
#include "sluice/redis/resp.hpp"

#include <charconv>

namespace sluice::redis {

void encode_command(std::string& out, const std::vector<std::string_view>& args) {
    out += '*';
    out += std::to_string(args.size());
    out += "\r\n";
    for (auto a : args) {
        out += '$';
        out += std::to_string(a.size());
        out += "\r\n";
        out.append(a.data(), a.size());
        out += "\r\n";
    }
}

std::string encode_command(const std::vector<std::string_view>& args) {
    std::string out;
    encode_command(out, args);
    return out;
}

namespace {

struct cursor {
    std::string_view in;
    std::size_t pos = 0;
};

// The header line after the type byte, without its CRLF. need_more until the CRLF is in.
parse_status line(cursor& c, std::string_view& out) {
    std::size_t cr = c.in.find('\r', c.pos);
    if (cr == std::string_view::npos || cr + 1 >= c.in.size()) {
        // A header line never holds a bare CR; guard against unbounded lines anyway.
        if (c.in.size() - c.pos > 64 * 1024) return parse_status::error;
        return parse_status::need_more;
    }
    if (c.in[cr + 1] != '\n') return parse_status::error;
    out = c.in.substr(c.pos, cr - c.pos);
    c.pos = cr + 2;
    return parse_status::ok;
}

bool to_int(std::string_view s, std::int64_t& v) {
    if (s.empty()) return false;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    return ec == std::errc() && p == s.data() + s.size();
}

parse_status parse_value(cursor& c, value& v, int depth) {
    if (depth > max_depth) return parse_status::error;
    if (c.pos >= c.in.size()) return parse_status::need_more;
    char type = c.in[c.pos++];
    std::string_view l;
    if (auto st = line(c, l); st != parse_status::ok) return st;
    switch (type) {
        case '+':
            v.t = value::type::simple_string;
            v.str.assign(l);
            return parse_status::ok;
        case '-':
            v.t = value::type::error;
            v.str.assign(l);
            return parse_status::ok;
        case ':':
            v.t = value::type::integer;
            return to_int(l, v.integer) ? parse_status::ok : parse_status::error;
        case '$': {
            std::int64_t n;
            if (!to_int(l, n) || n < -1 || n > max_bulk_length) return parse_status::error;
            if (n == -1) {
                v.t = value::type::nil;
                return parse_status::ok;
            }
            if (c.in.size() - c.pos < std::size_t(n) + 2) return parse_status::need_more;
            if (c.in[c.pos + n] != '\r' || c.in[c.pos + n + 1] != '\n') return parse_status::error;
            v.t = value::type::bulk_string;
            v.str.assign(c.in.substr(c.pos, n));
            c.pos += n + 2;
            return parse_status::ok;
        }
        case '*': {
            std::int64_t n;
            if (!to_int(l, n) || n < -1 || n > max_array_length) return parse_status::error;
            if (n == -1) {
                v.t = value::type::nil;
                return parse_status::ok;
            }
            v.t = value::type::array;
            v.elements.clear();
            // Do not trust n for a reservation: only what actually arrives is stored.
            for (std::int64_t i = 0; i < n; ++i) {
                value e;
                if (auto st = parse_value(c, e, depth + 1); st != parse_status::ok) return st;
                v.elements.push_back(std::move(e));
            }
            return parse_status::ok;
        }
        default:
            return parse_status::error;
    }
}

}  // namespace

parse_result parse(std::string_view in) {
    parse_result r;
    cursor c{in, 0};
    r.status = parse_value(c, r.v, 0);
    if (r.status == parse_status::ok)
        r.consumed = c.pos;
    else
        r.v = value{};
    return r;
}

}  // namespace sluice::redis
