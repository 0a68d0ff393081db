#pragma once
// PostgreSQL's md5 authentication: the stored form is "md5" + hex(md5(password + user)) and
// the wire answer to a 4-byte salt is "md5" + hex(md5(hex(md5(password + user)) + salt)).
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace sluice::auth {

std::string md5_hex(std::string_view data);
// "md5" + md5_hex(password + user): what pg_authid and userlist.txt hold.
std::string md5_stored(std::string_view password, std::string_view user);
// The PasswordMessage payload for a salt, from a plaintext password or an md5 stored secret.
std::string md5_response(std::string_view secret, std::string_view user,
                         const std::array<std::uint8_t, 4>& salt);
// PostgreSQL's test for an md5 secret: "md5" followed by exactly 32 lowercase hex digits.
bool is_md5_secret(std::string_view secret);
// Server side: checks a client's PasswordMessage against a plaintext or md5 secret, in
// constant time so the comparison does not leak how much of the answer was right.
bool md5_verify(std::string_view secret, std::string_view user,
                const std::array<std::uint8_t, 4>& salt, std::string_view response);

}  // namespace sluice::auth
