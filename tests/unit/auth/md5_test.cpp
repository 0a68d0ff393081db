#include "sluice/auth/md5.hpp"

#include <gtest/gtest.h>

using namespace sluice::auth;

// Expected values computed independently with coreutils:
//   printf 'penciluser' | md5sum
//   printf '20c46e3762c864548e296b33c3406aa9\x01\x02\x03\x04' | md5sum
TEST(Md5, HexOfKnownInputs) {
    EXPECT_EQ(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
    EXPECT_EQ(md5_hex("penciluser"), "20c46e3762c864548e296b33c3406aa9");
}

TEST(Md5, StoredIsPostgresFormat) {
    EXPECT_EQ(md5_stored("pencil", "user"), "md520c46e3762c864548e296b33c3406aa9");
    // pg_authid for "postgres"/"postgres": printf 'postgrespostgres' | md5sum
    EXPECT_EQ(md5_stored("postgres", "postgres"), "md53175bce1d3201d16594cebf9d7eb3f9d");
}

TEST(Md5, ResponseFromPlaintextAndFromStoredAgree) {
    const std::array<std::uint8_t, 4> salt{1, 2, 3, 4};
    const std::string expected = "md54376eb6913b38f9aaff38dc7cf19ca76";
    EXPECT_EQ(md5_response("pencil", "user", salt), expected);
    EXPECT_EQ(md5_response("md520c46e3762c864548e296b33c3406aa9", "user", salt), expected);
}

TEST(Md5, ResponseDependsOnSalt) {
    EXPECT_NE(md5_response("pencil", "user", {1, 2, 3, 4}),
              md5_response("pencil", "user", {1, 2, 3, 5}));
}

TEST(Md5, IsMd5Secret) {
    EXPECT_TRUE(is_md5_secret("md520c46e3762c864548e296b33c3406aa9"));
    EXPECT_FALSE(is_md5_secret("md520c46e3762c864548e296b33c3406aa"));    // too short
    EXPECT_FALSE(is_md5_secret("md520c46e3762c864548e296b33c3406aa99"));  // too long
    EXPECT_FALSE(is_md5_secret("md520C46E3762C864548E296B33C3406AA9"));   // uppercase, as PG
    EXPECT_FALSE(is_md5_secret("md520c46e3762c864548e296b33c3406aag"));   // not hex
    EXPECT_FALSE(is_md5_secret("xyz20c46e3762c864548e296b33c3406aa9"));
    EXPECT_FALSE(is_md5_secret(""));
}

TEST(Md5, Verify) {
    const std::array<std::uint8_t, 4> salt{0xde, 0xad, 0xbe, 0xef};
    std::string good = md5_response("pencil", "user", salt);
    EXPECT_TRUE(md5_verify("pencil", "user", salt, good));
    EXPECT_TRUE(md5_verify(md5_stored("pencil", "user"), "user", salt, good));
    EXPECT_FALSE(md5_verify("pencil2", "user", salt, good));
    EXPECT_FALSE(md5_verify("pencil", "other", salt, good));
    EXPECT_FALSE(md5_verify("pencil", "user", {0, 0, 0, 0}, good));
    EXPECT_FALSE(md5_verify("pencil", "user", salt, ""));
    EXPECT_FALSE(md5_verify("pencil", "user", salt, good.substr(0, 34)));
    EXPECT_FALSE(md5_verify("pencil", "user", salt, "pencil"));
}
