#include <algorithm>

#include "sluice/ratelimit/breaker.hpp"

namespace sluice::ratelimit {

bool breaker::allow(nanos now) {
    switch (state_) {
        case state::closed:
            return true;
        case state::open:
            if (now < until_) return false;
            state_ = state::half_open;
            probe_in_flight_ = true;
            return true;
        case state::half_open:
            if (probe_in_flight_) return false;
            probe_in_flight_ = true;
            return true;
    }
    return false;
}

void breaker::on_success() {
    state_ = state::closed;
    failures_ = 0;
    probe_in_flight_ = false;
    open_for_ = s_.open_for;
}

void breaker::open(nanos now) {
    state_ = state::open;
    probe_in_flight_ = false;
    until_ = now + open_for_;
}

void breaker::on_failure(nanos now) {
    switch (state_) {
        case state::closed:
            if (++failures_ >= s_.failure_threshold) open(now);
            break;
        case state::half_open:
            // The probe failed: stay away longer.
            ++failures_;
            open_for_ = std::min(s_.max_open_for, open_for_ * 2);
            open(now);
            break;
        case state::open:
            ++failures_;  // a late reply of a request sent before opening
            break;
    }
}

void breaker::trip(nanos now) {
    failures_ = std::max(failures_, s_.failure_threshold);
    if (state_ == state::half_open) open_for_ = std::min(s_.max_open_for, open_for_ * 2);
    open(now);
}

const char* to_string(breaker::state s) {
    switch (s) {
        case breaker::state::closed:
            return "closed";
        case breaker::state::open:
            return "open";
        case breaker::state::half_open:
            return "half_open";
    }
    return "?";
}

}  // namespace sluice::ratelimit
