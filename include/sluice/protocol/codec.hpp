#pragma once
// PostgreSQL frontend/backend protocol v3 codec, sans-io: it reads and writes byte buffers
// and never touches a socket. See PostgreSQL's "Message Formats" chapter.
//
// Framing: after the startup phase every message is  Byte1(type) Int32(length) body,
// where length counts itself but not the type byte. The startup phase has no type byte:
// Int32(length) Int32(code) body.
#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <variant>
#include <vector>

namespace sluice::protocol {

enum class protocol_errc {
    ok = 0,
    invalid_length = 1,      // length field below its minimum
    oversized,               // longer than max_packet_size
    malformed,               // body does not parse
    unsupported_version,     // protocol 2.0 or a major other than 3
    unknown_request,         // startup code we do not know
};
const std::error_category& protocol_category();
std::error_code make_error_code(protocol_errc e);

// Message type bytes, named as PostgreSQL's protocol.h does.
namespace msg {
// frontend
inline constexpr char bind = 'B', close = 'C', copy_data = 'd', copy_done = 'c',
                      copy_fail = 'f', describe = 'D', execute = 'E', flush = 'H',
                      function_call = 'F', parse = 'P', password = 'p', query = 'Q',
                      sync = 'S', terminate = 'X';
// backend
inline constexpr char authentication = 'R', backend_key_data = 'K', bind_complete = '2',
                      close_complete = '3', command_complete = 'C', copy_in_response = 'G',
                      copy_out_response = 'H', copy_both_response = 'W', data_row = 'D',
                      empty_query_response = 'I', error_response = 'E',
                      function_call_response = 'V', negotiate_protocol_version = 'v',
                      no_data = 'n', notice_response = 'N', notification_response = 'A',
                      parameter_description = 't', parameter_status = 'S',
                      parse_complete = '1', portal_suspended = 's', ready_for_query = 'Z',
                      row_description = 'T';
}  // namespace msg

inline std::uint32_t read_u32(const std::uint8_t* p) {
    return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) |
           (std::uint32_t(p[2]) << 8) | std::uint32_t(p[3]);
}
inline std::uint16_t read_u16(const std::uint8_t* p) {
    return std::uint16_t((p[0] << 8) | p[1]);
}

// ---------------------------------------------------------------------------------------
// Typed message framing

struct frame_header {
    char type = 0;
    std::uint32_t body_length = 0;  // bytes after the 5-byte header
    std::size_t total() const { return 5 + std::size_t(body_length); }
};

enum class scan_status { complete, need_more, error };

// Reads the 5-byte header at the front of `buf`. need_more if fewer than 5 bytes; error
// (with ec) if the length is below 4 or the message would exceed max_packet_size.
scan_status scan_header(std::span<const std::uint8_t> buf, std::size_t max_packet_size,
                        frame_header& out, std::error_code& ec);

// A whole message: header plus body, both pointing into the caller's buffer.
struct message_view {
    char type = 0;
    std::span<const std::uint8_t> body;
};

// Splits the front of `buf` into a complete message. need_more when the body is not all
// there yet; `consumed` is the total size on success.
scan_status next_message(std::span<const std::uint8_t> buf, std::size_t max_packet_size,
                         message_view& out, std::size_t& consumed, std::error_code& ec);

// ---------------------------------------------------------------------------------------
// Startup phase (no type byte)

inline constexpr std::uint32_t protocol_v3 = 196608;  // 3.0
inline constexpr std::uint32_t cancel_request_code = 80877102;
inline constexpr std::uint32_t ssl_request_code = 80877103;
inline constexpr std::uint32_t gssenc_request_code = 80877104;
// A startup packet larger than this is refused whatever max_packet_size says (PostgreSQL's
// MAX_STARTUP_PACKET_LENGTH is 10000).
inline constexpr std::size_t max_startup_packet = 10000;

struct startup_message {
    std::uint16_t major = 3, minor = 0;
    std::vector<std::pair<std::string, std::string>> parameters;  // in the order sent
    const std::string* find(std::string_view key) const;
    std::vector<std::string> protocol_options() const;  // keys starting with "_pq_."
};
struct cancel_request {
    std::uint32_t process_id = 0;
    std::uint32_t secret_key = 0;
};
struct ssl_request {};
struct gssenc_request {};
using startup_packet = std::variant<startup_message, cancel_request, ssl_request, gssenc_request>;

// Decodes the first startup-phase packet in `buf`. `consumed` is its size on success.
scan_status decode_startup(std::span<const std::uint8_t> buf, startup_packet& out,
                           std::size_t& consumed, std::error_code& ec);

// ---------------------------------------------------------------------------------------
// Body decoders for the messages the pooler acts on. Each returns nullopt when malformed.

struct error_fields {
    char severity_kind = 'E';  // 'E' error, 'N' notice
    std::string severity, sqlstate, message, detail, hint;
};
std::optional<error_fields> decode_error(std::span<const std::uint8_t> body);

struct authentication_request {
    std::uint32_t code = 0;  // 0 ok, 3 cleartext, 5 md5, 10 SASL, 11 continue, 12 final
    std::array<std::uint8_t, 4> md5_salt{};
    std::vector<std::string> sasl_mechanisms;
    std::string sasl_data;
};
std::optional<authentication_request> decode_authentication(std::span<const std::uint8_t> body);

std::optional<std::pair<std::string, std::string>> decode_parameter_status(
    std::span<const std::uint8_t> body);
