#include "sluice/net/logging.hpp"

#include <spdlog/pattern_formatter.h>

namespace sluice::net {

namespace {

// %* : the message as the inside of a JSON string (quotes, backslashes and control
// characters escaped), so that a client-chosen name in a log line cannot break the object.
class json_message final : public spdlog::custom_flag_formatter {
public:
    void format(const spdlog::details::log_msg& msg, const std::tm&,
                spdlog::memory_buf_t& dest) override {
        static const char* hex = "0123456789abcdef";
        for (char ch : std::string_view(msg.payload.data(), msg.payload.size())) {
            const auto c = static_cast<unsigned char>(ch);
            switch (c) {
                case '"': dest.append(std::string_view("\\\"")); break;
                case '\\': dest.append(std::string_view("\\\\")); break;
                case '\n': dest.append(std::string_view("\\n")); break;
                case '\r': dest.append(std::string_view("\\r")); break;
                case '\t': dest.append(std::string_view("\\t")); break;
                default:
                    if (c < 0x20) {
                        const char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
                        dest.append(esc, esc + 6);
                    } else {
                        dest.push_back(ch);
                    }
            }
        }
    }
    std::unique_ptr<custom_flag_formatter> clone() const override {
        return std::make_unique<json_message>();
    }
};

}  // namespace

std::unique_ptr<spdlog::formatter> make_log_formatter(bool json) {
    auto f = std::make_unique<spdlog::pattern_formatter>();
    if (json) {
        f->add_flag<json_message>('*').set_pattern(
            R"({"time":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","pid":%P,"thread":%t,"message":"%*"})");
    } else {
        f->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ [%t] %v");
    }
    return f;
}

}  // namespace sluice::net
