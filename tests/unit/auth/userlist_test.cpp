#include "sluice/auth/userlist.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

using namespace sluice::auth;

TEST(Userlist, BasicEntries) {
    auto u = parse_userlist(
        "\"alice\" \"secret1\"\n"
        "\"bob\"\t\"md520c46e3762c864548e296b33c3406aa9\"\n");
    EXPECT_TRUE(u.errors.empty());
    ASSERT_EQ(u.secrets.size(), 2u);
    EXPECT_EQ(u.find("alice"), "secret1");
    EXPECT_EQ(u.find("bob"), "md520c46e3762c864548e296b33c3406aa9");
    EXPECT_EQ(u.find("carol"), std::nullopt);
}

TEST(Userlist, CommentsBlankLinesCrlfAndNoFinalNewline) {
    auto u = parse_userlist(
        "; a comment \"with\" quotes\n"
        "\n"
        "   \n"
        "  ; indented comment\n"
        "\"a\" \"1\"\r\n"
        "  \"b\" \"2\"");
    EXPECT_TRUE(u.errors.empty());
    EXPECT_EQ(u.find("a"), "1");
    EXPECT_EQ(u.find("b"), "2");
    EXPECT_EQ(u.secrets.size(), 2u);
}

TEST(Userlist, DoubledQuotesAreOneQuote) {
    auto u = parse_userlist("\"we\"\"ird\" \"pa\"\"ss\"\"\"\n\"x\" \"\"\"\"\n");
    EXPECT_TRUE(u.errors.empty());
    EXPECT_EQ(u.find("we\"ird"), "pa\"ss\"");
    EXPECT_EQ(u.find("x"), "\"");
}

TEST(Userlist, SpacesAndSemicolonsInsideFields) {
    auto u = parse_userlist("\"a b\" \"p; w d\"\n");
    EXPECT_TRUE(u.errors.empty());
    EXPECT_EQ(u.find("a b"), "p; w d");
}

TEST(Userlist, EmptySecretAllowed) {
    auto u = parse_userlist("\"a\" \"\"\n");
    EXPECT_TRUE(u.errors.empty());
    EXPECT_EQ(u.find("a"), "");
}

TEST(Userlist, TrailingGarbageIgnored) {
    auto u = parse_userlist("\"a\" \"1\" \"extra\" junk ;x\n\"b\" \"2\"junk\n");
    EXPECT_TRUE(u.errors.empty());
    EXPECT_EQ(u.find("a"), "1");
    EXPECT_EQ(u.find("b"), "2");
}

TEST(Userlist, ScramVerifierKeptAsWritten) {
    const std::string v =
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="
        ":wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
    auto u = parse_userlist("\"user\" \"" + v + "\"\n");
    EXPECT_EQ(u.find("user"), v);
}

TEST(Userlist, LaterDuplicateWins) {
    auto u = parse_userlist("\"a\" \"1\"\n\"a\" \"2\"\n");
    EXPECT_EQ(u.find("a"), "2");
}

TEST(Userlist, ErrorsCarryLineAndColumnAndGoodLinesStillLoad) {
    auto u = parse_userlist(
        "\"good1\" \"p1\"\n"  // 1
        "\"u2\" \"open\n"     // 2: secret opens at column 6 and never closes
        "\"nosecret\"\n"      // 3
        "bare \"x\"\n"        // 4
        "  \"open user\n"     // 5
        "\"good2\" \"p2\"\n"  // 6
        "\"\" \"p\"\n"        // 7: empty user
        "\"u\" nope\n");      // 8
    EXPECT_EQ(u.find("good1"), "p1");
    EXPECT_EQ(u.find("good2"), "p2");
    EXPECT_EQ(u.secrets.size(), 2u);
    ASSERT_EQ(u.errors.size(), 6u);
    EXPECT_EQ(u.errors[0].line, 2);
    EXPECT_EQ(u.errors[0].column, 6);
    EXPECT_NE(u.errors[0].message.find("unterminated"), std::string::npos);
    EXPECT_EQ(u.errors[1].line, 3);
    EXPECT_EQ(u.errors[1].column, 11);
    EXPECT_NE(u.errors[1].message.find("missing"), std::string::npos);
    EXPECT_EQ(u.errors[2].line, 4);
    EXPECT_EQ(u.errors[2].column, 1);
    EXPECT_EQ(u.errors[3].line, 5);
    EXPECT_EQ(u.errors[3].column, 3);
    EXPECT_NE(u.errors[3].message.find("unterminated"), std::string::npos);
    EXPECT_EQ(u.errors[4].line, 7);
    EXPECT_EQ(u.errors[5].line, 8);
    EXPECT_EQ(u.errors[5].column, 5);
}

TEST(Userlist, QuoteDoesNotSpanLines) {
    auto u = parse_userlist("\"a\" \"multi\nline\"\n\"b\" \"2\"\n");
    EXPECT_EQ(u.find("a"), std::nullopt);
    EXPECT_EQ(u.find("b"), "2");
    ASSERT_GE(u.errors.size(), 1u);
    EXPECT_EQ(u.errors[0].line, 1);
    EXPECT_EQ(u.errors[0].column, 5);
}

TEST(Userlist, EmptyInput) {
    auto u = parse_userlist("");
    EXPECT_TRUE(u.secrets.empty());
    EXPECT_TRUE(u.errors.empty());
}

TEST(Userlist, BinaryGarbageNeverCrashes) {
    std::string junk;
    for (int i = 0; i < 4096; ++i) junk.push_back(static_cast<char>((i * 7919) % 256));
    auto u = parse_userlist(junk);
    (void)u;
    std::string quotes(1000, '"');
    auto q = parse_userlist(quotes);
    (void)q;
    SUCCEED();
}

TEST(Userlist, LoadFromFile) {
    std::string path = ::testing::TempDir() + "sluice_userlist_test.txt";
    {
        std::ofstream out(path);
        out << "\"alice\" \"s1\"\n";
    }
    auto u = load_userlist(path);
    EXPECT_TRUE(u.errors.empty());
    EXPECT_EQ(u.find("alice"), "s1");
    std::remove(path.c_str());
}

TEST(Userlist, MissingFileIsOneErrorAtLineZero) {
    auto u = load_userlist("/nonexistent/dir/userlist.txt");
    EXPECT_TRUE(u.secrets.empty());
    ASSERT_EQ(u.errors.size(), 1u);
    EXPECT_EQ(u.errors[0].line, 0);
    EXPECT_NE(u.errors[0].message.find("/nonexistent/dir/userlist.txt"), std::string::npos);
}
