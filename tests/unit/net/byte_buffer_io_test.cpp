// byte_buffer: growth past the standard block keeps every unread byte. (A message larger
// than 16 KiB held whole used to lose its first 16 KiB when the buffer grew: issue 8.)
#include <gtest/gtest.h>

#include <numeric>

#include "sluice/net/io.hpp"

namespace {
using sluice::byte_buffer;

void append(byte_buffer& b, const std::vector<std::uint8_t>& bytes) {
    b.reserve_tail(bytes.size());
    auto w = b.writable();
    ASSERT_GE(w.size(), bytes.size());
    std::memcpy(w.data(), bytes.data(), bytes.size());
    b.commit(bytes.size());
}

std::vector<std::uint8_t> pattern(std::size_t n, std::uint8_t start) {
    std::vector<std::uint8_t> v(n);
    std::iota(v.begin(), v.end(), start);
    return v;
}

TEST(byte_buffer, growth_keeps_unread_bytes) {
    for (std::size_t consumed : {std::size_t(0), std::size_t(34), std::size_t(5000)}) {
        byte_buffer b;
        auto first = pattern(byte_buffer::standard_size, 1);
        append(b, first);
        b.consume(consumed);
        auto second = pattern(20000, 7);
        append(b, second);  // must grow: the standard block is full
        ASSERT_EQ(b.size(), first.size() - consumed + second.size()) << consumed;
        EXPECT_EQ(0, std::memcmp(b.readable(), first.data() + consumed, first.size() - consumed));
        EXPECT_EQ(0, std::memcmp(b.readable() + first.size() - consumed, second.data(),
                                 second.size()));
        EXPECT_GT(b.capacity(), byte_buffer::standard_size);
    }
}

TEST(byte_buffer, shrinks_to_nothing_when_empty) {
    byte_buffer b;
    append(b, pattern(100, 0));
    b.consume(100);
    b.shrink_if_empty();
    EXPECT_EQ(b.capacity(), 0u);
}
}  // namespace
