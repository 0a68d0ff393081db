#include "sluice/net/interned.hpp"

#include <functional>
#include <mutex>
#include <unordered_set>

namespace sluice::net {

namespace {

// Looked up by string_view: a text already there (nearly every call) costs no allocation.
struct text_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view t) const { return std::hash<std::string_view>{}(t); }
};

}  // namespace

const std::string& interned(std::string_view text) {
    static std::mutex mutex;
    // (node-based: references stay valid)
    static std::unordered_set<std::string, text_hash, std::equal_to<>> texts;
    std::lock_guard lk(mutex);
    if (auto it = texts.find(text); it != texts.end()) return *it;
    return *texts.emplace(text).first;
}

}  // namespace sluice::net
