#include "sluice/auth/hba.hpp"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

using namespace sluice::auth;

namespace {

using files = std::map<std::string, std::string>;

hba_file::include_reader reader(files f, std::vector<std::string>* asked = nullptr) {
    return [f = std::move(f), asked](const std::string& name) -> std::optional<std::string> {
        if (asked) asked->push_back(name);
        auto it = f.find(name);
        if (it == f.end()) return std::nullopt;
        return it->second;
    };
}

hba_file parse_ok(std::string_view text, const hba_file::include_reader& inc = {}) {
    auto r = hba_file::parse(text, inc);
    if (auto* e = std::get_if<hba_error>(&r)) {
        ADD_FAILURE() << "unexpected error " << e->line << ":" << e->column << ": " << e->message;
        return hba_file{};
    }
    return std::get<hba_file>(std::move(r));
}

hba_error parse_err(std::string_view text, const hba_file::include_reader& inc = {}) {
    auto r = hba_file::parse(text, inc);
    if (auto* e = std::get_if<hba_error>(&r)) return *e;
    ADD_FAILURE() << "expected an error for: " << text;
    return {};
}

ident_map ident_ok(std::string_view text) {
    auto r = ident_map::parse(text);
    if (auto* e = std::get_if<hba_error>(&r)) {
        ADD_FAILURE() << "unexpected error " << e->line << ":" << e->column << ": " << e->message;
        return ident_map{};
    }
    return std::get<ident_map>(std::move(r));
}

hba_error ident_err(std::string_view text) {
    auto r = ident_map::parse(text);
    if (auto* e = std::get_if<hba_error>(&r)) return *e;
    ADD_FAILURE() << "expected an error for: " << text;
    return {};
}

hba_request tcp(std::string address, std::string db = "db", std::string user = "u",
                bool tls = false) {
    hba_request r;
    r.address = std::move(address);
    r.database = std::move(db);
    r.user = std::move(user);
    r.tls = tls;
    return r;
}

hba_request unix_socket(std::string db = "db", std::string user = "u") {
    hba_request r;
    r.unix_socket = true;
    r.database = std::move(db);
    r.user = std::move(user);
    return r;
}

// Line of the rule that matches, 0 for none.
int line_of(const hba_file& f, const hba_request& r, const hba_file::group_check& g = {}) {
    const hba_rule* rule = f.match(r, g);
    return rule ? rule->line : 0;
}

bool in_cidr(const std::string& cidr, const std::string& client) {
    hba_file f = parse_ok("host all all " + cidr + " trust\n");
    return f.match(tcp(client)) != nullptr;
}

#define EXPECT_HBA_ERROR(err, l, c, fragment)                                  \
    do {                                                                       \
        hba_error e_ = (err);                                                  \
        EXPECT_EQ(e_.line, (l)) << e_.message;                                 \
        EXPECT_EQ(e_.column, (c)) << e_.message;                               \
        EXPECT_NE(e_.message.find(fragment), std::string::npos) << e_.message; \
    } while (0)

}  // namespace

// ---------------------------------------------------------------------------------------
// Parsing each form

TEST(HbaParse, LocalRecord) {
    hba_file f = parse_ok("local all all peer\n");
    ASSERT_EQ(f.rules().size(), 1u);
    const hba_rule& r = f.rules()[0];
    EXPECT_EQ(r.line, 1);
    EXPECT_EQ(r.connection, hba_connection::local);
    ASSERT_EQ(r.databases.size(), 1u);
    EXPECT_EQ(r.databases[0].kind, hba_name_kind::all);
    ASSERT_EQ(r.users.size(), 1u);
    EXPECT_EQ(r.users[0].kind, hba_name_kind::all);
    EXPECT_EQ(r.address.kind, hba_address_kind::none);
    EXPECT_EQ(r.method, hba_method::peer);
    EXPECT_TRUE(r.options.empty());
}

TEST(HbaParse, HostRecordsEveryConnectionTypeAndMethod) {
    hba_file f = parse_ok(
        "host      app  alice 10.0.0.0/8      scram-sha-256\n"
        "hostssl   app  alice 10.0.0.0/8      cert\n"
        "hostnossl app  alice 10.0.0.0/8      md5\n"
        "host      app  alice 10.0.0.0/8      password\n"
        "host      app  alice 10.0.0.0/8      trust\n"
        "host      app  alice 10.0.0.0/8      reject\n"
        "local     app  alice                 peer\n");
    ASSERT_EQ(f.rules().size(), 7u);
    const hba_method methods[] = {hba_method::scram_sha_256, hba_method::cert,  hba_method::md5,
                                  hba_method::password,      hba_method::trust, hba_method::reject,
                                  hba_method::peer};
    const char* names[] = {"scram-sha-256", "cert", "md5", "password", "trust", "reject", "peer"};
    for (int i = 0; i < 7; ++i) {
        EXPECT_EQ(f.rules()[i].line, i + 1);
        EXPECT_EQ(f.rules()[i].method, methods[i]);
        EXPECT_STREQ(to_string(f.rules()[i].method), names[i]);
    }
    EXPECT_EQ(f.rules()[0].connection, hba_connection::host);
    EXPECT_EQ(f.rules()[1].connection, hba_connection::hostssl);
    EXPECT_EQ(f.rules()[2].connection, hba_connection::hostnossl);
    EXPECT_STREQ(to_string(hba_connection::hostnossl), "hostnossl");
    const hba_rule& r = f.rules()[0];
    ASSERT_EQ(r.databases.size(), 1u);
    EXPECT_EQ(r.databases[0].kind, hba_name_kind::literal);
    EXPECT_EQ(r.databases[0].value, "app");
    EXPECT_EQ(r.users[0].value, "alice");
    EXPECT_EQ(r.address.kind, hba_address_kind::ipv4);
    EXPECT_EQ(r.address.text, "10.0.0.0/8");
    EXPECT_EQ(r.address.bytes[0], 10);
    EXPECT_EQ(r.address.mask[0], 0xff);
    EXPECT_EQ(r.address.mask[1], 0x00);
}

TEST(HbaParse, AddressAllMatchesAnyTcpClient) {
    hba_file f = parse_ok("host all all all md5\n");
    EXPECT_EQ(f.rules()[0].address.kind, hba_address_kind::all);
    EXPECT_EQ(line_of(f, tcp("192.0.2.1")), 1);
    EXPECT_EQ(line_of(f, tcp("2001:db8::1")), 1);
    EXPECT_EQ(line_of(f, tcp("")), 1);  // even without a usable address
    EXPECT_EQ(line_of(f, unix_socket()), 0);
}

TEST(HbaParse, TwoFieldMaskForm) {
    hba_file f = parse_ok(
        "host all all 127.0.0.1 255.255.255.255 trust\n"
        "host all all 192.168.0.0   255.255.0.0 md5\n"
        "host all all ::1 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff scram-sha-256\n");
    ASSERT_EQ(f.rules().size(), 3u);
    EXPECT_EQ(f.rules()[0].address.text, "127.0.0.1 255.255.255.255");
    EXPECT_EQ(f.rules()[0].method, hba_method::trust);
    EXPECT_EQ(f.rules()[1].method, hba_method::md5);
    EXPECT_EQ(f.rules()[2].address.kind, hba_address_kind::ipv6);
    EXPECT_EQ(line_of(f, tcp("127.0.0.1")), 1);
    EXPECT_EQ(line_of(f, tcp("127.0.0.2")), 0);
    EXPECT_EQ(line_of(f, tcp("192.168.255.255")), 2);
    EXPECT_EQ(line_of(f, tcp("192.169.0.0")), 0);
    EXPECT_EQ(line_of(f, tcp("::1")), 3);
    EXPECT_EQ(line_of(f, tcp("::2")), 0);
}

