#include "sluice/net/drained_wait.hpp"

#include <atomic>

namespace sluice::net::detail {

namespace {

// Bumped whenever an io_context that a thread may have remembered goes away (tests make
// and destroy many; a new one can reuse the old address).
std::atomic<unsigned> contexts_ended{0};

struct context_watch : asio::detail::execution_context_service_base<context_watch> {
    explicit context_watch(asio::execution_context& c)
        : execution_context_service_base<context_watch>(c) {}
    ~context_watch() override { contexts_ended.fetch_add(1, std::memory_order_relaxed); }
    void shutdown() override {}
};

}  // namespace

asio::detail::reactor& reactor_of(stream_socket& s) {
    // use_service looks the service up under the context's mutex: remembered per thread
    // (one io_context per worker thread, so the cache rarely changes).
    thread_local asio::execution_context* context = nullptr;
    thread_local asio::detail::reactor* reactor = nullptr;
    thread_local unsigned seen_ended = 0;
    auto& ctx = asio::query(s.get_executor(), asio::execution::context);
    const unsigned ended = contexts_ended.load(std::memory_order_relaxed);
    if (&ctx != context || ended != seen_ended) {
        reactor = &asio::use_service<asio::detail::reactor>(ctx);
        asio::use_service<context_watch>(ctx);
        context = &ctx;
        seen_ended = ended;
    }
    return *reactor;
}

}  // namespace sluice::net::detail
