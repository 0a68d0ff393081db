#pragma once
// Protocol-level prepared statements in transaction and statement mode.
//
// A client's named statement ("s1") lives in the client's map; the server only ever sees
// one name per distinct statement text, derived from the text itself ("sluice_" + 128 bits
// of its SHA-256), so clients sharing a statement share its server-side copy and the
// process keeps no registry of texts that would grow for ever. Before a Bind/Describe the
// statement is prepared on demand on whichever server the client landed on; each server
// keeps an LRU of at most max_prepared_statements (pool::server_statements).
//
// Because Sluice forwards fewer or more messages than the client sent, replies are
// matched to requests by the relay core (relay.hpp).
#include <algorithm>
#include <cstdint>
#include <deque>
#include <vector>
#include <memory>
#include <string>
#include <unordered_map>
#include <string_view>

namespace sluice::proxy {

// `parse_rest` is a Parse body after the statement name: query text, NUL, parameter
// types. Equal texts get equal names; a name fits NAMEDATALEN (63 bytes).
std::string server_statement_name(std::string_view parse_rest);

struct client_statement {
    std::string server_name;
    std::string parse_rest;
};

// A client's prepared-statement names. Most clients never prepare one, so the map exists
// only from the first: every idle client holds a pointer, not an empty unordered_map (56
// bytes).
class client_statements {
public:
    std::size_t size() const { return map_ ? map_->size() : 0; }
    std::size_t count(const std::string& name) const { return map_ ? map_->count(name) : 0; }
    client_statement* find(const std::string& name) {
        if (!map_) return nullptr;
        auto it = map_->find(name);
        return it == map_->end() ? nullptr : &it->second;
    }
    client_statement& operator[](const std::string& name) {
        if (!map_) map_ = std::make_unique<map>();
        return (*map_)[name];
    }
    void erase(const std::string& name) {
        if (map_) map_->erase(name);
    }
    void clear() { map_.reset(); }

private:
    using map = std::unordered_map<std::string, client_statement>;
    std::unique_ptr<map> map_;
};

// True for the extended-protocol messages that PostgreSQL skips after an error until
// the next Sync.
inline bool is_extended(char request) {
    return request == 'P' || request == 'B' || request == 'D' || request == 'E' ||
           request == 'C';
}

// True when a backend message of type `reply` ends the replies to `request`
// (PostgreSQL protocol, "Extended Query": each message has its own completion message,
// and an ErrorResponse ends any of them; a Query, Sync or FunctionCall ends with
// ReadyForQuery whatever came before).
inline bool completes(char request, char reply) {
    if (reply == 'E' && is_extended(request)) return true;
    switch (request) {
        case 'P': return reply == '1';
        case 'B': return reply == '2';
        case 'D': return reply == 'T' || reply == 'n';
        case 'E': return reply == 'C' || reply == 'I' || reply == 's';
        case 'C': return reply == '3';
        case 'S':
        case 'Q':
        case 'F': return reply == 'Z';
        default: return false;
    }
}

// Collects what goes out for one batch: unchanged byte ranges of the input buffer, with
// some messages skipped and others inserted. The common case (nothing changed) is one
// range, written with no copy.
class batch_builder {
public:
    void reset(const std::uint8_t* base) {
        base_ = base;
        start_ = 0;
        pieces_.clear();
        // (clear() on a deque walks its node map even when empty; most batches insert
        // nothing)
        if (!arena_.empty()) arena_.clear();
        size_ = 0;
    }
    void skip(std::size_t pos, std::size_t n) {
        cut(pos);
        start_ = pos + n;
    }
    void insert(std::size_t pos, std::string bytes) {
        cut(pos);
        arena_.push_back(std::move(bytes));
        pieces_.push_back({arena_.back().data(), arena_.back().size()});
        size_ += arena_.back().size();
    }
    // Ranges up to `end`; valid until the next reset() and while the input is unchanged.
    const std::vector<std::pair<const void*, std::size_t>>& finish(std::size_t end) {
        cut(end);
        return pieces_;
    }
    const std::vector<std::pair<const void*, std::size_t>>& pieces() const { return pieces_; }
    std::size_t size() const { return size_; }

private:
    void cut(std::size_t pos) {
        if (pos > start_) {
            pieces_.push_back({base_ + start_, pos - start_});
            size_ += pos - start_;
        }
        start_ = std::max(start_, pos);
    }
    const std::uint8_t* base_ = nullptr;
    std::size_t start_ = 0, size_ = 0;
    std::vector<std::pair<const void*, std::size_t>> pieces_;
    std::deque<std::string> arena_;  // a deque: inserted strings never move
};

}  // namespace sluice::proxy
