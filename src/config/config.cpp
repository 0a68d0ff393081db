// Names and effective-value lookups of the configuration model.
#include "sluice/config/config.hpp"

namespace sluice::config {

const char* to_string(pool_mode m) {
    switch (m) {
        case pool_mode::session:
            return "session";
        case pool_mode::transaction:
            return "transaction";
        case pool_mode::statement:
            return "statement";
    }
    return "unknown";
}

// The spellings are PgBouncer's, so SHOW CONFIG and error messages read as users expect.
const char* to_string(auth_type a) {
    switch (a) {
        case auth_type::trust:
            return "trust";
        case auth_type::plain:
            return "plain";
        case auth_type::md5:
            return "md5";
        case auth_type::scram_sha_256:
            return "scram-sha-256";
        case auth_type::hba:
            return "hba";
        case auth_type::cert:
            return "cert";
        case auth_type::any:
            return "any";
    }
    return "unknown";
}

const char* to_string(rl_action a) {
    switch (a) {
        case rl_action::reject:
            return "reject";
        case rl_action::delay:
            return "delay";
    }
    return "unknown";
}

const char* to_string(rl_backend b) {
    switch (b) {
        case rl_backend::local:
            return "local";
        case rl_backend::redis:
            return "redis";
    }
    return "unknown";
}

const char* to_string(rl_failure_policy p) {
    switch (p) {
        case rl_failure_policy::local:
            return "local";
        case rl_failure_policy::open:
            return "open";
        case rl_failure_policy::closed:
            return "closed";
    }
    return "unknown";
}

// PgBouncer's precedence: the most specific setting wins, user over database over general.
pool_mode config::mode_for(const database* db, const user* u) const {
    if (u && u->mode) return *u->mode;
    if (db && db->mode) return *db->mode;
    return sluice.pool_mode_;
}

int config::pool_size_for(const database* db, const user* u) const {
    if (u && u->pool_size) return *u->pool_size;
    if (db && db->pool_size) return *db->pool_size;
    return sluice.default_pool_size;
}

// "*" is PgBouncer's fallback entry: any database name not listed connects through it.
const database* config::find_database(const std::string& name) const {
    if (auto it = databases.find(name); it != databases.end()) return &it->second;
    if (auto it = databases.find("*"); it != databases.end()) return &it->second;
    return nullptr;
}

const user* config::find_user(const std::string& name) const {
    auto it = users.find(name);
    return it == users.end() ? nullptr : &it->second;
}

}  // namespace sluice::config
