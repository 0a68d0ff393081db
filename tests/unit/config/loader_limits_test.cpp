// Inputs found by fuzz/config_fuzz that once hung or exhausted memory: each must come back
// as an ordinary error, quickly.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "sluice/config/loader.hpp"

namespace sluice::config {
namespace {

// Nine levels of ten aliases each: 10^9 values once expanded, from about 350 bytes.
std::string billion_laughs() {
    std::string s = "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n";
    for (int i = 1; i <= 9; ++i) {
        s += "l" + std::to_string(i) + ": &l" + std::to_string(i) + " [";
        for (int j = 0; j < 10; ++j) s += (j ? ", *l" : "*l") + std::to_string(i - 1);
        s += "]\n";
    }
    return s;
}

TEST(ConfigLimits, NestedAliasesAreBoundedNotExpanded) {
    const auto start = std::chrono::steady_clock::now();
    const auto r = load_string(billion_laughs(), "/etc/sluice/sluice.yaml");
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
    EXPECT_FALSE(r.cfg.has_value());
    ASSERT_FALSE(r.errors.empty());
    bool found = false;
    for (const auto& e : r.errors)
        found |= e.message.find("too many values") != std::string::npos && e.line >= 1;
    EXPECT_TRUE(found) << r.errors[0].to_string();
}

TEST(ConfigLimits, OrdinaryAnchorsStillWork) {
    const auto r = load_string(
        "x: &defaults {host: 127.0.0.1, port: 5433, pool_size: 5}\n", "/etc/sluice/sluice.yaml");
    // `x` is not a section, so this is an error about the section, not about size.
    ASSERT_EQ(r.errors.size(), 1u);
    EXPECT_NE(r.errors[0].message.find("unknown section"), std::string::npos);

    std::string many = "databases:\n  d0: &d {host: 127.0.0.1, port: 5433, pool_size: 5}\n";
    for (int i = 1; i < 2000; ++i) many += "  d" + std::to_string(i) + ": *d\n";
    const auto ok = load_string(many, "/etc/sluice/sluice.yaml");
    ASSERT_TRUE(ok.ok()) << ok.errors[0].to_string();
    EXPECT_EQ(ok.cfg->databases.size(), 2000u);
    EXPECT_EQ(ok.cfg->databases.at("d1999").port, 5433);
}

}  // namespace
}  // namespace sluice::config
