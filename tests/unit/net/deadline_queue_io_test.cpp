// net::deadline_queue: many deadlines on one Asio timer. What it must do: fire each queued
// entry once, after its deadline (and not one far ahead); never fire a cancelled one;
// move an entry that is scheduled again (earlier or later) rather than queue it twice;
// let an entry's `fire` schedule it again, or cancel or move another due entry; and,
// when its io_context is destroyed, hand every entry still queued back with `dropped`.
// Deadlines here are in the past, a few milliseconds ahead or hours ahead, and the tests
// wait for conditions with a generous deadline, never on elapsed time.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "sluice/net/deadline_queue.hpp"

namespace {
using namespace sluice;
using namespace std::chrono_literals;

// An entry that records its firings in a shared log. It leaves its queue when destroyed,
// so that a test that fails with entries still queued fails rather than crashes.
struct probe : net::deadline_queue::entry {
    int name = 0;
    std::vector<int>* log = nullptr;
    net::deadline_queue* queue = nullptr;
    int dropped = 0;
    std::function<void(probe&)> then;  // runs after a firing is logged
    probe(int n, std::vector<int>& l, net::deadline_queue& q) : name(n), log(&l), queue(&q) {
        fire = [](net::deadline_queue::entry& e, bool was_dropped) noexcept {
            auto& p = static_cast<probe&>(e);
            if (was_dropped) {
                ++p.dropped;
                return;
            }
            p.log->push_back(p.name);
            if (p.then) p.then(p);
        };
    }
    ~probe() {
        if (queued()) queue->cancel(*this);
    }
    probe(const probe&) = delete;
    probe& operator=(const probe&) = delete;
};

struct deadline_queue_test : ::testing::Test {
    asio::io_context ctx{1};
    // Keeps the context running when nothing is pending (a run out of work would stop it).
    asio::executor_work_guard<asio::io_context::executor_type> work{ctx.get_executor()};
    net::deadline_queue& q = asio::use_service<net::deadline_queue>(ctx);
    std::vector<int> log;