TEST(HbaParse, OptionsAreValidatedAndKept) {
    hba_file f = parse_ok(
        "local   all all peer map=local_map\n"
        "hostssl all all 0.0.0.0/0 cert map=certmap clientname=DN\n"
        "hostssl all all 0.0.0.0/0 scram-sha-256 clientcert=verify-ca\n"
        "hostssl all all 0.0.0.0/0 cert clientcert=verify-full,map=m2\n"
        "local   all all peer map=\"a map\"\n"
        "local   all all peer map=first map=second\n");
    ASSERT_EQ(f.rules().size(), 6u);
    EXPECT_EQ(f.rules()[0].options, (std::map<std::string, std::string>{{"map", "local_map"}}));
    EXPECT_EQ(f.rules()[1].options,
              (std::map<std::string, std::string>{{"map", "certmap"}, {"clientname", "DN"}}));
    EXPECT_EQ(f.rules()[2].options.at("clientcert"), "verify-ca");
    // A comma splits options inside one field, as in PostgreSQL.
    EXPECT_EQ(f.rules()[3].options,
              (std::map<std::string, std::string>{{"clientcert", "verify-full"}, {"map", "m2"}}));
    EXPECT_EQ(f.rules()[4].options.at("map"), "a map");
    EXPECT_EQ(f.rules()[5].options.at("map"), "second");  // last one wins
}

TEST(HbaParse, IdentOnALocalSocketMeansPeer) {
    // Documented PostgreSQL behaviour: "When specified for local connections, peer
    // authentication will be used instead."
    hba_file f = parse_ok("local all all ident map=m\n");
    EXPECT_EQ(f.rules()[0].method, hba_method::peer);
    EXPECT_EQ(f.rules()[0].options.at("map"), "m");
}

TEST(HbaParse, CommentsBlankLinesCrlfTabsAndNoFinalNewline) {
    hba_file f = parse_ok(
        "# TYPE DATABASE USER ADDRESS METHOD\n"
        "\n"
        "   \t  \n"
        "   # indented comment\r\n"
        "host\tall\tall\t127.0.0.1/32\tmd5   # trailing comment\r\n"
        "local all all trust#comment right after the method\n"
        "local \"a#b\" all trust");
    ASSERT_EQ(f.rules().size(), 3u);
    EXPECT_EQ(f.rules()[0].line, 5);
    EXPECT_EQ(f.rules()[0].method, hba_method::md5);
    EXPECT_TRUE(f.rules()[0].options.empty());
    EXPECT_EQ(f.rules()[1].line, 6);
    EXPECT_EQ(f.rules()[1].method, hba_method::trust);
    EXPECT_EQ(f.rules()[2].line, 7);
    EXPECT_EQ(f.rules()[2].databases[0].value, "a#b");  // '#' inside quotes is a character
}

TEST(HbaParse, EmptyFileAndOnlyCommentsRejectEveryone) {
    for (std::string_view text : {std::string_view(""), std::string_view("# nothing\n\n  \n")}) {
        hba_file f = parse_ok(text);
        EXPECT_TRUE(f.rules().empty());
        EXPECT_EQ(f.match(tcp("127.0.0.1")), nullptr);
        EXPECT_EQ(f.match(unix_socket()), nullptr);
    }
    EXPECT_EQ(hba_file{}.match(unix_socket()), nullptr);
}

TEST(HbaParse, LineContinuation) {
    hba_file f = parse_ok(
        "host all \\\n"
        "     all 10.0.0.0/8 \\\n"
        "     md5\n"
        "local al\\\n"
        "l all trust\n");
    ASSERT_EQ(f.rules().size(), 2u);
    EXPECT_EQ(f.rules()[0].line, 1);
    EXPECT_EQ(f.rules()[0].method, hba_method::md5);
    EXPECT_EQ(f.rules()[1].line, 4);
    // The backslash is removed and nothing is put in its place: "al" + "l" is "all".
    EXPECT_EQ(f.rules()[1].databases[0].kind, hba_name_kind::all);
}

TEST(HbaParse, ContinuationIsJoinedBeforeCommentsAsInPostgres) {
    // A comment that ends in a backslash takes the next line with it.
    hba_file f = parse_ok(
        "# comment \\\n"
        "local all all trust\n"
        "local all all reject\n");
    ASSERT_EQ(f.rules().size(), 1u);
    EXPECT_EQ(f.rules()[0].line, 3);
    // A backslash followed by a blank is no continuation.
    hba_error e = parse_err("local all all \\ \nmd5\n");
    EXPECT_EQ(e.line, 1);
}

TEST(HbaParse, ErrorOnAContinuedLineNamesThePhysicalPosition) {
    EXPECT_HBA_ERROR(parse_err("host all all \\\n"
                               "  10.0.0.0/40 md5\n"),
                     2, 3, "invalid CIDR mask");
    EXPECT_HBA_ERROR(parse_err("local all all\\\n"
                               "\n"),
                     1, 14, "end-of-line before authentication method");
}

TEST(HbaParse, ListsQuotingAndEscapedQuotes) {
    hba_file f = parse_ok(
        "local db1,db2, db3 \"all\",alice,\"two words\",\"a,b\" trust\n"
        "local \"say \"\"hi\"\"\" \"\" trust\n"
        "local ab\"c d\"e all trust\n");
    ASSERT_EQ(f.rules().size(), 3u);
    const auto& d = f.rules()[0].databases;
    ASSERT_EQ(d.size(), 3u);
    EXPECT_EQ(d[0].value, "db1");
    EXPECT_EQ(d[1].value, "db2");
    EXPECT_EQ(d[2].value, "db3");
    const auto& u = f.rules()[0].users;
    ASSERT_EQ(u.size(), 4u);
    EXPECT_EQ(u[0].kind, hba_name_kind::literal);
    EXPECT_EQ(u[0].value, "all");
    EXPECT_EQ(u[1].value, "alice");
    EXPECT_EQ(u[2].value, "two words");
    EXPECT_EQ(u[3].value, "a,b");
    EXPECT_EQ(f.rules()[1].databases[0].value, "say \"hi\"");
    EXPECT_EQ(f.rules()[1].users[0].kind, hba_name_kind::literal);
    EXPECT_EQ(f.rules()[1].users[0].value, "");
    EXPECT_EQ(f.rules()[2].databases[0].value, "abc de");
}