std::optional<cancel_request> decode_backend_key_data(std::span<const std::uint8_t> body);
// The ReadyForQuery transaction status: 'I' idle, 'T' in transaction, 'E' failed transaction.
std::optional<char> decode_ready_for_query(std::span<const std::uint8_t> body);
std::optional<std::string_view> decode_cstring(std::span<const std::uint8_t> body);  // Q, C tag

struct parse_message {
    std::string_view name, query;
    std::span<const std::uint8_t> parameter_types;  // raw: Int16 count + Int32 oids
};
std::optional<parse_message> decode_parse(std::span<const std::uint8_t> body);
struct bind_head {
    std::string_view portal, statement;
    std::size_t rest_offset = 0;  // offset in body where the parameter formats start
};
std::optional<bind_head> decode_bind_head(std::span<const std::uint8_t> body);
struct describe_or_close {
    char kind = 'S';  // 'S' statement, 'P' portal
    std::string_view name;
};
std::optional<describe_or_close> decode_describe_or_close(std::span<const std::uint8_t> body);
struct sasl_initial_response {
    std::string_view mechanism;
    std::string_view data;
};
std::optional<sasl_initial_response> decode_sasl_initial_response(
    std::span<const std::uint8_t> body);

// Decoders for the backend messages Sluice itself writes (console results, protocol
// negotiation); used by tests and by anything that reads a console reply.
struct negotiate_protocol_version_message {
    std::uint32_t newest_minor = 0;
    std::vector<std::string> unsupported_options;
};
std::optional<negotiate_protocol_version_message> decode_negotiate_protocol_version(
    std::span<const std::uint8_t> body);
struct row_description_message {
    struct field {
        std::string_view name;
        std::uint32_t table_oid = 0;
        std::uint16_t column_attnum = 0;
        std::uint32_t type_oid = 0;
        std::int16_t type_length = 0;
        std::int32_t type_modifier = 0;
        std::uint16_t format = 0;
    };
    std::vector<field> fields;
};
std::optional<row_description_message> decode_row_description(
    std::span<const std::uint8_t> body);
// DataRow values point into `body`; nullopt elements are SQL NULLs.
std::optional<std::vector<std::optional<std::string_view>>> decode_data_row(
    std::span<const std::uint8_t> body);

// ---------------------------------------------------------------------------------------
// Writers: append one whole message to `out`.

class writer {
public:
    explicit writer(std::string& out) : out_(out) {}
    // Backend messages
    void authentication_ok() { auth(0); }
    void authentication_cleartext() { auth(3); }
    void authentication_md5(const std::array<std::uint8_t, 4>& salt);
    void authentication_sasl(std::string_view mechanism);
    void authentication_sasl_continue(std::string_view data);
    void authentication_sasl_final(std::string_view data);
    void parameter_status(std::string_view name, std::string_view value);
    void backend_key_data(std::uint32_t pid, std::uint32_t key);
    void ready_for_query(char status);
    void error_response(std::string_view sqlstate, std::string_view message,
                        std::string_view hint = {}, std::string_view severity = "ERROR",
                        std::string_view detail = {});
    void notice_response(std::string_view sqlstate, std::string_view message);
    void negotiate_protocol_version(std::uint32_t newest_minor,
                                    const std::vector<std::string>& unsupported_options);
    void row_description(const std::vector<std::string>& columns,
                         const std::vector<std::uint32_t>& type_oids);  // text format
    void data_row(const std::vector<std::optional<std::string>>& values);
    void command_complete(std::string_view tag);
    void empty_query_response() { header(msg::empty_query_response); finish(); }
    void parse_complete() { header(msg::parse_complete); finish(); }
    void close_complete() { header(msg::close_complete); finish(); }
    // Frontend messages
    void startup(const std::vector<std::pair<std::string, std::string>>& parameters);
    void cancel(std::uint32_t pid, std::uint32_t key);
    void ssl_request();  // Int32(8), Int32(80877103)
    void password(std::string_view text);
    void sasl_initial_response(std::string_view mechanism, std::string_view data);
    void sasl_response(std::string_view data);
    void query(std::string_view sql);
    void parse(std::string_view name, std::string_view sql);  // no parameter types
    void close(char kind, std::string_view name);
    // Bind with text parameters (nullopt = NULL) and text results.
    void bind(std::string_view portal, std::string_view statement,
              const std::vector<std::optional<std::string>>& parameters);
    void execute(std::string_view portal, std::uint32_t max_rows = 0);
    void sync() { header(msg::sync); finish(); }
    void terminate() { header(msg::terminate); finish(); }
    // Raw typed message with an arbitrary body (tests, forwarding rewritten messages).
    void raw(char type, std::span<const std::uint8_t> body);
    void raw(char type, std::string_view body);

    // Low-level building blocks.
    void header(char type);  // remembers where the length goes
    void u8(std::uint8_t v) { out_.push_back(char(v)); }
    void u16(std::uint16_t v);
    void u32(std::uint32_t v);
    void cstring(std::string_view s) { out_.append(s); out_.push_back('\0'); }
    void bytes(std::string_view s) { out_.append(s); }
    void finish();  // patches the length of the message opened by header()

private:
    void auth(std::uint32_t code) { header(msg::authentication); u32(code); finish(); }
    std::string& out_;
    std::size_t start_ = 0;
    bool untyped_ = false;
};

}  // namespace sluice::protocol

namespace std {
template <>
struct is_error_code_enum<sluice::protocol::protocol_errc> : true_type {};
}  // namespace std
