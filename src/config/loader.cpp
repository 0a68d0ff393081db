// Configuration loader: YAML (native) and PgBouncer .ini, into one model.
//
// Flow: the text is first turned into a small format-neutral tree (`node`: null, scalar,
// sequence or map, each with its 1-based line:column), from yaml-cpp for YAML and from a
// hand-written line parser for .ini. One validator then walks that tree with per-section
// the settings table (settings.hpp: one entry per setting, with its status; the rate
// limiter's own sections have small field tables here). Having a single validator is what
// makes both formats yield the same model and the same messages, and keeping positions on
// every node is what lets every error name its line and column. Errors are collected, never thrown; any error means no model, so a
// bad file (or a bad RELOAD) never takes effect half-way.
#include "sluice/config/loader.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <sstream>
#include <tuple>
#include <utility>

#include "sluice/config/settings.hpp"

namespace sluice::config {

std::string diagnostic::to_string() const {
    // A problem not tied to a line (e.g. an unreadable file) has no position to print.
    if (line <= 0) return file + ": " + message;
    return file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + message;
}

namespace {

// ---------------------------------------------------------------------------------------
// Small string helpers

std::string trim(std::string_view s) {
    std::size_t b = 0, e = s.size();
    while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
    while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
    return std::string(s.substr(b, e - b));
}

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

bool ends_with_ci(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && lower(s.substr(s.size() - suffix.size())) == suffix;
}

bool parse_port(std::string_view text, int& port) {
    long long v = 0;
    auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc{} || p != text.data() + text.size() || text.empty()) return false;
    if (v < 1 || v > 65535) return false;
    port = static_cast<int>(v);
    return true;
}

// ---------------------------------------------------------------------------------------
// The format-neutral tree

struct pos {
    int line = 0;  // 1-based
    int col = 0;   // 1-based
    int file = 0;  // index in context::files: the main file, or one it %includes
};

struct node {
    enum class kind { null, scalar, sequence, map };
    kind k = kind::null;
    pos at;
    std::string text;         // scalar
    bool quoted = false;      // a quoted YAML scalar: its text starts one column after `at`
    std::vector<node> items;  // sequence
    std::vector<std::pair<node, node>> entries;  // map, in file order; keys are scalars

    // Declared here, defined below where node is complete: std::pair<node, node> inside
    // node's own definition is an incomplete type, which libstdc++ rejects under clang
    // (the fuzz build) when the implicit members are instantiated in the class.
    node();
    node(kind kind_of, pos position);
    node(const node&);
    node(node&&) noexcept;
    node& operator=(const node&);
    node& operator=(node&&) noexcept;
    ~node();
};
node::node() = default;
node::node(kind kind_of, pos position) : k(kind_of), at(position) {}
node::node(const node&) = default;
node::node(node&&) noexcept = default;
node& node::operator=(const node&) = default;
node& node::operator=(node&&) noexcept = default;
node::~node() = default;

const char* kind_name(const node& n) {
    switch (n.k) {
        case node::kind::null:
            return "nothing";
        case node::kind::scalar:
            return "a single value";
        case node::kind::sequence:
            return "a list";
        case node::kind::map:
            return "a mapping";
    }
    return "?";
}

class context {
  public:
    std::string file;
    std::vector<std::string> included;  // files %included, for pos::file = 1, 2, ...
    std::filesystem::path base_dir;  // relative paths in the file are relative to this
    std::vector<diagnostic> errors;
    // Values left before a YAML document counts as too big (see from_yaml); 0 = exhausted.
    std::size_t yaml_values_left = 0;