TEST(HbaParse, QuotedKeywordsAreLiteralNames) {
    hba_file f = parse_ok(
        "local \"all\" all trust\n"
        "local \"sameuser\",\"samerole\",\"replication\" \"+admins\" md5\n");
    EXPECT_EQ(f.rules()[0].databases[0].kind, hba_name_kind::literal);
    const auto& d = f.rules()[1].databases;
    for (const hba_name& n : d) EXPECT_EQ(n.kind, hba_name_kind::literal) << n.value;
    EXPECT_EQ(d[2].value, "replication");
    EXPECT_EQ(f.rules()[1].users[0].kind, hba_name_kind::literal);
    EXPECT_EQ(f.rules()[1].users[0].value, "+admins");

    // "all" matches only a database named all.
    EXPECT_EQ(line_of(f, unix_socket("all", "u")), 1);
    EXPECT_EQ(line_of(f, unix_socket("other", "u")), 0);
    // Quoted "replication" is the database called replication, for a normal login.
    EXPECT_EQ(line_of(f, unix_socket("replication", "+admins")), 2);
    EXPECT_EQ(line_of(f, unix_socket("replication", "admins")), 0);
    EXPECT_EQ(line_of(f, unix_socket("sameuser", "+admins")), 2);
    EXPECT_EQ(line_of(f, unix_socket("x", "x")), 0);  // no sameuser meaning
}

TEST(HbaParse, UserListKeywords) {
    hba_file f = parse_ok("local all +admins,all,/^svc_,bob trust\n");
    const auto& u = f.rules()[0].users;
    ASSERT_EQ(u.size(), 4u);
    EXPECT_EQ(u[0].kind, hba_name_kind::group);
    EXPECT_EQ(u[0].value, "admins");
    EXPECT_EQ(u[1].kind, hba_name_kind::all);
    EXPECT_EQ(u[2].kind, hba_name_kind::regex);
    EXPECT_EQ(u[2].value, "^svc_");
    EXPECT_NE(u[2].pattern, nullptr);
    EXPECT_EQ(u[3].kind, hba_name_kind::literal);
    // Database keywords mean nothing in the user field.
    hba_file g = parse_ok("local all sameuser,replication trust\n");
    EXPECT_EQ(g.rules()[0].users[0].kind, hba_name_kind::literal);
    EXPECT_EQ(g.rules()[0].users[1].kind, hba_name_kind::literal);
}

// ---------------------------------------------------------------------------------------
// Errors with exact positions

TEST(HbaErrors, UnknownConnectionType) {
    EXPECT_HBA_ERROR(parse_err("local all all trust\n"
                               "  hots all all 0.0.0.0/0 md5\n"),
                     2, 3, "invalid connection type \"hots\"");
    EXPECT_HBA_ERROR(parse_err("hostgssenc all all 0.0.0.0/0 md5\n"), 1, 1,
                     "connection type \"hostgssenc\" is not supported");
    EXPECT_HBA_ERROR(parse_err("include other.conf\n"), 1, 1, "include directives");
    EXPECT_HBA_ERROR(parse_err("local,host all all trust\n"), 1, 7,
                     "multiple values specified for connection type");
}

TEST(HbaErrors, UnsupportedAndUnknownMethods) {
    for (const char* m : {"ident", "ldap", "gss", "sspi", "radius", "pam", "bsd"}) {
        std::string text = std::string("# header\nhost all all 10.0.0.0/8 ") + m + " x=y\n";
        hba_error e = parse_err(text);
        EXPECT_EQ(e.line, 2) << m;
        EXPECT_EQ(e.column, 25) << m;
        EXPECT_EQ(e.message, std::string("authentication method \"") + m + "\" is not supported");
    }
    EXPECT_HBA_ERROR(parse_err("local all all trsut\n"), 1, 15,
                     "invalid authentication method \"trsut\"");
    EXPECT_HBA_ERROR(parse_err("local all all md5,trust\n"), 1, 19,
                     "multiple values specified for authentication type");
    // Method names are case-sensitive, as in PostgreSQL.
    EXPECT_HBA_ERROR(parse_err("local all all MD5\n"), 1, 15, "invalid authentication method");
}

TEST(HbaErrors, MethodOnTheWrongConnectionType) {
    EXPECT_HBA_ERROR(parse_err("host all all 0.0.0.0/0 peer\n"), 1, 24,
                     "peer authentication is only supported on local sockets");
    EXPECT_HBA_ERROR(parse_err("host all all 0.0.0.0/0 cert\n"), 1, 24,
                     "cert authentication is only supported on hostssl");
    EXPECT_HBA_ERROR(parse_err("local all all cert\n"), 1, 15, "only supported on hostssl");
    EXPECT_HBA_ERROR(parse_err("hostnossl all all 0.0.0.0/0 cert\n"), 1, 29, "hostssl");
}

TEST(HbaErrors, BadCidr) {
    struct bad {
        const char* address;
        const char* fragment;
    };
    const bad cases[] = {
        {"10.0.0.0/33", "invalid CIDR mask in address \"10.0.0.0/33\""},
        {"::/129", "invalid CIDR mask"},
        {"10.0.0.0/", "invalid CIDR mask"},
        {"10.0.0.0/x", "invalid CIDR mask"},
        {"10.0.0.0/-1", "invalid CIDR mask"},
        {"10.0.0.0/+8", "invalid CIDR mask"},
        {"10.0.0.0/0008", "invalid CIDR mask"},
        {"300.0.0.0/8", "invalid IP address \"300.0.0.0\""},
        {"10.0.0/8", "invalid IP address"},
        {"/8", "invalid IP address"},
        {"2001:db8:::1/64", "invalid IP address"},
        {"1.2.3.4.5", "invalid IP address"},
        {"fe80::1%eth0/64", "invalid IP address"},
    };
    for (const bad& b : cases) {
        std::string text =
            std::string("local all all trust\nhost  all all ") + b.address + " md5\n";
        hba_error e = parse_err(text);
        EXPECT_EQ(e.line, 2) << b.address;
        EXPECT_EQ(e.column, 15) << b.address;
        EXPECT_NE(e.message.find(b.fragment), std::string::npos) << b.address << ": " << e.message;
    }
}

TEST(HbaErrors, HostNamesAndSamehostAreRefused) {
    EXPECT_HBA_ERROR(parse_err("host all all localhost md5\n"), 1, 14,
                     "host names are not supported: \"localhost\"");
    EXPECT_HBA_ERROR(parse_err("host all all .example.com md5\n"), 1, 14, "host names");
    EXPECT_HBA_ERROR(parse_err("host all all samehost md5\n"), 1, 14, "samehost is not supported");
    EXPECT_HBA_ERROR(parse_err("host all all samenet md5\n"), 1, 14, "samenet is not supported");
    // Quoted "all" is a host called all: a host name.
    EXPECT_HBA_ERROR(parse_err("host all all \"all\" md5\n"), 1, 14, "host names");
    EXPECT_HBA_ERROR(parse_err("host all all 10.0.0.0/8,10.1.0.0/16 md5\n"), 1, 25,
                     "multiple values specified for host address");
}

TEST(HbaErrors, AnEmbeddedNulIsNotAnAddress) {
    std::string text = "host all all 127.0.0.1";
    text.push_back('\0');
    text += "junk/32 md5\n";
    EXPECT_HBA_ERROR(parse_err(text), 1, 14, "invalid IP address");
}

