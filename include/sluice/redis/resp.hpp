#pragma once
// RESP2 (REdis Serialization Protocol), sans-io: commands are encoded as arrays of bulk
// strings; replies are parsed from a byte range, returning "need more" until a whole
// value is there. Bytes from Redis never throw: malformed input is a parse error.
// https://redis.io/docs/reference/protocol-spec/
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::redis {

struct value {
    enum class type { simple_string, error, integer, bulk_string, nil, array };
    type t = type::nil;
    std::string str;           // simple_string, error, bulk_string
    std::int64_t integer = 0;  // integer
    std::vector<value> elements;

    bool is_error() const { return t == type::error; }
    bool operator==(const value&) const = default;
};

// Appends `*N\r\n$len\r\narg\r\n...` to `out`.
void encode_command(std::string& out, const std::vector<std::string_view>& args);
std::string encode_command(const std::vector<std::string_view>& args);

enum class parse_status { ok, need_more, error };
struct parse_result {
    parse_status status = parse_status::need_more;
    std::size_t consumed = 0;  // bytes of the value when ok
    value v;
};

// Limits on what a reply may claim: a sluice request never gets anything bigger, so a
// larger length is a broken or hostile peer, not a reason to allocate.
inline constexpr std::int64_t max_bulk_length = 16 << 20;
inline constexpr std::int64_t max_array_length = 1 << 20;
inline constexpr int max_depth = 16;

// Parses one value from the front of `in`. Stateless: on need_more call again with more
// bytes (replies here are small, so re-scanning the prefix costs nothing that matters).
parse_result parse(std::string_view in);

}  // namespace sluice::redis
