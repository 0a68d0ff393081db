#pragma once
// The protocol-level prepared statements that exist on one server connection (server-side
// names), most recently used first. Pure: the relay core (proxy/relay) decides what goes in
// and out; the server connection only carries it from client to client.
#include <atomic>
#include <cstddef>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>

namespace sluice::pool {

class server_statements {
public:
    bool contains(const std::string& name) const { return index_.count(name) != 0; }
    std::size_t size() const { return index_.size(); }
    // size() as other threads may read it (SHOW SERVERS' prepared_statements column).
    std::size_t shown_size() const { return shown_size_.load(std::memory_order_relaxed); }
    bool empty() const { return index_.empty(); }
    // Marks `name` most recently used; false if the server does not have it.
    bool touch(const std::string& name) {
        auto it = index_.find(name);
        if (it == index_.end()) return false;
        lru_.splice(lru_.begin(), lru_, it->second);
        return true;
    }
    void add(const std::string& name) {
        if (touch(name)) return;
        lru_.push_front(name);
        index_[name] = lru_.begin();
        shown();
    }
    // Puts back a statement that turned out to still exist (its Close was skipped), as the
    // least recently used one.
    void add_oldest(const std::string& name) {
        if (contains(name)) return;
        lru_.push_back(name);
        index_[name] = std::prev(lru_.end());
        shown();
    }
    void erase(const std::string& name) {
        auto it = index_.find(name);
        if (it == index_.end()) return;
        lru_.erase(it->second);
        index_.erase(it);
        shown();
    }
    // Removes and returns the least recently used name.
    std::string pop_oldest() {
        std::string name = std::move(lru_.back());
        index_.erase(name);
        lru_.pop_back();
        shown();
        return name;
    }
    void clear() {
        lru_.clear();
        index_.clear();
        shown();
    }

private:
    void shown() { shown_size_.store(index_.size(), std::memory_order_relaxed); }
    std::atomic<std::size_t> shown_size_{0};
    std::list<std::string> lru_;
    std::unordered_map<std::string, std::list<std::string>::iterator> index_;
};

}  // namespace sluice::pool
