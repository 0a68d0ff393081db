// PostgreSQL frontend/backend protocol v3 codec. Every rule below comes from PostgreSQL's
// "Frontend/Backend Protocol" chapter (53.7 Message Formats) or from the server's own
// checks in src/backend/tcop/backend_startup.c (ProcessStartupPacket).
//
// Nothing here throws on bytes from a peer: framing errors come back as protocol_errc and
// body decoders return nullopt on any inconsistency. All reads go through `reader`, which
// is bounds-checked against the span it was given.
#include "sluice/protocol/codec.hpp"

#include <algorithm>

namespace sluice::protocol {

// ---------------------------------------------------------------------------------------
// Errors

namespace {

class protocol_category_impl final : public std::error_category {
  public:
    const char* name() const noexcept override { return "sluice.protocol"; }
    std::string message(int ev) const override {
        switch (static_cast<protocol_errc>(ev)) {
            case protocol_errc::ok:
                return "success";
            case protocol_errc::invalid_length:
                return "invalid message length";
            case protocol_errc::oversized:
                return "message exceeds max_packet_size";
            case protocol_errc::malformed:
                return "malformed message";
            case protocol_errc::unsupported_version:
                return "unsupported frontend protocol";
            case protocol_errc::unknown_request:
                return "unknown startup request code";
        }
        return "unknown protocol error";
    }
};

}  // namespace

const std::error_category& protocol_category() {
    static const protocol_category_impl category;
    return category;
}

std::error_code make_error_code(protocol_errc e) {
    return {static_cast<int>(e), protocol_category()};
}

// ---------------------------------------------------------------------------------------
// Bounds-checked reader over a message body. Any read past the end sets `failed` and
// returns a neutral value, so decoders can read a whole layout and check once.

namespace {

class reader {
  public:
    explicit reader(std::span<const std::uint8_t> buf) : buf_(buf) {}

    bool ok() const { return !failed_; }
    std::size_t offset() const { return pos_; }
    std::size_t remaining() const { return failed_ ? 0 : buf_.size() - pos_; }
    // True when everything was read and nothing is left over: PostgreSQL's pq_getmsgend()
    // rejects trailing bytes, and so do we.
    bool at_end() const { return !failed_ && pos_ == buf_.size(); }

    std::uint8_t u8() {
        if (!need(1)) return 0;
        return buf_[pos_++];
    }
    std::uint16_t u16() {
        if (!need(2)) return 0;
        auto v = read_u16(buf_.data() + pos_);
        pos_ += 2;
        return v;
    }
    std::uint32_t u32() {
        if (!need(4)) return 0;
        auto v = read_u32(buf_.data() + pos_);
        pos_ += 4;
        return v;
    }
    // A protocol "String": bytes up to a NUL, which must be inside the span.
    std::string_view cstring() {
        if (failed_) return {};
        const auto* begin = buf_.data() + pos_;
        const auto* end = buf_.data() + buf_.size();
        const auto* nul = std::find(begin, end, std::uint8_t{0});
        if (nul == end) {
            failed_ = true;
            return {};
        }
        std::string_view s(reinterpret_cast<const char*>(begin), std::size_t(nul - begin));
        pos_ += s.size() + 1;
        return s;
    }
    std::span<const std::uint8_t> bytes(std::size_t n) {
        if (!need(n)) return {};
        auto s = buf_.subspan(pos_, n);
        pos_ += n;
        return s;
    }
    std::span<const std::uint8_t> rest() { return bytes(remaining()); }

