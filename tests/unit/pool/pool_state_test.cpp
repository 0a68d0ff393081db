// The pool's decisions on a fake clock: slots, the idle list, FIFO waiters, the reserve
// pool, pause, expiry, shared limits, and the slot accounting under every failure order.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "sluice/pool/pool_state.hpp"

namespace {

using namespace sluice::pool;
using namespace std::chrono_literals;

struct counting_limits : shared_limits {
    int max = 1000, used = 0;
    bool try_take() override {
        if (used >= max) return false;
        ++used;
        return true;
    }
    void give_back() override { --used; }
};

const clock_time t0 = clock_time{} + 1000s;

pool_limits sized(int pool, int reserve = 0) {
    pool_limits l;
    l.pool_size = pool;
    l.reserve_pool_size = reserve;
    l.reserve_pool_timeout = 5s;
    l.server_idle_timeout = 600s;
    l.server_lifetime = 3600s;
    return l;
}

TEST(pool_state, connects_up_to_pool_size_then_waits) {
    counting_limits shared;
    pool_state p(shared, sized(2));
    EXPECT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    EXPECT_EQ(p.request(2, 0, t0).kind, checkout::connect);
    EXPECT_EQ(p.request(3, 0, t0).kind, checkout::wait);
    EXPECT_EQ(p.slots(), 2);
    EXPECT_EQ(p.waiting(), 1u);
    EXPECT_EQ(shared.used, 2);
}

TEST(pool_state, released_server_goes_to_the_longest_waiter) {
    counting_limits shared;
    pool_state p(shared, sized(1));
    ASSERT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    ASSERT_EQ(p.request(2, 0, t0).kind, checkout::wait);
    ASSERT_EQ(p.request(3, 0, t0).kind, checkout::wait);
    auto g = p.released(100, 0, t0, t0 + 1s, true);
    ASSERT_TRUE(g);
    EXPECT_EQ(g->waiter, 2u);
    EXPECT_EQ(g->server, 100u);
    g = p.released(100, 0, t0, t0 + 2s, true);
    ASSERT_TRUE(g);
    EXPECT_EQ(g->waiter, 3u);
    EXPECT_FALSE(p.released(100, 0, t0, t0 + 3s, true));
    EXPECT_EQ(p.idle_count(), 1u);
    EXPECT_EQ(p.slots(), 1);
}

TEST(pool_state, returned_server_prefers_a_waiter_on_its_worker_near_the_front) {
    counting_limits shared;
    pool_state p(shared, sized(1));
    ASSERT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    ASSERT_EQ(p.request(2, 1, t0).kind, checkout::wait);  // worker 1
    ASSERT_EQ(p.request(3, 0, t0).kind, checkout::wait);  // worker 0
    ASSERT_EQ(p.request(4, 1, t0).kind, checkout::wait);
    // A server on worker 0 goes to waiter 3 (same worker), ahead of waiter 2.
    auto g = p.released(100, 0, t0, t0 + 1s, true);
    ASSERT_TRUE(g);
    EXPECT_EQ(g->waiter, 3u);
    // On worker 1: the first waiter of worker 1, which is also the longest one.
    g = p.released(100, 1, t0, t0 + 2s, true);
    ASSERT_TRUE(g);
    EXPECT_EQ(g->waiter, 2u);
    g = p.released(100, 0, t0, t0 + 3s, true);  // nobody on worker 0: the first waiter
    ASSERT_TRUE(g);
    EXPECT_EQ(g->waiter, 4u);
    EXPECT_EQ(p.waiting(), 0u);
}

TEST(pool_state, a_waiter_is_overtaken_at_most_max_bypass_times) {
    counting_limits shared;
    pool_state p(shared, sized(1));
    ASSERT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    ASSERT_EQ(p.request(2, 1, t0).kind, checkout::wait);  // the one on the other worker
    waiter_id next = 10;
    int overtaken = 0;
    for (;;) {
        ASSERT_EQ(p.request(next++, 0, t0).kind, checkout::wait);
        auto g = p.released(100, 0, t0, t0 + 1s, true);
        ASSERT_TRUE(g);
        if (g->waiter == 2u) break;
        ++overtaken;
        ASSERT_LE(overtaken, pool_state::max_bypass);
    }
    EXPECT_EQ(overtaken, pool_state::max_bypass);
}

TEST(pool_state, affinity_looks_only_within_the_window) {
    counting_limits shared;
    pool_state p(shared, sized(1));
    ASSERT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    waiter_id w = 10;
    for (std::size_t i = 0; i < pool_state::affinity_window; ++i)
        ASSERT_EQ(p.request(w++, 1, t0).kind, checkout::wait);
    ASSERT_EQ(p.request(99, 0, t0).kind, checkout::wait);  // same worker, but too far back
    auto g = p.released(100, 0, t0, t0 + 1s, true);
    ASSERT_TRUE(g);
    EXPECT_EQ(g->waiter, 10u);
}

TEST(pool_state, idle_server_on_the_clients_worker_is_preferred_then_most_recent) {
    counting_limits shared;
    pool_state p(shared, sized(3));
    for (waiter_id w = 1; w <= 3; ++w) ASSERT_EQ(p.request(w, 0, t0).kind, checkout::connect);
    p.released(10, 0, t0, t0 + 1s, true);
    p.released(11, 1, t0, t0 + 2s, true);
    p.released(12, 0, t0, t0 + 3s, true);
    auto c = p.request(4, 1, t0 + 4s);
    EXPECT_EQ(c.kind, checkout::idle_server);
    EXPECT_EQ(c.server, 11u);  // on worker 1
    c = p.request(5, 1, t0 + 4s);
    EXPECT_EQ(c.server, 12u);  // none left on worker 1: the most recently used
    c = p.request(6, 1, t0 + 4s);
    EXPECT_EQ(c.server, 10u);
}

TEST(pool_state, a_closed_server_lets_the_first_waiter_connect) {
    counting_limits shared;
    pool_state p(shared, sized(1));
    ASSERT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    ASSERT_EQ(p.request(2, 0, t0).kind, checkout::wait);
    auto g = p.released(100, 0, t0, t0 + 1s, false);  // dirty: closed
    ASSERT_TRUE(g);
    EXPECT_EQ(g->waiter, 2u);
    EXPECT_EQ(g->server, 0u);  // may connect
    EXPECT_EQ(p.slots(), 1);
    EXPECT_EQ(shared.used, 1);
}

TEST(pool_state, failed_connects_pass_the_slot_on_until_nobody_waits) {
    // PostgreSQL restarting: every connection attempt fails, and every waiter must hear
    // about it (a slot kept by nobody left waiters stuck until query_wait_timeout).
    counting_limits shared;
    pool_state p(shared, sized(1));
    ASSERT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    for (waiter_id w = 2; w <= 5; ++w) ASSERT_EQ(p.request(w, 0, t0).kind, checkout::wait);
    std::vector<waiter_id> woken;
    auto g = p.slot_freed();  // client 1's attempt failed
    while (g) {
        woken.push_back(g->waiter);
        g = p.slot_freed();  // ... and so does each woken waiter's
    }
    EXPECT_EQ(woken, (std::vector<waiter_id>{2, 3, 4, 5}));
    EXPECT_EQ(p.slots(), 0);
    EXPECT_EQ(shared.used, 0);
    EXPECT_EQ(p.waiting(), 0u);
}

TEST(pool_state, reserve_pool_only_after_reserve_pool_timeout) {
    counting_limits shared;
    pool_state p(shared, sized(1, 1));
    auto first = p.request(1, 0, t0);
    ASSERT_EQ(first.kind, checkout::connect);
    EXPECT_FALSE(first.from_reserve);
    ASSERT_EQ(p.request(2, 0, t0).kind, checkout::wait);
    EXPECT_EQ(p.retry(2, t0, t0 + 4s).kind, checkout::wait);
    auto reserve = p.retry(2, t0, t0 + 5s);
    EXPECT_EQ(reserve.kind, checkout::connect);
    EXPECT_TRUE(reserve.from_reserve);  // the pool logs "taking connection from reserve_pool"
    EXPECT_EQ(p.slots(), 2);
    EXPECT_FALSE(p.is_waiting(2));
    ASSERT_EQ(p.request(3, 0, t0 + 5s).kind, checkout::wait);
    EXPECT_EQ(p.retry(3, t0 + 5s, t0 + 20s).kind, checkout::wait);  // reserve used up
}

TEST(pool_state, round_robin_takes_the_longest_idle_server_on_any_worker) {
    counting_limits shared;
    pool_limits l = sized(3);
    l.round_robin = true;
    pool_state p(shared, l);
    for (waiter_id w : {1, 2, 3}) ASSERT_EQ(p.request(w, 0, t0).kind, checkout::connect);
    // Released in the order 11 (worker 1), 12, 13 (worker 0).
    p.released(11, 1, t0, t0 + 1s, true);
    p.released(12, 0, t0, t0 + 2s, true);
    p.released(13, 0, t0, t0 + 3s, true);
    EXPECT_EQ(p.request(4, 0, t0 + 4s).server, 11u);  // oldest, though on another worker
    p.released(11, 1, t0, t0 + 5s, true);
    EXPECT_EQ(p.request(5, 0, t0 + 6s).server, 12u);
    EXPECT_EQ(p.request(6, 0, t0 + 6s).server, 13u);
    EXPECT_EQ(p.request(7, 0, t0 + 6s).server, 11u);
    // Without it: the most recently used on the caller's worker.
    pool_state lifo(shared, sized(3));
    for (waiter_id w : {1, 2, 3}) ASSERT_EQ(lifo.request(w, 0, t0).kind, checkout::connect);
    lifo.released(11, 1, t0, t0 + 1s, true);
    lifo.released(12, 0, t0, t0 + 2s, true);
    lifo.released(13, 1, t0, t0 + 3s, true);
    EXPECT_EQ(lifo.request(4, 0, t0 + 4s).server, 12u);
    EXPECT_EQ(lifo.request(5, 1, t0 + 4s).server, 13u);
}

TEST(pool_state, a_slot_within_pool_size_is_not_from_the_reserve) {
    // A waiter past reserve_pool_timeout that finds a regular slot free (pool_size grew
    // by RELOAD) takes that one: it is not counted, nor logged, as the reserve's.
    counting_limits shared;
    pool_state p(shared, sized(1, 1));
    ASSERT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    ASSERT_EQ(p.request(2, 0, t0).kind, checkout::wait);
    p.set_limits(sized(2, 1));
    auto c = p.retry(2, t0, t0 + 10s);
    ASSERT_EQ(c.kind, checkout::connect);
    EXPECT_FALSE(c.from_reserve);
    EXPECT_EQ(p.slots(), 2);
}

TEST(pool_state, only_the_front_waiter_takes_a_free_slot_on_retry) {
    counting_limits shared;
    shared.max = 1;  // a shared limit (max_db_connections) is what blocks
    pool_state p(shared, sized(5));
    ASSERT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    ASSERT_EQ(p.request(2, 0, t0).kind, checkout::wait);
    ASSERT_EQ(p.request(3, 0, t0).kind, checkout::wait);
    shared.max = 2;  // another pool of the same database closed a server
    EXPECT_EQ(p.retry(3, t0, t0 + 1s).kind, checkout::wait);   // not its turn
    EXPECT_EQ(p.retry(2, t0, t0 + 1s).kind, checkout::connect);
}

TEST(pool_state, shared_limit_blocks_and_is_given_back) {
    counting_limits shared;
    shared.max = 1;
    pool_state p(shared, sized(5));
    ASSERT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    EXPECT_EQ(p.request(2, 0, t0).kind, checkout::wait);
    auto g = p.slot_freed();
    ASSERT_TRUE(g);
    EXPECT_EQ(g->waiter, 2u);
    EXPECT_EQ(shared.used, 1);
}

TEST(pool_state, cancel_leaves_the_queue) {
    counting_limits shared;
    pool_state p(shared, sized(1));
    ASSERT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    ASSERT_EQ(p.request(2, 0, t0).kind, checkout::wait);
    ASSERT_EQ(p.request(3, 0, t0).kind, checkout::wait);
    EXPECT_TRUE(p.cancel(2));
    EXPECT_FALSE(p.cancel(2));
    auto g = p.released(100, 0, t0, t0 + 1s, true);
    ASSERT_TRUE(g);
    EXPECT_EQ(g->waiter, 3u);
}

TEST(pool_state, nothing_is_granted_while_paused) {
    counting_limits shared;
    pool_state p(shared, sized(2));
    ASSERT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    p.set_paused(true);
    EXPECT_EQ(p.request(2, 0, t0).kind, checkout::wait);  // room, but paused
    EXPECT_FALSE(p.released(100, 0, t0, t0 + 1s, true));  // parked idle
    EXPECT_EQ(p.retry(2, t0, t0 + 10s).kind, checkout::wait);
    p.set_paused(false);
    auto grants = p.fill_room();
    ASSERT_EQ(grants.size(), 1u);
    EXPECT_EQ(grants[0].waiter, 2u);
    EXPECT_EQ(grants[0].server, 100u);  // the idle one first
}

TEST(pool_state, larger_pool_size_lets_waiters_connect) {
    counting_limits shared;
    pool_state p(shared, sized(1));
    ASSERT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    ASSERT_EQ(p.request(2, 0, t0).kind, checkout::wait);
    ASSERT_EQ(p.request(3, 0, t0).kind, checkout::wait);
    p.set_limits(sized(3));
    auto grants = p.fill_room();
    ASSERT_EQ(grants.size(), 2u);
    EXPECT_EQ(grants[0].server, 0u);
    EXPECT_EQ(p.slots(), 3);
}

TEST(pool_state, expire_takes_idle_servers_past_their_timeouts) {
    counting_limits shared;
    pool_state p(shared, sized(3));
    for (waiter_id w = 1; w <= 3; ++w) ASSERT_EQ(p.request(w, 0, t0).kind, checkout::connect);
    p.released(1, 0, t0, t0 + 10s, true);                  // idle from t0+10s
    p.released(2, 0, t0, t0 + 500s, true);                 // idle from t0+500s
    p.released(3, 0, t0 - 3500s, t0 + 500s, true);         // connected long ago
    auto gone = p.expire(t0 + 611s);
    std::set<server_id> g(gone.begin(), gone.end());
    EXPECT_EQ(g, (std::set<server_id>{1, 3}));  // idle too long; past server_lifetime
    EXPECT_EQ(p.idle_count(), 1u);
    EXPECT_EQ(p.slots(), 3);  // the caller closes them and frees their slots
    for (std::size_t i = 0; i < gone.size(); ++i) p.slot_freed();
    EXPECT_EQ(p.slots(), 1);
    EXPECT_EQ(p.expire(t0 + 612s, true).size(), 1u);
}

TEST(pool_state, remove_idle_for_a_server_found_broken) {
    counting_limits shared;
    pool_state p(shared, sized(1));
    ASSERT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    p.released(7, 0, t0, t0 + 1s, true);
    EXPECT_TRUE(p.remove_idle(7));
    EXPECT_FALSE(p.remove_idle(7));
}

// Random interleavings of every event, with failures anywhere: the slot accounting holds
// (slots == idle + handed out + connecting), no server is both idle and handed out, and
// the shared limit sees exactly the pool's slots.
TEST(pool_state, slot_accounting_survives_random_event_orders) {
    for (unsigned seed = 1; seed <= 200; ++seed) {
        SCOPED_TRACE("seed " + std::to_string(seed));
        std::mt19937 rng(seed);
        counting_limits shared;
        shared.max = 1 + int(rng() % 6);
        pool_state p(shared, sized(1 + int(rng() % 4), int(rng() % 2)));
        std::map<waiter_id, clock_time> waiting;
        std::set<server_id> idle, busy;
        int connecting = 0;
        server_id next_server = 1;
        waiter_id next_waiter = 1;
        clock_time now = t0;
        auto apply = [&](const grant& g) {
            ASSERT_TRUE(waiting.erase(g.waiter)) << "granted to a non-waiter";
            if (g.server) {
                ASSERT_TRUE(idle.erase(g.server) || true);
                busy.insert(g.server);
            } else {
                ++connecting;
            }
        };
        for (int step = 0; step < 400; ++step) {
            now += std::chrono::milliseconds(rng() % 3000);
            switch (rng() % 9) {
                case 0: case 1: {  // a client asks
                    auto w = next_waiter++;
                    auto c = p.request(w, int(rng() % 2), now);
                    if (c.kind == checkout::idle_server) {
                        ASSERT_TRUE(idle.erase(c.server));
                        busy.insert(c.server);
                    } else if (c.kind == checkout::connect) {
                        ++connecting;
                    } else {
                        waiting[w] = now;
                    }
                    break;
                }
                case 2:  // a connect succeeds or fails
                    if (connecting > 0) {
                        --connecting;
                        if (rng() % 3) busy.insert(next_server++);
                        else if (auto g = p.slot_freed()) apply(*g);
                    }
                    break;
                case 3: case 4:  // a server comes back, clean or not
                    if (!busy.empty()) {
                        auto s = *busy.begin();
                        busy.erase(s);
                        bool clean = rng() % 4 != 0;
                        auto g = p.released(s, 0, now, now, clean);
                        if (clean && !g) idle.insert(s);
                        if (g) {
                            if (g->server) {
                                ASSERT_EQ(g->server, s);
                                ASSERT_TRUE(waiting.erase(g->waiter));
                                busy.insert(s);
                            } else {
                                apply(*g);
                            }
                        }
                    }
                    break;
                case 5:  // a waiter's timer fires
                    if (!waiting.empty()) {
                        auto [w, since] = *waiting.begin();
                        auto c = p.retry(w, since, now);
                        if (c.kind != checkout::wait) waiting.erase(w);
                        if (c.kind == checkout::idle_server) {
                            ASSERT_TRUE(idle.erase(c.server));
                            busy.insert(c.server);
                        } else if (c.kind == checkout::connect) {
                            ++connecting;
                        }
                    }
                    break;
                case 6:  // a waiter gives up
                    if (!waiting.empty()) {
                        auto w = waiting.rbegin()->first;
                        ASSERT_TRUE(p.cancel(w));
                        waiting.erase(w);
                    }
                    break;
                case 7: {  // maintenance
                    for (auto s : p.expire(now)) {
                        ASSERT_TRUE(idle.erase(s));
                        if (auto g = p.slot_freed()) apply(*g);
                    }
                    for (auto& g : p.fill_room()) apply(g);
                    break;
                }
                case 8:
                    p.set_paused(rng() % 4 == 0);
                    if (!p.paused())
                        for (auto& g : p.fill_room()) apply(g);
                    break;
            }
            if (HasFatalFailure()) return;
            ASSERT_EQ(p.slots(), int(idle.size() + busy.size()) + connecting);
            ASSERT_EQ(p.idle_count(), idle.size());
            ASSERT_EQ(p.waiting(), waiting.size());
            ASSERT_EQ(shared.used, p.slots());
            ASSERT_LE(p.slots(), p.limits().pool_size + p.limits().reserve_pool_size);
        }
    }
}

}  // namespace