TEST(HbaErrors, TwoFieldFormMask) {
    EXPECT_HBA_ERROR(parse_err("host all all 127.0.0.1 md5\n"), 1, 24, "invalid IP mask \"md5\"");
    EXPECT_HBA_ERROR(parse_err("host all all 127.0.0.1\n"), 1, 23, "end-of-line before netmask");
    EXPECT_HBA_ERROR(parse_err("host all all 127.0.0.1 ffff:: md5\n"), 1, 24,
                     "IP address and mask do not match");
    EXPECT_HBA_ERROR(parse_err("host all all ::1 255.255.255.255 md5\n"), 1, 18, "do not match");
    EXPECT_HBA_ERROR(parse_err("host all all 127.0.0.1 255.255.255.255\n"), 1, 39,
                     "end-of-line before authentication method");
}

TEST(HbaErrors, WrongFieldCount) {
    EXPECT_HBA_ERROR(parse_err("local\n"), 1, 6, "end-of-line before database");
    EXPECT_HBA_ERROR(parse_err("local all\n"), 1, 10, "end-of-line before role");
    EXPECT_HBA_ERROR(parse_err("local all all\n"), 1, 14, "end-of-line before authentication");
    EXPECT_HBA_ERROR(parse_err("host all all\n"), 1, 13, "end-of-line before IP address");
    EXPECT_HBA_ERROR(parse_err("host all all 10.0.0.0/8\n"), 1, 24,
                     "end-of-line before authentication method");
    // A trailing comment: the position is where the fields stopped.
    EXPECT_HBA_ERROR(parse_err("local all all   # md5\n"), 1, 17, "end-of-line before");
    // Extra words after the method are options and must be name=value.
    EXPECT_HBA_ERROR(parse_err("local all all trust extra\n"), 1, 21,
                     "authentication option not in name=value format: \"extra\"");
}

TEST(HbaErrors, Options) {
    EXPECT_HBA_ERROR(parse_err("host all all 0.0.0.0/0 md5 map=m\n"), 1, 28,
                     "authentication option \"map\" is only valid for authentication methods "
                     "peer and cert");
    EXPECT_HBA_ERROR(parse_err("local all all trust map=m\n"), 1, 21, "only valid");
    EXPECT_HBA_ERROR(parse_err("local all all peer map=\n"), 1, 20, "needs a map name");
    EXPECT_HBA_ERROR(parse_err("host all all 0.0.0.0/0 md5 clientcert=verify-full\n"), 1, 28,
                     "clientcert can only be configured for \"hostssl\" rows");
    EXPECT_HBA_ERROR(parse_err("hostssl all all 0.0.0.0/0 md5 clientcert=1\n"), 1, 31,
                     "invalid value for clientcert: \"1\"");
    EXPECT_HBA_ERROR(parse_err("hostssl all all 0.0.0.0/0 cert clientcert=verify-ca\n"), 1, 32,
                     "clientcert can only be set to \"verify-full\"");
    EXPECT_HBA_ERROR(parse_err("hostssl all all 0.0.0.0/0 cert clientname=XX\n"), 1, 32,
                     "invalid value for clientname");
    EXPECT_HBA_ERROR(parse_err("host all all 0.0.0.0/0 md5 clientname=CN\n"), 1, 28,
                     "clientname can only be configured");
    EXPECT_HBA_ERROR(parse_err("host all all 0.0.0.0/0 md5 ldapserver=x\n"), 1, 28,
                     "unrecognized authentication option name: \"ldapserver\"");
    EXPECT_HBA_ERROR(parse_err("local all all peer =m\n"), 1, 20, "not in name=value format");
    EXPECT_HBA_ERROR(parse_err("local all all peer map=a,bogus\n"), 1, 26,
                     "not in name=value format: \"bogus\"");
}

TEST(HbaErrors, TokenizerErrors) {
    EXPECT_HBA_ERROR(parse_err("local all \"alice trust\n"), 1, 11, "unterminated quoted string");
    EXPECT_HBA_ERROR(parse_err("local ab\"cd all trust\n"), 1, 9, "unterminated");
    EXPECT_HBA_ERROR(parse_err("local db1,,db2 all trust\n"), 1, 11, "empty element in list");
    EXPECT_HBA_ERROR(parse_err("local ,db all trust\n"), 1, 7, "empty element in list");
    EXPECT_HBA_ERROR(parse_err("local all alice,\n"), 1, 16, "list ends with a comma");
    EXPECT_HBA_ERROR(parse_err("local all alice, # c\n"), 1, 16, "list ends with a comma");
    EXPECT_HBA_ERROR(parse_err("local all + trust\n"), 1, 11, "missing role name after \"+\"");
}

TEST(HbaErrors, RegexErrors) {
    EXPECT_HBA_ERROR(parse_err("local /[a all trust\n"), 1, 7,
                     "invalid regular expression \"/[a\"");
    EXPECT_HBA_ERROR(parse_err("local all / trust\n"), 1, 11, "empty regular expression");
}

TEST(HbaErrors, CheckReportsEveryErrorAndParseTheFirst) {
    std::string text =
        "local all all trust\n"
        "hots all all 0/0 md5\n"
        "local all all peer\n"
        "host all all 10.0.0.0/99 md5\n"
        "local all all ldap\n";
    std::vector<hba_error> all = hba_file::check(text, {});
    ASSERT_EQ(all.size(), 3u);
    EXPECT_EQ(all[0].line, 2);
    EXPECT_EQ(all[1].line, 4);
    EXPECT_EQ(all[1].column, 14);
    EXPECT_EQ(all[2].line, 5);
    EXPECT_EQ(all[2].column, 15);
    hba_error first = parse_err(text);
    EXPECT_EQ(first.line, 2);
    EXPECT_EQ(first.column, 1);
    EXPECT_TRUE(hba_file::check("local all all trust\n", {}).empty());
}

TEST(HbaErrors, EveryPrefixOfAFileParsesOrFailsCleanly) {
    // Truncating at every byte offset must never crash and must give positions inside
    // the text.
    const std::string text =
        "# c\n"
        "local   all  \"we ird\",+g,@inc  peer map=m\n"
        "host    db1,db2 all 10.1.2.0/23 scram-sha-256 # c\n"
        "hostssl all /^x_ 2001:db8::/32 cert clientcert=verify-full\n"
        "host all all 127.0.0.1 255.255.255.255 \\\n"
        "   md5\n";
    auto inc = reader({{"inc", "a, b\n\"c d\"\n"}});
    for (std::size_t n = 0; n <= text.size(); ++n) {
        std::string_view prefix(text.data(), n);
        auto r = hba_file::parse(prefix, inc);
        if (auto* e = std::get_if<hba_error>(&r)) {
            EXPECT_GE(e->line, 1) << n;
            EXPECT_LE(e->line, 6) << n;
            EXPECT_GE(e->column, 1) << n;
            EXPECT_FALSE(e->message.empty());
        }
    }
    EXPECT_EQ(parse_ok(text, inc).rules().size(), 4u);
}

// ---------------------------------------------------------------------------------------
// Matching