  private:
    bool need(std::size_t n) {
        if (failed_ || buf_.size() - pos_ < n) {
            failed_ = true;
            return false;
        }
        return true;
    }
    std::span<const std::uint8_t> buf_;
    std::size_t pos_ = 0;
    bool failed_ = false;
};

std::string_view as_string_view(std::span<const std::uint8_t> s) {
    return {reinterpret_cast<const char*>(s.data()), s.size()};
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Typed message framing

scan_status scan_header(std::span<const std::uint8_t> buf, std::size_t max_packet_size,
                        frame_header& out, std::error_code& ec) {
    if (buf.size() < 5) return scan_status::need_more;
    // Int32 length counts itself but not the type byte, so 4 is the smallest legal value.
    const std::uint32_t length = read_u32(buf.data() + 1);
    if (length < 4) {
        ec = make_error_code(protocol_errc::invalid_length);
        return scan_status::error;
    }
    // Checked on the header alone so that a peer cannot make us buffer a huge message.
    if (1 + std::size_t(length) > max_packet_size) {
        ec = make_error_code(protocol_errc::oversized);
        return scan_status::error;
    }
    out.type = char(buf[0]);
    out.body_length = length - 4;
    return scan_status::complete;
}

scan_status next_message(std::span<const std::uint8_t> buf, std::size_t max_packet_size,
                         message_view& out, std::size_t& consumed, std::error_code& ec) {
    frame_header h;
    const auto st = scan_header(buf, max_packet_size, h, ec);
    if (st != scan_status::complete) return st;
    if (buf.size() < h.total()) return scan_status::need_more;
    out.type = h.type;
    out.body = buf.subspan(5, h.body_length);
    consumed = h.total();
    return scan_status::complete;
}

// ---------------------------------------------------------------------------------------
// Startup phase

const std::string* startup_message::find(std::string_view key) const {
    for (const auto& [k, v] : parameters)
        if (k == key) return &v;
    return nullptr;
}

std::vector<std::string> startup_message::protocol_options() const {
    // Protocol extension options are startup parameters whose names begin with "_pq."
    // (53.2.1); a server that does not know them answers NegotiateProtocolVersion.
    std::vector<std::string> out;
    for (const auto& [k, v] : parameters)
        if (k.starts_with("_pq.")) out.push_back(k);
    return out;
}

scan_status decode_startup(std::span<const std::uint8_t> buf, startup_packet& out,
                           std::size_t& consumed, std::error_code& ec) {
    auto fail = [&ec](protocol_errc e) {
        ec = make_error_code(e);
        return scan_status::error;
    };
    if (buf.size() < 4) return scan_status::need_more;
    const std::uint32_t len = read_u32(buf.data());
    // The length counts itself and must at least hold the Int32 request code, as
    // ProcessStartupPacket checks; and it may not exceed MAX_STARTUP_PACKET_LENGTH.
    if (len < 8) return fail(protocol_errc::invalid_length);
    if (len > max_startup_packet) return fail(protocol_errc::oversized);
    if (buf.size() < len) return scan_status::need_more;

    reader r(buf.subspan(4, len - 4));
    const std::uint32_t code = r.u32();
    switch (code) {
        case cancel_request_code: {
            // CancelRequest: Int32(16) Int32(80877102) Int32 pid Int32 secret key.
            if (len != 16) return fail(protocol_errc::invalid_length);
            cancel_request c;
            c.process_id = r.u32();
            c.secret_key = r.u32();
            out = c;
            consumed = len;
            return scan_status::complete;
        }
        case ssl_request_code:
        case gssenc_request_code:
            // SSLRequest / GSSENCRequest: Int32(8) and the code, nothing else.
            if (len != 8) return fail(protocol_errc::invalid_length);
            if (code == ssl_request_code)
                out = ssl_request{};
            else
                out = gssenc_request{};
            consumed = len;
            return scan_status::complete;
        default:
            break;
    }

    const auto major = std::uint16_t(code >> 16);
    const auto minor = std::uint16_t(code & 0xffff);
    // Major 1234 is reserved for special requests (cancel, SSL, GSSENC, ...); any other
    // code there is a request we do not know rather than a protocol version.
    if (major == 1234) return fail(protocol_errc::unknown_request);
    // Protocol 2.0 was removed in PostgreSQL 14; only 3.x is spoken here. Minor versions
    // newer than ours are the caller's business (it answers NegotiateProtocolVersion).
    if (major != 3) return fail(protocol_errc::unsupported_version);

    // StartupMessage body: pairs of String name, String value, ended by one empty name,
    // which must be the last byte ("expected terminator as last byte").
    startup_message m;
    m.major = major;
    m.minor = minor;
    for (;;) {
        const auto name = r.cstring();
        if (!r.ok()) return fail(protocol_errc::malformed);
        if (name.empty()) break;
        const auto value = r.cstring();
        if (!r.ok()) return fail(protocol_errc::malformed);
        m.parameters.emplace_back(std::string(name), std::string(value));
    }
    if (!r.at_end()) return fail(protocol_errc::malformed);
    out = std::move(m);
    consumed = len;
    return scan_status::complete;
}

// ---------------------------------------------------------------------------------------
// Body decoders

std::optional<error_fields> decode_error(std::span<const std::uint8_t> body) {
    // ErrorResponse / NoticeResponse: (Byte1 field code, String value)* then a zero byte.
    // Unknown field codes are skipped, as the protocol asks of frontends.
    reader r(body);
    error_fields f;
    std::string_view severity_s, severity_v;
    for (;;) {
        const std::uint8_t code = r.u8();
        if (!r.ok()) return std::nullopt;
        if (code == 0) break;
        const auto value = r.cstring();
        if (!r.ok()) return std::nullopt;
        switch (code) {
            case 'S':
                severity_s = value;
                break;
            case 'V':
                severity_v = value;
                break;  // never localized (9.6+)
            case 'C':
                f.sqlstate = value;
                break;
            case 'M':
                f.message = value;
                break;
            case 'D':
                f.detail = value;
                break;
            case 'H':
                f.hint = value;
                break;
            default:
                break;
        }
    }
    if (!r.at_end()) return std::nullopt;
    f.severity = severity_v.empty() ? severity_s : severity_v;
    return f;
}

std::optional<authentication_request> decode_authentication(std::span<const std::uint8_t> body) {
    reader r(body);
    authentication_request a;
    a.code = r.u32();
    if (!r.ok()) return std::nullopt;
    switch (a.code) {
        case 0:  // AuthenticationOk
        case 3:  // AuthenticationCleartextPassword
            break;
        case 5: {  // AuthenticationMD5Password: Byte4 salt
            const auto salt = r.bytes(4);
            if (!r.ok()) return std::nullopt;
            std::copy(salt.begin(), salt.end(), a.md5_salt.begin());
            break;
        }
        case 10:  // AuthenticationSASL: String mechanism* ended by an empty string
            for (;;) {
                const auto mech = r.cstring();
                if (!r.ok()) return std::nullopt;
                if (mech.empty()) break;
                a.sasl_mechanisms.emplace_back(mech);
            }
            if (a.sasl_mechanisms.empty()) return std::nullopt;
            break;
        default:  // 11 SASLContinue, 12 SASLFinal, 8 GSSContinue, ...: Byte<n> data
            a.sasl_data = as_string_view(r.rest());
            break;
    }
    if (!r.at_end()) return std::nullopt;
    return a;
}

std::optional<std::pair<std::string, std::string>> decode_parameter_status(
    std::span<const std::uint8_t> body) {
    reader r(body);
    const auto name = r.cstring();
    const auto value = r.cstring();
    if (!r.at_end()) return std::nullopt;
    return std::pair<std::string, std::string>(name, value);
}

std::optional<cancel_request> decode_backend_key_data(std::span<const std::uint8_t> body) {
    // BackendKeyData: Int32 process id, Int32 secret key (protocol 3.0).
    reader r(body);
    cancel_request c;
    c.process_id = r.u32();
    c.secret_key = r.u32();
    if (!r.at_end()) return std::nullopt;
    return c;
}

std::optional<char> decode_ready_for_query(std::span<const std::uint8_t> body) {
    // ReadyForQuery: Byte1 status, one of 'I', 'T', 'E'.
    if (body.size() != 1) return std::nullopt;
    const char s = char(body[0]);
    if (s != 'I' && s != 'T' && s != 'E') return std::nullopt;
    return s;
}

std::optional<std::string_view> decode_cstring(std::span<const std::uint8_t> body) {
    reader r(body);
    const auto s = r.cstring();
    if (!r.at_end()) return std::nullopt;
    return s;
}

std::optional<parse_message> decode_parse(std::span<const std::uint8_t> body) {
    // Parse: String name, String query, Int16 count, Int32 oid * count.
    reader r(body);
    parse_message p;
    p.name = r.cstring();
    p.query = r.cstring();
    const std::size_t types_at = r.offset();
    const std::uint16_t n = r.u16();
    r.bytes(std::size_t(n) * 4);
    if (!r.at_end()) return std::nullopt;
    p.parameter_types = body.subspan(types_at);
    return p;
}

std::optional<bind_head> decode_bind_head(std::span<const std::uint8_t> body) {
    // Bind: String portal, String statement, Int16 nformats, Int16 format * nformats,
    // Int16 nparams, (Int32 len (-1 = NULL), Byte<len>) * nparams, Int16 nresults,
    // Int16 format * nresults. Only the head is returned, but the whole layout is
    // checked so that a forwarded Bind is known to be well formed.
    reader r(body);
    bind_head b;
    b.portal = r.cstring();
    b.statement = r.cstring();
    b.rest_offset = r.offset();
    const std::uint16_t nformats = r.u16();
    r.bytes(std::size_t(nformats) * 2);
    const std::uint16_t nparams = r.u16();
    for (std::uint16_t i = 0; i < nparams && r.ok(); ++i) {
        const auto len = std::int32_t(r.u32());
        if (len == -1) continue;
        if (len < 0) return std::nullopt;
        r.bytes(std::size_t(len));
    }
    const std::uint16_t nresults = r.u16();
    r.bytes(std::size_t(nresults) * 2);
    if (!r.at_end()) return std::nullopt;
    return b;
}

std::optional<describe_or_close> decode_describe_or_close(std::span<const std::uint8_t> body) {
    // Describe / Close: Byte1 'S' (statement) or 'P' (portal), String name.
    reader r(body);
    describe_or_close d;
    d.kind = char(r.u8());
    d.name = r.cstring();
    if (!r.at_end()) return std::nullopt;
    if (d.kind != 'S' && d.kind != 'P') return std::nullopt;
    return d;
}

std::optional<sasl_initial_response> decode_sasl_initial_response(
    std::span<const std::uint8_t> body) {
    // SASLInitialResponse: String mechanism, Int32 length (-1 = no initial response),
    // Byte<length> data.
    reader r(body);
    sasl_initial_response s;
    s.mechanism = r.cstring();
    const auto len = std::int32_t(r.u32());
    if (!r.ok()) return std::nullopt;
    if (len < -1) return std::nullopt;
    if (len >= 0) s.data = as_string_view(r.bytes(std::size_t(len)));
    if (!r.at_end()) return std::nullopt;
    return s;
}

std::optional<negotiate_protocol_version_message> decode_negotiate_protocol_version(
    std::span<const std::uint8_t> body) {
    // NegotiateProtocolVersion: Int32 newest minor, Int32 count, String option * count.
    reader r(body);
    negotiate_protocol_version_message n;
    n.newest_minor = r.u32();
    const std::uint32_t count = r.u32();
    if (!r.ok() || count > r.remaining()) return std::nullopt;  // each takes >= 1 byte
    for (std::uint32_t i = 0; i < count && r.ok(); ++i)
        n.unsupported_options.emplace_back(r.cstring());
    if (!r.at_end()) return std::nullopt;
    return n;
}

std::optional<row_description_message> decode_row_description(std::span<const std::uint8_t> body) {
    // RowDescription: Int16 count, then per field: String name, Int32 table oid, Int16
    // attnum, Int32 type oid, Int16 typlen, Int32 typmod, Int16 format.
    reader r(body);
    row_description_message d;
    const std::uint16_t n = r.u16();
    for (std::uint16_t i = 0; i < n && r.ok(); ++i) {
        row_description_message::field f;
        f.name = r.cstring();
        f.table_oid = r.u32();
        f.column_attnum = r.u16();
        f.type_oid = r.u32();
        f.type_length = std::int16_t(r.u16());
        f.type_modifier = std::int32_t(r.u32());
        f.format = r.u16();
        if (r.ok()) d.fields.push_back(f);
    }
    if (!r.at_end()) return std::nullopt;
    return d;
}

std::optional<std::vector<std::optional<std::string_view>>> decode_data_row(
    std::span<const std::uint8_t> body) {
    // DataRow: Int16 count, then per column Int32 length (-1 = NULL) and Byte<length>.
    reader r(body);
    std::vector<std::optional<std::string_view>> values;
    const std::uint16_t n = r.u16();
    for (std::uint16_t i = 0; i < n && r.ok(); ++i) {
        const auto len = std::int32_t(r.u32());
        if (!r.ok()) break;
        if (len == -1) {
            values.emplace_back(std::nullopt);
            continue;
        }
        if (len < 0) return std::nullopt;
        const auto v = r.bytes(std::size_t(len));
        if (r.ok()) values.emplace_back(as_string_view(v));
    }
    if (!r.at_end()) return std::nullopt;
    return values;
}

// ---------------------------------------------------------------------------------------
// Writers

void writer::header(char type) {
    start_ = out_.size();
    untyped_ = false;
    out_.push_back(type);
    out_.append(4, '\0');  // length, patched by finish()
}

void writer::finish() {
    // The length counts itself and the body but not the type byte; untyped startup-phase
    // packets have no type byte, so their length starts at start_.
    const std::size_t at = untyped_ ? start_ : start_ + 1;
    const auto len = std::uint32_t(out_.size() - at);
    out_[at + 0] = char(len >> 24);
    out_[at + 1] = char(len >> 16);
    out_[at + 2] = char(len >> 8);
    out_[at + 3] = char(len);
    untyped_ = false;
}

void writer::u16(std::uint16_t v) {
    out_.push_back(char(v >> 8));
    out_.push_back(char(v));
}

void writer::u32(std::uint32_t v) {
    out_.push_back(char(v >> 24));
    out_.push_back(char(v >> 16));
    out_.push_back(char(v >> 8));
    out_.push_back(char(v));
}

void writer::authentication_md5(const std::array<std::uint8_t, 4>& salt) {
    header(msg::authentication);
    u32(5);
    for (auto b : salt) u8(b);
    finish();
}

void writer::authentication_sasl(std::string_view mechanism) {
    // AuthenticationSASL: Int32(10), the mechanism names, then an empty string.
    header(msg::authentication);
    u32(10);
    cstring(mechanism);
    u8(0);
    finish();
}

void writer::authentication_sasl_continue(std::string_view data) {
    header(msg::authentication);
    u32(11);
    bytes(data);
    finish();
}

void writer::authentication_sasl_final(std::string_view data) {
    header(msg::authentication);
    u32(12);
    bytes(data);
    finish();
}

void writer::parameter_status(std::string_view name, std::string_view value) {
    header(msg::parameter_status);
    cstring(name);
    cstring(value);
    finish();
}

void writer::backend_key_data(std::uint32_t pid, std::uint32_t key) {
    header(msg::backend_key_data);
    u32(pid);
    u32(key);
    finish();
}

void writer::ready_for_query(char status) {
    header(msg::ready_for_query);
    u8(std::uint8_t(status));
    finish();
}

void writer::error_response(std::string_view sqlstate, std::string_view message,
                            std::string_view hint, std::string_view severity,
                            std::string_view detail) {
    // 'S' is the (possibly localized) severity and 'V' the non-localized one that
    // drivers match on (PostgreSQL 9.6+); we never localize, so both are the same.
    header(msg::error_response);
    u8('S');
    cstring(severity);
    u8('V');
    cstring(severity);
    u8('C');
    cstring(sqlstate);
    u8('M');
    cstring(message);
    if (!detail.empty()) {
        u8('D');
        cstring(detail);
    }
    if (!hint.empty()) {
        u8('H');
        cstring(hint);
    }
    u8(0);
    finish();
}

void writer::notice_response(std::string_view sqlstate, std::string_view message) {
    header(msg::notice_response);
    u8('S');
    cstring("NOTICE");
    u8('V');
    cstring("NOTICE");
    u8('C');
    cstring(sqlstate);
    u8('M');
    cstring(message);
    u8(0);
    finish();
}

void writer::negotiate_protocol_version(std::uint32_t newest_minor,
                                        const std::vector<std::string>& unsupported_options) {
    header(msg::negotiate_protocol_version);
    u32(newest_minor);
    u32(std::uint32_t(unsupported_options.size()));
    for (const auto& o : unsupported_options) cstring(o);
    finish();
}

void writer::row_description(const std::vector<std::string>& columns,
                             const std::vector<std::uint32_t>& type_oids) {
    // Console results are not table columns: table oid 0, attnum 0, typlen -1 (varlena),
    // typmod -1, format 0 (text). A missing type oid defaults to text (25).
    header(msg::row_description);
    u16(std::uint16_t(columns.size()));
    for (std::size_t i = 0; i < columns.size(); ++i) {
        cstring(columns[i]);
        u32(0);
        u16(0);
        u32(i < type_oids.size() ? type_oids[i] : 25);
        u16(0xffff);
        u32(0xffffffff);
        u16(0);
    }
    finish();
}

void writer::data_row(const std::vector<std::optional<std::string>>& values) {
    header(msg::data_row);
    u16(std::uint16_t(values.size()));
    for (const auto& v : values) {
        if (!v) {
            u32(0xffffffff);  // NULL is length -1 with no bytes
            continue;
        }
        u32(std::uint32_t(v->size()));
        bytes(*v);
    }
    finish();
}

void writer::command_complete(std::string_view tag) {
    header(msg::command_complete);
    cstring(tag);
    finish();
}

void writer::startup(const std::vector<std::pair<std::string, std::string>>& parameters) {
    // StartupMessage: Int32 length, Int32 196608, (String name, String value)*, Byte1(0).
    start_ = out_.size();
    out_.append(4, '\0');
    untyped_ = true;
    u32(protocol_v3);
    for (const auto& [k, v] : parameters) {
        cstring(k);
        cstring(v);
    }
    u8(0);
    finish();
}

void writer::cancel(std::uint32_t pid, std::uint32_t key) {
    // CancelRequest: Int32(16), Int32(80877102), Int32 pid, Int32 secret key.
    start_ = out_.size();
    out_.append(4, '\0');
    untyped_ = true;
    u32(cancel_request_code);
    u32(pid);
    u32(key);
    finish();
}

void writer::ssl_request() {
    start_ = out_.size();
    out_.append(4, '\0');
    untyped_ = true;
    u32(ssl_request_code);
    finish();
}

void writer::password(std::string_view text) {
    header(msg::password);
    cstring(text);
    finish();
}

void writer::sasl_initial_response(std::string_view mechanism, std::string_view data) {
    header(msg::password);
    cstring(mechanism);
    u32(std::uint32_t(data.size()));
    bytes(data);
    finish();
}

void writer::sasl_response(std::string_view data) {
    header(msg::password);
    bytes(data);
    finish();
}

void writer::query(std::string_view sql) {
    header(msg::query);
    cstring(sql);
    finish();
}

void writer::parse(std::string_view name, std::string_view sql) {
    header(msg::parse);
    cstring(name);
    cstring(sql);
    u16(0);
    finish();
}

void writer::bind(std::string_view portal, std::string_view statement,
                  const std::vector<std::optional<std::string>>& parameters) {
    // Bind: portal, statement, Int16 0 (all text), Int16 n, (Int32 len | -1, bytes)*,
    // Int16 0 (results in text).
    header(msg::bind);
    cstring(portal);
    cstring(statement);
    u16(0);
    u16(std::uint16_t(parameters.size()));
    for (auto& p : parameters) {
        if (!p) {
            u32(0xffffffffu);
            continue;
        }
        u32(std::uint32_t(p->size()));
        bytes(*p);
    }
    u16(0);
    finish();
}

void writer::execute(std::string_view portal, std::uint32_t max_rows) {
    header(msg::execute);
    cstring(portal);
    u32(max_rows);
    finish();
}

void writer::close(char kind, std::string_view name) {
    header(msg::close);
    u8(std::uint8_t(kind));
    cstring(name);
    finish();
}

void writer::raw(char type, std::span<const std::uint8_t> body) {
    raw(type, as_string_view(body));
}

void writer::raw(char type, std::string_view body) {
    header(type);
    bytes(body);
    finish();
}

}  // namespace sluice::protocol