    void error(pos p, std::string message) {
        const std::string& where =
            p.file > 0 && std::size_t(p.file) <= included.size() ? included[p.file - 1] : file;
        errors.push_back(diagnostic{where, p.line, p.col, std::move(message)});
    }
};

// ---------------------------------------------------------------------------------------
// YAML -> node

constexpr int max_depth = 64;  // deeper nesting is a mistake (or an alias cycle), not config

// yaml-cpp shares an aliased node, but the tree below copies it at every use, so nested
// aliases ("a: &a [x,x,x]", "b: &b [*a,*a,*a]", ...) grow the tree exponentially: nine
// levels of ten turn 300 bytes into 10^9 values (the "billion laughs"), which exhausted
// memory before this cap (found by fuzz/config_fuzz). Without aliases a document holds at
// most about one value per byte, so ten per byte leaves ordinary anchors plenty of room.
std::size_t yaml_value_budget(std::size_t text_size) {
    return std::max<std::size_t>(100'000, 10 * text_size);
}

pos pos_of(const YAML::Mark& m, pos fallback) {
    if (m.line < 0 || m.column < 0) return fallback;
    return pos{m.line + 1, m.column + 1};  // yaml-cpp's marks are 0-based
}

node from_yaml(context& ctx, const YAML::Node& y, pos fallback, int depth) {
    node n;
    if (depth > max_depth) {
        ctx.error(fallback, "nesting is too deep");
        return n;
    }
    // Once exhausted every further value is skipped unread, so the walk stops early too.
    if (ctx.yaml_values_left == 0) return n;
    if (--ctx.yaml_values_left == 0) {
        ctx.error(pos_of(y.Mark(), fallback),
                  "the document expands to too many values (aliases of aliases?)");
        return n;
    }
    switch (y.Type()) {
        case YAML::NodeType::Undefined:
        case YAML::NodeType::Null:
            // An empty value's mark points at the next token, so a null takes its key's
            // position, which is where a reader looks anyway.
            n.at = fallback;
            return n;
        case YAML::NodeType::Scalar:
            n.k = node::kind::scalar;
            n.at = pos_of(y.Mark(), fallback);
            n.text = y.Scalar();
            n.quoted = y.Tag() == "!";  // yaml-cpp tags quoted scalars "!" and plain ones "?"
            return n;
        case YAML::NodeType::Sequence:
            n.k = node::kind::sequence;
            n.at = pos_of(y.Mark(), fallback);
            for (const auto& item : y) n.items.push_back(from_yaml(ctx, item, n.at, depth + 1));
            return n;
        case YAML::NodeType::Map: {
            n.k = node::kind::map;
            n.at = pos_of(y.Mark(), fallback);
            std::map<std::string, pos> seen;
            for (auto it = y.begin(); it != y.end(); ++it) {
                node key = from_yaml(ctx, it->first, n.at, depth + 1);
                if (key.k != node::kind::scalar) {
                    ctx.error(key.at, "a key must be a single value");
                    continue;
                }
                if (auto [s, fresh] = seen.emplace(key.text, key.at); !fresh) {
                    ctx.error(key.at, "duplicate key '" + key.text + "' (first given at line " +
                                          std::to_string(s->second.line) + ")");
                    continue;
                }
                node value = from_yaml(ctx, it->second, key.at, depth + 1);
                n.entries.emplace_back(std::move(key), std::move(value));
            }
            return n;
        }
    }
    return n;
}

// ---------------------------------------------------------------------------------------
// PgBouncer .ini -> node
//
// PgBouncer's format: `[section]` headers, `key = value` lines, whole-line comments starting
// with ';' or '#'. Values run to the end of the line (a password may contain '#'), so there
// are no trailing comments. Setting names are case-insensitive, database and user names not.
// A key given again in its section replaces the earlier one (a [databases] entry too).

// `%include FILE` reads FILE in place, as if its lines were here (the current section goes
// on into it), as PgBouncer does: a relative name is taken from the current working
// directory. Errors in it name it with its own line and column. Includes nest up to
// max_include_depth (a file including itself is a mistake, not a loop).
constexpr int max_include_depth = 10;
constexpr std::uintmax_t max_include_size = 16u << 20;

class ini_reader {
  public:
    explicit ini_reader(context& ctx) : ctx_(ctx) {
        root_.k = node::kind::map;
        root_.at = pos{1, 1};
    }
    node take() { return std::move(root_); }

    void read(const std::string& text, int file, int depth) {
        std::istringstream in(text);
        std::string raw;
        int line_no = 0;
        while (std::getline(in, raw)) {
            ++line_no;
            if (!raw.empty() && raw.back() == '\r') raw.pop_back();
            std::size_t first = raw.find_first_not_of(" \t");
            if (first == std::string::npos) continue;
            char c = raw[first];
            if (c == ';' || c == '#') continue;
            pos line_pos{line_no, static_cast<int>(first) + 1, file};
            if (c == '[') header(raw, first, line_pos);
            else if (c == '%') directive(raw, first, line_pos, depth);
            else setting(raw, first, line_pos);
        }
    }

  private:
    void header(const std::string& raw, std::size_t first, pos line_pos) {
        std::size_t close = raw.find(']', first);
        if (close == std::string::npos || !trim(raw.substr(close + 1)).empty()) {
            ctx_.error(line_pos, "malformed section header");
            section_ = nullptr;
            in_unknown_section_ = true;
            return;
        }
        section_name_ = lower(trim(raw.substr(first + 1, close - first - 1)));
        // [pgbouncer] is the YAML `sluice:` section; the others keep their names.
        std::string target = section_name_ == "pgbouncer" ? "sluice" : section_name_;
        if (target == "peers") {
            ctx_.error(line_pos, "section [peers] is not supported: Sluice has no peering "
                                 "(see peer_id in the README)");
            section_ = nullptr;
            in_unknown_section_ = true;
            return;
        }
        if (target != "sluice" && target != "databases" && target != "users") {
            ctx_.error(line_pos, "unknown section [" + section_name_ +
                                     "] (expected pgbouncer, databases or users)");
            section_ = nullptr;
            in_unknown_section_ = true;
            return;
        }
        in_unknown_section_ = false;
        section_ = nullptr;
        for (auto& [k, v] : root_.entries)
            if (k.text == target) section_ = &v;  // a repeated header continues the section
        if (!section_) {
            node key(node::kind::scalar, line_pos);
            key.text = target;
            root_.entries.emplace_back(std::move(key), node(node::kind::map, line_pos));
            section_ = &root_.entries.back().second;
        }
    }

    void directive(const std::string& raw, std::size_t first, pos line_pos, int depth) {
        std::size_t word_end = raw.find_first_of(" \t", first);
        std::string word = lower(raw.substr(first, word_end == std::string::npos ? std::string::npos
                                                                                  : word_end - first));
        if (word != "%include") {
            ctx_.error(line_pos, "unknown directive " + word + " (PgBouncer knows %include)");
            return;
        }
        std::string name = word_end == std::string::npos ? "" : trim(raw.substr(word_end));
        if (name.empty()) {
            ctx_.error(line_pos, "%include needs a file name");
            return;
        }
        if (depth >= max_include_depth) {
            ctx_.error(line_pos, "%include " + name + ": nested more than " +
                                     std::to_string(max_include_depth) + " deep");
            return;
        }
        // Only a regular file of a sane size: not a FIFO or /dev/zero that never ends.
        std::error_code fec;
        const auto status = std::filesystem::status(name, fec);
        if (!fec && std::filesystem::exists(status) && !std::filesystem::is_regular_file(status)) {
            ctx_.error(line_pos, "%include " + name + ": not a regular file");
            return;
        }
        if (!fec && std::filesystem::exists(status) &&
            std::filesystem::file_size(name, fec) > max_include_size) {
            ctx_.error(line_pos, "%include " + name + ": larger than 16 MiB");
            return;
        }
        std::ifstream in(name, std::ios::binary);
        if (!in) {
            int err = errno;
            ctx_.error(line_pos, "%include " + name + ": cannot open: " +
                                     std::strerror(err ? err : ENOENT));
            return;
        }
        std::ostringstream text;
        text << in.rdbuf();
        ctx_.included.push_back(name);
        read(text.str(), static_cast<int>(ctx_.included.size()), depth + 1);
    }

    void setting(const std::string& raw, std::size_t first, pos line_pos) {
        if (in_unknown_section_) return;  // already reported at its header
        std::size_t eq = raw.find('=', first);
        if (eq == std::string::npos) {
            ctx_.error(line_pos, "expected 'key = value'");
            return;
        }
        if (!section_) {
            ctx_.error(line_pos, "setting outside any section (add [pgbouncer] above it)");
            return;
        }
        node key(node::kind::scalar, line_pos);
        key.text = trim(raw.substr(first, eq - first));
        if (section_name_ == "pgbouncer") key.text = lower(key.text);
        if (key.text.empty()) {
            ctx_.error(line_pos, "missing name before '='");
            return;
        }
        std::size_t vstart = raw.find_first_not_of(" \t", eq + 1);
        if (vstart == std::string::npos) vstart = raw.size();
        node value(node::kind::scalar, pos{line_pos.line, static_cast<int>(vstart) + 1, line_pos.file});
        value.text = trim(raw.substr(vstart));
        auto& seen_here = seen_[section_name_ == "pgbouncer" ? "sluice" : section_name_];
        auto [at, fresh] = seen_here.emplace(key.text, section_->entries.size());
        if (fresh) section_->entries.emplace_back(std::move(key), std::move(value));
        else section_->entries[at->second] = {std::move(key), std::move(value)};
    }

    context& ctx_;
    node root_;
    node* section_ = nullptr;  // null before the first header or inside an unknown section
    bool in_unknown_section_ = false;
    std::string section_name_;
    // Per section: key -> its index in the section's entries. As in PgBouncer the last
    // occurrence of a key wins (tools append overrides to a file): it replaces the earlier.
    std::map<std::string, std::map<std::string, std::size_t>> seen_;
};

node from_ini(context& ctx, const std::string& text) {
    ini_reader r(ctx);
    r.read(text, 0, 0);
    return r.take();
}

// ---------------------------------------------------------------------------------------
// libpq-style connection strings: `host=127.0.0.1 port=5432 dbname='my db'`, as PgBouncer's
// [databases] and [users] values. Parsed into a map node so that the same field tables
// validate them; each key keeps its own column.

node parse_connstring(context& ctx, const node& scalar, const std::string& label) {
    node out;
    out.k = node::kind::map;
    out.at = scalar.at;
    const std::string& s = scalar.text;
    const int col0 = scalar.at.col + (scalar.quoted ? 1 : 0);
    auto at = [&](std::size_t i) {
        return pos{scalar.at.line, col0 + static_cast<int>(i), scalar.at.file};
    };
    std::map<std::string, pos> seen;
    std::size_t i = 0;
    auto skip_ws = [&] {
        while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    };
    while (true) {
        skip_ws();
        if (i >= s.size()) break;
        std::size_t kstart = i;
        while (i < s.size() && s[i] != '=' && !std::isspace(static_cast<unsigned char>(s[i]))) ++i;
        std::string key = lower(s.substr(kstart, i - kstart));
        skip_ws();
        if (key.empty() || i >= s.size() || s[i] != '=') {
            ctx.error(at(kstart), label + ": expected key=value in '" + s + "'");
            return out;
        }
        ++i;  // '='
        skip_ws();
        std::size_t vstart = i;
        std::string value;
        if (i < s.size() && s[i] == '\'') {
            // libpq quoting: single quotes, with \' and \\ as escapes.
            ++i;
            bool closed = false;
            while (i < s.size()) {
                if (s[i] == '\\' && i + 1 < s.size()) {
                    value += s[i + 1];
                    i += 2;
                } else if (s[i] == '\'') {
                    ++i;
                    closed = true;
                    break;
                } else {
                    value += s[i++];
                }
            }
            if (!closed) {
                ctx.error(at(vstart), label + ": unterminated quoted value for '" + key + "'");
                return out;
            }
        } else {
            while (i < s.size() && !std::isspace(static_cast<unsigned char>(s[i]))) value += s[i++];
        }
        node k;
        k.k = node::kind::scalar;
        k.at = at(kstart);
        k.text = key;
        if (auto [p, fresh] = seen.emplace(key, k.at); !fresh) {
            ctx.error(k.at, label + ": '" + key + "' given twice");
            continue;
        }
        node v;
        v.k = node::kind::scalar;
        v.at = at(vstart);
        v.text = value;
        out.entries.emplace_back(std::move(k), std::move(v));
    }
    return out;
}

// ---------------------------------------------------------------------------------------
// Value converters. Each takes (context, label, node), reports a problem at the node and
// returns nullopt, or returns the value. `label` is the setting's path, e.g.
// "databases.app.port", so the message reads the same whichever format the file uses.

std::optional<std::string> scalar_text(context& ctx, const std::string& label, const node& n) {
    if (n.k == node::kind::null) return std::string();
    if (n.k != node::kind::scalar) {
        ctx.error(n.at, label + ": expected a single value, got " + kind_name(n));
        return std::nullopt;
    }
    return n.text;
}

auto string_value() {
    return [](context& ctx, const std::string& label, const node& n) {
        return scalar_text(ctx, label, n);
    };
}

template <class Int>
auto int_value(Int min, Int max) {
    return [min, max](context& ctx, const std::string& label, const node& n) -> std::optional<Int> {
        auto text = scalar_text(ctx, label, n);
        if (!text) return std::nullopt;
        std::string t = trim(*text);
        long long v = 0;
        auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
        if (t.empty() || ec == std::errc::invalid_argument || p != t.data() + t.size()) {
            ctx.error(n.at, label + ": expected an integer, got '" + *text + "'");
            return std::nullopt;
        }
        if (ec == std::errc::result_out_of_range || v < static_cast<long long>(min) ||
            v > static_cast<long long>(max)) {
            if (v < 0 && min == 0 && ec == std::errc{})
                ctx.error(n.at, label + ": must not be negative (got " + t + ")");
            else
                ctx.error(n.at, label + ": " + t + " is out of range " + std::to_string(min) +
                                    ".." + std::to_string(max));
            return std::nullopt;
        }
        return static_cast<Int>(v);
    };
}

constexpr int int_max = std::numeric_limits<int>::max();

auto non_negative() {
    return int_value<int>(0, int_max);
}

auto double_value() {
    return [](context& ctx, const std::string& label, const node& n) -> std::optional<double> {
        auto text = scalar_text(ctx, label, n);
        if (!text) return std::nullopt;
        std::string t = trim(*text);
        double v = 0;
        auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
        if (t.empty() || ec != std::errc{} || p != t.data() + t.size() || !std::isfinite(v)) {
            ctx.error(n.at, label + ": expected a number, got '" + *text + "'");
            return std::nullopt;
        }
        if (v < 0) {
            ctx.error(n.at, label + ": must not be negative (got " + t + ")");
            return std::nullopt;
        }
        return v;
    };
}

auto bool_value() {
    return [](context& ctx, const std::string& label, const node& n) -> std::optional<bool> {
        auto text = scalar_text(ctx, label, n);
        if (!text) return std::nullopt;
        std::string t = lower(trim(*text));
        if (t == "true" || t == "yes" || t == "on" || t == "1") return true;
        if (t == "false" || t == "no" || t == "off" || t == "0") return false;
        ctx.error(n.at, label + ": expected a boolean (true/false, yes/no, on/off, 1/0), got '" +
                            *text + "'");
        return std::nullopt;
    };
}

auto duration_value() {
    return [](context& ctx, const std::string& label, const node& n) -> std::optional<duration> {
        auto text = scalar_text(ctx, label, n);
        if (!text) return std::nullopt;
        if (auto d = parse_duration(*text)) return d;
        ctx.error(n.at, label +
                            ": expected a duration (seconds, or a number with a unit: us, ms, "
                            "s, m, h, d), got '" +
                            *text + "'");
        return std::nullopt;
    };
}

// A list, or a comma-separated string (PgBouncer's form). Empty items are dropped, so ""
// is the empty list (listen_addr: "" = unix socket only).
auto list_value() {
    return [](context& ctx, const std::string& label,
              const node& n) -> std::optional<std::vector<std::string>> {
        std::vector<std::string> out;
        if (n.k == node::kind::null) return out;
        if (n.k == node::kind::scalar) {
            std::string_view s = n.text;
            std::size_t start = 0;
            while (start <= s.size()) {
                std::size_t comma = s.find(',', start);
                if (comma == std::string_view::npos) comma = s.size();
                std::string item = trim(s.substr(start, comma - start));
                if (!item.empty()) out.push_back(std::move(item));
                start = comma + 1;
            }
            return out;
        }
        if (n.k == node::kind::sequence) {
            bool ok = true;
            for (const auto& item : n.items) {
                if (item.k != node::kind::scalar || trim(item.text).empty()) {
                    ctx.error(item.at, label + ": each item must be a non-empty single value");
                    ok = false;
                    continue;
                }
                out.push_back(trim(item.text));
            }
            if (!ok) return std::nullopt;
            return out;
        }
        ctx.error(n.at,
                  label + ": expected a list or a comma-separated string, got " + kind_name(n));
        return std::nullopt;
    };
}

auto host_list_value() {
    return [](context& ctx, const std::string& label,
              const node& n) -> std::optional<std::vector<std::string>> {
        auto hosts = list_value()(ctx, label, n);
        if (hosts && hosts->empty()) {
            ctx.error(n.at, label + ": must name at least one host");
            return std::nullopt;
        }
        return hosts;
    };
}

// An enumeration given as one of a fixed set of words.
template <class E>
auto enum_value(std::vector<std::pair<const char*, E>> words) {
    return [words = std::move(words)](context& ctx, const std::string& label,
                                      const node& n) -> std::optional<E> {
        auto text = scalar_text(ctx, label, n);
        if (!text) return std::nullopt;
        std::string t = lower(trim(*text));
        std::string allowed;
        for (const auto& [w, e] : words) {
            if (t == w) return e;
            allowed += allowed.empty() ? "" : ", ";
            allowed += w;
        }
        ctx.error(n.at, label + ": '" + *text + "' is not one of " + allowed);
        return std::nullopt;
    };
}

auto pool_mode_value() {
    return enum_value<pool_mode>({{"session", pool_mode::session},
                                  {"transaction", pool_mode::transaction},
                                  {"statement", pool_mode::statement}});
}

auto auth_type_value() {
    return enum_value<auth_type>({{"trust", auth_type::trust},
                                  {"plain", auth_type::plain},
                                  {"md5", auth_type::md5},
                                  {"scram-sha-256", auth_type::scram_sha_256},
                                  {"hba", auth_type::hba},
                                  {"cert", auth_type::cert},
                                  {"any", auth_type::any}});
}

// A word out of a fixed set ("disable|allow|prefer"), kept as a string in the model,
// lower-case. TLS modes and load_balance_hosts are read this way.
auto choice_value(std::string_view words) {
    std::vector<std::string> allowed;
    for (std::size_t start = 0; start <= words.size();) {
        std::size_t bar = std::min(words.find('|', start), words.size());
        allowed.emplace_back(words.substr(start, bar - start));
        start = bar + 1;
    }
    return [allowed = std::move(allowed)](context& ctx, const std::string& label,
                                          const node& n) -> std::optional<std::string> {
        auto text = scalar_text(ctx, label, n);
        if (!text) return std::nullopt;
        std::string t = lower(trim(*text));
        std::string list;
        for (const auto& w : allowed) {
            if (t == w) return t;
            list += (list.empty() ? "" : ", ") + w;
        }
        ctx.error(n.at, label + ": '" + *text + "' is not one of " + list);
        return std::nullopt;
    };
}

// File permissions, always octal as in PgBouncer ("0777", 0777, "777", YAML 1.2's 0o777).
auto octal_mode_value() {
    return [](context& ctx, const std::string& label, const node& n) -> std::optional<int> {
        auto text = scalar_text(ctx, label, n);
        if (!text) return std::nullopt;
        std::string t = trim(*text);
        std::string digits =
            t.size() > 2 && (t[1] == 'o' || t[1] == 'O') && t[0] == '0' ? t.substr(2) : t;
        int v = 0;
        auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v, 8);
        if (digits.empty() || ec != std::errc{} || p != digits.data() + digits.size() || v < 0 ||
            v > 07777) {
            ctx.error(n.at,
                      label + ": expected an octal file mode such as 0777, got '" + *text + "'");
            return std::nullopt;
        }
        return v;
    };
}

// "host:port" ("[::1]:9127" for IPv6); "" = off.
auto host_port_value() {
    return [](context& ctx, const std::string& label, const node& n) -> std::optional<std::string> {
        auto text = scalar_text(ctx, label, n);
        if (!text) return std::nullopt;
        std::string t = trim(*text);
        if (t.empty()) return t;
        if (!parse_host_port(t)) {
            ctx.error(n.at,
                      label + ": expected host:port with a port in 1..65535, got '" + *text + "'");
            return std::nullopt;
        }
        return t;
    };
}

// rate_limits.redis_sentinels: a list (or comma-separated string) of host:port, at least
// one. A bad item is reported at its own position when the list is a YAML sequence.
auto sentinel_list_value() {
    return [](context& ctx, const std::string& label,
              const node& n) -> std::optional<std::vector<std::string>> {
        auto items = list_value()(ctx, label, n);
        if (!items) return std::nullopt;
        if (items->empty()) {
            ctx.error(n.at, label + ": must name at least one sentinel (host:port)");
            return std::nullopt;
        }
        bool ok = true;
        for (std::size_t i = 0; i < items->size(); ++i) {
            if (parse_host_port((*items)[i])) continue;
            pos at = n.k == node::kind::sequence ? n.items[i].at : n.at;
            ctx.error(at, label + ": expected host:port with a port in 1..65535, got '" +
                              (*items)[i] + "'");
            ok = false;
        }
        if (!ok) return std::nullopt;
        return items;
    };
}

// A Sentinel master name: the name in `sentinel monitor NAME ...`. Sentinel's
// +switch-master message separates its fields by spaces, so a name never holds one.
auto sentinel_master_value() {
    return [](context& ctx, const std::string& label, const node& n) -> std::optional<std::string> {
        auto text = scalar_text(ctx, label, n);
        if (!text) return std::nullopt;
        std::string t = trim(*text);
        bool ok = !t.empty() && std::all_of(t.begin(), t.end(), [](char c) {
            return std::isgraph(static_cast<unsigned char>(c));
        });
        if (ok) return t;
        ctx.error(n.at, label + ": expected the master's name as the sentinels know it "
                                "(one word), got '" + *text + "'");
        return std::nullopt;
    };
}

auto tenant_key_value() {
    return [](context& ctx, const std::string& label, const node& n) -> std::optional<std::string> {
        auto text = scalar_text(ctx, label, n);
        if (!text) return std::nullopt;
        std::string t = trim(*text);
        if (t == "user" || t == "database" || t == "application_name") return t;
        if (t.rfind("startup:", 0) == 0) {
            std::string param = t.substr(8);
            bool ok = !param.empty() && std::all_of(param.begin(), param.end(), [](char c) {
                return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' ||
                       c == '-';
            });
            if (ok) return t;
        }
        ctx.error(n.at, label + ": '" + *text +
                            "' is not one of user, database, application_name, "
                            "startup:<parameter>");
        return std::nullopt;
    };
}

auto redis_url_value() {
    return [](context& ctx, const std::string& label, const node& n) -> std::optional<std::string> {
        auto text = scalar_text(ctx, label, n);
        if (!text) return std::nullopt;
        std::string t = trim(*text);
        if (t.empty() || parse_redis_url(t)) return t;
        // The URL may hold a password, so it is not echoed back.
        ctx.error(n.at, label +
                            ": expected redis://[[user]:password@]host[:port][/db] (or "
                            "rediss://)");
        return std::nullopt;
    };
}

// ---------------------------------------------------------------------------------------
// Settings of the sluice, databases and users sections: through the settings table

template <class T>
struct unwrap_optional {
    using type = T;
};
template <class T>
struct unwrap_optional<std::optional<T>> {
    using type = T;
};

// Reads one value of type V as entry `e` says it is spelled.
template <class V>
std::optional<V> read_value(context& ctx, const setting& e, const std::string& label,
                            const node& n) {
    if constexpr (std::is_same_v<V, bool>) {
        return bool_value()(ctx, label, n);
    } else if constexpr (std::is_same_v<V, int>) {
        if (e.format == value_format::octal) return octal_mode_value()(ctx, label, n);
        return int_value<int>(static_cast<int>(e.min), static_cast<int>(e.max))(ctx, label, n);
    } else if constexpr (std::is_same_v<V, std::int64_t>) {
        return int_value<std::int64_t>(e.min, e.max)(ctx, label, n);
    } else if constexpr (std::is_same_v<V, duration>) {
        return duration_value()(ctx, label, n);
    } else if constexpr (std::is_same_v<V, std::string>) {
        if (e.format == value_format::host_port) return host_port_value()(ctx, label, n);
        if (e.format == value_format::choice) return choice_value(e.choices)(ctx, label, n);
        return string_value()(ctx, label, n);
    } else if constexpr (std::is_same_v<V, std::vector<std::string>>) {
        if (e.format == value_format::host_list) return host_list_value()(ctx, label, n);
        return list_value()(ctx, label, n);
    } else if constexpr (std::is_same_v<V, pool_mode>) {
        return pool_mode_value()(ctx, label, n);
    } else {
        static_assert(std::is_same_v<V, auth_type>);
        return auth_type_value()(ctx, label, n);
    }
}

// Reads `value` for entry `e` into `s` (a general, database or user): assigned only when
// valid and, for a default_only setting, equal to the default. Refused settings are
// reported by the caller, at their key.
template <class S>
void apply_setting(context& ctx, const setting& e, const std::string& label, const node& value,
                   S& s) {
    std::visit(
        [&](auto m) {
            using M = decltype(m);
            if constexpr (!std::is_same_v<M, std::monostate>) {
                using traits = member_traits<M>;
                if constexpr (std::is_same_v<typename traits::owner, S>) {
                    using T = typename traits::value;
                    auto v = read_value<typename unwrap_optional<T>::type>(ctx, e, label, value);
                    if (!v) return;
                    if (e.default_only && !(T(*v) == S{}.*m)) {
                        ctx.error(value.at, "setting " + label + " = " + trim(value.text) +
                                                " is not supported: " + e.note);
                        return;
                    }
                    s.*m = std::move(*v);
                }
            }
        },
        e.member);
}

// Applies every entry of a section's map through the settings table. Records where each
// key was seen (`seen`) and the no-op settings given (`no_ops`, each once).
template <class S>
void apply_settings(context& ctx, const node& map, S& s, section where,
                    const std::string& prefix, const std::string& section_label,
                    std::vector<std::string>& no_ops,
                    std::map<std::string, pos>* seen = nullptr) {
    for (const auto& [key, value] : map.entries) {
        const setting* e = find_setting(where, key.text);
        if (!e) {
            ctx.error(key.at, "unknown setting '" + key.text + "' in " + section_label);
            continue;
        }
        if (e->status == support::refused) {
            ctx.error(key.at, "setting " + prefix + key.text + " is not supported: " + e->note);
            continue;
        }
        if (seen) (*seen)[key.text] = value.at;
        const std::size_t errors_before = ctx.errors.size();
        apply_setting(ctx, *e, prefix + key.text, value, s);
        if (e->status == support::no_op && ctx.errors.size() == errors_before &&
            std::find(no_ops.begin(), no_ops.end(), e->name) == no_ops.end())
            no_ops.emplace_back(e->name);
    }
}

// ---------------------------------------------------------------------------------------
// Field tables of the rate limiter's sections (Sluice's own, YAML only)

template <class S>
struct field {
    const char* name;
    std::function<void(context&, const std::string& label, const node&, S&)> apply;
};

// Binds a converter to a member: the member is assigned only when the value is valid.
template <class S, class M, class Conv>
field<S> bind(const char* name, M S::*member, Conv conv) {
    return field<S>{name,
                    [member, conv](context& ctx, const std::string& label, const node& n, S& s) {
                        if (auto v = conv(ctx, label, n)) s.*member = std::move(*v);
                    }};
}

const std::vector<field<rate_limit>>& rate_limit_fields() {
    using r = rate_limit;
    static const std::vector<field<rate_limit>> fields = {
        bind("queries_per_second", &r::queries_per_second, double_value()),
        bind("query_burst", &r::query_burst, double_value()),
        bind("transactions_per_second", &r::transactions_per_second, double_value()),
        bind("transaction_burst", &r::transaction_burst, double_value()),
        bind("connections_per_second", &r::connections_per_second, double_value()),
        bind("connection_burst", &r::connection_burst, double_value()),
        bind("max_connections", &r::max_connections, non_negative()),
        bind("action", &r::action,
             enum_value<rl_action>({{"reject", rl_action::reject}, {"delay", rl_action::delay}})),
        bind("max_delay", &r::max_delay, duration_value()),
        bind("shadow", &r::shadow, bool_value()),
    };
    return fields;
}

const std::vector<field<rate_limits>>& rate_limits_fields() {
    using r = rate_limits;
    static const std::vector<field<rate_limits>> fields = {
        bind("enabled", &r::enabled, bool_value()),
        bind("backend", &r::backend,
             enum_value<rl_backend>({{"local", rl_backend::local}, {"redis", rl_backend::redis}})),
        bind("redis_url", &r::redis_url, redis_url_value()),
        bind("redis_sentinels", &r::redis_sentinels, sentinel_list_value()),
        bind("redis_sentinel_master", &r::redis_sentinel_master, sentinel_master_value()),
        bind("redis_sentinel_password", &r::redis_sentinel_password, string_value()),
        bind("tenant_key", &r::tenant_key, tenant_key_value()),
        bind("on_redis_failure", &r::on_redis_failure,
             enum_value<rl_failure_policy>({{"local", rl_failure_policy::local},
                                            {"open", rl_failure_policy::open},
                                            {"closed", rl_failure_policy::closed}})),
        bind("expected_instances", &r::expected_instances, int_value<int>(1, 100000)),
        bind("redis_timeout", &r::redis_timeout, duration_value()),
        bind("lease_size", &r::lease_size, non_negative()),
    };
    return fields;
}

// ---------------------------------------------------------------------------------------
// Section walkers

// A section must be a mapping; an empty one (`users:`) is allowed.
bool expect_map(context& ctx, const std::string& label, const node& n) {
    if (n.k == node::kind::map || n.k == node::kind::null) return true;
    ctx.error(n.at, label + ": expected a mapping of settings, got " + kind_name(n));
    return false;
}

// Applies every entry of a map through a field table (the rate limiter's sections). `skip`
// names keys the caller handles itself. Records where each key was seen.
template <class S>
void apply_fields(context& ctx, const node& map, S& s, const std::vector<field<S>>& fields,
                  const std::string& prefix, const std::string& section,
                  std::map<std::string, pos>* seen = nullptr,
                  const std::set<std::string>& skip = {}) {
    for (const auto& [key, value] : map.entries) {
        if (skip.count(key.text)) continue;
        // Not a capture of the structured binding itself: C++20 allows it, clang 14 not.
        const std::string& name = key.text;
        auto f = std::find_if(fields.begin(), fields.end(),
                              [&](const auto& fl) { return name == fl.name; });
        if (f != fields.end()) {
            if (seen) (*seen)[key.text] = value.at;
            f->apply(ctx, prefix + key.text, value, s);
        } else {
            ctx.error(key.at, "unknown setting '" + key.text + "' in " + section);
        }
    }
}

// A [databases]/[users] entry is a mapping (YAML) or a connection string (PgBouncer).
std::optional<node> entry_settings(context& ctx, const std::string& label, const node& n) {
    if (n.k == node::kind::null) return node(node::kind::map, n.at);
    if (n.k == node::kind::map) return n;
    if (n.k == node::kind::scalar) return parse_connstring(ctx, n, label);
    ctx.error(n.at, label + ": expected a mapping or a connection string, got " + kind_name(n));
    return std::nullopt;
}

void read_databases(context& ctx, const node& part, config& cfg,
                    std::map<std::string, pos>& entry_at) {
    if (!expect_map(ctx, "databases", part)) return;
    for (const auto& [key, value] : part.entries) {
        std::string label = "databases." + key.text;
        if (key.text.empty()) {
            ctx.error(key.at, "databases: a database name must not be empty");
            continue;
        }
        auto settings = entry_settings(ctx, label, value);
        if (!settings) continue;
        database db;
        db.name = key.text;
        apply_settings(ctx, *settings, db, section::database, label + ".",
                       "database '" + key.text + "'", cfg.no_op_settings);
        cfg.databases[key.text] = std::move(db);
        entry_at[key.text] = key.at;
    }
}

void read_users(context& ctx, const node& part, config& cfg) {
    if (!expect_map(ctx, "users", part)) return;
    for (const auto& [key, value] : part.entries) {
        std::string label = "users." + key.text;
        if (key.text.empty()) {
            ctx.error(key.at, "users: a user name must not be empty");
            continue;
        }
        auto settings = entry_settings(ctx, label, value);
        if (!settings) continue;
        user u;
        u.name = key.text;
        apply_settings(ctx, *settings, u, section::user, label + ".", "user '" + key.text + "'",
                       cfg.no_op_settings);
        cfg.users[key.text] = std::move(u);
    }
}

void read_rate_limits(context& ctx, const node& section, rate_limits& rl,
                      std::map<std::string, pos>& seen) {
    rl.enabled = true;  // the section's presence turns the limiter on
    if (!expect_map(ctx, "rate_limits", section)) return;
    // `default` first: each tenant starts as a copy of it, whatever the order in the file.
    for (const auto& [key, value] : section.entries) {
        if (key.text != "default") continue;
        if (expect_map(ctx, "rate_limits.default", value))
            apply_fields(ctx, value, rl.defaults, rate_limit_fields(), "rate_limits.default.",
                         "rate_limits.default");
    }
    apply_fields(ctx, section, rl, rate_limits_fields(), "rate_limits.", "rate_limits", &seen,
                 {"default", "tenants"});
    for (const auto& [key, value] : section.entries) {
        if (key.text != "tenants") continue;
        if (!expect_map(ctx, "rate_limits.tenants", value)) continue;
        for (const auto& [tkey, tvalue] : value.entries) {
            std::string label = "rate_limits.tenants." + tkey.text;
            if (!expect_map(ctx, label, tvalue)) continue;
            rate_limit limit = rl.defaults;
            apply_fields(ctx, tvalue, limit, rate_limit_fields(), label + ".",
                         "tenant '" + tkey.text + "'");
            rl.tenants[tkey.text] = limit;
        }
    }
}

// Where the rate limiter's Redis is: redis_url's address, or the master the sentinels
// name. Settings that contradict each other are refused rather than one of them being
// silently ignored (DESIGN.md 1.2).
void check_redis_address(context& ctx, const rate_limits& rl,
                         const std::map<std::string, pos>& seen, pos section_at) {
    auto at_or = [&](const char* key, pos fallback) {
        auto it = seen.find(key);
        return it == seen.end() ? fallback : it->second;
    };
    const bool sentinels = !rl.redis_sentinels.empty() || seen.count("redis_sentinels");
    if (!sentinels) {
        for (const char* key : {"redis_sentinel_master", "redis_sentinel_password"})
            if (seen.count(key))
                ctx.error(at_or(key, section_at), std::string("rate_limits.") + key +
                                                      " is set but redis_sentinels is not");
        // A redis_url that was given but invalid has its own error already.
        if (rl.backend == rl_backend::redis && rl.redis_url.empty() && !seen.count("redis_url"))
            ctx.error(at_or("backend", section_at),
                      "rate_limits.backend is redis but redis_url is not set (nor "
                      "redis_sentinels)");
        return;
    }
    const pos sentinels_at = at_or("redis_sentinels", section_at);
    if (rl.backend != rl_backend::redis)
        ctx.error(sentinels_at,
                  "rate_limits.redis_sentinels is set but backend is not redis (set backend: "
                  "redis, or remove redis_sentinels)");
    if (rl.redis_sentinel_master.empty() && !seen.count("redis_sentinel_master"))
        ctx.error(sentinels_at,
                  "rate_limits.redis_sentinels is set but redis_sentinel_master is not: name "
                  "the master the sentinels monitor");
    // redis_url then carries the credentials, the db and TLS; an address in it would be
    // one nobody connects to, so it may only name the master.
    if (rl.redis_url.empty() || rl.redis_sentinel_master.empty()) return;
    auto ep = parse_redis_url(rl.redis_url);
    if (!ep) return;  // reported already
    if (ep->host != rl.redis_sentinel_master || ep->port_given)
        ctx.error(at_or("redis_url", section_at),
                  "rate_limits.redis_url: with redis_sentinels the master's address comes from "
                  "the sentinels; write the master's name '" +
                      rl.redis_sentinel_master +
                      "' as the host and no port (redis://[[user]:password@]" +
                      rl.redis_sentinel_master + "[/db]), or leave redis_url out");
}

void resolve_path(const context& ctx, std::string& p) {
    if (p.empty()) return;
    std::filesystem::path path(p);
    if (path.is_relative() && !ctx.base_dir.empty())
        p = (ctx.base_dir / path).lexically_normal().string();
}

void read_config(context& ctx, const node& root, config& cfg) {
    if (root.k == node::kind::null) return;  // an empty file: all defaults
    if (root.k != node::kind::map) {
        ctx.error(root.at,
                  "expected a mapping with the sections sluice, databases, users, rate_limits");
        return;
    }
    std::map<std::string, pos> general_seen, limits_seen, database_at;
    pos sluice_at{}, limits_at{};
    for (const auto& [key, value] : root.entries) {
        if (key.text == "sluice") {
            sluice_at = key.at;
            if (expect_map(ctx, "sluice", value))
                apply_settings(ctx, value, cfg.sluice, section::general, "", "section sluice",
                               cfg.no_op_settings, &general_seen);
        } else if (key.text == "databases") {
            read_databases(ctx, value, cfg, database_at);
        } else if (key.text == "users") {
            read_users(ctx, value, cfg);
        } else if (key.text == "rate_limits") {
            limits_at = key.at;
            read_rate_limits(ctx, value, cfg.limits, limits_seen);
        } else if (key.text == "pgbouncer") {
            ctx.error(key.at, "unknown section 'pgbouncer': in YAML it is named 'sluice'");
        } else {
            ctx.error(key.at, "unknown section '" + key.text +
                                  "' (expected sluice, databases, users or rate_limits)");
        }
    }

    // Checks that span settings. Each points at the setting a reader would change.
    auto at_or = [](const std::map<std::string, pos>& seen, const char* key, pos fallback) {
        auto it = seen.find(key);
        return it == seen.end() ? fallback : it->second;
    };
    general& g = cfg.sluice;
    if (g.listen_addr.empty() && g.unix_socket_dir.empty())
        ctx.error(at_or(general_seen, "listen_addr", sluice_at),
                  "listen_addr and unix_socket_dir are both empty: nothing to listen on");
    if (g.auth_type_ == auth_type::hba && g.auth_hba_file.empty())
        ctx.error(at_or(general_seen, "auth_type", sluice_at),
                  "auth_type is hba but auth_hba_file is not set");
    check_redis_address(ctx, cfg.limits, limits_seen, limits_at);
    // No host: PostgreSQL's Unix socket in unix_socket_dir, as PgBouncer connects (and so
    // pg_hba's `local` lines apply, not its `host` ones).
    for (auto& [name, db] : cfg.databases) {
        if (!db.host.empty()) continue;
        if (g.unix_socket_dir.empty())
            ctx.error(database_at[name], "databases." + name + " has no host and "
                                         "unix_socket_dir is empty: give a host (an address, "
                                         "or a socket directory starting with '/')");
        else
            db.host = {g.unix_socket_dir};
    }

    resolve_path(ctx, g.auth_file);
    resolve_path(ctx, g.auth_hba_file);
    resolve_path(ctx, g.auth_ident_file);
    for (std::string* f : {&g.client_tls_key_file, &g.client_tls_cert_file, &g.client_tls_ca_file,
                           &g.server_tls_key_file, &g.server_tls_cert_file, &g.server_tls_ca_file})
        resolve_path(ctx, *f);
    resolve_path(ctx, g.logfile);
    resolve_path(ctx, g.pidfile);
}

std::string percent_decode(std::string_view s, bool& ok) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '%') {
            out += s[i];
            continue;
        }
        int v = 0;
        // Exactly two hex digits: from_chars alone would also take "%-1" (as 0xff).
        if (i + 2 >= s.size() || !std::isxdigit(static_cast<unsigned char>(s[i + 1])) ||
            !std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
            ok = false;
            return out;
        }
        auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
        if (ec != std::errc{} || p != s.data() + i + 3) {
            ok = false;
            return out;
        }
        out += static_cast<char>(v);
        i += 2;
    }
    return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Public functions

