#include "sluice/net/interned.hpp"

#include <mutex>
#include <unordered_set>

namespace sluice::net {

const std::string& interned(std::string_view text) {
    static std::mutex mutex;
    static std::unordered_set<std::string> texts;  // (node-based: references stay valid)
    std::lock_guard lk(mutex);
    return *texts.emplace(text).first;
}

}  // namespace sluice::net
