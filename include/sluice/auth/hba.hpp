#pragma once
// PostgreSQL's pg_hba.conf and pg_ident.conf formats (PostgreSQL documentation, "The
// pg_hba.conf File" and "User Name Maps"), parsed and matched without I/O: @file references
// are read through a callback, group membership is answered by a callback, and addresses
// are compared as bytes. Records are read the way PostgreSQL 16 reads them, so an existing
// file keeps its meaning; what Sluice cannot honour (host names, samehost/samenet, ldap,
// gss, ...) is an error with its position, never a rule that silently matches differently.
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace sluice::auth {

enum class hba_connection { local, host, hostssl, hostnossl };
enum class hba_method { trust, reject, password, md5, scram_sha_256, cert, peer };

// "trust", "reject", "password", "md5", "scram-sha-256", "cert", "peer": PostgreSQL's spelling.
const char* to_string(hba_method m);
// "local", "host", "hostssl", "hostnossl".
const char* to_string(hba_connection c);

struct hba_error {
    int line = 0;    // 1-based
    int column = 0;  // 1-based, in bytes
    std::string message;
};

// The login being checked.
struct hba_request {
    bool unix_socket = false;  // connection came over a Unix-domain socket
    bool tls = false;          // TCP connection that is using TLS
    // Textual peer IP for TCP. An IPv4-mapped IPv6 address ("::ffff:127.0.0.1", what a
    // dual-stack socket reports for an IPv4 client) is the IPv4 client it stands for; a
    // trailing "%zone" is ignored. Empty for unix.
    std::string address;
    std::string database;
    std::string user;
    // A physical replication connection (startup parameter replication=true): as in
    // PostgreSQL, it matches only the database keyword `replication`, and a normal login
    // never matches that keyword.
    bool replication = false;
};

// A compiled regular expression (std::regex, ECMAScript grammar); opaque so that this
// header does not pull in <regex>.
struct hba_regex;

// One entry of a database or user list, or the database-username of an ident map entry.
enum class hba_name_kind {
    literal,      // value is the exact name (a quoted keyword is a literal)
    all,          // `all`
    sameuser,     // `sameuser` (database only): database == user
    samerole,     // `samerole` or `samegroup` (database only): user is a member of the
                  // role named like the database
    replication,  // `replication` (database only)
    group,        // `+role`: members of role `value`
    regex,        // `/pattern`: value is the pattern without the slash; a search, so
                  // anchor it with ^...$ to match a whole name (PostgreSQL's rule)
};

struct hba_name {
    hba_name_kind kind = hba_name_kind::literal;
    std::string value;
    std::shared_ptr<const hba_regex> pattern;  // set when kind == regex
};

enum class hba_address_kind {
    none,  // local rules have no address
    all,   // `all`
    ipv4,  // bytes[0..4) / mask[0..4)
    ipv6,  // bytes / mask
};

struct hba_address {
    hba_address_kind kind = hba_address_kind::none;
    // Network order. An IPv6 rule inside ::ffff:0:0/96 is stored as the IPv4 rule it means,
    // so that it matches the same clients whether they arrive on an IPv4 or a dual-stack
    // socket.
    std::array<std::uint8_t, 16> bytes{};
    std::array<std::uint8_t, 16> mask{};
    std::string text;  // as written: "10.0.0.0/8", "127.0.0.1 255.255.255.255", "all"
};

struct hba_rule {
    int line = 0;  // line where the record starts
    hba_connection connection = hba_connection::local;
    std::vector<hba_name> databases;  // @file references already expanded
    std::vector<hba_name> users;      // @file references already expanded
    hba_address address;              // kind none for local
    hba_method method = hba_method::reject;
    // Validated name=value options: map (peer, cert), clientcert (hostssl: verify-ca |
    // verify-full; cert rules imply verify-full as in PostgreSQL, without it being listed
    // here), clientname (hostssl: CN | DN). A repeated option: the last one wins, as in
    // PostgreSQL.
    std::map<std::string, std::string> options;
};

class hba_file {
public:
    using include_reader = std::function<std::optional<std::string>(const std::string&)>;
    using group_check = std::function<bool(const std::string& group, const std::string& user)>;

    hba_file() = default;  // no rules: every login is rejected

    // include_file(name) returns the contents of an @file reference, or nullopt if it cannot
    // be read (an error at the @ token). Names are passed as written, except that a relative
    // name inside an included file is prefixed with that file's directory part ("sub/a"
    // including "b" asks for "sub/b"), since PostgreSQL resolves it against the including
    // file; the caller resolves what is still relative against pg_hba.conf's directory.
    // Returns the first error.
    static std::variant<hba_file, hba_error> parse(std::string_view text,
                                                   const include_reader& include_file);
    // Every error, in file order (for --check); empty when parse() would succeed.
    static std::vector<hba_error> check(std::string_view text, const include_reader& include_file);

    // First rule whose connection type, address, database and user match; nullptr = no match
    // (a rejection, as in PostgreSQL). in_group(group, user) answers +group and samerole
    // membership (a role is always a member of itself, without asking); when it is not
    // known it returns false, and an empty function means "not a member".
    // A regular expression that fails at run time (too complex, or a name longer than
    // hba_max_regex_subject) ends the search with nullptr: a failure never falls through to
    // a later, possibly more permissive rule.
    const hba_rule* match(const hba_request& r, const group_check& in_group = {}) const;

    const std::vector<hba_rule>& rules() const { return rules_; }

private:
    std::vector<hba_rule> rules_;
};

// Longest name a regular expression is run on: 64 bytes, the longest certificate CN
// (X.509 ub-common-name), past PostgreSQL's 63-byte names. std::regex backtracks and
// recurses per character, so a client must not choose long subjects; the patterns
// themselves come from the operator (a pathological one can still be slow).
inline constexpr std::size_t hba_max_regex_subject = 64;

// One pg_ident.conf entry: MAPNAME SYSTEM-USERNAME DATABASE-USERNAME.
struct ident_entry {
    int line = 0;
    std::string map;
    std::string system_user;                          // pattern without '/' when regex
    std::shared_ptr<const hba_regex> system_pattern;  // set when system-username is /regex
    // literal (may contain \1, substituted from system_pattern's first capture, quoted or
    // not, as in PostgreSQL), all, group (+role) or regex (/pattern, no substitution).
    hba_name pg_user;
};

class ident_map {  // pg_ident.conf: MAPNAME SYSTEM-USERNAME PG-USERNAME
public:
    ident_map() = default;  // no maps: nothing is allowed

    static std::variant<ident_map, hba_error> parse(std::string_view text);
    static std::vector<hba_error> check(std::string_view text);

    // True if map `name` lets system user `system_user` (OS user for peer, certificate CN
    // for cert) log in as `pg_user`. Names compare case-sensitively. A system-username
    // starting with '/' is a regular expression (ECMAScript grammar, searched, not
    // anchored), and the first \1 in the database-username is replaced by its first
    // capture. in_group answers +role database-usernames (PostgreSQL 16), as in
    // hba_file::match. An unknown map allows nothing.
    bool allows(const std::string& name, const std::string& system_user, const std::string& pg_user,
                const hba_file::group_check& in_group = {}) const;

    const std::vector<ident_entry>& entries() const { return entries_; }

private:
    std::vector<ident_entry> entries_;
};

}  // namespace sluice::auth
