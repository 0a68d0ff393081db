#include "sluice/proxy/prepared.hpp"

namespace sluice::proxy {

std::string statement_registry::name_for(std::string_view parse_rest) {
    std::lock_guard lk(mutex_);
    auto [it, inserted] = ids_.try_emplace(std::string(parse_rest), next_);
    if (inserted) ++next_;
    return "sluice_" + std::to_string(it->second);
}

}  // namespace sluice::proxy