    // Runs handlers until `done()` or a generous deadline.
    void run_until(const std::function<bool()>& done) {
        const auto deadline = steady_clock::now() + 10s;
        while (!done() && steady_clock::now() < deadline) ctx.run_one_for(50ms);
    }
};

TEST_F(deadline_queue_test, fires_each_entry_once_after_its_deadline) {
    const auto now = steady_clock::now();
    probe a(1, log, q), b(2, log, q), c(3, log, q), d(4, log, q), later(5, log, q);
    // Out of order, one already due, one far ahead.
    q.schedule(c, now + 30ms);
    q.schedule(a, now - 1ms);
    q.schedule(later, now + 1h);
    q.schedule(d, now + 40ms);
    q.schedule(b, now + 20ms);
    EXPECT_EQ(5u, q.size());
    run_until([&] { return log.size() == 4; });
    auto fired = log;
    std::sort(fired.begin(), fired.end());
    EXPECT_EQ((std::vector<int>{1, 2, 3, 4}), fired);
    for (auto* p : {&a, &b, &c, &d}) EXPECT_FALSE(p->queued());
    EXPECT_TRUE(later.queued());
    EXPECT_EQ(1u, q.size());
    ctx.poll();  // nothing more comes
    EXPECT_EQ(4u, log.size());
}

TEST_F(deadline_queue_test, a_cancelled_entry_never_fires) {
    const auto now = steady_clock::now();
    probe a(1, log, q), b(2, log, q), c(3, log, q);
    q.schedule(a, now + 5ms);
    q.schedule(b, now + 10ms);
    q.schedule(c, now + 15ms);
    q.cancel(a);  // the earliest: the timer still waits for it, and must fire for nothing
    q.cancel(a);  // (again: not queued, no effect)
    EXPECT_FALSE(a.queued());
    EXPECT_EQ(2u, q.size());
    run_until([&] { return log.size() == 2; });
    auto fired = log;
    std::sort(fired.begin(), fired.end());
    EXPECT_EQ((std::vector<int>{2, 3}), fired);
}

TEST_F(deadline_queue_test, scheduling_again_moves_the_entry) {
    const auto now = steady_clock::now();
    probe a(1, log, q), b(2, log, q);
    q.schedule(a, now + 1h);
    q.schedule(b, now + 1h);   // the timer waits for an hour...
    q.schedule(a, now - 1ms);  // ...a moved earlier: the timer must be re-armed for it
    q.schedule(b, now + 2h);   // b moved later: still queued once
    EXPECT_EQ(2u, q.size());
    run_until([&] { return log.size() == 1; });
    ctx.poll();
    EXPECT_EQ((std::vector<int>{1}), log);
    EXPECT_TRUE(b.queued());
    EXPECT_EQ(now + 2h, b.when);
    EXPECT_EQ(1u, q.size());
}

TEST_F(deadline_queue_test, an_entry_may_schedule_itself_from_fire) {
    probe a(1, log, q);
    int rounds = 0;
    a.then = [&](probe& p) {
        if (++rounds < 3) q.schedule(p, steady_clock::now() + 1ms);
    };
    q.schedule(a, steady_clock::now());
    run_until([&] { return rounds == 3; });
    EXPECT_EQ(3, rounds);
    EXPECT_FALSE(a.queued());
}

TEST_F(deadline_queue_test, an_entry_scheduled_in_the_past_from_fire_fires_from_a_later_run) {
    // fire() schedules its entry for a time already past: it goes back into the queue and
    // fires from the next run, not again in this one (which would never end).
    probe a(1, log, q);
    int rounds = 0;
    a.then = [&](probe& p) {
        if (++rounds < 50) q.schedule(p, steady_clock::now() - 1s);
    };
    q.schedule(a, steady_clock::now() - 1s);
    run_until([&] { return rounds == 50; });
    EXPECT_EQ(50, rounds);
}

TEST_F(deadline_queue_test, fire_may_cancel_or_move_another_due_entry) {
    // Both due in one run: whichever fires first takes the other out (cancel) or moves it
    // an hour ahead (schedule); the other must then not fire.
    for (bool move : {false, true}) {
        log.clear();
        const auto past = steady_clock::now() - 1ms;
        probe a(1, log, q), b(2, log, q);
        a.then = [&](probe&) { move ? q.schedule(b, steady_clock::now() + 1h) : q.cancel(b); };
        b.then = [&](probe&) { move ? q.schedule(a, steady_clock::now() + 1h) : q.cancel(a); };
        q.schedule(a, past);
        q.schedule(b, past);
        run_until([&] { return !log.empty(); });
        ctx.poll();
        EXPECT_EQ(1u, log.size()) << (move ? "moved" : "cancelled");
        EXPECT_EQ(move ? 1u : 0u, q.size());
        q.cancel(a);
        q.cancel(b);
    }
}

TEST_F(deadline_queue_test, many_entries_with_cancellations) {
    // Deadlines in a scrambled order, every third cancelled, all due at once: what fires
    // is the rest, each once, in the order they were scheduled.
    const auto base = steady_clock::now() - 1s;
    std::vector<std::unique_ptr<probe>> ps;
    for (int i = 0; i < 200; ++i) ps.push_back(std::make_unique<probe>(i, log, q));
    std::vector<int> order;
    for (int i = 0; i < 200; ++i) {
        const int k = (i * 73) % 200;  // 73 is prime to 200: every k once
        q.schedule(*ps[k], base + std::chrono::microseconds(k));
        if (k % 3 != 0) order.push_back(k);
    }
    for (int i = 0; i < 200; i += 3) q.cancel(*ps[i]);
    EXPECT_EQ(order.size(), q.size());
    run_until([&] { return log.size() == order.size(); });
    EXPECT_EQ(order, log);
}

TEST(deadline_queue_shutdown, entries_still_queued_are_dropped_when_the_context_goes) {
    std::vector<int> log;
    auto ctx = std::make_unique<asio::io_context>(1);
    auto& q = asio::use_service<net::deadline_queue>(*ctx);
    probe a(1, log, q), b(2, log, q);
    q.schedule(a, steady_clock::now() + 1h);
    q.schedule(b, steady_clock::now() + 2h);
    ctx.reset();  // (the probes outlive it: no longer queued, they do not touch it again)
    EXPECT_EQ(1, a.dropped);
    EXPECT_EQ(1, b.dropped);
    EXPECT_FALSE(a.queued());
    EXPECT_FALSE(b.queued());
    EXPECT_TRUE(log.empty());
}

}  // namespace
