// RESP2 encoder and parser, byte by byte: every reply split at every offset is need_more
// until complete, two replies in one buffer, malformed and oversized input.
#include "sluice/redis/resp.hpp"

#include <gtest/gtest.h>

namespace sluice::redis {
namespace {

TEST(RespEncode, ArrayOfBulkStrings) {
    EXPECT_EQ(encode_command({"GET", "k"}), "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    EXPECT_EQ(encode_command({"SET", "", "a\r\nb"}),
              "*3\r\n$3\r\nSET\r\n$0\r\n\r\n$4\r\na\r\nb\r\n");
    std::string out = "x";
    encode_command(out, {"PING"});
    EXPECT_EQ(out, "x*1\r\n$4\r\nPING\r\n");
}

value simple(std::string s) {
    return {value::type::simple_string, std::move(s), 0, {}};
}
value error(std::string s) {
    return {value::type::error, std::move(s), 0, {}};
}
value integer(std::int64_t i) {
    return {value::type::integer, {}, i, {}};
}
value bulk(std::string s) {
    return {value::type::bulk_string, std::move(s), 0, {}};
}
value nil() {
    return {};
}
value array(std::vector<value> e) {
    return {value::type::array, {}, 0, std::move(e)};
}

struct sample {
    std::string bytes;
    value expected;
};

std::vector<sample> samples() {
    return {
        {"+OK\r\n", simple("OK")},
        {"-NOSCRIPT No matching script.\r\n", error("NOSCRIPT No matching script.")},
        {":42\r\n", integer(42)},
        {":-7\r\n", integer(-7)},
        {"$5\r\nhello\r\n", bulk("hello")},
        {"$0\r\n\r\n", bulk("")},
        {"$4\r\na\r\nb\r\n", bulk("a\r\nb")},  // binary-safe body
        {"$-1\r\n", nil()},
        {"*-1\r\n", nil()},
        {"*0\r\n", array({})},
        {"*2\r\n:5\r\n:0\r\n", array({integer(5), integer(0)})},
        {"*2\r\n*1\r\n+a\r\n$-1\r\n", array({array({simple("a")}), nil()})},
    };
}

TEST(RespParse, EachSampleWhole) {
    for (auto& s : samples()) {
        auto r = parse(s.bytes);
        ASSERT_EQ(r.status, parse_status::ok) << s.bytes;
        EXPECT_EQ(r.consumed, s.bytes.size()) << s.bytes;
        EXPECT_EQ(r.v, s.expected) << s.bytes;
    }
}

TEST(RespParse, EverySplitIsNeedMoreUntilComplete) {
    for (auto& s : samples())
        for (std::size_t cut = 0; cut < s.bytes.size(); ++cut) {
            auto r = parse(std::string_view(s.bytes).substr(0, cut));
            EXPECT_EQ(r.status, parse_status::need_more) << s.bytes << " cut at " << cut;
            EXPECT_EQ(r.consumed, 0u);
        }
}

TEST(RespParse, TwoRepliesInOneBuffer) {
    std::string two = "*2\r\n:1\r\n:0\r\n+OK\r\n";
    auto r = parse(two);
    ASSERT_EQ(r.status, parse_status::ok);
    EXPECT_EQ(r.v, array({integer(1), integer(0)}));
    auto r2 = parse(std::string_view(two).substr(r.consumed));
    ASSERT_EQ(r2.status, parse_status::ok);
    EXPECT_EQ(r2.v, simple("OK"));
    EXPECT_EQ(r.consumed + r2.consumed, two.size());
}

TEST(RespParse, StreamFedOneByteAtATime) {
    // What the connection does: append bytes, parse while ok.
    std::string all;
    for (auto& s : samples()) all += s.bytes;
    std::string buf;
    std::vector<value> got;
    for (char c : all) {
        buf += c;
        for (;;) {
            auto r = parse(buf);
            if (r.status != parse_status::ok) {
                ASSERT_EQ(r.status, parse_status::need_more);
                break;
            }
            got.push_back(r.v);
            buf.erase(0, r.consumed);
        }
    }
    EXPECT_TRUE(buf.empty());
    auto ss = samples();
    ASSERT_EQ(got.size(), ss.size());
    for (std::size_t i = 0; i < ss.size(); ++i) EXPECT_EQ(got[i], ss[i].expected);
}

TEST(RespParse, MalformedInputIsAnErrorNeverAThrow) {
    for (std::string bad : {
             "?x\r\n",            // unknown type byte
             ":12a\r\n",          // not an integer
             ":\r\n",             // empty integer
             "$-2\r\n",           // negative length
             "$3\r\nabcd\r\n",    // body longer than announced
             "+OK\rX",            // CR without LF
             "*-5\r\n",           // bad count
             "$99999999999\r\n",  // over max_bulk_length
             "*99999999999\r\n",  // over max_array_length
             "*1\r\n?\r\n",       // bad element
         }) {
        auto r = parse(bad);
        EXPECT_EQ(r.status, parse_status::error) << bad;
    }
}

TEST(RespParse, NestingDepthIsBounded) {
    std::string deep;
    for (int i = 0; i < 100; ++i) deep += "*1\r\n";
    deep += ":1\r\n";
    EXPECT_EQ(parse(deep).status, parse_status::error);
}

TEST(RespParse, HugeArrayCountDoesNotAllocateUpFront) {
    // A count within the limit but with no elements yet: need_more, nothing reserved.
    EXPECT_EQ(parse("*1000000\r\n").status, parse_status::need_more);
}

}  // namespace
}  // namespace sluice::redis
