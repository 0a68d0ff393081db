// parse_startup_options: the `options` startup parameter (proxy/parameters.hpp), as libpq,
// psql's PGOPTIONS and JDBC send it.
#include <gtest/gtest.h>

#include "sluice/proxy/parameters.hpp"

namespace sluice::proxy {
namespace {

using opts = std::vector<startup_option>;

TEST(StartupOptions, DashCAndDoubleDash) {
    EXPECT_EQ(parse_startup_options("-c timezone=UTC"), (opts{{"timezone", "UTC"}}));
    EXPECT_EQ(parse_startup_options("-ctimezone=UTC"), (opts{{"timezone", "UTC"}}));
    EXPECT_EQ(parse_startup_options("--search_path=app"), (opts{{"search_path", "app"}}));
    EXPECT_EQ(parse_startup_options("  -c a=1   --b=2 -c  c=3 "),
              (opts{{"a", "1"}, {"b", "2"}, {"c", "3"}}));
    EXPECT_EQ(parse_startup_options(""), opts{});
    EXPECT_EQ(parse_startup_options("-c x="), (opts{{"x", ""}}));
}

TEST(StartupOptions, BackslashEscapesAndDashesInNames) {
    // libpq's escaping: "\ " is a space in a value, "\\" a backslash.
    EXPECT_EQ(parse_startup_options(R"(-c DateStyle=ISO,\ DMY)"), (opts{{"DateStyle", "ISO, DMY"}}));
    EXPECT_EQ(parse_startup_options(R"(-c x=a\\b)"), (opts{{"x", R"(a\b)"}}));
    EXPECT_EQ(parse_startup_options(R"(-c a\=b=c)"), (opts{{"a", "b=c"}}));  // first '=' splits
    EXPECT_EQ(parse_startup_options("--statement-timeout=5s"), (opts{{"statement_timeout", "5s"}}));
}

TEST(StartupOptions, AnythingElseIsRefused) {
    EXPECT_FALSE(parse_startup_options("-d"));
    EXPECT_FALSE(parse_startup_options("-c timezone"));  // no value
    EXPECT_FALSE(parse_startup_options("-c =x"));
    EXPECT_FALSE(parse_startup_options("timezone=UTC"));
    EXPECT_FALSE(parse_startup_options("-c a=1 -F"));
}

// Setting names compare as PostgreSQL compares them: ASCII letters fold, nothing else.
TEST(ParameterNames, AsciiCaseFolding) {
    EXPECT_TRUE(iequals("DateStyle", "datestyle"));
    EXPECT_TRUE(iequals("TIMEZONE", "TimeZone"));
    EXPECT_TRUE(iequals("", ""));
    EXPECT_FALSE(iequals("timezone", "timezon"));
    EXPECT_FALSE(iequals("a_b", "a-b"));
    EXPECT_FALSE(iequals("\xc9t\xc9", "\xe9t\xe9"));  // Latin-1 \xc9/\xe9: not folded
    EXPECT_FALSE(iequals("@", "`"));             // 0x40/0x60: only A-Z fold
    EXPECT_EQ(tracked_parameter_name("datestyle", {}), std::optional<std::string>("DateStyle"));
    EXPECT_EQ(tracked_parameter_name("MY.setting", {"my.Setting"}),
              std::optional<std::string>("my.Setting"));
    EXPECT_EQ(tracked_parameter_name("work_mem", {}), std::nullopt);
}

}  // namespace
}  // namespace sluice::proxy