// SET key = value on the admin console: the loader's own rules and messages, so that a
// value refused in the file is refused by SET too.
bool setting::set(general& gen, const std::string& value, std::string& error) const {
    if (where != section::general || status == support::refused ||
        std::holds_alternative<std::monostate>(member)) {
        error = std::string("setting ") + name + " is not supported" +
                (*note ? std::string(": ") + note : std::string());
        return false;
    }
    context ctx;
    node n(node::kind::scalar, pos{1, 1});
    n.text = trim(value);
    apply_setting(ctx, *this, name, n, gen);
    if (ctx.errors.empty()) return true;
    error = ctx.errors.front().message;
    return false;
}

std::optional<duration> parse_duration(const std::string& text) {
    std::string t = trim(text);
    std::size_t i = 0;
    std::size_t digits = 0;
    while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i]))) ++i, ++digits;
    if (i < t.size() && t[i] == '.') {
        ++i;
        while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i]))) ++i, ++digits;
    }
    if (digits == 0) return std::nullopt;  // also rejects a sign: durations are never negative
    double value = 0;
    auto [p, ec] = std::from_chars(t.data(), t.data() + i, value);
    if (ec != std::errc{} || p != t.data() + i) return std::nullopt;

    std::string unit = lower(trim(std::string_view(t).substr(i)));
    double micros_per_unit = 0;
    if (unit.empty() || unit == "s")
        micros_per_unit = 1e6;  // PgBouncer's unit: seconds
    else if (unit == "us")
        micros_per_unit = 1;
    else if (unit == "ms")
        micros_per_unit = 1e3;
    else if (unit == "m" || unit == "min")
        micros_per_unit = 60e6;
    else if (unit == "h")
        micros_per_unit = 3600e6;
    else if (unit == "d")
        micros_per_unit = 86400e6;
    else
        return std::nullopt;

    double micros = std::round(value * micros_per_unit);
    if (!std::isfinite(micros) || micros > 1e18) return std::nullopt;  // > 30000 years
    return duration{static_cast<duration::rep>(micros)};
}

