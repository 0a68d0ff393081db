#pragma once
// The parameters a server session has (ParameterStatus values, and the tracked ones
// PostgreSQL does not report, recorded by hand), and which client parameter set they are
// known to match.
//
// Linking a client to a server needs "does this server already have every parameter the
// client expects?". Comparing the maps costs a string compare per parameter on every
// transaction. Instead the client holds an immutable, shared parameter set (most
// clients of a pool share one: see pool::intern_parameters) and the server remembers the
// set it was last made to match. Invariant: synced_to(), when not null, names a set S
// such that for every (k, v) in S, the server's value of k is v. Every mutation below
// either keeps that true (keep_synced) or forgets the set, so a stale match cannot
// survive a change made by anything else (a reset query, restore_defaults, a login).
#include <map>
#include <memory>
#include <string>
#include <string_view>

namespace sluice::pool {

using param_set = std::map<std::string, std::string, std::less<>>;
using shared_params = std::shared_ptr<const param_set>;

class server_parameters {
public:
    auto find(std::string_view k) const { return values_.find(k); }
    auto end() const { return values_.end(); }
    auto begin() const { return values_.begin(); }
    const std::string* value(std::string_view k) const {
        auto it = values_.find(k);
        return it == values_.end() ? nullptr : &it->second;
    }

    void set(const std::string& k, std::string v) {
        values_[k] = std::move(v);
        synced_to_.reset();
    }
    void clear() {
        values_.clear();
        synced_to_.reset();
    }

    // The server now has every value of `s` (the caller just set them).
    void mark_synced(shared_params s) { synced_to_ = std::move(s); }
    const shared_params& synced_to() const { return synced_to_; }

private:
    param_set values_;
    shared_params synced_to_;
};

}  // namespace sluice::pool
