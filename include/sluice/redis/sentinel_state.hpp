#pragma once
// Redis Sentinel, sans-io: the commands a client sends to sentinels and the rules for
// reading their answers. The connection (connection.hpp) does the I/O.
//
// Flow (Sentinel's client guidelines, https://redis.io/docs/reference/sentinel-clients/):
//   discovery: ask each sentinel in turn `SENTINEL get-master-addr-by-name NAME` (after
//     AUTH when a password is set); the first one that names an address wins and moves to
//     the front of the list, so the next discovery asks it first;
//   verification: connect to that address and ask `ROLE`; anything but "master" (a stale
//     answer, a demoted master now a replica) drops the connection and discovery runs
//     again;
//   watching: one connection to a sentinel SUBSCRIBEd to `+switch-master`; a message that
//     names our master with a new address drops the master connection, so it reconnects
//     (and so rediscovers) at once instead of at the next error.
// Bytes from a sentinel never throw: what is not understood is `malformed`.
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/redis/resp.hpp"

namespace sluice::redis::sentinel {

struct address {
    std::string host;
    int port = 0;
    bool operator==(const address&) const = default;
    std::string to_string() const;  // host:port, [v6]:port
};

// Commands (RESP-encoded).
std::string auth_command(std::string_view password);
std::string get_master_addr_command(std::string_view master);
std::string subscribe_switch_master_command();
std::string role_command();
std::string ping_command();

// What a sentinel said about the master.
enum class answer {
    found,           // `address` is where the master is
    unknown_master,  // nil: this sentinel does not monitor a master by that name
    refused,         // an error reply (-NOAUTH, -WRONGPASS, ...): `error` says which
    malformed,       // not the reply the command has
};
struct master_answer {
    answer kind = answer::malformed;
    address addr;
    std::string error;
};

// The reply to SENTINEL get-master-addr-by-name: a two-element array [ip, port] of bulk
// strings, or nil for an unknown master.
master_answer parse_master_addr(const value& reply);

// The replies of one discovery exchange, in order: AUTH's (+OK) when a password was sent,
// then get-master-addr-by-name's. A refused AUTH is reported as refused.
master_answer parse_discovery(const std::vector<value>& replies, bool sent_auth);

// ROLE's first element: "master", "slave" (a replica) or "sentinel".
enum class role { master, replica, sentinel, unknown };
role parse_role(const value& reply);
const char* to_string(role r);  // "master", "slave", "sentinel", "unknown"

// A pub/sub message on +switch-master: ["message", "+switch-master",
// "<name> <old-ip> <old-port> <new-ip> <new-port>"].
struct switch_master {
    std::string master;
    address from, to;
};
// nullopt for anything else (the subscribe confirmation, a PING's pong, a malformed one).
std::optional<switch_master> parse_switch_master(const value& message);
// The payload alone (the third element of the message).
std::optional<switch_master> parse_switch_master_payload(std::string_view payload);

// The subscription's confirmation: ["subscribe", "+switch-master", count].
bool is_subscribed(const value& reply);

// The sentinels in the order to ask them: configuration order at first, then the last
// one that answered in front (the client guidelines' rotation).
class sentinel_list {
  public:
    explicit sentinel_list(std::vector<address> sentinels) : order_(std::move(sentinels)) {}
    const std::vector<address>& order() const { return order_; }
    std::size_t size() const { return order_.size(); }
    const address& operator[](std::size_t i) const { return order_[i]; }
    // The sentinel at `i` answered: ask it first next time, the others keep their order.
    void answered(std::size_t i);

  private:
    std::vector<address> order_;
};

}  // namespace sluice::redis::sentinel
