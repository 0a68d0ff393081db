#pragma once
// PgBouncer's auth_file format: one `"user" "secret"` per line, `""` escapes a quote,
// lines starting with ';' are comments. Secrets are plaintext, md5<hex> or a SCRAM verifier.
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace sluice::auth {

struct userlist_error {
    int line = 0;
    int column = 0;
    std::string message;
};

struct userlist {
    std::map<std::string, std::string> secrets;  // user -> secret as written
    std::vector<userlist_error> errors;
    std::optional<std::string> find(const std::string& user) const;
};

userlist parse_userlist(const std::string& text);
// Reads a file; a missing file yields one error at line 0.
userlist load_userlist(const std::string& path);

}  // namespace sluice::auth
