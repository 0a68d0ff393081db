// PgBouncer's auth_file format (pgbouncer src/loader.c, load_auth_file):
//   "user" "secret" [anything]
// A doubled quote inside a field is one quote. Lines whose first non-blank character is ';'
// are comments. PgBouncer stops at the first broken line; Sluice reports it with line and
// column and keeps loading the good lines, so one typo does not lock every user out.
#include "sluice/auth/userlist.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string_view>

namespace sluice::auth {

namespace {

bool is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

// Reads a quoted field starting at line[pos] == '"'. On success returns the unescaped
// value and leaves pos after the closing quote.
std::optional<std::string> read_quoted(std::string_view line, std::size_t& pos) {
    std::string out;
    std::size_t i = pos + 1;
    while (i < line.size()) {
        char c = line[i];
        if (c == '"') {
            if (i + 1 < line.size() && line[i + 1] == '"') {
                out.push_back('"');
                i += 2;
                continue;
            }
            pos = i + 1;
            return out;
        }
        out.push_back(c);
        ++i;
    }
    return std::nullopt;
}

}  // namespace

std::optional<std::string> userlist::find(const std::string& user) const {
    auto it = secrets.find(user);
    if (it == secrets.end()) return std::nullopt;
    return it->second;
}

userlist parse_userlist(const std::string& text) {
    userlist result;
    std::string_view rest(text);
    int line_no = 0;
    while (!rest.empty()) {
        ++line_no;
        std::size_t nl = rest.find('\n');
        std::string_view line = rest.substr(0, nl);
        rest = nl == std::string_view::npos ? std::string_view{} : rest.substr(nl + 1);

        auto error = [&](std::size_t pos, std::string message) {
            result.errors.push_back({line_no, static_cast<int>(pos) + 1, std::move(message)});
        };

        std::size_t pos = 0;
        while (pos < line.size() && is_blank(line[pos])) ++pos;
        if (pos == line.size() || line[pos] == ';') continue;
        if (line[pos] != '"') {
            error(pos, "expected '\"' to start the user name");
            continue;
        }
        std::size_t user_start = pos;
        auto user = read_quoted(line, pos);
        if (!user) {
            error(user_start, "unterminated quoted user name");
            continue;
        }
        // PgBouncer skips anything up to the next quote here; so do we, within the line.
        std::size_t after_user = pos;
        while (pos < line.size() && line[pos] != '"') ++pos;
        if (pos == line.size()) {
            // Point at the first non-blank after the user, or the end of the line.
            std::size_t at = after_user;
            while (at < line.size() && is_blank(line[at])) ++at;
            error(at, "missing quoted secret after the user name");
            continue;
        }
        std::size_t secret_start = pos;
        auto secret = read_quoted(line, pos);
        if (!secret) {
            error(secret_start, "unterminated quoted secret");
            continue;
        }
        if (user->empty()) {
            error(user_start, "empty user name");
            continue;
        }
        // Anything after the secret is ignored, as PgBouncer does. A repeated user takes the
        // later secret, also as PgBouncer.
        result.secrets[std::move(*user)] = std::move(*secret);
    }
    return result;
}

userlist load_userlist(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        userlist result;
        result.errors.push_back({0, 0, "cannot open " + path + ": " + std::strerror(errno)});
        return result;
    }
    std::ostringstream buf;
    buf << in.rdbuf();
    if (in.bad()) {
        userlist result;
        result.errors.push_back({0, 0, "cannot read " + path});
        return result;
    }
    return parse_userlist(buf.str());
}

}  // namespace sluice::auth
