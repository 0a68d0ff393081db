// GCRA arithmetic, leases and the Redis script. See bucket.hpp for the model.
#include <openssl/evp.h>

#include <cmath>

#include "sluice/ratelimit/bucket.hpp"

namespace sluice::ratelimit {

namespace {
// About eleven days: keeps now + tolerance far from overflow whatever the burst.
constexpr nanos max_tolerance = nanos(1'000'000) * 1'000'000'000;
}  // namespace

gcra_params gcra_params::from(double rate, double burst, int share) {
    if (!(rate > 0) || !std::isfinite(rate)) return {};
    if (share < 1) share = 1;
    double r = rate / share;
    double b = burst > 0 ? burst : std::max(1.0, rate);
    b = std::max(1.0, b / share);
    gcra_params p;
    p.interval = std::max<nanos>(1, std::llround(1e9 / r));
    double tol = b * double(p.interval);
    p.tolerance = tol >= double(max_tolerance) ? max_tolerance : std::llround(tol);
    return p;
}

gcra_grant gcra_take(nanos tat, nanos now, const gcra_params& p, std::int64_t want) {
    gcra_grant g;
    if (p.unlimited()) {
        g.granted = want;
        g.tat = tat;
        return g;
    }
    nanos base = std::max(tat, now);
    nanos room = now + p.tolerance - base;  // how much budget is left, in time
    std::int64_t avail = room > 0 ? room / p.interval : 0;
    g.granted = std::max<std::int64_t>(0, std::min(want, avail));
    g.tat = base + g.granted * p.interval;
    // The next token conforms once now' + tolerance >= tat + interval.
    g.retry_after = std::max<nanos>(0, g.tat + p.interval - p.tolerance - now);
    return g;
}

gcra_reservation gcra_reserve(nanos tat, nanos now, const gcra_params& p, nanos max_wait) {
    gcra_reservation r;
    if (p.unlimited()) {
        r.admitted = true;
        r.tat = tat;
        return r;
    }
    nanos next = std::max(tat, now) + p.interval;
    nanos wait = next - p.tolerance - now;  // until this token conforms
    if (wait <= 0) {
        r.admitted = true;
        r.tat = next;
    } else if (wait <= max_wait) {
        r.admitted = true;
        r.wait = wait;
        r.tat = next;
    } else {
        r.wait = wait;
        r.tat = tat;
    }
    return r;
}

gcra_grant atomic_gcra::take(nanos now, const gcra_params& p, std::int64_t want) {
    nanos tat = tat_.load(std::memory_order_relaxed);
    for (;;) {
        gcra_grant g = gcra_take(tat, now, p, want);
        if (g.granted == 0 || g.tat == tat) return g;
        if (tat_.compare_exchange_weak(tat, g.tat, std::memory_order_acq_rel,
                                       std::memory_order_relaxed))
            return g;
    }
}

gcra_reservation atomic_gcra::reserve(nanos now, const gcra_params& p, nanos max_wait) {
    nanos tat = tat_.load(std::memory_order_relaxed);
    for (;;) {
        gcra_reservation r = gcra_reserve(tat, now, p, max_wait);
        if (!r.admitted || r.tat == tat) return r;
        if (tat_.compare_exchange_weak(tat, r.tat, std::memory_order_acq_rel,
                                       std::memory_order_relaxed))
            return r;
    }
}

std::int64_t lease_size_for(double rate, double burst, int configured) {
    if (!(rate > 0)) return 1;
    double b = burst > 0 ? burst : std::max(1.0, rate);
    std::int64_t cap = std::max<std::int64_t>(1, std::int64_t(b));
    std::int64_t n = configured > 0 ? configured : std::int64_t(rate / 20);
    return std::clamp<std::int64_t>(n, 1, cap);
}

// Token bucket as GCRA in microseconds of the Redis server's clock. The TAT is stored as
// an integer string ('%.0f': Lua's tostring would print 1.7e+15 and lose precision) with
// an expiry once the bucket would be full again, so idle tenants leave no keys behind.
// redis.replicate_commands() is required before writing after TIME on Redis < 5 (script
// effects replication); on Redis 7 it is a no-op.
const char* const gcra_lua = R"lua(
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local avail = math.floor((now + tolerance - tat) / interval + 1e-9)
if avail < 0 then avail = 0 end
local granted = want
if avail < granted then granted = avail end
if granted > 0 then
  tat = tat + granted * interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX',
             math.floor((tat - now) / 1000) + 1000)
end
local retry = tat + interval - tolerance - now
if retry < 0 then retry = 0 end
return {granted, math.ceil(retry / 1000)}
)lua";

std::string script_sha1(const std::string& body) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(body.data(), body.size(), md, &len, EVP_sha1(), nullptr);
    static const char* hex = "0123456789abcdef";
    std::string out;
    out.reserve(len * 2);
    for (unsigned i = 0; i < len; ++i) {
        out.push_back(hex[md[i] >> 4]);
        out.push_back(hex[md[i] & 15]);
    }
    return out;
}

std::string bucket_key(const std::string& tenant, char kind_letter) {
    std::string k = "sluice:{";
    k += tenant;
    k += "}:";
    k += kind_letter;
    return k;
}

}  // namespace sluice::ratelimit
