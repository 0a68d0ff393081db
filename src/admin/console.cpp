#include "sluice/admin/console.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <malloc.h>
#include <ctime>
#include <map>
#include <mutex>
#include <set>

#include "sluice/admin/command.hpp"
#include "sluice/admin/metrics.hpp"
#include "sluice/admin/settings.hpp"
#include "sluice/protocol/codec.hpp"
#include "sluice/proxy/client_session.hpp"
#include "sluice/proxy/runtime.hpp"
#include "sluice/stats/averages.hpp"
#include "sluice/version.hpp"

namespace sluice::admin {

namespace proto = sluice::protocol;
using namespace std::chrono_literals;
using cell = std::optional<std::string>;

namespace {

// Process-wide console state: there is one runtime per process.
struct console_state {
    stats::averages_keeper averages;
    std::atomic<bool> suspended{false};
    std::mutex shows_mutex;
    std::map<std::string, show_handler> extra_shows;
};

console_state& state() {
    static console_state s;
    return s;
}

constexpr std::size_t max_console_message = 64 * 1024;

bool is_console_db(const std::string& db) { return db == "sluice" || db == "pgbouncer"; }

std::string num(std::int64_t v) { return std::to_string(v); }
std::string unum(std::uint64_t v) { return std::to_string(v); }

std::int64_t to_us(steady_clock::duration d) {
    return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

// PgBouncer prints times as "YYYY-MM-DD HH:MM:SS UTC".
std::string format_time(steady_clock::time_point tp) {
    if (tp.time_since_epoch().count() == 0) return {};  // never set
    auto sys = std::chrono::system_clock::now() -
               std::chrono::duration_cast<std::chrono::system_clock::duration>(steady_clock::now() - tp);
    std::time_t t = std::chrono::system_clock::to_time_t(sys);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[64];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
    return buf;
}

std::string ptr_text(const void* p) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(reinterpret_cast<std::uintptr_t>(p)));
    return buf;
}

stats::counters counters_of(const pool::pool_stats& s) {
    stats::counters c;
    c.server_assignment_count = s.server_assignment_count.load();
    c.xact_count = s.xact_count.load();
    c.query_count = s.query_count.load();
    c.bytes_received = s.bytes_received.load();
    c.bytes_sent = s.bytes_sent.load();
    c.xact_time = s.xact_time_us.load();
    c.query_time = s.query_time_us.load();
    c.wait_time = s.wait_time_us.load();
    c.client_parse_count = s.client_parse_count.load();
    c.server_parse_count = s.server_parse_count.load();
    c.bind_count = s.bind_count.load();
    c.client_login_count = s.client_login_count.load();
    return c;
}

// Totals per database: every configured database (zeros until used) and every pool.
std::map<std::string, stats::counters> totals_by_database(proxy::runtime& rt) {
    std::map<std::string, stats::counters> out;
    auto cfg = rt.cfg();
    for (auto& [name, db] : cfg->databases)
        if (name != "*") out[name];
    for (auto& p : rt.pools.all()) out[p->database()] += counters_of(p->stats);
    return out;
}

const char* server_state_name(pool::server_state s) {
    switch (s) {
        case pool::server_state::login: return "new";
        case pool::server_state::idle: return "idle";
        case pool::server_state::active: return "active";
        case pool::server_state::tested: return "tested";
        case pool::server_state::used: return "used";
    }
    return "unknown";
}

const char* client_state_name(proxy::client_state s) {
    switch (s) {
        case proxy::client_state::login: return "login";
        case proxy::client_state::idle: return "idle";
        case proxy::client_state::active: return "active";
        case proxy::client_state::waiting: return "waiting";
    }
    return "unknown";
}

// ---------------------------------------------------------------------------------------
// SHOW builders. Column names and order are PgBouncer's (shared/reference/pgbouncer-compat.md).

// load_balance_hosts of a database's entry (PgBouncer shows it in SHOW POOLS too).
cell lb_of(proxy::runtime& rt, const std::string& database) {
    auto cfg = rt.cfg();
    if (const config::database* db = cfg->find_database(database)) return db->load_balance_hosts;
    return {};
}

// What each host of an entry was found to be when last connected to, for SHOW DATABASES:
// "127.0.0.1=primary,127.0.0.2=standby (lagging)", "?" for a host not known yet.
std::string host_roles(proxy::runtime& rt, const std::string& name, const config::database& db) {
    auto group = rt.host_group_for(name, db);
    std::lock_guard lk(group->mutex);
    std::string out;
    for (std::size_t i = 0; i < group->names.size(); ++i) {
        if (i) out += ",";
        out += group->names[i] + "=";
        auto r = group->state.known_role(i);
        out += r ? pool::role_name(*r) : "?";
        if (r && group->state.lagging(i)) out += " (lagging)";
    }
    return out;
}

table show_pools(proxy::runtime& rt) {
    table t;
    for (auto* c : {"database", "user"}) t.column(c);
    for (auto* c : {"cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
                    "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used",
                    "sv_tested", "sv_login", "maxwait", "maxwait_us"})
        t.column(c, int8_oid);
    t.column("pool_mode");
    t.column("load_balance_hosts");
    // The console itself, as PgBouncer lists its own pool.
    int console_clients = 0;
    for (auto& s : rt.sessions.all())
        if (s->state.load() != proxy::client_state::login && is_console_db(s->database())) ++console_clients;
    t.rows.push_back({"pgbouncer", "pgbouncer", num(console_clients), "0", "0", "0", "0", "0", "0",
                      "0", "0", "0", "0", "0", "0", "statement", std::nullopt});
    for (auto& p : rt.pools.all()) {
        auto snap = p->take_snapshot();
        int being_canceled = 0;
        for (auto& s : snap.servers)
            if (s->cancels_in_flight.load() > 0) ++being_canceled;
        auto wait_us = to_us(snap.maxwait);
        int cl_active = std::max(0, p->clients.load() - snap.cl_waiting);
        t.rows.push_back({p->database(), p->user(), num(cl_active), num(snap.cl_waiting), "0", "0",
                          num(snap.sv_active), "0", num(being_canceled), num(snap.sv_idle),
                          num(snap.sv_used), num(snap.sv_tested), num(snap.sv_login),
                          num(wait_us / 1000000), num(wait_us % 1000000),
                          config::to_string(p->current_settings().mode),
                          lb_of(rt, p->database())});
    }
    return t;
}

table show_stats(proxy::runtime& rt) {
    table t;
    t.column("database");
    for (auto& n : stats::stats_total_names()) t.column(n, int8_oid);
    for (auto& n : stats::stats_avg_names()) t.column(n, int8_oid);
    auto avgs = state().averages.averages();
    for (auto& [db, c] : totals_by_database(rt)) {
        std::vector<cell> row{db};
        for (auto v : c.values()) row.push_back(unum(v));
        auto it = avgs.find(db);
        stats::counters a = it == avgs.end() ? stats::counters{} : it->second;
        for (auto v : a.values()) row.push_back(unum(v));
        t.rows.push_back(std::move(row));
    }
    return t;
}

table show_stats_part(proxy::runtime& rt, bool averages) {
    table t;
    t.column("database");
    for (auto& n : stats::counter_names()) t.column(n, int8_oid);
    auto avgs = state().averages.averages();
    for (auto& [db, c] : totals_by_database(rt)) {
        std::vector<cell> row{db};
        stats::counters v = c;
        if (averages) {
            auto it = avgs.find(db);
            v = it == avgs.end() ? stats::counters{} : it->second;
        }
        for (auto x : v.values()) row.push_back(unum(x));
        t.rows.push_back(std::move(row));
    }
    return t;
}

table show_totals(proxy::runtime& rt) {
    table t;
    t.column("name");
    t.column("value", int8_oid);
    stats::counters total, avg;
    for (auto& [db, c] : totals_by_database(rt)) total += c;
    for (auto& [db, c] : state().averages.averages()) avg += c;
    auto tv = total.values(), av = avg.values();
    for (std::size_t i = 0; i < tv.size(); ++i)
        t.rows.push_back({stats::stats_total_names()[i], unum(tv[i])});
    for (std::size_t i = 0; i < av.size(); ++i)
        t.rows.push_back({stats::stats_avg_names()[i], unum(av[i])});
    return t;
}

struct server_index {
    // server id -> (server, pool)
    std::map<std::uint64_t, std::pair<pool::server_ptr, std::shared_ptr<pool::pool>>> by_id;
};

server_index index_servers(proxy::runtime& rt) {
    server_index idx;
    for (auto& p : rt.pools.all())
        for (auto& s : p->take_snapshot().servers) idx.by_id[s->id] = {s, p};
    return idx;
}

void add_connection_columns(table& t) {
    for (auto* c : {"type", "user", "database", "replication", "state", "addr"}) t.column(c);
    t.column("port", int8_oid);
    t.column("local_addr");
    t.column("local_port", int8_oid);
    t.column("connect_time");
    t.column("request_time");
    for (auto* c : {"wait", "wait_us", "close_needed"}) t.column(c, int8_oid);
    t.column("ptr");
    t.column("link");
    t.column("remote_pid", int8_oid);
    t.column("tls");
    t.column("application_name");
    t.column("prepared_statements", int8_oid);
    t.column("id", int8_oid);
}

table show_clients(proxy::runtime& rt) {
    table t;
    add_connection_columns(t);
    auto idx = index_servers(rt);
    auto sessions = rt.sessions.all();
    std::sort(sessions.begin(), sessions.end(), [](auto& a, auto& b) { return a->id < b->id; });
    auto now = steady_clock::now();
    for (auto& s : sessions) {
        auto st = s->state.load();
        // Sessions still logging in have no settled user/database yet (PgBouncer keeps
        // them on a separate login list that SHOW CLIENTS does not show either).
        if (st == proxy::client_state::login) continue;
        auto request = s->request_time.load();
        std::int64_t wait_us = st == proxy::client_state::waiting ? to_us(now - request) : 0;
        cell link;
        if (auto sid = s->linked_server_id.load()) {
            auto it = idx.by_id.find(sid);
            if (it != idx.by_id.end()) link = ptr_text(it->second.first.get());
        }
        const std::string& tls = *s->tls_info.load();
        t.rows.push_back({"C", s->user(), s->database(), "none", client_state_name(st), s->addr,
                          num(s->port), *s->local_addr, num(s->local_port), format_time(s->connect_time),
                          format_time(request), num(wait_us / 1000000), num(wait_us % 1000000), "0",
                          ptr_text(s.get()), link, "0",
                          tls.empty() ? cell() : cell(tls), s->application_name(),
                          num(s->prepared_statements.load(std::memory_order_relaxed)), unum(s->id)});
    }
    return t;
}

const char* server_role_name(char r) {
    return r == 'p' ? "primary" : r == 's' ? "standby" : nullptr;
}

table show_servers(proxy::runtime& rt) {
    table t;
    add_connection_columns(t);
    t.column("role");  // Sluice's own: primary or standby, as the server said at login
    // The linked clients, found in one pass over the sessions.
    std::vector<std::uint64_t> linked;
    for (auto& p : rt.pools.all())
        for (auto& s : p->take_snapshot().servers)
            if (auto id = s->link_client_id.load()) linked.push_back(id);
    std::unordered_map<std::uint64_t, std::string> link_text;
    for (auto& c : rt.sessions.find_by_ids(std::move(linked))) link_text[c->id] = ptr_text(c.get());
    for (auto& p : rt.pools.all()) {
        auto snap = p->take_snapshot();
        std::sort(snap.servers.begin(), snap.servers.end(),
                  [](auto& a, auto& b) { return a->id < b->id; });
        for (auto& s : snap.servers) {
            cell link;
            if (auto id = s->link_client_id.load())
                if (auto it = link_text.find(id); it != link_text.end()) link = it->second;
            t.rows.push_back({"S", p->user(), p->database(), "none", server_state_name(s->state.load()),
                              s->host(), num(s->port.load()), std::nullopt, "0", format_time(s->connect_time),
                              format_time(s->request_time.time_since_epoch().count() ? s->request_time : s->connect_time),
                              "0", "0", s->close_needed ? "1" : "0",
                              ptr_text(s.get()), link, unum(s->backend_key.process_id),
                              s->state.load() == pool::server_state::login || s->tls_info.empty()
                                  ? cell()
                                  : cell(s->tls_info),
                              std::nullopt, unum(s->statements.shown_size()), unum(s->id),
                              server_role_name(s->role.load()) ? cell(server_role_name(s->role.load()))
                                                               : cell()});
        }
    }
    return t;
}

// SHOW SOCKETS / ACTIVE_SOCKETS: every client and server connection with PgBouncer's
// socket columns. The buffer columns are NULL: each connection's buffers belong to its own
// worker thread and are not sampled from the console.
table show_sockets(proxy::runtime& rt, bool active_only) {
    table clients = show_clients(rt);
    table servers = show_servers(rt);
    table t;
    add_connection_columns(t);
    for (auto* c : {"recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain", "pkt_avail",
                    "send_avail"})
        t.column(c, int8_oid);
    const std::size_t state_col = 4;  // type, user, database, replication, state
    auto add = [&](table& from) {
        for (auto& row : from.rows) {
            if (active_only && row[state_col] != "active" && row[state_col] != "waiting") continue;
            std::vector<std::optional<std::string>> r(row.begin(),
                                                      row.begin() + std::ptrdiff_t(t.columns.size() - 7));
            r.resize(t.columns.size());
            t.rows.push_back(std::move(r));
        }
    };
    add(clients);
    add(servers);
    return t;
}

table show_databases(proxy::runtime& rt) {
    table t;
    for (auto* c : {"name", "host"}) t.column(c);
    t.column("port", int8_oid);
    t.column("database");
    t.column("force_user");
    for (auto* c : {"pool_size", "min_pool_size", "reserve_pool_size", "server_lifetime"})
        t.column(c, int8_oid);
    t.column("pool_mode");
    t.column("load_balance_hosts");
    for (auto* c : {"max_connections", "current_connections", "max_client_connections",
                    "current_client_connections", "paused", "disabled"})
        t.column(c, int8_oid);
    // Sluice's own, after PgBouncer's: how hosts are chosen, and what each turned out to be.
    t.column("target_session_attrs");
    t.column("host_roles");

    auto cfg = rt.cfg();
    const auto& g = cfg->sluice;
    std::map<std::string, int> clients_by_db;
    for (auto& p : rt.pools.all()) clients_by_db[p->database()] += p->clients.load();
    int console_clients = 0;
    for (auto& s : rt.sessions.all())
        if (s->state.load() != proxy::client_state::login && is_console_db(s->database())) ++console_clients;

    std::set<std::string> names;
    for (auto& [name, db] : cfg->databases)
        if (name != "*") names.insert(name);
    for (auto& p : rt.pools.all()) names.insert(p->database());  // via the "*" fallback

    t.rows.push_back({"pgbouncer", std::nullopt, num(g.listen_port), "pgbouncer", "pgbouncer", "2",
                      "0", "0", "0", "statement", std::nullopt, "0", "0", "0",
                      num(console_clients), "0", "0", std::nullopt, std::nullopt});
    for (auto& name : names) {
        const config::database* db = cfg->find_database(name);
        if (!db) continue;
        std::string hosts;
        for (auto& h : db->host) hosts += (hosts.empty() ? "" : ",") + h;
        int max_conn = db->max_db_connections.value_or(g.max_db_connections);
        int max_clients = db->max_db_client_connections.value_or(g.max_db_client_connections);
        auto lifetime = db->server_lifetime.value_or(g.server_lifetime);
        t.rows.push_back({name, hosts, num(db->port), db->dbname.empty() ? name : db->dbname,
                          db->user.empty() ? cell{} : cell{db->user},
                          num(db->pool_size.value_or(g.default_pool_size)),
                          num(db->min_pool_size.value_or(g.min_pool_size)),
                          num(db->reserve_pool_size.value_or(g.reserve_pool_size)),
                          num(std::chrono::duration_cast<std::chrono::seconds>(lifetime).count()),
                          config::to_string(cfg->mode_for(db, nullptr)), db->load_balance_hosts,
                          num(max_conn), num(rt.pools.db_count(name).load()), num(max_clients),
                          num(clients_by_db[name]), rt.pools.paused(name) ? "1" : "0",
                          rt.database_disabled(name) ? "1" : "0", db->target_session_attrs,
                          host_roles(rt, name, *db)});
    }
    return t;
}

table show_users(proxy::runtime& rt) {
    table t;
    t.column("name");
    t.column("pool_size", int8_oid);
    t.column("reserve_pool_size", int8_oid);
    t.column("pool_mode");
    for (auto* c : {"max_user_connections", "current_connections", "max_user_client_connections",
                    "current_client_connections"})
        t.column(c, int8_oid);
    auto cfg = rt.cfg();
    const auto& g = cfg->sluice;
    std::set<std::string> names;
    for (auto& [name, u] : cfg->users) names.insert(name);
    for (auto& p : rt.pools.all()) names.insert(p->user());
    std::map<std::string, int> clients_by_user;
    for (auto& s : rt.sessions.all()) {
        if (s->state.load() == proxy::client_state::login) continue;
        names.insert(s->user());
        clients_by_user[s->user()]++;
    }
    for (auto& name : names) {
        const config::user* u = cfg->find_user(name);
        t.rows.push_back(
            {name, num(u && u->pool_size ? *u->pool_size : g.default_pool_size),
             num(u && u->reserve_pool_size ? *u->reserve_pool_size : g.reserve_pool_size),
             u && u->mode ? cell{config::to_string(*u->mode)} : cell{config::to_string(g.pool_mode_)},
             num(u && u->max_user_connections ? *u->max_user_connections : g.max_user_connections),
             num(rt.pools.user_count(name).load()),
             num(u && u->max_user_client_connections ? *u->max_user_client_connections
                                                     : g.max_user_client_connections),
             num(clients_by_user[name])});
    }
    return t;
}

table show_config(proxy::runtime& rt) {
    table t;
    for (auto* c : {"key", "value", "default", "changeable"}) t.column(c);
    auto cfg = rt.cfg();
    const config::general defaults{};
    for (auto& s : general_settings())
        t.rows.push_back({s.name, s.get(cfg->sluice), s.get(defaults), s.changeable ? "yes" : "no"});
    return t;
}

table show_lists(proxy::runtime& rt) {
    table t;
    t.column("list");
    t.column("items", int8_oid);
    auto cfg = rt.cfg();
    auto pools = rt.pools.all();
    std::set<std::string> dbs, users;
    for (auto& [name, db] : cfg->databases)
        if (name != "*") dbs.insert(name);
    for (auto& [name, u] : cfg->users) users.insert(name);
    for (auto& p : pools) {
        dbs.insert(p->database());
        users.insert(p->user());
    }
    int used_clients = 0, login_clients = 0;
    for (auto& s : rt.sessions.all())
        (s->state.load() == proxy::client_state::login ? login_clients : used_clients)++;
    int servers = 0, idle_servers = 0;
    for (auto& p : pools) {
        auto snap = p->take_snapshot();
        servers += int(snap.servers.size()) - snap.sv_idle;
        idle_servers += snap.sv_idle;
    }
    t.rows = {{"databases", num(int(dbs.size()) + 1)},  // + the console's own
              {"users", num(int(users.size()))},
              {"peers", "0"},
              {"pools", num(int(pools.size()) + 1)},
              {"peer_pools", "0"},
              {"free_clients", "0"},
              {"used_clients", num(used_clients)},
              {"login_clients", num(login_clients)},
              {"free_servers", num(idle_servers)},
              {"used_servers", num(servers)},
              {"dns_names", "0"},
              {"dns_zones", "0"},
              {"dns_queries", "0"},
              {"dns_pending", "0"}};
    return t;
}

table show_state(proxy::runtime& rt) {
    table t;
    t.column("key");
    t.column("value");
    bool suspended = state().suspended.load();
    bool paused = rt.paused.load() || rt.pools.paused("");
    bool shutting_down = !rt.accepting.load();
    t.rows = {{"active", !paused && !suspended && !shutting_down ? "yes" : "no"},
              {"paused", paused ? "yes" : "no"},
              {"suspended", suspended ? "yes" : "no"}};
    return t;
}

table show_version(proxy::runtime&) {
    table t;
    t.column("version");
    t.rows.push_back({std::string("Sluice ") + SLUICE_VERSION});
    return t;
}

table show_mem(proxy::runtime& rt) {
    // Sluice has no slab caches; these are the objects PgBouncer's caches would hold, with
    // their sizes, so that memory tooling gets comparable figures. The buffer and relay
    // rows are counted where memory is taken and given back (stats/held.hpp): what is
    // really held, not one buffer per connection. memtotal = size x (used + free), except
    // for iobuf_cache, where blocks larger than the standard size count at their size.
    table t;
    t.column("name");
    for (auto* c : {"size", "used", "free", "memtotal"}) t.column(c, int8_oid);
    auto cfg = rt.cfg();
    auto pools = rt.pools.all();
    std::size_t servers = 0;
    for (auto& p : pools) servers += p->take_snapshot().servers.size();
    std::size_t clients = rt.sessions.size();
    auto row = [&](const char* name, std::size_t size, std::size_t used, std::size_t free = 0,
                   std::size_t total = 0) {
        t.rows.push_back({name, unum(size), unum(used), unum(free),
                          unum(total ? total : size * (used + free))});
    };
    auto counted = [](stats::held what) {
        return std::size_t(std::max<std::int64_t>(0, stats::held_total(what)));
    };
    row("user_cache", sizeof(config::user), cfg->users.size());
    row("db_cache", sizeof(config::database), cfg->databases.size());
    row("pool_cache", sizeof(pool::pool), pools.size());
    row("server_cache", sizeof(pool::server_connection), servers);
    row("client_cache", sizeof(proxy::client_session), clients);
    const std::size_t io_bytes = counted(stats::held::iobuf_used_bytes);
    const std::size_t io_free = counted(stats::held::iobuf_free_blocks);
    row("iobuf_cache", byte_buffer::standard_size,
        (io_bytes + byte_buffer::standard_size - 1) / byte_buffer::standard_size, io_free,
        io_bytes + io_free * byte_buffer::standard_size);
    row("relay_scratch", proxy::relay::machine::scratch_bytes(),
        counted(stats::held::scratch_used), counted(stats::held::scratch_free));
    // The allocator's own account (glibc's mallinfo2, every arena): bytes handed out
    // (including its per-thread caches' chunks), and bytes free inside its heaps (holes
    // it keeps). Sizes in bytes, so size is 1. It overlaps the rows above, which are part
    // of what it counts: a tool that sums memtotal must leave this row out (PgBouncer has
    // no such row). The process's RSS is about heap used + free, plus code and stacks.
    const struct mallinfo2 mi = mallinfo2();
    row("heap", 1, mi.uordblks + mi.hblkhd, mi.fordblks);
    return t;
}

table show_latency(proxy::runtime& rt) {
    table t;
    t.column("database");
    t.column("user");
    const char* kinds[] = {"query", "xact", "wait"};
    for (auto* k : kinds) {
        t.column(std::string(k) + "_count", int8_oid);
        for (auto* q : {"p50", "p90", "p99", "p99_9"}) t.column(std::string(k) + "_" + q, int8_oid);
    }
    for (auto& p : rt.pools.all()) {
        std::vector<cell> row{p->database(), p->user()};
        for (auto* h : {&p->stats.query_latency, &p->stats.xact_latency, &p->stats.wait_latency}) {
            row.push_back(unum(h->count()));
            for (double q : {0.5, 0.9, 0.99, 0.999}) row.push_back(unum(h->percentile(q)));
        }
        t.rows.push_back(std::move(row));
    }
    return t;
}

table empty_table(std::initializer_list<const char*> cols) {
    table t;
    for (auto* c : cols) t.column(c);
    return t;
}

const char* help_text =
    "Console usage\n"
    "\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION|LATENCY\n"
    "\tSHOW PEERS|PEER_POOLS\n"
    "\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n"
    "\tSHOW SOCKETS|ACTIVE_SOCKETS|LISTS|STATE|MEM|DNS_HOSTS|DNS_ZONES\n"
    "\tSET key = arg\n"
    "\tRELOAD\n"
    "\tPAUSE [<db>]\n"
    "\tRESUME [<db>]\n"
    "\tDISABLE <db>\n"
    "\tENABLE <db>\n"
    "\tRECONNECT [<db>]\n"
    "\tKILL [<db>]\n"
    "\tKILL_CLIENT <client_id>\n"
    "\tSUSPEND\n"
    "\tSHUTDOWN\n"
    "\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n"
    "\tWAIT_CLOSE [<db>]";

// Client parameters drivers may SHOW after connecting; answered like PostgreSQL would.
std::optional<std::pair<std::string, std::string>> driver_parameter(const std::string& subject_upper,
                                                                    const proxy::client_session& s) {
    auto key = to_lower(subject_upper);
    static const std::map<std::string, std::pair<std::string, std::string>> fixed = {
        {"server_version", {"server_version", "15.0 (Sluice)"}},
        {"server_version_num", {"server_version_num", "150000"}},
        {"server_encoding", {"server_encoding", "UTF8"}},
        {"client_encoding", {"client_encoding", "UTF8"}},
        {"datestyle", {"DateStyle", "ISO, MDY"}},
        {"timezone", {"TimeZone", "UTC"}},
        {"time zone", {"TimeZone", "UTC"}},
        {"integer_datetimes", {"integer_datetimes", "on"}},
        {"standard_conforming_strings", {"standard_conforming_strings", "on"}},
        {"transaction isolation level", {"transaction_isolation", "read committed"}},
        {"transaction_isolation", {"transaction_isolation", "read committed"}},
        {"default_transaction_read_only", {"default_transaction_read_only", "off"}},
        {"transaction_read_only", {"transaction_read_only", "off"}},
        {"is_superuser", {"is_superuser", "off"}},
        {"max_identifier_length", {"max_identifier_length", "63"}},
        {"intervalstyle", {"IntervalStyle", "postgres"}},
        {"search_path", {"search_path", ""}},
    };
    if (key == "application_name") return std::make_pair(std::string("application_name"), s.application_name());
    auto it = fixed.find(key);
    if (it == fixed.end()) return std::nullopt;
    return it->second;
}

// SET of client parameters that drivers send on connect: accepted without effect.
bool harmless_client_parameter(const std::string& key) {
    static const std::set<std::string> keys = {
        "application_name", "client_encoding", "extra_float_digits", "datestyle", "timezone",
        "time zone", "search_path", "standard_conforming_strings", "intervalstyle",
        "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
        "default_transaction_isolation", "default_transaction_read_only", "names",
        "client_min_messages", "bytea_output", "jit", "lc_messages", "lc_monetary",
        "lc_numeric", "lc_time", "session characteristics as transaction", "geqo",
        "transaction isolation level", "row_security", "work_mem"};
    return keys.count(key) > 0;
}

// True once the console client has closed its end (or was killed): a long wait (PAUSE,
// WAIT_CLOSE) stops then. Data waiting to be read (a pipelined query) is not a close.
bool peer_gone(net::stream& socket) {
    if (!socket.is_open()) return true;
    char c;
    auto n = ::recv(socket.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return true;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;
    return false;
}

// ---------------------------------------------------------------------------------------
// Running statements

struct exec_context {
    proxy::runtime& rt;
    proxy::client_session& session;
    net::stream& socket;
    console_role role;
    std::string out;
    // Set by SHUTDOWN: run after the reply has been written.
    std::optional<int> shutdown_after_reply;
};

void write_table(std::string& out, const table& t) {
    proto::writer w(out);
    w.row_description(t.columns, t.types);
    for (auto& r : t.rows) w.data_row(r);
    w.command_complete("SHOW");
}

void write_error(std::string& out, std::string_view sqlstate, std::string_view message,
                 std::string_view hint = {}, std::string_view detail = {}) {
    proto::writer(out).error_response(sqlstate, message, hint, "ERROR", detail);
}

// Pools a control command applies to: all, or those of one database.
std::vector<std::shared_ptr<pool::pool>> pools_of(proxy::runtime& rt, const std::optional<std::string>& db) {
    std::vector<std::shared_ptr<pool::pool>> out;
    for (auto& p : rt.pools.all())
        if (!db || p->database() == *db) out.push_back(p);
    return out;
}

bool database_known(proxy::runtime& rt, const std::string& db) {
    auto cfg = rt.cfg();
    if (cfg->databases.count(db)) return true;
    for (auto& p : rt.pools.all())
        if (p->database() == db) return true;
    return false;
}

int busy_servers(proxy::runtime& rt, const std::optional<std::string>& db) {
    int busy = 0;
    for (auto& p : pools_of(rt, db)) {
        auto snap = p->take_snapshot();
        busy += snap.sv_active + snap.sv_used;
    }
    return busy;
}

int close_needed_servers(proxy::runtime& rt, const std::optional<std::string>& db) {
    int n = 0;
    for (auto& p : pools_of(rt, db))
        for (auto& s : p->take_snapshot().servers)
            if (s->close_needed) ++n;
    return n;
}

// Polls `done` every 50 ms until it holds, the deadline passes (if any) or the console
// client leaves. Returns true when `done` held.
asio::awaitable<bool> wait_until(net::stream& socket, std::function<bool()> done,
                                 std::optional<steady_clock::time_point> deadline) {
    asio::steady_timer t(socket.get_executor());
    for (;;) {
        if (done()) co_return true;
        if (deadline && steady_clock::now() >= *deadline) co_return false;
        if (peer_gone(socket)) co_return false;
        t.expires_after(50ms);
        co_await t.async_wait(use_nothrow);
    }
}

enum class outcome { ok, error, closed };

asio::awaitable<outcome> run_show(exec_context& cx, const command& c) {
    static const std::map<std::string, table (*)(proxy::runtime&)> builtin = {
        {"POOLS", show_pools},
        {"STATS", show_stats},
        {"STATS_TOTALS", [](proxy::runtime& rt) { return show_stats_part(rt, false); }},
        {"STATS_AVERAGES", [](proxy::runtime& rt) { return show_stats_part(rt, true); }},
        {"TOTALS", show_totals},
        {"CLIENTS", show_clients},
        {"SERVERS", show_servers},
        {"DATABASES", show_databases},
        {"USERS", show_users},
        {"CONFIG", show_config},
        {"LISTS", show_lists},
        {"STATE", show_state},
        {"VERSION", show_version},
        {"MEM", show_mem},
        {"LATENCY", show_latency},
        {"SOCKETS", [](proxy::runtime& rt) { return show_sockets(rt, false); }},
        {"ACTIVE_SOCKETS", [](proxy::runtime& rt) { return show_sockets(rt, true); }},
        {"PEERS", [](proxy::runtime&) {
             auto t = empty_table({"peer_id", "host", "port", "pool_size"});
             t.types = {int8_oid, text_oid, int8_oid, int8_oid};
             return t;
         }},
        {"PEER_POOLS", [](proxy::runtime&) {
             auto t = empty_table({"peer_id", "cl_active_cancel_req", "cl_waiting_cancel_req",
                                   "sv_active_cancel", "sv_login"});
             t.types.assign(5, int8_oid);
             return t;
         }},
        {"DNS_HOSTS", [](proxy::runtime&) { return empty_table({"hostname", "ttl", "addrs"}); }},
        {"DNS_ZONES", [](proxy::runtime&) { return empty_table({"zonename", "serial", "count"}); }},
    };
    if (c.subject == "HELP") {
        proto::writer w(cx.out);
        w.notice_response("00000", help_text);
        w.command_complete("SHOW");
        co_return outcome::ok;
    }
    if (auto it = builtin.find(c.subject); it != builtin.end()) {
        write_table(cx.out, it->second(cx.rt));
        co_return outcome::ok;
    }
    {
        show_handler h;
        {
            std::lock_guard lk(state().shows_mutex);
            if (auto it = state().extra_shows.find(c.subject); it != state().extra_shows.end())
                h = it->second;
        }
        if (h) {
            write_table(cx.out, h(cx.rt));
            co_return outcome::ok;
        }
    }
    if (auto p = driver_parameter(c.subject, cx.session)) {
        table t;
        t.column(p->first);
        t.rows.push_back({p->second});
        write_table(cx.out, t);
        co_return outcome::ok;
    }
    write_error(cx.out, "42601", "unknown SHOW subject: " + to_lower(c.subject), "see SHOW HELP");
    co_return outcome::error;
}

asio::awaitable<outcome> run_set(exec_context& cx, const command& c) {
    const setting* s = find_setting(c.set_key);
    if (!s) {
        if (harmless_client_parameter(c.set_key)) {
            // Drivers set these on connect; the console has no session state to change.
            proto::writer(cx.out).command_complete("SET");
            co_return outcome::ok;
        }
        write_error(cx.out, "42704", "unknown setting: " + c.set_key,
                    "SHOW CONFIG lists the settings; see SHOW HELP");
        co_return outcome::error;
    }
    if (cx.role != console_role::admin) {
        write_error(cx.out, "42501", "admin access needed to change settings",
                    "only admin_users may run SET; stats_users may only SHOW");
        co_return outcome::error;
    }
    if (!s->changeable) {
        write_error(cx.out, "55P02", "setting " + c.set_key + " cannot be changed at run time",
                    "change it in the configuration file and restart Sluice");
        co_return outcome::error;
    }
    std::string error;
    config::general probe = cx.rt.cfg()->sluice;
    if (!s->set(probe, c.set_value, error)) {
        write_error(cx.out, "22023", error);
        co_return outcome::error;
    }
    if (c.set_key.find("tls") != std::string::npos &&
        !net::make_tls_config(probe, cx.rt.tls().get(), error)) {
        write_error(cx.out, "22023", error);
        co_return outcome::error;
    }
    if (c.set_key.starts_with("auth_") && !proxy::load_auth_rules(probe, error)) {
        write_error(cx.out, "22023", error);
        co_return outcome::error;
    }
    std::string value = c.set_value;
    cx.rt.update_config([s, value](config::config& cfg) {
        std::string ignored;
        s->set(cfg.sluice, value, ignored);
    });
    if (c.set_key == "verbose") {
        // As at start-up (main.cpp): 1 = debug, 2 or more = trace.
        int v = cx.rt.cfg()->sluice.verbose;
        spdlog::set_level(v >= 2 ? spdlog::level::trace : v == 1 ? spdlog::level::debug
                                                                : spdlog::level::info);
    }
    spdlog::info("console: {} set {} = {}", cx.session.user(), c.set_key, s->get(cx.rt.cfg()->sluice));
    proto::writer(cx.out).command_complete("SET");
    co_return outcome::ok;
}

asio::awaitable<outcome> run_control(exec_context& cx, const command& c) {
    auto& rt = cx.rt;
    const auto& v = c.verb;
    auto ok = [&](std::string_view tag) {
        proto::writer(cx.out).command_complete(tag);
        return outcome::ok;
    };
    auto no_such_db = [&]() {
        // 08P01 and these words, as PgBouncer's console (scripts match them).
        write_error(cx.out, "08P01", "no such database: " + *c.arg, "SHOW DATABASES lists them");
        return outcome::error;
    };
    if (c.arg && v != "KILL_CLIENT" && v != "SHUTDOWN" && !database_known(rt, *c.arg))
        co_return no_such_db();
    const std::string db_text = c.arg ? *c.arg : std::string("all databases");
    spdlog::info("console: {} ran {}{}", cx.session.user(), v, c.arg ? " " + *c.arg : std::string());

    if (v == "PAUSE" || v == "SUSPEND") {
        std::optional<std::string> db = v == "PAUSE" ? c.arg : std::nullopt;
        rt.pools.pause(db ? *db : std::string());
        if (!db) rt.paused = true;
        if (v == "SUSPEND") state().suspended = true;
        // PAUSE answers once the servers are released (PgBouncer waits as long as it
        // takes); SUSPEND waits at most suspend_timeout.
        std::optional<steady_clock::time_point> deadline;
        if (v == "SUSPEND") deadline = steady_clock::now() + rt.cfg()->sluice.suspend_timeout;
        // (named arguments: gcc 12 mishandles temporaries inside co_await expressions)
        proxy::runtime* rtp = &rt;
        std::function<bool()> done = [rtp, db] { return busy_servers(*rtp, db) == 0; };
        bool drained = co_await wait_until(cx.socket, done, deadline);
        if (!drained && peer_gone(cx.socket)) co_return outcome::closed;
        co_return ok(v);
    }
    if (v == "RESUME") {
        rt.pools.resume(c.arg ? *c.arg : std::string());
        if (!c.arg) {
            rt.paused = false;
            state().suspended = false;
        }
        co_return ok("RESUME");
    }
    if (v == "RELOAD") {
        std::string errors;
        if (!rt.reload(errors)) {
            while (!errors.empty() && errors.back() == '\n') errors.pop_back();
            spdlog::error("RELOAD failed, keeping the running configuration:\n{}", errors);
            // PgBouncer's words (scripts match them); the reasons go in DETAIL as well.
            write_error(cx.out, "F0000", "RELOAD failed, see logs for additional details",
                        "the running configuration is kept; fix the file and RELOAD again",
                        errors);
            co_return outcome::error;
        }
        co_return ok("RELOAD");
    }
    if (v == "KILL") {
        int killed = 0;
        for (auto& s : rt.sessions.all()) {
            if (s.get() == &cx.session || s->state.load() == proxy::client_state::login) continue;
            if (is_console_db(s->database())) continue;
            if (c.arg && s->database() != *c.arg) continue;
            s->kill("57P01", "terminating connection due to administrator command (KILL)");
            ++killed;
        }
        for (auto& p : pools_of(rt, c.arg)) p->mark_all_close_needed();
        // As PgBouncer: the killed database stays paused (new clients wait) until RESUME.
        rt.pools.pause(c.arg ? *c.arg : std::string());
        if (!c.arg) rt.paused = true;
        spdlog::info("console: KILL {}: {} clients dropped; paused until RESUME", db_text, killed);
        co_return ok("KILL");
    }
    if (v == "KILL_CLIENT") {
        auto s = rt.sessions.find_by_id(c.client_id);
        if (!s) {
            write_error(cx.out, "08P01", "client not found", "SHOW CLIENTS lists client ids");
            co_return outcome::error;
        }
        s->kill("57P01", "terminating connection due to administrator command (KILL_CLIENT)");
        co_return ok("KILL_CLIENT");
    }
    if (v == "RECONNECT") {
        for (auto& p : pools_of(rt, c.arg)) p->mark_all_close_needed();
        co_return ok("RECONNECT");
    }
    if (v == "WAIT_CLOSE") {
        auto db = c.arg;
        proxy::runtime* rtp = &rt;
        std::function<bool()> closed = [rtp, db] { return close_needed_servers(*rtp, db) == 0; };
        std::optional<steady_clock::time_point> no_deadline;
        bool done = co_await wait_until(cx.socket, closed, no_deadline);
        if (!done) co_return outcome::closed;
        co_return ok("WAIT_CLOSE");
    }
    if (v == "ENABLE" || v == "DISABLE") {
        rt.set_database_disabled(*c.arg, v == "DISABLE");
        co_return ok(v);
    }
    if (v == "SHUTDOWN") {
        if (!rt.request_shutdown) {
            write_error(cx.out, "55000", "SHUTDOWN is not available");
            co_return outcome::error;
        }
        int how = !c.arg ? 0 : *c.arg == "WAIT_FOR_SERVERS" ? 1 : 2;
        cx.shutdown_after_reply = how;
        co_return ok("SHUTDOWN");
    }
    write_error(cx.out, "42601", "unknown command: " + v, "see SHOW HELP");
    co_return outcome::error;
}

asio::awaitable<outcome> run_statement(exec_context& cx, std::string stmt) {
    std::string error;
    auto c = parse_command(stmt, error);
    if (!c) {
        write_error(cx.out, "42601", error, "see SHOW HELP");
        co_return outcome::error;
    }
    // A named command the callees refer to (no temporaries inside co_await: gcc 12).
    const command cmd = std::move(*c);
    if (cmd.verb == "SHOW") co_return co_await run_show(cx, cmd);
    // During a shutdown only SHOW (to watch the drain) and SHUTDOWN (to hurry it) are
    // taken; PgBouncer answers the rest, RESUME included, with these words.
    if (cx.rt.shutting_down.load() && cmd.verb != "SHUTDOWN") {
        write_error(cx.out, "08P01", "pooler is shutting down");
        co_return outcome::error;
    }
    if (cmd.verb == "SET") co_return co_await run_set(cx, cmd);
    if (cx.role != console_role::admin) {
        write_error(cx.out, "42501", "admin access needed for " + cmd.verb,
                    "stats_users may only run SHOW commands");
        co_return outcome::error;
    }
    co_return co_await run_control(cx, cmd);
}

asio::awaitable<bool> write_all(net::stream& socket, std::string& out) {
    if (out.empty()) co_return true;
    auto [ec, n] = co_await asio::async_write(socket, asio::buffer(out), use_nothrow);
    out.clear();
    co_return !ec;
}

}  // namespace

console_role role_of(const config::config& cfg, const std::string& user) {
    auto in = [&](const std::vector<std::string>& v) {
        return std::find(v.begin(), v.end(), user) != v.end();
    };
    if (in(cfg.sluice.admin_users)) return console_role::admin;
    if (in(cfg.sluice.stats_users)) return console_role::stats;
    return console_role::none;
}

void register_show(const std::string& subject, show_handler handler) {
    std::lock_guard lk(state().shows_mutex);
    state().extra_shows[to_upper(subject)] = std::move(handler);
}

asio::awaitable<void> serve(proxy::runtime& rt, proxy::client_session& session,
                            net::stream& socket, byte_buffer& in, console_role role,
                            std::string prefix) {
    exec_context cx{rt, session, socket, role, std::move(prefix), std::nullopt};
    {
        proto::writer w(cx.out);
        w.authentication_ok();
        w.parameter_status("server_version", "15.0 (Sluice)");
        w.parameter_status("server_encoding", "UTF8");
        w.parameter_status("client_encoding", "UTF8");
        w.parameter_status("DateStyle", "ISO");
        w.parameter_status("integer_datetimes", "on");
        w.parameter_status("standard_conforming_strings", "on");
        w.parameter_status("TimeZone", "UTC");
        w.parameter_status("application_name", session.application_name());
        w.parameter_status("is_superuser", role == console_role::admin ? "on" : "off");
        w.backend_key_data(session.cancel_key.process_id, session.cancel_key.secret_key);
        w.ready_for_query('I');
    }
    if (!co_await write_all(socket, cx.out)) co_return;

    // After an extended-protocol message: skip everything up to Sync, as PostgreSQL does
    // after an error.
    bool skipping_to_sync = false;
    for (;;) {
        proto::message_view m;
        std::size_t consumed = 0;
        std::error_code ec;
        auto st = proto::next_message({in.readable(), in.size()}, max_console_message, m, consumed, ec);
        if (st == proto::scan_status::error) {
            proto::writer(cx.out).error_response(
                "08P01", "invalid message on the admin console: " + ec.message(), {}, "FATAL");
            co_await write_all(socket, cx.out);
            co_return;
        }
        if (st == proto::scan_status::need_more) {
            if (!co_await write_all(socket, cx.out)) co_return;
            in.reserve_tail(4096);
            auto [rec, n] = co_await socket.async_read_some(in.writable(), use_nothrow);
            if (rec || n == 0) co_return;
            in.commit(n);
            continue;
        }
        const char type = m.type;
        std::string sql;
        if (type == proto::msg::query) {
            auto text = proto::decode_cstring(m.body);
            if (text) sql.assign(*text);
            if (!text) {
                in.consume(consumed);
                proto::writer(cx.out).error_response("08P01", "malformed Query message", {}, "FATAL");
                co_await write_all(socket, cx.out);
                co_return;
            }
        }
        in.consume(consumed);

        switch (type) {
            case proto::msg::query: {
                auto statements = split_statements(sql);
                if (statements.empty()) proto::writer(cx.out).empty_query_response();
                for (auto& stmt : statements) {
                    auto r = co_await run_statement(cx, stmt);
                    if (r == outcome::closed) co_return;
                    if (r == outcome::error) break;
                }
                proto::writer(cx.out).ready_for_query('I');
                if (!co_await write_all(socket, cx.out)) co_return;
                if (cx.shutdown_after_reply) {
                    rt.request_shutdown(*cx.shutdown_after_reply);
                    cx.shutdown_after_reply.reset();
                }
                break;
            }
            case proto::msg::terminate:
                co_return;
            case proto::msg::sync:
                skipping_to_sync = false;
                proto::writer(cx.out).ready_for_query('I');
                break;
            case proto::msg::flush:
                break;
            case proto::msg::parse:
            case proto::msg::bind:
            case proto::msg::describe:
            case proto::msg::execute:
            case proto::msg::close:
                if (!skipping_to_sync) {
                    write_error(cx.out, "08P01",
                                "the admin console supports only the simple query protocol",
                                "use psql or a driver's simple query mode (e.g. "
                                "prefer_simple_protocol, preferQueryMode=simple)");
                    skipping_to_sync = true;
                    if (!co_await write_all(socket, cx.out)) co_return;
                }
                break;
            case proto::msg::function_call:
                write_error(cx.out, "08P01", "the admin console supports only the simple query protocol");
                proto::writer(cx.out).ready_for_query('I');
                break;
            case proto::msg::copy_data:
            case proto::msg::copy_done:
            case proto::msg::copy_fail:
                break;  // no COPY on the console; stray copy messages are ignored
            default:
                proto::writer(cx.out).error_response(
                    "08P01", std::string("unexpected message type '") + type + "' on the admin console",
                    {}, "FATAL");
                co_await write_all(socket, cx.out);
                co_return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Background: stats_period averages and the metrics listener

namespace {

asio::awaitable<void> stats_loop(proxy::runtime* rt) {
    asio::steady_timer t(co_await asio::this_coro::executor);
    state().averages.sample(totals_by_database(*rt), steady_clock::now());
    for (;;) {
        auto cfg = rt->cfg();
        steady_clock::duration period = cfg->sluice.stats_period;
        if (period < 1s) period = 1s;
        t.expires_after(period);
        auto [ec] = co_await t.async_wait(use_nothrow);
        if (ec) co_return;
        auto avgs = state().averages.sample(totals_by_database(*rt), steady_clock::now());
        if (rt->cfg()->sluice.log_stats)
            for (auto& [db, a] : avgs) spdlog::info("[{}] {}", db, stats::format_stats_line(a));
    }
}

}  // namespace

void start_background(proxy::runtime& rt, asio::any_io_executor ex) {
    asio::co_spawn(ex, stats_loop(&rt), [](std::exception_ptr e) {
        if (!e) return;
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            spdlog::error("stats timer failed: {}", ex.what());
        }
    });
    auto listen = rt.cfg()->sluice.metrics_listen;
    if (!listen.empty()) start_metrics(rt, ex, listen);
}

}  // namespace sluice::admin