std::optional<redis_endpoint> parse_redis_url(const std::string& url) {
    redis_endpoint ep;
    std::string_view rest = url;
    if (rest.rfind("rediss://", 0) == 0) {
        ep.tls = true;
        rest.remove_prefix(9);
    } else if (rest.rfind("redis://", 0) == 0) {
        rest.remove_prefix(8);
    } else {
        return std::nullopt;
    }
    std::size_t slash = rest.find('/');
    std::string_view authority = rest.substr(0, slash);
    std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash + 1);

    // The last '@' ends the credentials: an unescaped '@' in a password still works.
    if (std::size_t at = authority.rfind('@'); at != std::string_view::npos) {
        std::string_view userinfo = authority.substr(0, at);
        authority = authority.substr(at + 1);
        std::size_t colon = userinfo.find(':');
        if (colon == std::string_view::npos) return std::nullopt;  // :password@ or user:password@
        bool ok = true;
        ep.username = percent_decode(userinfo.substr(0, colon), ok);
        ep.password = percent_decode(userinfo.substr(colon + 1), ok);
        if (!ok) return std::nullopt;
    }

    std::string_view port;
    if (!authority.empty() && authority[0] == '[') {
        std::size_t close = authority.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        ep.host = std::string(authority.substr(1, close - 1));
        std::string_view after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after[0] != ':') return std::nullopt;
            port = after.substr(1);
            if (port.empty()) return std::nullopt;
        }
        if (ep.host.empty()) return std::nullopt;
    } else {
        std::size_t colon = authority.find(':');
        ep.host = std::string(authority.substr(0, colon));
        if (colon != std::string_view::npos) {
            port = authority.substr(colon + 1);
            if (port.empty()) return std::nullopt;
        }
        if (ep.host.empty()) return std::nullopt;
        for (char c : ep.host)
            if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_')
                return std::nullopt;
    }
    if (!port.empty() && !parse_port(port, ep.port)) return std::nullopt;
    ep.port_given = !port.empty();

    if (!path.empty()) {
        auto [p, ec] = std::from_chars(path.data(), path.data() + path.size(), ep.db);
        if (ec != std::errc{} || p != path.data() + path.size() || ep.db < 0) return std::nullopt;
    }
    return ep;
}

