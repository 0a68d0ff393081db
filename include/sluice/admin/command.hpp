#pragma once
// Console command parsing, pure (no I/O, no runtime): a Query message's text is split into
// statements and each is parsed into a `command`, or rejected with a message for the
// client. Header-only so that unit tests (which link only the pure modules) can use it.
//
// Grammar (case-insensitive keywords, as PgBouncer's console):
//   SHOW subject [more words]        SET key [=|TO] value
//   PAUSE|RESUME|KILL|RECONNECT|WAIT_CLOSE [db]
//   ENABLE|DISABLE db   KILL_CLIENT id   RELOAD   SUSPEND
//   SHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS]
// Identifiers may be double-quoted (case kept); SET values may be single-quoted.
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::admin {

inline std::string to_upper(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = char(std::toupper(static_cast<unsigned char>(c)));
    return out;
}
inline std::string to_lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

// Splits on ';' outside single and double quotes. Statements are trimmed; empty ones are
// dropped (an all-empty query yields no statements: EmptyQueryResponse).
inline std::vector<std::string> split_statements(std::string_view sql) {
    std::vector<std::string> out;
    std::string cur;
    char quote = 0;
    auto flush = [&] {
        auto b = cur.find_first_not_of(" \t\r\n\f\v");
        if (b != std::string::npos) {
            auto e = cur.find_last_not_of(" \t\r\n\f\v");
            out.push_back(cur.substr(b, e - b + 1));
        }
        cur.clear();
    };
    for (char c : sql) {
        if (quote) {
            if (c == quote) quote = 0;
            cur.push_back(c);
        } else if (c == '\'' || c == '"') {
            quote = c;
            cur.push_back(c);
        } else if (c == ';') {
            flush();
        } else {
            cur.push_back(c);
        }
    }
    flush();
    return out;
}

struct token {
    enum kind_t { word, quoted_ident, literal, equals } kind = word;
    std::string text;  // words as written; quotes removed from quoted forms
};

// Returns nullopt (with `error`) on an unterminated quote or an unexpected character.
inline std::optional<std::vector<token>> tokenize(std::string_view s, std::string& error) {
    std::vector<token> out;
    std::size_t i = 0;
    auto word_char = [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-' ||
               c == '+' || c == ':' || c == '/' || c == '*' || c == ',' ||
               static_cast<unsigned char>(c) >= 0x80;
    };
    while (i < s.size()) {
        char c = s[i];
        if (std::isspace(static_cast<unsigned char>(c))) {
            ++i;
        } else if (c == '=') {
            out.push_back({token::equals, "="});
            ++i;
        } else if (c == '\'' || c == '"') {
            // SQL quoting: a doubled quote stands for itself.
            std::string text;
            std::size_t j = i + 1;
            bool closed = false;
            while (j < s.size()) {
                if (s[j] == c) {
                    if (j + 1 < s.size() && s[j + 1] == c) {
                        text.push_back(c);
                        j += 2;
                        continue;
                    }
                    closed = true;
                    ++j;
                    break;
                }
                text.push_back(s[j++]);
            }
            if (!closed) {
                error = "unterminated quoted string";
                return std::nullopt;
            }
            out.push_back({c == '"' ? token::quoted_ident : token::literal, std::move(text)});
            i = j;
        } else if (word_char(c)) {
            std::size_t j = i;
            while (j < s.size() && word_char(s[j])) ++j;
            out.push_back({token::word, std::string(s.substr(i, j - i))});
            i = j;
        } else {
            error = std::string("unexpected character '") + c + "'";
            return std::nullopt;
        }
    }
    return out;
}

struct command {
    std::string verb;                // upper case: SHOW, SET, PAUSE, ...
    std::string subject;             // SHOW: upper-cased subject ("POOLS"); words joined by ' '
    std::optional<std::string> arg;  // database, client id, SHUTDOWN mode (upper-cased)
    std::string set_key, set_value;  // SET
    std::uint64_t client_id = 0;     // KILL_CLIENT

    // Read-only commands a stats_users member may run.
    bool read_only() const { return verb == "SHOW"; }
};

// Verbs taking an optional database name.
inline bool optional_db_verb(const std::string& v) {
    return v == "PAUSE" || v == "RESUME" || v == "KILL" || v == "RECONNECT" || v == "WAIT_CLOSE";
}

inline std::optional<command> parse_command(std::string_view stmt, std::string& error) {
    auto toks = tokenize(stmt, error);
    if (!toks) return std::nullopt;
    auto& t = *toks;
    if (t.empty() || t[0].kind != token::word) {
        error = "syntax error in console command";
        return std::nullopt;
    }
    command c;
    c.verb = to_upper(t[0].text);
    auto ident = [](const token& tk) { return tk.kind == token::word || tk.kind == token::quoted_ident; };
    // Unquoted identifiers fold to lower case, as in SQL; quoted ones keep their case.
    auto name_of = [](const token& tk) {
        return tk.kind == token::quoted_ident ? tk.text : to_lower(tk.text);
    };

    if (c.verb == "SHOW") {
        if (t.size() < 2) {
            error = "SHOW needs a subject";
            return std::nullopt;
        }
        for (std::size_t i = 1; i < t.size(); ++i) {
            if (!ident(t[i])) {
                error = "syntax error in SHOW";
                return std::nullopt;
            }
            if (i > 1) c.subject += ' ';
            c.subject += to_upper(t[i].text);
        }
        return c;
    }
    if (c.verb == "SET") {
        // SET [SESSION|LOCAL] key [=|TO] value
        std::size_t i = 1;
        if (i < t.size() && t[i].kind == token::word &&
            (to_upper(t[i].text) == "SESSION" || to_upper(t[i].text) == "LOCAL"))
            ++i;
        if (i >= t.size() || !ident(t[i])) {
            error = "SET needs: SET key = value";
            return std::nullopt;
        }
        c.set_key = t[i].kind == token::quoted_ident ? t[i].text : to_lower(t[i].text);
        ++i;
        // SET TIME ZONE 'UTC' and the like: further words before the value belong to the key.
        while (i + 1 < t.size() && t[i].kind == token::word && to_upper(t[i].text) != "TO")
            c.set_key += " " + to_lower(t[i++].text);
        if (i < t.size() && (t[i].kind == token::equals ||
                             (t[i].kind == token::word && to_upper(t[i].text) == "TO")))
            ++i;
        if (i >= t.size()) {
            error = "SET needs a value: SET key = value";
            return std::nullopt;
        }
        // The value: the rest, as written (a list may be given as several tokens).
        for (std::size_t j = i; j < t.size(); ++j) {
            if (t[j].kind == token::equals) {
                error = "syntax error in SET";
                return std::nullopt;
            }
            if (j > i) c.set_value += ' ';
            c.set_value += t[j].text;
        }
        return c;
    }
    if (c.verb == "RELOAD" || c.verb == "SUSPEND") {
        if (t.size() != 1) {
            error = c.verb + " takes no arguments";
            return std::nullopt;
        }
        return c;
    }
    if (optional_db_verb(c.verb) || c.verb == "ENABLE" || c.verb == "DISABLE") {
        if (t.size() > 2 || (t.size() == 2 && !ident(t[1]))) {
            error = c.verb + " takes at most one database name";
            return std::nullopt;
        }
        if (t.size() == 2) c.arg = name_of(t[1]);
        if (!c.arg && (c.verb == "ENABLE" || c.verb == "DISABLE")) {
            error = c.verb + " needs a database name";
            return std::nullopt;
        }
        return c;
    }
    if (c.verb == "KILL_CLIENT") {
        if (t.size() != 2 || t[1].kind != token::word || t[1].text.empty() ||
            !std::all_of(t[1].text.begin(), t[1].text.end(),
                         [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)); }) ||
            t[1].text.size() > 19) {
            // PgBouncer's words first (scripts match them), then what is wanted.
            error = "invalid client pointer supplied: KILL_CLIENT needs a client id (the id "
                    "column of SHOW CLIENTS)";
            return std::nullopt;
        }
        c.client_id = std::stoull(t[1].text);
        c.arg = t[1].text;
        return c;
    }
    if (c.verb == "SHUTDOWN") {
        if (t.size() > 2) {
            error = "SHUTDOWN takes at most one of WAIT_FOR_SERVERS, WAIT_FOR_CLIENTS";
            return std::nullopt;
        }
        if (t.size() == 2) {
            auto mode = to_upper(t[1].text);
            if (t[1].kind != token::word || (mode != "WAIT_FOR_SERVERS" && mode != "WAIT_FOR_CLIENTS")) {
                error = "SHUTDOWN takes at most one of WAIT_FOR_SERVERS, WAIT_FOR_CLIENTS";
                return std::nullopt;
            }
            c.arg = mode;
        }
        return c;
    }
    error = "unknown command: " + std::string(stmt.substr(0, 64));
    return std::nullopt;
}

}  // namespace sluice::admin
