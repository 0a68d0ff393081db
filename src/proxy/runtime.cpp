#include "sluice/proxy/runtime.hpp"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "sluice/config/loader.hpp"
#include "sluice/config/settings.hpp"
#include "sluice/proxy/client_session.hpp"
#include "sluice/proxy/parameters.hpp"

namespace sluice::proxy {

bool session_registry::add(const std::shared_ptr<client_session>& s) {
    std::lock_guard lk(mutex_);
    return by_key_.try_emplace(key_of(s->cancel_key.process_id, s->cancel_key.secret_key), s.get())
        .second;
}

void session_registry::remove(const client_session& s) {
    // Only this session's entry: one that ends before it was added must not take another's.
    std::lock_guard lk(mutex_);
    auto it = by_key_.find(key_of(s.cancel_key.process_id, s.cancel_key.secret_key));
    if (it != by_key_.end() && it->second == &s) by_key_.erase(it);
}

std::shared_ptr<client_session> session_registry::find_by_key(std::uint32_t pid,
                                                              std::uint32_t key) const {
    std::lock_guard lk(mutex_);
    auto it = by_key_.find(key_of(pid, key));
    return it == by_key_.end() ? nullptr : it->second->weak_from_this().lock();
}

std::shared_ptr<client_session> session_registry::find_by_id(std::uint64_t id) const {
    auto found = find_by_ids({id});
    return found.empty() ? nullptr : std::move(found.front());
}

std::vector<std::shared_ptr<client_session>> session_registry::find_by_ids(
    std::vector<std::uint64_t> ids) const {
    std::vector<std::shared_ptr<client_session>> out;
    if (ids.empty()) return out;
    std::sort(ids.begin(), ids.end());
    // (Reserved: no push_back may throw under the mutex, where dropping a shared_ptr that
    // turned out to be the last one would run the session's destructor, which locks it.)
    out.reserve(ids.size());
    std::lock_guard lk(mutex_);
    for (auto& [key, p] : by_key_)
        if (std::binary_search(ids.begin(), ids.end(), p->id))
            if (auto s = p->weak_from_this().lock()) out.push_back(std::move(s));
    return out;
}

std::vector<std::shared_ptr<client_session>> session_registry::all() const {
    std::vector<std::shared_ptr<client_session>> out;
    std::lock_guard lk(mutex_);
    out.reserve(by_key_.size());  // (before any shared_ptr is taken: see find_by_ids)
    for (auto& [key, p] : by_key_)
        if (auto s = p->weak_from_this().lock()) out.push_back(std::move(s));
    return out;
}

client_counts::verdict client_counts::try_take(const std::string& database,
                                               const std::string& user, int database_max,
                                               int user_max) {
    std::lock_guard lk(mutex_);
    auto db = by_database_.try_emplace(database, 0).first;
    auto us = by_user_.try_emplace(user, 0).first;
    verdict v = database_max > 0 && db->second >= database_max ? verdict::database_full
                : user_max > 0 && us->second >= user_max       ? verdict::user_full
                                                               : verdict::taken;
    if (v == verdict::taken) {
        ++db->second;
        ++us->second;
    } else {  // (no entry left behind for a name nobody holds)
        if (db->second == 0) by_database_.erase(db);
        if (us->second == 0) by_user_.erase(us);
    }
    return v;
}

void client_counts::give_back(const std::string& database, const std::string& user) {
    std::lock_guard lk(mutex_);
    if (auto it = by_database_.find(database); it != by_database_.end() && --it->second <= 0)
        by_database_.erase(it);
    if (auto it = by_user_.find(user); it != by_user_.end() && --it->second <= 0)
        by_user_.erase(it);
}

std::size_t session_registry::size() const {
    std::lock_guard lk(mutex_);
    return by_key_.size();
}

namespace {

std::optional<std::string> read_text(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return std::nullopt;
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::string position(const std::string& file, const auth::hba_error& e) {
    return file + ":" + std::to_string(e.line) + ":" + std::to_string(e.column) + ": " + e.message;
}

}  // namespace

std::shared_ptr<const auth_rules> load_auth_rules(const config::general& g, std::string& error) {
    auto out = std::make_shared<auth_rules>();
    if (g.auth_type_ == config::auth_type::hba) {
        auto text = read_text(g.auth_hba_file);
        if (!text) {
            error = "auth_hba_file: cannot read " + g.auth_hba_file;
            return nullptr;
        }
        const auto dir = std::filesystem::path(g.auth_hba_file).parent_path();
        auto include = [&](const std::string& name) -> std::optional<std::string> {
            std::filesystem::path p(name);
            return read_text(p.is_relative() ? (dir / p).string() : name);
        };
        auto parsed = auth::hba_file::parse(*text, include);
        if (auto* e = std::get_if<auth::hba_error>(&parsed)) {
            error = position(g.auth_hba_file, *e);
            return nullptr;
        }
        auto& file = std::get<auth::hba_file>(parsed);
        for (auto& r : file.rules())
            if (auto it = r.options.find("clientname"); it != r.options.end() && it->second != "CN") {
                // Only the CommonName is compared; a DN rule would match differently.
                error = g.auth_hba_file + ":" + std::to_string(r.line) +
                        ":1: clientname=" + it->second + " is not supported (only CN)";
                return nullptr;
            }
        out->hba = std::make_shared<const auth::hba_file>(std::move(file));
    }
    if (!g.auth_ident_file.empty()) {
        auto text = read_text(g.auth_ident_file);
        if (!text) {
            error = "auth_ident_file: cannot read " + g.auth_ident_file;
            return nullptr;
        }
        auto parsed = auth::ident_map::parse(*text);
        if (auto* e = std::get_if<auth::hba_error>(&parsed)) {
            error = position(g.auth_ident_file, *e);
            return nullptr;
        }
        out->ident = std::make_shared<const auth::ident_map>(std::get<auth::ident_map>(std::move(parsed)));
    } else {
        out->ident = std::make_shared<const auth::ident_map>();
    }
    return out;
}

runtime::runtime(config::config cfg, auth::userlist users)
    : pools([this](const std::string& db, const std::string& user) {
          return pool_settings(db, user);
      }),
      cfg_(std::make_shared<const config::config>(std::move(cfg))),
      users_(std::make_shared<const auth::userlist>(std::move(users))) {
    std::string error;
    tls_ = net::make_tls_config(cfg_->sluice, nullptr, error);
    if (!tls_) throw std::runtime_error(error);
    rules_ = load_auth_rules(cfg_->sluice, error);
    if (!rules_) throw std::runtime_error(error);
    apply_limits(*cfg_);
}

bool runtime::database_disabled(const std::string& db) const {
    std::shared_lock lk(mutex_);
    return disabled_.count(db) > 0;
}

void runtime::set_database_disabled(const std::string& db, bool disabled) {
    std::unique_lock lk(mutex_);
    if (disabled) disabled_.insert(db);
    else disabled_.erase(db);
}

std::shared_ptr<const config::config> runtime::cfg() const {
    std::shared_lock lk(mutex_);
    return cfg_;
}

std::shared_ptr<const auth::userlist> runtime::users() const {
    std::shared_lock lk(mutex_);
    return users_;
}

std::shared_ptr<const net::tls_config> runtime::tls() const {
    std::shared_lock lk(mutex_);
    return tls_;
}

std::shared_ptr<const auth_rules> runtime::rules() const {
    std::shared_lock lk(mutex_);
    return rules_;
}

void runtime::apply_limits(const config::config& c) {
    std::map<std::string, int> db_limits, user_limits;
    for (auto& [name, db] : c.databases) {
        int limit = db.max_db_connections.value_or(c.sluice.max_db_connections);
        if (limit > 0) db_limits[name] = limit;
    }
    for (auto& [name, u] : c.users) {
        int limit = u.max_user_connections.value_or(c.sluice.max_user_connections);
        if (limit > 0) user_limits[name] = limit;
    }
    pools.set_limits(std::move(db_limits), std::move(user_limits), c.sluice.max_db_connections,
                     c.sluice.max_user_connections);
}

bool runtime::reload(std::string& errors) {
    auto current = cfg();
    auto loaded = config::load_file(current->path);
    if (!loaded.ok()) {
        for (auto& d : loaded.errors) errors += d.to_string() + "\n";
        return false;
    }
    auth::userlist ul;
    if (!loaded.cfg->sluice.auth_file.empty()) {
        ul = auth::load_userlist(loaded.cfg->sluice.auth_file);
        if (ul.secrets.empty() && !ul.errors.empty()) {
            for (auto& e : ul.errors)
                errors += loaded.cfg->sluice.auth_file + ":" + std::to_string(e.line) + ":" +
                          std::to_string(e.column) + ": " + e.message + "\n";
            return false;
        }
    }
    // New certificates and keys are checked before anything changes: a bad file keeps the
    // running configuration, as any other error.
    std::string tls_error;
    auto tls = net::make_tls_config(loaded.cfg->sluice, this->tls().get(), tls_error);
    if (!tls) {
        errors += current->path + ": " + tls_error + "\n";
        return false;
    }
    std::string rules_error;
    auto rules = load_auth_rules(loaded.cfg->sluice, rules_error);
    if (!rules) {
        errors += rules_error + "\n";
        return false;
    }
    {
        std::unique_lock lk(mutex_);
        cfg_ = std::make_shared<const config::config>(std::move(*loaded.cfg));
        users_ = std::make_shared<const auth::userlist>(std::move(ul));
        tls_ = std::move(tls);
        rules_ = std::move(rules);
    }
    apply_limits(*cfg());
    pools.refresh_settings();
    if (limiter) limiter->reload(cfg()->limits);
    spdlog::info("configuration reloaded from {}", current->path);
    if (auto w = config::no_op_warning(*cfg()); !w.empty()) spdlog::warn("{}", w);
    return true;
}

void runtime::update_config(const std::function<void(config::config&)>& change) {
    {
        std::unique_lock lk(mutex_);
        auto next = std::make_shared<config::config>(*cfg_);
        change(*next);
        // The console checked TLS changes with make_tls_config before calling this.
        std::string tls_error;
        if (auto tls = net::make_tls_config(next->sluice, tls_.get(), tls_error))
            tls_ = std::move(tls);
        else
            spdlog::error("TLS settings not applied: {}", tls_error);
        if (auto rules = load_auth_rules(next->sluice, tls_error))
            rules_ = std::move(rules);
        else
            spdlog::error("authentication files not applied: {}", tls_error);
        cfg_ = std::move(next);
    }
    apply_limits(*cfg());
    pools.refresh_settings();
}

std::shared_ptr<pool::host_group> runtime::host_group_for(const std::string& db_name,
                                                          const config::database& db) const {
    std::lock_guard lk(hosts_mutex_);
    auto& e = host_groups_[db_name];
    const bool same = e.group && e.from.host == db.host && e.from.port == db.port &&
                      e.from.target_session_attrs == db.target_session_attrs &&
                      e.from.load_balance_hosts == db.load_balance_hosts &&
                      e.from.max_replica_lag == db.max_replica_lag;
    if (!same) {
        // The loader accepts only libpq's names (settings table), so the parse succeeds.
        auto target = pool::parse_target_session_attrs(db.target_session_attrs)
                          .value_or(pool::target_session_attrs::any);
        std::optional<steady_clock::duration> lag;
        if (db.max_replica_lag) lag = *db.max_replica_lag;
        e.from = db;
        e.group = std::make_shared<pool::host_group>(db.host, target,
                                                     db.load_balance_hosts == "round-robin", lag);
    }
    return e.group;
}

pool::pool::settings runtime::pool_settings(const std::string& db_name,
                                            const std::string& user_name) const {
    auto c = cfg();
    auto users = this->users();
    const auto& g = c->sluice;
    const config::database* db = c->find_database(db_name);
    pool::pool::settings s;
    // The user a pool logs in as: the database's forced user, else the pool's own.
    const config::user* u = c->find_user(user_name);
    s.mode = c->mode_for(db, u);
    s.pool_size = c->pool_size_for(db, u);
    s.min_pool_size = db && db->min_pool_size ? *db->min_pool_size : g.min_pool_size;
    s.reserve_pool_size = db && db->reserve_pool_size ? *db->reserve_pool_size : g.reserve_pool_size;
    if (u && u->reserve_pool_size) s.reserve_pool_size = *u->reserve_pool_size;
    s.reserve_pool_timeout = g.reserve_pool_timeout;
    s.query_wait_timeout = g.query_wait_timeout.count() > 0
                               ? steady_clock::duration(g.query_wait_timeout)
                               : steady_clock::duration(std::chrono::hours(24 * 365));
    s.server_lifetime = db && db->server_lifetime ? *db->server_lifetime : g.server_lifetime;
    s.query_wait_notify = g.query_wait_notify;
    s.server_idle_timeout = g.server_idle_timeout;
    s.server_login_retry = g.server_login_retry;
    s.server_check_delay = g.server_check_delay;
    s.server_check_query = g.server_check_query;
    s.log_connections = g.log_connections;
    s.log_disconnections = g.log_disconnections;
    s.server_round_robin = g.server_round_robin;
    if (db) s.connect_query = db->connect_query;
    s.auto_database = db && db->name == "*";
    s.autodb_idle_timeout = g.autodb_idle_timeout;
    s.pool_idle_timeout = g.pool_idle_timeout;
    if (db) {
        s.login.hosts = db->host;
        s.login.port = db->port;
        s.hosts = host_group_for(db_name, *db);
        s.login.database = db->dbname.empty() ? db_name : db->dbname;
    } else {
        s.login.database = db_name;
    }
    s.login.user = user_name;
    if (db && !db->password.empty() && (db->user.empty() || db->user == user_name)) {
        s.login.password = db->password;
    } else if (auto secret = users->find(user_name)) {
        s.login.password = *secret;
    }
    s.login.connect_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(
        g.server_connect_timeout.count() > 0 ? g.server_connect_timeout
                                             : config::duration(std::chrono::hours(1)));
    s.login.max_packet_size = std::size_t(g.max_packet_size);
    s.login.tcp = net::tcp_options::from(g);
    s.login.tls = tls();
    s.unreported_tracked.push_back("search_path");
    for (auto& k : g.track_extra_parameters)
        if (!reported_by_server(k) && k != "search_path") s.unreported_tracked.push_back(k);
    if (db) {
        if (!db->client_encoding.empty())
            s.login.startup_parameters.emplace_back("client_encoding", db->client_encoding);
        if (!db->datestyle.empty()) s.login.startup_parameters.emplace_back("DateStyle", db->datestyle);
        if (!db->timezone.empty()) s.login.startup_parameters.emplace_back("TimeZone", db->timezone);
        if (!db->application_name.empty())
            s.login.startup_parameters.emplace_back("application_name", db->application_name);
    }
    return s;
}

}  // namespace sluice::proxy