// take_idle: the checkout without a coroutine. It answers only "an idle server, now" and
// changes nothing otherwise, so that the caller can go on to request() as if it had not
// asked: no slot taken, no place in the queue.
TEST(pool_state, take_idle_gives_an_idle_server_or_changes_nothing) {
    counting_limits shared;
    pool_state p(shared, sized(2));
    EXPECT_FALSE(p.take_idle(0));  // room to connect is not an idle server
    EXPECT_EQ(p.slots(), 0);
    EXPECT_EQ(p.waiting(), 0u);
    ASSERT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    ASSERT_EQ(p.request(2, 1, t0).kind, checkout::connect);
    ASSERT_FALSE(p.released(100, 1, t0, t0 + 1s, true));
    ASSERT_FALSE(p.released(200, 0, t0, t0 + 2s, true));
    // This worker's own server first, though the other was released earlier.
    EXPECT_EQ(p.take_idle(1), std::optional<server_id>(100));
    EXPECT_EQ(p.take_idle(1), std::optional<server_id>(200));  // then any
    EXPECT_FALSE(p.take_idle(1));
    EXPECT_EQ(p.slots(), 2);
}

TEST(pool_state, take_idle_does_not_overtake_a_waiter_or_a_pause) {
    counting_limits shared;
    pool_state p(shared, sized(1));
    ASSERT_EQ(p.request(1, 0, t0).kind, checkout::connect);
    ASSERT_EQ(p.request(2, 0, t0).kind, checkout::wait);
    // The server comes back while a waiter is queued: it is the waiter's.
    auto g = p.released(100, 0, t0, t0 + 1s, true);
    ASSERT_TRUE(g);
    EXPECT_EQ(g->waiter, 2u);
    // Idle with nobody waiting, but paused: nothing is handed out.
    ASSERT_FALSE(p.released(100, 0, t0, t0 + 2s, true));
    p.set_paused(true);
    EXPECT_FALSE(p.take_idle(0));
    EXPECT_EQ(p.idle_count(), 1u);
    // A client queued during the pause keeps its turn after it: take_idle leaves the idle
    // server for it.
    ASSERT_EQ(p.request(3, 0, t0).kind, checkout::wait);
    p.set_paused(false);
    EXPECT_FALSE(p.take_idle(0));
    EXPECT_EQ(p.idle_count(), 1u);
    auto grants = p.match_idle();
    ASSERT_EQ(grants.size(), 1u);
    EXPECT_EQ(grants[0].waiter, 3u);
    EXPECT_EQ(grants[0].server, 100u);
}