TEST(HbaMatch, FirstMatchWins) {
    hba_file f = parse_ok(
        "host all all 10.0.0.5/32 reject\n"
        "host all all 10.0.0.0/8  md5\n"
        "host all all 0.0.0.0/0   scram-sha-256\n");
    EXPECT_EQ(line_of(f, tcp("10.0.0.5")), 1);
    EXPECT_EQ(f.match(tcp("10.0.0.5"))->method, hba_method::reject);
    EXPECT_EQ(line_of(f, tcp("10.0.0.6")), 2);
    EXPECT_EQ(line_of(f, tcp("11.0.0.5")), 3);

    // The same rules the other way round: the broad rule shadows the narrow ones.
    hba_file g = parse_ok(
        "host all all 0.0.0.0/0   scram-sha-256\n"
        "host all all 10.0.0.0/8  md5\n"
        "host all all 10.0.0.5/32 reject\n");
    EXPECT_EQ(line_of(g, tcp("10.0.0.5")), 1);

    // A rule that matches the address but not the user does not stop the search.
    hba_file h = parse_ok(
        "host all alice 0.0.0.0/0 reject\n"
        "host app all   0.0.0.0/0 md5\n");
    EXPECT_EQ(line_of(h, tcp("1.2.3.4", "app", "alice")), 1);
    EXPECT_EQ(line_of(h, tcp("1.2.3.4", "app", "bob")), 2);
    EXPECT_EQ(line_of(h, tcp("1.2.3.4", "other", "bob")), 0);  // no rule: rejected
}

TEST(HbaMatch, Ipv4CidrEdges) {
    // /0: every IPv4 address, no IPv6 one.
    EXPECT_TRUE(in_cidr("0.0.0.0/0", "0.0.0.0"));
    EXPECT_TRUE(in_cidr("0.0.0.0/0", "255.255.255.255"));
    EXPECT_FALSE(in_cidr("0.0.0.0/0", "::1"));
    EXPECT_FALSE(in_cidr("0.0.0.0/0", "2001:db8::1"));
    // /32: exactly one.
    EXPECT_TRUE(in_cidr("192.0.2.7/32", "192.0.2.7"));
    EXPECT_FALSE(in_cidr("192.0.2.7/32", "192.0.2.6"));
    EXPECT_FALSE(in_cidr("192.0.2.7/32", "192.0.2.8"));
    // /24 boundaries.
    EXPECT_TRUE(in_cidr("192.168.1.0/24", "192.168.1.0"));
    EXPECT_TRUE(in_cidr("192.168.1.0/24", "192.168.1.255"));
    EXPECT_FALSE(in_cidr("192.168.1.0/24", "192.168.0.255"));
    EXPECT_FALSE(in_cidr("192.168.1.0/24", "192.168.2.0"));
    // A prefix that ends inside a byte: 10.0.2.0/23 is 10.0.2.0 - 10.0.3.255.
    EXPECT_TRUE(in_cidr("10.0.2.0/23", "10.0.2.0"));
    EXPECT_TRUE(in_cidr("10.0.2.0/23", "10.0.3.255"));
    EXPECT_FALSE(in_cidr("10.0.2.0/23", "10.0.1.255"));
    EXPECT_FALSE(in_cidr("10.0.2.0/23", "10.0.4.0"));
    // /1 and /31.
    EXPECT_TRUE(in_cidr("128.0.0.0/1", "128.0.0.0"));
    EXPECT_TRUE(in_cidr("128.0.0.0/1", "255.255.255.255"));
    EXPECT_FALSE(in_cidr("128.0.0.0/1", "127.255.255.255"));
    EXPECT_TRUE(in_cidr("10.0.0.4/31", "10.0.0.5"));
    EXPECT_FALSE(in_cidr("10.0.0.4/31", "10.0.0.6"));
    EXPECT_FALSE(in_cidr("10.0.0.4/31", "10.0.0.3"));
    // Host bits in the rule are ignored, as in PostgreSQL: 192.168.1.77/24 is the /24.
    EXPECT_TRUE(in_cidr("192.168.1.77/24", "192.168.1.1"));
    EXPECT_FALSE(in_cidr("192.168.1.77/24", "192.168.2.77"));
}