std::optional<host_port> parse_host_port(std::string_view t) {
    host_port hp;
    std::string_view port;
    if (!t.empty() && t[0] == '[') {
        std::size_t close = t.find(']');
        if (close == std::string_view::npos || close + 1 >= t.size() || t[close + 1] != ':')
            return std::nullopt;
        hp.host = std::string(t.substr(1, close - 1));
        port = t.substr(close + 2);
    } else {
        std::size_t colon = t.rfind(':');
        if (colon == std::string_view::npos) return std::nullopt;
        hp.host = std::string(t.substr(0, colon));
        port = t.substr(colon + 1);
        // A bare IPv6 literal needs brackets.
        if (hp.host.find(':') != std::string::npos) return std::nullopt;
    }
    if (hp.host.empty() || !parse_port(port, hp.port)) return std::nullopt;
    return hp;
}

load_result load_string(const std::string& text, const std::string& path) {
    load_result result;
    context ctx;
    ctx.file = path;
    {
        std::error_code ec;
        auto abs = std::filesystem::absolute(std::filesystem::path(path), ec);
        ctx.base_dir = ec ? std::filesystem::path(path).parent_path() : abs.parent_path();
    }
    config cfg;
    cfg.path = path;
    try {
        node root;
        if (ends_with_ci(path, ".ini")) {
            root = from_ini(ctx, text);
        } else {
            YAML::Node doc = YAML::Load(text);
            ctx.yaml_values_left = yaml_value_budget(text.size());
            root = from_yaml(ctx, doc, pos{1, 1}, 0);
        }
        read_config(ctx, root, cfg);
    } catch (const YAML::Exception& e) {
        // Syntax errors: yaml-cpp's mark is 0-based; -1 when it has no position.
        ctx.error(pos_of(e.mark, pos{}), e.msg.empty() ? std::string(e.what()) : e.msg);
    } catch (const std::exception& e) {
        ctx.error(pos{}, std::string("cannot read configuration: ") + e.what());
    } catch (...) {
        ctx.error(pos{}, "cannot read configuration: unknown error");
    }
    std::stable_sort(ctx.errors.begin(), ctx.errors.end(),
                     [&](const diagnostic& a, const diagnostic& b) {
                         // The main file's errors first, then each included file's.
                         auto key = [&](const diagnostic& d) {
                             return std::make_tuple(d.file != path, d.file, d.line, d.column);
                         };
                         return key(a) < key(b);
                     });
    result.errors = std::move(ctx.errors);
    if (result.errors.empty()) result.cfg = std::move(cfg);
    return result;
}

load_result load_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        int err = errno;
        load_result result;
        result.errors.push_back(diagnostic{
            path, 0, 0,
            std::string("cannot open configuration file: ") + std::strerror(err ? err : ENOENT)});
        return result;
    }
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) {
        load_result result;
        result.errors.push_back(diagnostic{path, 0, 0, "cannot read configuration file"});
        return result;
    }
    return load_string(text.str(), path);
}

}  // namespace sluice::config
