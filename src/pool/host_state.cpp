#include "sluice/pool/host_state.hpp"

#include <algorithm>

namespace sluice::pool {

std::optional<target_session_attrs> parse_target_session_attrs(std::string_view s) {
    using t = target_session_attrs;
    if (s == "any") return t::any;
    if (s == "read-write") return t::read_write;
    if (s == "read-only") return t::read_only;
    if (s == "primary") return t::primary;
    if (s == "standby") return t::standby;
    if (s == "prefer-standby") return t::prefer_standby;
    return std::nullopt;
}

const char* to_string(target_session_attrs t) {
    switch (t) {
        case target_session_attrs::any:
            return "any";
        case target_session_attrs::read_write:
            return "read-write";
        case target_session_attrs::read_only:
            return "read-only";
        case target_session_attrs::primary:
            return "primary";
        case target_session_attrs::standby:
            return "standby";
        case target_session_attrs::prefer_standby:
            return "prefer-standby";
    }
    return "?";
}

std::optional<server_role> role_from_parameters(const std::string* in_hot_standby,
                                                const std::string* default_transaction_read_only) {
    if (!in_hot_standby) return std::nullopt;
    server_role r;
    r.hot_standby = *in_hot_standby == "on";
    r.read_only = default_transaction_read_only && *default_transaction_read_only == "on";
    return r;
}

const char* role_name(const server_role& r) { return r.hot_standby ? "standby" : "primary"; }

bool fits(target_session_attrs t, const server_role& r, bool lagging) {
    switch (t) {
        case target_session_attrs::any:
            return true;
        case target_session_attrs::read_write:
            return !r.hot_standby && !r.read_only;
        case target_session_attrs::read_only:
            return r.hot_standby || r.read_only;
        case target_session_attrs::primary:
            return !r.hot_standby;
        case target_session_attrs::standby:
            return r.hot_standby;
        case target_session_attrs::prefer_standby:
            return r.hot_standby && !lagging;
    }
    return false;
}

host_state::host_state(std::size_t hosts, target_session_attrs target, bool round_robin)
    : hosts_(hosts), target_(target), round_robin_(round_robin) {}

int host_state::rank(const host& h) const {
    if (target_ == target_session_attrs::any) return 0;  // every server fits: rotation decides
    // Unknown, or lagging when last measured: its retry time has passed (or it would not
    // be in a plan), so it may have caught up; try it before settling for a fallback.
    if (!h.role || h.lagging) return 1;
    return fits(target_, *h.role, h.lagging) ? 0 : 2;
}

std::vector<std::size_t> host_state::plan(clock_time now) {
    const std::size_t n = hosts_.size();
    if (n == 0) return {};
    const std::size_t start = round_robin_ ? next_start_ % n : 0;
    if (round_robin_) next_start_ = (next_start_ + 1) % n;
    std::vector<std::size_t> order;
    for (std::size_t k = 0; k < n; ++k) {
        std::size_t i = (start + k) % n;
        if (hosts_[i].retry_at <= now) order.push_back(i);
    }
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return rank(hosts_[a]) < rank(hosts_[b]);
    });
    return order;
}

void host_state::connect_failed(std::size_t host, clock_time now, duration retry) {
    if (host >= hosts_.size()) return;  // (a host list shortened by RELOAD meanwhile)
    // Nothing is known of it any more: when it is back it may have another role.
    hosts_.at(host).retry_at = now + retry;
    hosts_.at(host).role.reset();
    hosts_.at(host).lagging = false;
}

host_state::verdict host_state::judge(std::size_t i, const server_role& role, bool lagging,
                                      const std::vector<std::size_t>& remaining, clock_time now,
                                      duration retry) {
    if (i >= hosts_.size()) return verdict::reject;
    host& h = hosts_[i];
    remember(h, role);
    h.lagging = lagging;
    if (fits(target_, role, lagging)) return verdict::accept;
    if (target_ == target_session_attrs::prefer_standby && !role.hot_standby) {
        // A primary is prefer-standby's fallback: taken once no host that may be a
        // standby is left to try. It gets no retry delay: it stays a valid choice.
        bool standby_possible = std::any_of(remaining.begin(), remaining.end(), [&](std::size_t r) {
            return r != i && rank(hosts_.at(r)) < 2;
        });
        return standby_possible ? verdict::reject : verdict::accept;
    }
    // Does not fit (or a standby that lags): not tried again before server_login_retry.
    h.retry_at = now + retry;
    return verdict::reject;
}

host_state::clock_time host_state::next_retry(clock_time now) const {
    clock_time best = clock_time::max();
    for (const auto& h : hosts_) best = std::min(best, h.retry_at);
    return std::max(best, now);
}

}  // namespace sluice::pool
