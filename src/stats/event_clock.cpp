#include "sluice/stats/event_clock.hpp"

namespace sluice::stats {

thread_local constinit int event_clock::depth_ = 0;
thread_local constinit event_clock::clock::time_point event_clock::reading_{};

}  // namespace sluice::stats