TEST(HbaMatch, Ipv6CidrEdges) {
    EXPECT_TRUE(in_cidr("::/0", "::"));
    EXPECT_TRUE(in_cidr("::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    EXPECT_TRUE(in_cidr("::/0", "2001:db8::1"));
    EXPECT_FALSE(in_cidr("::/0", "127.0.0.1"));
    // /128 exact, in any spelling.
    EXPECT_TRUE(in_cidr("::1/128", "::1"));
    EXPECT_TRUE(in_cidr("::1/128", "0:0:0:0:0:0:0:1"));
    EXPECT_FALSE(in_cidr("::1/128", "::2"));
    EXPECT_FALSE(in_cidr("::1/128", "::"));
    EXPECT_FALSE(in_cidr("::1/128", "127.0.0.1"));  // IPv4 loopback is another client
    // /32 boundaries.
    EXPECT_TRUE(in_cidr("2001:db8::/32", "2001:db8::"));
    EXPECT_TRUE(in_cidr("2001:db8::/32", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
    EXPECT_FALSE(in_cidr("2001:db8::/32", "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff"));
    EXPECT_FALSE(in_cidr("2001:db8::/32", "2001:db9::"));
    // /65: the boundary falls inside the ninth byte.
    EXPECT_TRUE(in_cidr("2001:db8:0:0:8000::/65", "2001:db8::8000:0:0:0"));
    EXPECT_TRUE(in_cidr("2001:db8:0:0:8000::/65", "2001:db8::ffff:ffff:ffff:ffff"));
    EXPECT_FALSE(in_cidr("2001:db8:0:0:8000::/65", "2001:db8::7fff:ffff:ffff:ffff"));
    EXPECT_FALSE(in_cidr("2001:db8:0:0:8000::/65", "2001:db8:0:1::"));
    // /127.
    EXPECT_TRUE(in_cidr("2001:db8::2/127", "2001:db8::3"));
    EXPECT_FALSE(in_cidr("2001:db8::2/127", "2001:db8::4"));
    EXPECT_FALSE(in_cidr("2001:db8::2/127", "2001:db8::1"));
    // A link-local client address comes with its zone; the zone is not part of the address.
    EXPECT_TRUE(in_cidr("fe80::/10", "fe80::1%eth0"));
}

TEST(HbaMatch, Ipv4MappedClientsMatchIpv4Rules) {
    hba_file f = parse_ok(
        "host all all ::1/128      md5\n"
        "host all all 127.0.0.1/32 trust\n"
        "host all all 10.0.0.0/8   password\n"
        "host all all ::/0         reject\n");
    EXPECT_EQ(line_of(f, tcp("::ffff:127.0.0.1")), 2);
    EXPECT_EQ(line_of(f, tcp("::FFFF:127.0.0.1")), 2);
    EXPECT_EQ(line_of(f, tcp("::ffff:7f00:1")), 2);  // the same address in hex
    EXPECT_EQ(line_of(f, tcp("127.0.0.1")), 2);
    EXPECT_EQ(line_of(f, tcp("::ffff:10.200.0.1")), 3);
    // A mapped client is the IPv4 client: IPv6 rules, even ::/0, do not see it.
    EXPECT_EQ(line_of(f, tcp("::ffff:192.0.2.1")), 0);
    EXPECT_EQ(line_of(f, tcp("::1")), 1);
    EXPECT_EQ(line_of(f, tcp("2001:db8::1")), 4);
    // Not mapped (::fffe:..., IPv4-compatible ::a.b.c.d): plain IPv6 clients.
    EXPECT_EQ(line_of(f, tcp("::fffe:127.0.0.1")), 4);
    EXPECT_EQ(line_of(f, tcp("::127.0.0.1")), 4);
}

TEST(HbaMatch, Ipv4MappedRulesAreIpv4Rules) {
    hba_file f = parse_ok("host all all ::ffff:10.0.0.0/104 trust\n");
    ASSERT_EQ(f.rules()[0].address.kind, hba_address_kind::ipv4);
    EXPECT_EQ(f.rules()[0].address.bytes[0], 10);
    EXPECT_EQ(f.rules()[0].address.mask[0], 0xff);
    EXPECT_EQ(f.rules()[0].address.mask[1], 0x00);
    EXPECT_EQ(line_of(f, tcp("10.1.2.3")), 1);
    EXPECT_EQ(line_of(f, tcp("::ffff:10.1.2.3")), 1);
    EXPECT_EQ(line_of(f, tcp("11.0.0.0")), 0);
    // A prefix shorter than /96 is about IPv6 in general and stays IPv6.
    hba_file g = parse_ok("host all all ::ffff:0:0/95 trust\n");
    EXPECT_EQ(g.rules()[0].address.kind, hba_address_kind::ipv6);
    EXPECT_EQ(line_of(g, tcp("10.1.2.3")), 0);
}

TEST(HbaMatch, UnusableClientAddressMatchesOnlyAll) {
    hba_file f = parse_ok(
        "host all all 0.0.0.0/0 md5\n"
        "host all all ::/0      md5\n"
        "host all all all       reject\n");
    EXPECT_EQ(line_of(f, tcp("")), 3);
    EXPECT_EQ(line_of(f, tcp("not-an-ip")), 3);
    EXPECT_EQ(line_of(f, tcp("1.2.3.4:5432")), 3);
}

TEST(HbaMatch, ConnectionTypes) {
    hba_file host = parse_ok("host all all 0.0.0.0/0 md5\n");
    EXPECT_EQ(line_of(host, tcp("1.2.3.4", "db", "u", false)), 1);
    EXPECT_EQ(line_of(host, tcp("1.2.3.4", "db", "u", true)), 1);
    EXPECT_EQ(line_of(host, unix_socket()), 0);

    hba_file ssl = parse_ok("hostssl all all 0.0.0.0/0 md5\n");
    EXPECT_EQ(line_of(ssl, tcp("1.2.3.4", "db", "u", true)), 1);
    EXPECT_EQ(line_of(ssl, tcp("1.2.3.4", "db", "u", false)), 0);
    EXPECT_EQ(line_of(ssl, unix_socket()), 0);

    hba_file nossl = parse_ok("hostnossl all all 0.0.0.0/0 md5\n");
    EXPECT_EQ(line_of(nossl, tcp("1.2.3.4", "db", "u", false)), 1);
    EXPECT_EQ(line_of(nossl, tcp("1.2.3.4", "db", "u", true)), 0);
    EXPECT_EQ(line_of(nossl, unix_socket()), 0);

    hba_file local = parse_ok("local all all trust\n");
    EXPECT_EQ(line_of(local, unix_socket()), 1);
    EXPECT_EQ(line_of(local, tcp("1.2.3.4")), 0);
    EXPECT_EQ(line_of(local, tcp("1.2.3.4", "db", "u", true)), 0);
    hba_request odd = unix_socket();
    odd.tls = true;  // meaningless on a unix socket; local still applies
    odd.address = "1.2.3.4";
    EXPECT_EQ(line_of(local, odd), 1);
    EXPECT_EQ(line_of(host, odd), 0);

    hba_file all = parse_ok(
        "hostnossl all all 0.0.0.0/0 password\n"
        "hostssl   all all 0.0.0.0/0 scram-sha-256\n"
        "host      all all 0.0.0.0/0 md5\n"
        "local     all all peer\n");
    EXPECT_EQ(line_of(all, tcp("1.2.3.4", "db", "u", false)), 1);
    EXPECT_EQ(line_of(all, tcp("1.2.3.4", "db", "u", true)), 2);
    EXPECT_EQ(line_of(all, unix_socket()), 4);
}

TEST(HbaMatch, DatabaseKeywords) {
    hba_file f = parse_ok(
        "local sameuser    all trust\n"
        "local samerole    all md5\n"
        "local samegroup   all password\n"
        "local replication all reject\n"
        "local app,\"All\"  all scram-sha-256\n");
    auto groups = [](const std::string& g, const std::string& u) {
        return g == "team" && u == "carol";
    };
    EXPECT_EQ(line_of(f, unix_socket("alice", "alice")), 1);  // database == user
    EXPECT_EQ(line_of(f, unix_socket("team", "carol"), groups), 2);
    EXPECT_EQ(line_of(f, unix_socket("team", "dave"), groups), 0);
    EXPECT_EQ(line_of(f, unix_socket("app", "dave")), 5);
    EXPECT_EQ(line_of(f, unix_socket("All", "dave")), 5);
    EXPECT_EQ(line_of(f, unix_socket("all", "dave")), 0);  // names are case-sensitive
    // `replication` never matches a normal login, even to a database named replication.
    EXPECT_EQ(line_of(f, unix_socket("replication", "dave")), 0);
    EXPECT_EQ(f.rules()[2].databases[0].kind, hba_name_kind::samerole);
}

TEST(HbaMatch, ReplicationConnectionsMatchOnlyTheReplicationKeyword) {
    hba_file f = parse_ok(
        "host all         all 0.0.0.0/0 trust\n"
        "host sameuser    all 0.0.0.0/0 trust\n"
        "host /.*         all 0.0.0.0/0 trust\n"
        "host replication all 0.0.0.0/0 scram-sha-256\n");
    hba_request r = tcp("1.2.3.4", "replicator", "replicator");
    r.replication = true;
    EXPECT_EQ(line_of(f, r), 4);
    r.replication = false;
    EXPECT_EQ(line_of(f, r), 1);
}

TEST(HbaMatch, GroupMembership) {
    hba_file f = parse_ok(
        "local all +admins trust\n"
        "local all all     reject\n");
    std::vector<std::pair<std::string, std::string>> asked;
    auto in_group = [&](const std::string& g, const std::string& u) {
        asked.emplace_back(g, u);
        return g == "admins" && u == "alice";
    };
    EXPECT_EQ(line_of(f, unix_socket("db", "alice"), in_group), 1);
    ASSERT_EQ(asked.size(), 1u);
    EXPECT_EQ(asked[0], (std::pair<std::string, std::string>{"admins", "alice"}));
    EXPECT_EQ(line_of(f, unix_socket("db", "bob"), in_group), 2);
    // Without an answer nobody is a member, except the role itself (PostgreSQL counts a
    // role as a member of itself).
    EXPECT_EQ(line_of(f, unix_socket("db", "alice")), 2);
    asked.clear();
    EXPECT_EQ(line_of(f, unix_socket("db", "admins"), in_group), 1);
    EXPECT_TRUE(asked.empty());
}

TEST(HbaMatch, RegexNames) {
    hba_file f = parse_ok(
        "local /^app_[0-9]+$ all trust\n"
        "local \"/^(a|b),c$\" all md5\n"
        "local all /^svc- password\n");
    EXPECT_EQ(line_of(f, unix_socket("app_12", "u")), 1);
    EXPECT_EQ(line_of(f, unix_socket("app_x", "u")), 0);
    EXPECT_EQ(line_of(f, unix_socket("xapp_1", "u")), 0);
    EXPECT_EQ(line_of(f, unix_socket("b,c", "u")), 2);  // quoted, so it may hold a comma
    EXPECT_EQ(line_of(f, unix_socket("db", "svc-batch")), 3);
    EXPECT_EQ(line_of(f, unix_socket("db", "my-svc-batch")), 0);  // anchored by ^
}

TEST(HbaMatch, RegexOnAnOverlongNameFailsClosed) {
    hba_file f = parse_ok(
        "local all /^nobody$ reject\n"
        "local all all       trust\n");
    EXPECT_EQ(line_of(f, unix_socket("db", "alice")), 2);
    // A name too long to run a regular expression on must not fall through to trust.
    EXPECT_EQ(f.match(unix_socket("db", std::string(hba_max_regex_subject + 1, 'a'))), nullptr);
    EXPECT_EQ(line_of(f, unix_socket("db", std::string(hba_max_regex_subject, 'a'))), 2);
}

// ---------------------------------------------------------------------------------------
// @file

TEST(HbaInclude, NamesFromAFile) {
    std::vector<std::string> asked;
    auto inc = reader({{"dbs.txt", "# databases\nsales, hr\n\"q a\" # quoted\n\n"},
                       {"users.txt", "+admins bob\n"}},
                      &asked);
    hba_file f = parse_ok("local @dbs.txt,extra @users.txt md5\n", inc);
    EXPECT_EQ(asked, (std::vector<std::string>{"dbs.txt", "users.txt"}));
    const auto& d = f.rules()[0].databases;
    ASSERT_EQ(d.size(), 4u);
    EXPECT_EQ(d[0].value, "sales");
    EXPECT_EQ(d[1].value, "hr");
    EXPECT_EQ(d[2].value, "q a");
    EXPECT_EQ(d[3].value, "extra");
    const auto& u = f.rules()[0].users;
    ASSERT_EQ(u.size(), 2u);
    EXPECT_EQ(u[0].kind, hba_name_kind::group);  // keywords work inside the file
    EXPECT_EQ(u[1].value, "bob");
    EXPECT_EQ(line_of(f, unix_socket("hr", "bob")), 1);
    EXPECT_EQ(line_of(f, unix_socket("q a", "bob")), 1);
    EXPECT_EQ(line_of(f, unix_socket("extra", "bob")), 1);
    EXPECT_EQ(line_of(f, unix_socket("q", "bob")), 0);
    EXPECT_EQ(line_of(f, unix_socket("hr", "carol")), 0);
}

TEST(HbaInclude, QuotedAtIsALiteralNameAndQuotedFileNamesWork) {
    std::vector<std::string> asked;
    auto inc = reader({{"my users", "x\n"}}, &asked);
    hba_file f = parse_ok("local \"@dbs\" @\"my users\" trust\n", inc);
    EXPECT_EQ(asked, (std::vector<std::string>{"my users"}));
    EXPECT_EQ(f.rules()[0].databases[0].value, "@dbs");
    EXPECT_EQ(f.rules()[0].users[0].value, "x");
}

TEST(HbaInclude, NestedIncludesResolveAgainstTheIncludingFile) {
    std::vector<std::string> asked;
    auto inc = reader({{"conf/users.txt", "alice @more.txt @/abs/list\n"},
                       {"conf/more.txt", "bob\n"},
                       {"/abs/list", "carol\n"}},
                      &asked);
    hba_file f = parse_ok("local all @conf/users.txt trust\n", inc);
    EXPECT_EQ(asked, (std::vector<std::string>{"conf/users.txt", "conf/more.txt", "/abs/list"}));
    ASSERT_EQ(f.rules()[0].users.size(), 3u);
    EXPECT_EQ(f.rules()[0].users[2].value, "carol");
}

TEST(HbaInclude, Errors) {
    auto inc = reader(
        {{"self", "a @self\n"}, {"broken", "ok\n  \"unterminated\n"}, {"badre", "fine\n/[x\n"}});
    EXPECT_HBA_ERROR(parse_err("local all all trust\nlocal all @missing trust\n", inc), 2, 11,
                     "could not read @file \"missing\"");
    // No reader at all: every @file is unreadable.
    EXPECT_HBA_ERROR(parse_err("local @dbs all trust\n"), 1, 7, "could not read @file \"dbs\"");
    EXPECT_HBA_ERROR(parse_err("local all @self trust\n", inc), 1, 11, "nested more than 10");
    EXPECT_HBA_ERROR(parse_err("local all @broken trust\n", inc), 1, 11,
                     "in @file \"broken\" line 2 column 3: unterminated quoted string");
    EXPECT_HBA_ERROR(parse_err("local all @badre trust\n", inc), 1, 11,
                     "(in @file \"badre\" line 2)");
    EXPECT_HBA_ERROR(parse_err("local all @ trust\n", inc), 1, 11, "missing file name after");
}

TEST(HbaInclude, EmptyFileGivesAnEmptyListThatMatchesNothing) {
    hba_file f = parse_ok("local all @empty trust\n", reader({{"empty", "# none\n"}}));
    EXPECT_TRUE(f.rules()[0].users.empty());
    EXPECT_EQ(f.match(unix_socket()), nullptr);
}

// ---------------------------------------------------------------------------------------
// pg_ident.conf

TEST(IdentMap, ExactEntries) {
    ident_map m = ident_ok(
        "# MAPNAME SYSTEM-USERNAME PG-USERNAME\n"
        "omicron   bryanh          bryanh\n"
        "omicron   ann             ann\n"
        "omicron   robert          bob\n"
        "omicron   bryanh          guest1\n"
        "other     robert          robert\n");
    ASSERT_EQ(m.entries().size(), 5u);
    EXPECT_EQ(m.entries()[0].line, 2);
    EXPECT_TRUE(m.allows("omicron", "bryanh", "bryanh"));
    EXPECT_TRUE(m.allows("omicron", "bryanh", "guest1"));
    EXPECT_TRUE(m.allows("omicron", "robert", "bob"));
    EXPECT_FALSE(m.allows("omicron", "robert", "robert"));  // only through map "other"
    EXPECT_TRUE(m.allows("other", "robert", "robert"));
    EXPECT_FALSE(m.allows("omicron", "ann", "bob"));
    EXPECT_FALSE(m.allows("omicron", "Ann", "ann"));  // case-sensitive
    EXPECT_FALSE(m.allows("OMICRON", "ann", "ann"));
    EXPECT_FALSE(m.allows("nosuchmap", "ann", "ann"));
    EXPECT_FALSE(ident_map{}.allows("omicron", "ann", "ann"));
}

TEST(IdentMap, RegexAndCaptureSubstitution) {
    ident_map m = ident_ok(
        "mymap /^(.*)@mydomain\\.com$    \\1\n"
        "mymap /^(.*)@otherdomain\\.com$ guest\n"
        "mymap \"/^([a-z]+),ou$\"         \"\\1_x\"\n");
    EXPECT_TRUE(m.allows("mymap", "alice@mydomain.com", "alice"));
    EXPECT_FALSE(m.allows("mymap", "alice@mydomain.com", "bob"));
    EXPECT_FALSE(m.allows("mymap", "alice@mydomain.com", "\\1"));
    EXPECT_FALSE(m.allows("mymap", "alice@mydomainXcom", "alice"));  // the dot is escaped
    EXPECT_TRUE(m.allows("mymap", "joe@otherdomain.com", "guest"));
    EXPECT_FALSE(m.allows("mymap", "joe@otherdomain.com", "joe"));
    // Quoted: the comma is part of the pattern, and \1 is still substituted.
    EXPECT_TRUE(m.allows("mymap", "cn,ou", "cn_x"));
    EXPECT_FALSE(m.allows("mymap", "cn,ou", "\\1_x"));
    EXPECT_FALSE(m.allows("othermap", "alice@mydomain.com", "alice"));
}

TEST(IdentMap, RegexIsASearchUnlessAnchored) {
    ident_map m = ident_ok("m /admin postgres\n");
    EXPECT_TRUE(m.allows("m", "admin", "postgres"));
    EXPECT_TRUE(m.allows("m", "sysadmins", "postgres"));
    EXPECT_FALSE(m.allows("m", "root", "postgres"));
}

TEST(IdentMap, OnlyTheFirstBackreferenceIsReplaced) {
    ident_map m = ident_ok("m /^(\\w+)$ \\1-\\1\n");
    EXPECT_TRUE(m.allows("m", "ann", "ann-\\1"));
    EXPECT_FALSE(m.allows("m", "ann", "ann-ann"));
}

TEST(IdentMap, CaptureThatDidNotParticipateIsEmpty) {
    ident_map m = ident_ok("m /^(x)?y$ p\\1q\n");
    EXPECT_TRUE(m.allows("m", "xy", "pxq"));
    EXPECT_TRUE(m.allows("m", "y", "pq"));
}

TEST(IdentMap, BackslashOneIsLiteralForAnExactSystemUser) {
    ident_map m = ident_ok("m alice \\1\n");
    EXPECT_TRUE(m.allows("m", "alice", "\\1"));
    EXPECT_FALSE(m.allows("m", "alice", "alice"));
}

TEST(IdentMap, DatabaseUserKeywords) {
    ident_map m = ident_ok(
        "m root   all\n"
        "m ops    +dba\n"
        "m batch  /^etl_\n"
        "m lit    \"all\"\n");
    EXPECT_TRUE(m.allows("m", "root", "anyone"));
    auto in_group = [](const std::string& g, const std::string& u) {
        return g == "dba" && u == "carol";
    };
    EXPECT_TRUE(m.allows("m", "ops", "carol", in_group));
    EXPECT_FALSE(m.allows("m", "ops", "dave", in_group));
    EXPECT_FALSE(m.allows("m", "ops", "carol"));
    EXPECT_TRUE(m.allows("m", "ops", "dba"));  // a role is a member of itself
    EXPECT_TRUE(m.allows("m", "batch", "etl_load"));
    EXPECT_FALSE(m.allows("m", "batch", "load_etl"));
    EXPECT_TRUE(m.allows("m", "lit", "all"));
    EXPECT_FALSE(m.allows("m", "lit", "anyone"));
}

TEST(IdentMap, CommentsContinuationAndCrlf) {
    ident_map m = ident_ok(
        "m \\\r\n"
        "  alice   bob   # trailing\r\n"
        "\n"
        "\t# only a comment\n"
        "m carol carol");
    ASSERT_EQ(m.entries().size(), 2u);
    EXPECT_EQ(m.entries()[0].line, 1);
    EXPECT_EQ(m.entries()[1].line, 5);
    EXPECT_TRUE(m.allows("m", "alice", "bob"));
    EXPECT_TRUE(m.allows("m", "carol", "carol"));
}

TEST(IdentMap, EmptyFileAllowsNothing) {
    ident_map m = ident_ok("");
    EXPECT_TRUE(m.entries().empty());
    EXPECT_FALSE(m.allows("m", "a", "a"));
}

TEST(IdentMap, OverlongSystemUserNeverMatchesARegex) {
    ident_map m = ident_ok("m /^a+$ x\n");
    EXPECT_TRUE(m.allows("m", std::string(hba_max_regex_subject, 'a'), "x"));
    EXPECT_FALSE(m.allows("m", std::string(hba_max_regex_subject + 1, 'a'), "x"));
}

TEST(IdentErrors, Positions) {
    EXPECT_HBA_ERROR(ident_err("m alice bob\nm alice\n"), 2, 8,
                     "end-of-line before database user name");
    EXPECT_HBA_ERROR(ident_err("m\n"), 1, 2, "end-of-line before system user name");
    EXPECT_HBA_ERROR(ident_err("m alice bob carol\n"), 1, 13, "extra field \"carol\"");
    EXPECT_HBA_ERROR(ident_err("m alice bob,carol\n"), 1, 13, "multiple values");
    EXPECT_HBA_ERROR(ident_err("m /(a bob\n"), 1, 3, "invalid regular expression \"/(a\"");
    EXPECT_HBA_ERROR(ident_err("m /^a$ \\1\n"), 1, 8, "no capture group for \\1");
    EXPECT_HBA_ERROR(ident_err("m \"alice bob\n"), 1, 3, "unterminated quoted string");
    EXPECT_HBA_ERROR(ident_err("include other.conf\n"), 1, 1, "include directives");
}

TEST(IdentErrors, CheckReportsEveryError) {
    std::vector<hba_error> all = ident_map::check("m a b\nm a\nm a b\nm /[ b\n");
    ASSERT_EQ(all.size(), 2u);
    EXPECT_EQ(all[0].line, 2);
    EXPECT_EQ(all[1].line, 4);
    EXPECT_TRUE(ident_map::check("m a b\n").empty());
}

TEST(HbaParse, RegexWithNestedQuantifiersIsRefused) {
    // Exponential backtracking in std::regex (the hba fuzz target found `^(.**)@...`).
    for (const char* re : {"/^(.**)@example", "/(a+)+", "/(.*x)*", "/a**", "/(a?*)",
                           "/((a*)b)+"}) {
        hba_error e = parse_err(std::string("local all ") + re + " trust\n");
        EXPECT_NE(e.message.find("nested quantifiers"), std::string::npos) << re << ": " << e.message;
    }
    for (const char* re : {"/^(.*)@example\\.com$", "/^[a-z]+_ro$", "/(ab)?c", "/a*?b", "/(a|b)+",
                           "/[*+]+", "/\\*+", "/(a+){3}", "/^(?:x|y)*$"}) {
        hba_file f = parse_ok(std::string("local all ") + re + " trust\n");
        EXPECT_EQ(f.rules().size(), 1u) << re;
    }
}

TEST(HbaParse, RegexWithADigitRunOfMoreThanNineIsRefused) {
    // std::regex's compiler overflows a signed int on a long repetition count or
    // back-reference (the hba fuzz target found it); nine digits still compile.
    for (const char* re : {"/a{12345678901}", "/(a)\\99999999999", "/x1234567890"}) {
        hba_error e = parse_err(std::string("local all ") + re + " trust\n");
        EXPECT_NE(e.message.find("more than 9 digits"), std::string::npos) << re << ": " << e.message;
    }
    hba_file f = parse_ok("local all /^u123456789$ trust\n");
    EXPECT_EQ(f.rules().size(), 1u);
}
