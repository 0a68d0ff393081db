// pg_hba.conf / pg_ident.conf, read as PostgreSQL 16 reads them (documentation chapter
// "Client Authentication"):
//   1. Physical lines are joined into records: a line ending in a backslash continues on
//      the next one (the backslash is removed, nothing is inserted). This happens before
//      comments are looked at, as in PostgreSQL, so a comment ending in '\' swallows the
//      next line.
//   2. A record is split into fields at blanks; a field is a comma-separated list of
//      tokens. '#' outside quotes ends the record. Double quotes protect blanks, commas
//      and '#', and `""` inside quotes is one quote. A token that *starts* with a quote is
//      "quoted": keywords (all, sameuser, +role, @file, ...) lose their meaning in it. A
//      leading '/' makes a regular expression whether quoted or not, since quoting is how
//      a pattern holds a comma.
//   3. @file tokens are replaced by the tokens of that file (read through the caller),
//      then each field is interpreted by its place in the record.
// Positions are kept per character through all of this, so every error names the line
// and column of the token at fault in the file the user edits.
#include "sluice/auth/hba.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>
#include <regex>

namespace sluice::auth {

struct hba_regex {
    std::regex re;
};

namespace {

constexpr int max_include_depth = 10;  // PostgreSQL's limit for nested includes

struct position {
    int line = 0;
    int column = 0;
};

struct logical_line {
    int first_line = 0;
    std::string text;
    std::vector<position> where;  // where[i]: text[i]'s place in the file
    position end;                 // just after the last character of the record
};

struct token {
    std::string text;  // quotes removed
    bool quoted = false;
    position at;
    // For tokens that came from an @file: which one and where, to say so in messages
    // (their `at` is the @ token in the file being parsed).
    std::string from;
};

using field = std::vector<token>;

hba_error error_at(position p, std::string message) {
    return hba_error{p.line, p.column, std::move(message)};
}

hba_error error_at(const token& t, std::string message) {
    if (!t.from.empty()) message += " (in " + t.from + ")";
    return error_at(t.at, std::move(message));
}

std::string quote(const std::string& s) {
    return "\"" + s + "\"";
}

bool is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

std::vector<logical_line> split_records(std::string_view text) {
    std::vector<logical_line> out;
    logical_line current;
    bool open = false;
    int line_no = 0;
    std::size_t pos = 0;
    while (pos < text.size()) {
        ++line_no;
        std::size_t nl = text.find('\n', pos);
        std::string_view phys =
            text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
        pos = nl == std::string_view::npos ? text.size() : nl + 1;
        if (!phys.empty() && phys.back() == '\r') phys.remove_suffix(1);
        bool continues = !phys.empty() && phys.back() == '\\';
        if (continues) phys.remove_suffix(1);
        if (!open) {
            current = logical_line{};
            current.first_line = line_no;
            open = true;
        }
        for (std::size_t i = 0; i < phys.size(); ++i) {
            current.text.push_back(phys[i]);
            current.where.push_back({line_no, static_cast<int>(i) + 1});
        }
        // An empty continuation line adds nothing: "end of line" stays after the last
        // character the record has, where the user would add the missing field.
        if (!phys.empty() || current.where.empty())
            current.end = {line_no, static_cast<int>(phys.size()) + 1};
        if (!continues) {
            out.push_back(std::move(current));
            open = false;
        }
    }
    if (open) out.push_back(std::move(current));
    return out;
}

// Splits a record into fields of tokens. `stop` receives where the fields ended (the
// comment or the end of the record), which is where "end-of-line before ..." points.
std::optional<hba_error> tokenize(const logical_line& l, std::vector<field>& fields,
                                  position& stop) {
    const std::string& s = l.text;
    const std::size_t n = s.size();
    auto at = [&](std::size_t k) { return k < n ? l.where[k] : l.end; };
    std::size_t i = 0;
    for (;;) {
        while (i < n && is_blank(s[i])) ++i;
        if (i == n || s[i] == '#') break;
        field f;
        for (;;) {
            token t;
            t.at = at(i);
            t.quoted = s[i] == '"';
            bool in_quote = false;
            bool any = false;  // a character or a pair of quotes: `""` is an empty name
            std::size_t quote_start = 0;
            while (i < n) {
                char c = s[i];
                if (in_quote) {
                    if (c == '"') {
                        if (i + 1 < n && s[i + 1] == '"') {
                            t.text.push_back('"');
                            i += 2;
                            continue;
                        }
                        in_quote = false;
                    } else {
                        t.text.push_back(c);
                    }
                    ++i;
                    continue;
                }
                if (c == '"') {
                    in_quote = true;
                    quote_start = i;
                    any = true;
                    ++i;
                    continue;
                }
                if (is_blank(c) || c == ',' || c == '#') break;
                t.text.push_back(c);
                any = true;
                ++i;
            }
            if (in_quote) return error_at(at(quote_start), "unterminated quoted string");
            if (!any) return error_at(t.at, "empty element in list");
            f.push_back(std::move(t));
            if (i < n && s[i] == ',') {
                // Blanks may follow a comma ("db1, db2" is one list), as in PostgreSQL.
                std::size_t comma = i++;
                while (i < n && is_blank(s[i])) ++i;
                if (i == n || s[i] == '#') return error_at(at(comma), "list ends with a comma");
                continue;
            }
            break;
        }
        fields.push_back(std::move(f));
    }
    stop = at(i);
    return std::nullopt;
}

// PostgreSQL resolves a relative @file inside an included file against that file's
// directory; the caller only knows pg_hba.conf's, so pass the including directory along.
std::string resolve_include(const std::string& parent, const std::string& name) {
    if (name.front() == '/' || parent.empty()) return name;
    std::size_t slash = parent.rfind('/');
    if (slash == std::string::npos) return name;
    return parent.substr(0, slash + 1) + name;
}

// Replaces every unquoted @file token with the tokens of that file, recursively.
std::optional<hba_error> expand_includes(const std::vector<token>& in,
                                         const hba_file::include_reader& include_file, int depth,
                                         const std::string& parent, std::vector<token>& out) {
    for (const token& t : in) {
        if (t.quoted || t.text.empty() || t.text[0] != '@') {
            out.push_back(t);
            continue;
        }
        std::string name = t.text.substr(1);
        if (name.empty()) return error_at(t, "missing file name after \"@\"");
        if (depth >= max_include_depth)
            return error_at(t, "@file references nested more than " +
                                   std::to_string(max_include_depth) + " deep at " + quote(name));
        std::string path = resolve_include(parent, name);
        std::optional<std::string> contents;
        if (include_file) contents = include_file(path);
        if (!contents) return error_at(t, "could not read @file " + quote(path));
        std::vector<token> inner;
        for (const logical_line& l : split_records(*contents)) {
            std::vector<field> fields;
            position stop;
            if (auto e = tokenize(l, fields, stop)) {
                return error_at(t, "in @file " + quote(path) + " line " + std::to_string(e->line) +
                                       " column " + std::to_string(e->column) + ": " + e->message);
            }
            for (field& f : fields) {
                for (token& it : f) {
                    it.from = "@file " + quote(path) + " line " + std::to_string(it.at.line);
                    it.at = t.at;
                    inner.push_back(std::move(it));
                }
            }
        }
        if (auto e = expand_includes(inner, include_file, depth + 1, path, out)) return e;
    }
    return std::nullopt;
}

// True when a quantifier repeats something that is itself repeated without bound:
// `a**`, `(a+)*`, `(.*x)+`, `(a{2,})*`. std::regex backtracks on those exponentially
// even on a 64-byte name (found by the hba fuzz target: `^(.**)@example`). A lazy `?`
// after a quantifier is fine.
bool nested_quantifier(const std::string& p) {
    std::vector<bool> group_unbounded{false};  // per open group: contains `*`, `+`, `{n,}`
    bool prev_quantifier = false, prev_group_unbounded = false;
    for (std::size_t i = 0; i < p.size(); ++i) {
        char c = p[i];
        bool quantifier = c == '*' || c == '+' || c == '{';
        if (quantifier) {
            std::size_t close = c == '{' ? p.find('}', i) : i;
            bool unbounded = c != '{' || (close != std::string::npos && p[close - 1] == ',');
            if (prev_quantifier || (prev_group_unbounded && unbounded)) return true;
            if (unbounded) group_unbounded.back() = true;
            if (c == '{' && close != std::string::npos) i = close;
            prev_quantifier = true;
            prev_group_unbounded = false;
            continue;
        }
        if (c == '?' && prev_quantifier) continue;  // lazy, or `?` after a quantifier
        prev_quantifier = false;
        prev_group_unbounded = false;
        if (c == '\\') {
            ++i;  // an escaped character is an atom
        } else if (c == '[') {
            // A class is an atom: skip to its end (a `]` first in the class is literal).
            std::size_t j = i + 1;
            if (j < p.size() && p[j] == '^') ++j;
            if (j < p.size() && p[j] == ']') ++j;
            while (j < p.size() && p[j] != ']') j += p[j] == '\\' ? 2 : 1;
            i = j;
        } else if (c == '(') {
            group_unbounded.push_back(false);
        } else if (c == ')' && group_unbounded.size() > 1) {
            bool inner = group_unbounded.back();
            group_unbounded.pop_back();
            if (inner) group_unbounded.back() = true;
            prev_group_unbounded = inner;
        } else if (c == '?') {
            prev_quantifier = true;  // `x?` is a (bounded) quantifier too: `x?*` nests
        }
    }
    return false;
}

std::shared_ptr<const hba_regex> compile_regex(const std::string& pattern, std::string& why) {
    // std::regex's compiler recurses per alternative: a long pattern could exhaust the
    // stack (found by the hba fuzz target). Real patterns are short.
    if (pattern.size() > 256) {
        why = "regular expression longer than 256 bytes";
        return nullptr;
    }
    // A long run of digits (a repetition count, a back-reference) overflows inside
    // std::regex's compiler (undefined behaviour, found by the hba fuzz target).
    for (std::size_t i = 0, run = 0; i < pattern.size(); ++i) {
        run = std::isdigit(static_cast<unsigned char>(pattern[i])) ? run + 1 : 0;
        if (run > 9) {
            why = "a number of more than 9 digits in a regular expression";
            return nullptr;
        }
    }
    if (nested_quantifier(pattern)) {
        why = "nested quantifiers (a repeated group that repeats without bound) would make "
              "matching exponentially slow";
        return nullptr;
    }
    try {
        return std::make_shared<const hba_regex>(
            hba_regex{std::regex(pattern, std::regex::ECMAScript)});
    } catch (const std::regex_error& e) {
        why = e.what();
        return nullptr;
    }
}

std::optional<hba_error> make_regex_name(const token& t, hba_name& out) {
    out.kind = hba_name_kind::regex;
    out.value = t.text.substr(1);
    if (out.value.empty()) return error_at(t, "empty regular expression after \"/\"");
    std::string why;
    out.pattern = compile_regex(out.value, why);
    if (!out.pattern)
        return error_at(t, "invalid regular expression " + quote(t.text) + ": " + why);
    return std::nullopt;
}

enum class list_kind { database, user };

std::optional<hba_error> classify(const token& t, list_kind kind, hba_name& out) {
    if (!t.text.empty() && t.text[0] == '/') return make_regex_name(t, out);
    out.kind = hba_name_kind::literal;
    out.value = t.text;
    if (t.quoted) return std::nullopt;
    if (t.text == "all") {
        out.kind = hba_name_kind::all;
    } else if (kind == list_kind::database) {
        if (t.text == "sameuser") out.kind = hba_name_kind::sameuser;
        if (t.text == "samerole" || t.text == "samegroup") out.kind = hba_name_kind::samerole;
        if (t.text == "replication") out.kind = hba_name_kind::replication;
    } else if (t.text[0] == '+') {
        out.kind = hba_name_kind::group;
        out.value = t.text.substr(1);
        if (out.value.empty()) return error_at(t, "missing role name after \"+\"");
    }
    if (out.kind != hba_name_kind::literal && out.kind != hba_name_kind::group) out.value.clear();
    return std::nullopt;
}

std::optional<hba_error> parse_name_list(const field& f, list_kind kind,
                                         const hba_file::include_reader& include_file,
                                         std::vector<hba_name>& out) {
    std::vector<token> tokens;
    if (auto e = expand_includes(f, include_file, 0, std::string{}, tokens)) return e;
    for (const token& t : tokens) {
        hba_name name;
        if (auto e = classify(t, kind, name)) return e;
        out.push_back(std::move(name));
    }
    return std::nullopt;
}

struct ip_bytes {
    bool v6 = false;
    std::array<std::uint8_t, 16> b{};
};

std::optional<ip_bytes> parse_ip(const std::string& s) {
    // inet_pton reads a C string: an embedded NUL would hide whatever follows it.
    if (s.empty() || s.find('\0') != std::string::npos) return std::nullopt;
    ip_bytes ip;
    in_addr a4{};
    if (inet_pton(AF_INET, s.c_str(), &a4) == 1) {
        std::memcpy(ip.b.data(), &a4, 4);
        return ip;
    }
    in6_addr a6{};
    if (inet_pton(AF_INET6, s.c_str(), &a6) == 1) {
        ip.v6 = true;
        std::memcpy(ip.b.data(), &a6, 16);
        return ip;
    }
    return std::nullopt;
}

bool is_v4_mapped(const std::array<std::uint8_t, 16>& b) {
    for (int i = 0; i < 10; ++i)
        if (b[i] != 0) return false;
    return b[10] == 0xff && b[11] == 0xff;
}

// ::ffff:a.b.c.d is how a dual-stack socket shows the IPv4 client a.b.c.d.
ip_bytes canonical_client(ip_bytes ip) {
    if (ip.v6 && is_v4_mapped(ip.b)) {
        ip.v6 = false;
        std::array<std::uint8_t, 16> v4{};
        std::memcpy(v4.data(), ip.b.data() + 12, 4);
        ip.b = v4;
    }
    return ip;
}

void set_address(hba_address& a, const ip_bytes& ip, const std::array<std::uint8_t, 16>& mask) {
    a.kind = ip.v6 ? hba_address_kind::ipv6 : hba_address_kind::ipv4;
    a.bytes = ip.b;
    a.mask = mask;
    // An IPv6 rule wholly inside ::ffff:0:0/96 is about IPv4 clients; keep it as the IPv4
    // rule it means, so it matches them however they reach Sluice (canonical_client).
    if (ip.v6 && is_v4_mapped(ip.b)) {
        bool covers_prefix = true;
        for (int i = 0; i < 12; ++i)
            if (mask[i] != 0xff) covers_prefix = false;
        if (covers_prefix) {
            a.kind = hba_address_kind::ipv4;
            a.bytes = {};
            a.mask = {};
            std::memcpy(a.bytes.data(), ip.b.data() + 12, 4);
            std::memcpy(a.mask.data(), mask.data() + 12, 4);
        }
    }
    for (std::size_t i = 0; i < a.bytes.size(); ++i) a.bytes[i] &= a.mask[i];
}

std::array<std::uint8_t, 16> prefix_mask(int bits) {
    std::array<std::uint8_t, 16> m{};
    for (int i = 0; i < 16 && bits > 0; ++i, bits -= 8)
        m[i] = bits >= 8 ? 0xff : static_cast<std::uint8_t>(0xff << (8 - bits));
    return m;
}

bool looks_like_ip(const std::string& s) {
    if (s.find(':') != std::string::npos) return true;
    for (char c : s)
        if (!(c >= '0' && c <= '9') && c != '.') return false;
    return true;
}

std::optional<hba_error> single_value(const field& f, const char* what) {
    if (f.size() > 1) return error_at(f[1], std::string("multiple values specified for ") + what);
    return std::nullopt;
}

// Reads the ADDRESS field (and the MASK field of the two-field form) at fields[idx];
// advances idx past what it used.
std::optional<hba_error> parse_address(const std::vector<field>& fields, std::size_t& idx,
                                       position stop, hba_address& out) {
    const field& f = fields[idx];
    if (auto e = single_value(f, "host address")) return e;
    const token& t = f[0];
    const std::string& text = t.text;
    out.text = text;
    ++idx;
    if (!t.quoted && text == "all") {
        out.kind = hba_address_kind::all;
        return std::nullopt;
    }
    if (!t.quoted && (text == "samehost" || text == "samenet")) {
        return error_at(t,
                        "address " + text + " is not supported; list the addresses as IP/masklen");
    }
    if (std::size_t slash = text.find('/'); slash != std::string::npos) {
        auto ip = parse_ip(text.substr(0, slash));
        if (!ip) return error_at(t, "invalid IP address " + quote(text.substr(0, slash)));
        std::string len = text.substr(slash + 1);
        int max_bits = ip->v6 ? 128 : 32;
        int bits = 0;
        // At most three digits: the value stays small (no overflow on a long digit run).
        bool ok = !len.empty() && len.size() <= 3;
        for (char c : len) {
            if (!ok) break;
            if (c < '0' || c > '9')
                ok = false;
            else
                bits = bits * 10 + (c - '0');
        }
        if (!ok || bits > max_bits)
            return error_at(t, "invalid CIDR mask in address " + quote(text));
        set_address(out, *ip, prefix_mask(bits));
        return std::nullopt;
    }
    auto ip = parse_ip(text);
    if (!ip) {
        if (looks_like_ip(text)) return error_at(t, "invalid IP address " + quote(text));
        return error_at(t, "host names are not supported: " + quote(text) +
                               " (use an IP address with a CIDR mask)");
    }
    // Two-field form: IP-ADDRESS IP-MASK.
    if (idx >= fields.size()) {
        return error_at(stop,
                        "end-of-line before netmask (an address without /masklen must be "
                        "followed by a mask)");
    }
    const field& mf = fields[idx];
    if (auto e = single_value(mf, "netmask")) return e;
    auto mask = parse_ip(mf[0].text);
    if (!mask) {
        return error_at(mf[0], "invalid IP mask " + quote(mf[0].text) +
                                   " (an address without /masklen must be followed by a mask)");
    }
    if (mask->v6 != ip->v6) return error_at(mf[0], "IP address and mask do not match");
    out.text += " " + mf[0].text;
    ++idx;
    set_address(out, *ip, mask->b);
    return std::nullopt;
}

std::optional<hba_error> parse_method(const token& t, hba_connection conn, hba_method& out) {
    const std::string& m = t.text;
    if (m == "trust")
        out = hba_method::trust;
    else if (m == "reject")
        out = hba_method::reject;
    else if (m == "password")
        out = hba_method::password;
    else if (m == "md5")
        out = hba_method::md5;
    else if (m == "scram-sha-256")
        out = hba_method::scram_sha_256;
    else if (m == "cert")
        out = hba_method::cert;
    else if (m == "peer")
        out = hba_method::peer;
    else if (m == "ident" && conn == hba_connection::local)
        out = hba_method::peer;  // documented: ident on a local socket means peer
    else if (m == "ident" || m == "ldap" || m == "gss" || m == "sspi" || m == "radius" ||
             m == "pam" || m == "bsd")
        return error_at(t, "authentication method " + quote(m) + " is not supported");
    else
        return error_at(t, "invalid authentication method " + quote(m));

    if (out == hba_method::peer && conn != hba_connection::local)
        return error_at(t, "peer authentication is only supported on local sockets");
    if (out == hba_method::cert && conn != hba_connection::hostssl)
        return error_at(t, "cert authentication is only supported on hostssl connections");
    return std::nullopt;
}

std::optional<hba_error> parse_option(const token& t, hba_rule& rule) {
    std::size_t eq = t.text.find('=');
    if (eq == std::string::npos || eq == 0)
        return error_at(t, "authentication option not in name=value format: " + quote(t.text));
    std::string name = t.text.substr(0, eq);
    std::string value = t.text.substr(eq + 1);
    if (name == "map") {
        if (rule.method != hba_method::peer && rule.method != hba_method::cert) {
            return error_at(t,
                            "authentication option \"map\" is only valid for authentication "
                            "methods peer and cert");
        }
        if (value.empty()) return error_at(t, "authentication option \"map\" needs a map name");
    } else if (name == "clientcert") {
        if (rule.connection != hba_connection::hostssl)
            return error_at(t, "clientcert can only be configured for \"hostssl\" rows");
        if (value != "verify-ca" && value != "verify-full") {
            return error_at(
                t, "invalid value for clientcert: " + quote(value) + " (verify-ca or verify-full)");
        }
        if (rule.method == hba_method::cert && value != "verify-full") {
            return error_at(t,
                            "clientcert can only be set to \"verify-full\" when using \"cert\" "
                            "authentication");
        }
    } else if (name == "clientname") {
        if (rule.connection != hba_connection::hostssl)
            return error_at(t, "clientname can only be configured for \"hostssl\" rows");
        if (value != "CN" && value != "DN")
            return error_at(t, "invalid value for clientname: " + quote(value) + " (CN or DN)");
    } else {
        return error_at(t, "unrecognized authentication option name: " + quote(name));
    }
    rule.options[name] = value;
    return std::nullopt;
}

bool is_include_directive(const token& t) {
    return !t.quoted &&
           (t.text == "include" || t.text == "include_if_exists" || t.text == "include_dir");
}

std::optional<hba_error> parse_hba_record(const logical_line& l,
                                          const hba_file::include_reader& include_file,
                                          std::vector<hba_rule>& rules) {
    std::vector<field> fields;
    position stop;
    if (auto e = tokenize(l, fields, stop)) return e;
    if (fields.empty()) return std::nullopt;

    hba_rule rule;
    rule.line = l.first_line;
    if (auto e = single_value(fields[0], "connection type")) return e;
    const token& type = fields[0][0];
    if (type.text == "local")
        rule.connection = hba_connection::local;
    else if (type.text == "host")
        rule.connection = hba_connection::host;
    else if (type.text == "hostssl")
        rule.connection = hba_connection::hostssl;
    else if (type.text == "hostnossl")
        rule.connection = hba_connection::hostnossl;
    else if (type.text == "hostgssenc" || type.text == "hostnogssenc")
        return error_at(type, "connection type " + quote(type.text) +
                                  " is not supported (no GSSAPI encryption)");
    else if (is_include_directive(type))
        return error_at(type, "include directives are not supported (" + type.text + ")");
    else
        return error_at(type, "invalid connection type " + quote(type.text));

    std::size_t idx = 1;
    if (idx >= fields.size()) return error_at(stop, "end-of-line before database specification");
    if (auto e = parse_name_list(fields[idx++], list_kind::database, include_file, rule.databases))
        return e;
    if (idx >= fields.size()) return error_at(stop, "end-of-line before role specification");
    if (auto e = parse_name_list(fields[idx++], list_kind::user, include_file, rule.users))
        return e;
    if (rule.connection != hba_connection::local) {
        if (idx >= fields.size())
            return error_at(stop, "end-of-line before IP address specification");
        if (auto e = parse_address(fields, idx, stop, rule.address)) return e;
    }
    if (idx >= fields.size()) return error_at(stop, "end-of-line before authentication method");
    if (auto e = single_value(fields[idx], "authentication type")) return e;
    if (auto e = parse_method(fields[idx][0], rule.connection, rule.method)) return e;
    for (++idx; idx < fields.size(); ++idx) {
        for (const token& t : fields[idx]) {
            if (auto e = parse_option(t, rule)) return e;
        }
    }
    rules.push_back(std::move(rule));
    return std::nullopt;
}

void parse_hba(std::string_view text, const hba_file::include_reader& include_file,
               std::vector<hba_rule>& rules, std::vector<hba_error>& errors) {
    // A broken record does not stop the others from being checked: --check reports all.
    for (const logical_line& l : split_records(text)) {
        if (auto e = parse_hba_record(l, include_file, rules)) errors.push_back(std::move(*e));
    }
}

std::optional<hba_error> parse_ident_record(const logical_line& l,
                                            std::vector<ident_entry>& entries) {
    std::vector<field> fields;
    position stop;
    if (auto e = tokenize(l, fields, stop)) return e;
    if (fields.empty()) return std::nullopt;
    if (fields.size() == 2 && is_include_directive(fields[0][0])) {
        return error_at(fields[0][0],
                        "include directives are not supported (" + fields[0][0].text + ")");
    }
    if (fields.size() == 1) return error_at(stop, "end-of-line before system user name");
    if (fields.size() == 2) return error_at(stop, "end-of-line before database user name");
    if (fields.size() > 3) {
        return error_at(fields[3][0],
                        "extra field " + quote(fields[3][0].text) +
                            " (an entry is MAPNAME SYSTEM-USERNAME DATABASE-USERNAME)");
    }
    for (const field& f : fields) {
        if (f.size() > 1) return error_at(f[1], "multiple values in an ident map field");
    }
    ident_entry e;
    e.line = l.first_line;
    e.map = fields[0][0].text;
    const token& sys = fields[1][0];
    e.system_user = sys.text;
    if (!sys.text.empty() && sys.text[0] == '/') {
        hba_name n;
        if (auto err = make_regex_name(sys, n)) return err;
        e.system_user = n.value;
        e.system_pattern = n.pattern;
    }
    const token& pg = fields[2][0];
    if (auto err = classify(pg, list_kind::user, e.pg_user)) return err;
    if (e.system_pattern && e.pg_user.kind == hba_name_kind::literal &&
        e.pg_user.value.find("\\1") != std::string::npos &&
        e.system_pattern->re.mark_count() == 0) {
        // PostgreSQL finds this only at login and then refuses it; the entry can never work,
        // so say so while the file is being loaded.
        return error_at(pg, "regular expression " + quote("/" + e.system_user) +
                                " has no capture group for \\1 in " + quote(pg.text));
    }
    entries.push_back(std::move(e));
    return std::nullopt;
}

void parse_ident(std::string_view text, std::vector<ident_entry>& entries,
                 std::vector<hba_error>& errors) {
    for (const logical_line& l : split_records(text)) {
        if (auto e = parse_ident_record(l, entries)) errors.push_back(std::move(*e));
    }
}

enum class verdict { no, yes, failed };

verdict search(const hba_regex& r, const std::string& subject, std::smatch* m = nullptr) {
    if (subject.size() > hba_max_regex_subject) return verdict::failed;
    try {
        bool found = m ? std::regex_search(subject, *m, r.re) : std::regex_search(subject, r.re);
        return found ? verdict::yes : verdict::no;
    } catch (...) {
        // error_complexity / error_stack: the name is peer input, so this is no reason to
        // throw, but it is no match either.
        return verdict::failed;
    }
}

bool is_member(const hba_file::group_check& in_group, const std::string& role,
               const std::string& user) {
    if (role == user) return true;  // PostgreSQL counts a role as a member of itself
    return in_group ? in_group(role, user) : false;
}

verdict match_database(const hba_rule& rule, const hba_request& r,
                       const hba_file::group_check& in_group) {
    for (const hba_name& n : rule.databases) {
        if (r.replication) {
            // A physical replication connection names no database: only the keyword fits.
            if (n.kind == hba_name_kind::replication) return verdict::yes;
            continue;
        }
        switch (n.kind) {
            case hba_name_kind::all:
                return verdict::yes;
            case hba_name_kind::sameuser:
                if (r.database == r.user) return verdict::yes;
                break;
            case hba_name_kind::samerole:
                if (is_member(in_group, r.database, r.user)) return verdict::yes;
                break;
            case hba_name_kind::replication:
                break;
            case hba_name_kind::group:
                break;  // not produced for databases
            case hba_name_kind::regex:
                if (verdict v = search(*n.pattern, r.database); v != verdict::no) return v;
                break;
            case hba_name_kind::literal:
                if (n.value == r.database) return verdict::yes;
                break;
        }
    }
    return verdict::no;
}

verdict match_user(const std::vector<hba_name>& names, const std::string& user,
                   const hba_file::group_check& in_group) {
    for (const hba_name& n : names) {
        switch (n.kind) {
            case hba_name_kind::all:
                return verdict::yes;
            case hba_name_kind::group:
                if (is_member(in_group, n.value, user)) return verdict::yes;
                break;
            case hba_name_kind::regex:
                if (verdict v = search(*n.pattern, user); v != verdict::no) return v;
                break;
            case hba_name_kind::literal:
                if (n.value == user) return verdict::yes;
                break;
            default:
                break;  // database keywords are not produced for users
        }
    }
    return verdict::no;
}

std::optional<ip_bytes> parse_client(const std::string& address) {
    std::string a = address.substr(0, address.find('%'));  // fe80::1%eth0: the zone is local
    auto ip = parse_ip(a);
    if (!ip) return std::nullopt;
    return canonical_client(*ip);
}

bool match_address(const hba_address& a, const std::optional<ip_bytes>& client) {
    if (a.kind == hba_address_kind::all) return true;
    if (!client) return false;
    std::size_t n;
    if (a.kind == hba_address_kind::ipv4 && !client->v6)
        n = 4;
    else if (a.kind == hba_address_kind::ipv6 && client->v6)
        n = 16;
    else
        return false;
    for (std::size_t i = 0; i < n; ++i) {
        if ((client->b[i] & a.mask[i]) != a.bytes[i]) return false;
    }
    return true;
}

bool match_connection(hba_connection c, const hba_request& r) {
    switch (c) {
        case hba_connection::local:
            return r.unix_socket;
        case hba_connection::host:
            return !r.unix_socket;
        case hba_connection::hostssl:
            return !r.unix_socket && r.tls;
        case hba_connection::hostnossl:
            return !r.unix_socket && !r.tls;
    }
    return false;
}

}  // namespace

const char* to_string(hba_method m) {
    switch (m) {
        case hba_method::trust:
            return "trust";
        case hba_method::reject:
            return "reject";
        case hba_method::password:
            return "password";
        case hba_method::md5:
            return "md5";
        case hba_method::scram_sha_256:
            return "scram-sha-256";
        case hba_method::cert:
            return "cert";
        case hba_method::peer:
            return "peer";
    }
    return "unknown";
}

const char* to_string(hba_connection c) {
    switch (c) {
        case hba_connection::local:
            return "local";
        case hba_connection::host:
            return "host";
        case hba_connection::hostssl:
            return "hostssl";
        case hba_connection::hostnossl:
            return "hostnossl";
    }
    return "unknown";
}

std::variant<hba_file, hba_error> hba_file::parse(std::string_view text,
                                                  const include_reader& include_file) {
    hba_file f;
    std::vector<hba_error> errors;
    parse_hba(text, include_file, f.rules_, errors);
    if (!errors.empty()) return errors.front();
    return f;
}

std::vector<hba_error> hba_file::check(std::string_view text, const include_reader& include_file) {
    std::vector<hba_rule> rules;
    std::vector<hba_error> errors;
    parse_hba(text, include_file, rules, errors);
    return errors;
}

const hba_rule* hba_file::match(const hba_request& r, const group_check& in_group) const {
    std::optional<ip_bytes> client;
    if (!r.unix_socket) client = parse_client(r.address);
    for (const hba_rule& rule : rules_) {
        if (!match_connection(rule.connection, r)) continue;
        if (rule.connection != hba_connection::local && !match_address(rule.address, client))
            continue;
        verdict v = match_database(rule, r, in_group);
        if (v == verdict::failed) return nullptr;
        if (v == verdict::no) continue;
        v = match_user(rule.users, r.user, in_group);
        if (v == verdict::failed) return nullptr;
        if (v == verdict::no) continue;
        return &rule;
    }
    return nullptr;
}

std::variant<ident_map, hba_error> ident_map::parse(std::string_view text) {
    ident_map m;
    std::vector<hba_error> errors;
    parse_ident(text, m.entries_, errors);
    if (!errors.empty()) return errors.front();
    return m;
}

std::vector<hba_error> ident_map::check(std::string_view text) {
    std::vector<ident_entry> entries;
    std::vector<hba_error> errors;
    parse_ident(text, entries, errors);
    return errors;
}

bool ident_map::allows(const std::string& name, const std::string& system_user,
                       const std::string& pg_user, const hba_file::group_check& in_group) const {
    for (const ident_entry& e : entries_) {
        if (e.map != name) continue;
        std::string expected = e.pg_user.value;
        if (e.system_pattern) {
            std::smatch m;
            if (search(*e.system_pattern, system_user, &m) != verdict::yes) continue;
            if (e.pg_user.kind == hba_name_kind::literal) {
                // Only the first \1 is replaced, as in PostgreSQL.
                if (std::size_t at = expected.find("\\1"); at != std::string::npos) {
                    std::string capture = m.size() > 1 && m[1].matched ? m[1].str() : "";
                    expected.replace(at, 2, capture);
                }
            }
        } else if (e.system_user != system_user) {
            continue;
        }
        switch (e.pg_user.kind) {
            case hba_name_kind::all:
                return true;
            case hba_name_kind::group:
                if (is_member(in_group, e.pg_user.value, pg_user)) return true;
                break;
            case hba_name_kind::regex:
                if (search(*e.pg_user.pattern, pg_user) == verdict::yes) return true;
                break;
            case hba_name_kind::literal:
                if (expected == pg_user) return true;
                break;
            default:
                break;
        }
    }
    return false;
}

}  // namespace sluice::auth
