// sluice [-d] [-u USER] [-q] [-v] CONFIG | sluice --check CONFIG | sluice --version
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/dist_sink.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>

#include "sluice/auth/userlist.hpp"
#include "sluice/config/loader.hpp"
#include "sluice/config/settings.hpp"
#include "sluice/net/logging.hpp"
#include "sluice/net/server.hpp"
#include "sluice/net/service.hpp"
#include "sluice/proxy/runtime.hpp"
#include "sluice/version.hpp"

namespace {

void usage(std::ostream& os) {
    os << "Usage: sluice [OPTIONS] CONFIG\n"
          "  CONFIG is YAML (.yaml/.yml) or a PgBouncer .ini file.\n"
          "Options:\n"
          "  --check       validate CONFIG and exit (0 = valid, 1 = errors)\n"
          "  --convert     print CONFIG (a pgbouncer.ini) as the equivalent YAML\n"
          "  -d, --daemon  run in the background (needs pidfile, and logfile or syslog);\n"
          "                exits 0 once Sluice listens, or with its exit code\n"
          "  -u, --user U  switch to OS user U after binding the listeners (as root)\n"
          "  -q, --quiet   nothing on stderr (the logfile, if any, still gets everything)\n"
          "  -v, --verbose  more logging (repeat for more)\n"
          "  -V, --version  print the version and exit\n"
          "  --settings-reference[=man]  print every setting (Markdown, or roff)\n"
          "  -h, --help     this help\n";
}

bool check_userlist(const sluice::config::config& cfg, bool print) {
    if (cfg.sluice.auth_file.empty()) return true;
    auto ul = sluice::auth::load_userlist(cfg.sluice.auth_file);
    for (auto& e : ul.errors)
        std::cerr << cfg.sluice.auth_file << ":" << e.line << ":" << e.column << ": " << e.message
                  << "\n";
    (void)print;
    return ul.errors.empty();
}

}  // namespace

int main(int argc, char** argv) {
    bool check = false;
    bool convert = false;
    int verbosity = 0;
    bool quiet = false;
    bool daemon = false;
    std::optional<std::string> user_option;
    std::string path;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--check") check = true;
        else if (a == "--convert") convert = true;
        else if (a == "-d" || a == "--daemon") daemon = true;
        else if (a == "--settings-reference" || a == "--settings-reference=markdown" ||
                 a == "--settings-reference=man") {
            std::cout << sluice::config::settings_reference(
                a.ends_with("=man") ? sluice::config::reference_format::man
                                    : sluice::config::reference_format::markdown);
            return 0;
        } else if (a == "-u" || a == "--user") {
            if (i + 1 >= argc) {
                std::cerr << "sluice: " << a << " needs a user name\n";
                return 1;
            }
            user_option = argv[++i];
        } else if (a.rfind("--user=", 0) == 0) user_option = a.substr(7);
        else if (a == "-q" || a == "--quiet") quiet = true;
        else if (a == "-v" || a == "--verbose") verbosity++;
        else if (a.size() > 2 && a[0] == '-' && a.find_first_not_of('v', 1) == std::string::npos)
            verbosity += int(a.size()) - 1;  // -vv
        else if (a == "-V" || a == "--version") {
            std::cout << "Sluice " << SLUICE_VERSION << "\n"
                      << "PostgreSQL connection pooler (PgBouncer-compatible)\n";
            return 0;
        } else if (a == "-h" || a == "--help") {
            usage(std::cout);
            return 0;
        } else if (!a.empty() && a[0] == '-') {
            std::cerr << "sluice: unknown option " << a << "\n";
            usage(std::cerr);
            return 1;
        } else if (path.empty()) {
            path = a;
        } else {
            std::cerr << "sluice: only one CONFIG may be given\n";
            return 1;
        }
    }
    if (path.empty()) {
        usage(std::cerr);
        return 1;
    }

    auto loaded = sluice::config::load_file(path);
    if (!loaded.ok()) {
        for (auto& d : loaded.errors) std::cerr << d.to_string() << "\n";
        return 1;
    }
    auto cfg = std::move(*loaded.cfg);
    if (convert) {
        if (cfg.limits.enabled) {
            std::cerr << path << ": --convert does not carry rate_limits over (YAML only); "
                             "the file is YAML already\n";
            return 1;
        }
        std::cout << sluice::config::to_yaml(cfg, path);
        return 0;
    }
    if (user_option) cfg.sluice.user = *user_option;  // -u wins over the user setting
    // Settings that have no effect in Sluice are named once (README "Settings with no effect").
    const std::string no_op_warning = sluice::config::no_op_warning(cfg);
    if (check) {
        if (!no_op_warning.empty()) std::cerr << path << ": warning: " << no_op_warning << "\n";
        bool ok = check_userlist(cfg, true);
        // The files and certificates the configuration names must be usable too: a
        // --check that passes means the start-up will not fail on them.
        std::string error;
        if (!sluice::net::make_tls_config(cfg.sluice, nullptr, error)) {
            std::cerr << path << ": " << error << "\n";
            ok = false;
        }
        error.clear();
        if (!sluice::proxy::load_auth_rules(cfg.sluice, error)) {
            std::cerr << error << "\n";
            ok = false;
        }
        if (ok) std::cout << path << ": configuration is valid\n";
        return ok ? 0 : 1;
    }

    if (daemon && cfg.sluice.pidfile.empty()) {
        std::cerr << "sluice: -d needs a pidfile in the configuration (to find and stop the "
                     "daemon)\n";
        return 1;
    }
    if (daemon && cfg.sluice.logfile.empty() && !cfg.sluice.syslog) {
        std::cerr << "sluice: -d needs a logfile or syslog = 1 in the configuration (a daemon "
                     "has no stderr)\n";
        return 1;
    }
    const int facility = sluice::net::service::syslog_facility(cfg.sluice.syslog_facility);

    // Logging: stderr (not with --quiet, as PgBouncer's -q), plus logfile when configured,
    // plus syslog when syslog = 1.
    std::vector<spdlog::sink_ptr> sinks;
    if (cfg.sluice.syslog)
        sinks.push_back(std::make_shared<spdlog::sinks::syslog_sink_mt>(
            cfg.sluice.syslog_ident, LOG_PID, facility < 0 ? LOG_DAEMON : facility, false));
    if (!quiet) sinks.push_back(std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    // The file sink sits inside a dist_sink, whose sinks can be swapped while other threads
    // log: SIGHUP opens the path again (logrotate has renamed the old file).
    std::shared_ptr<spdlog::sinks::dist_sink_mt> file_sink;
    const bool json_log = cfg.sluice.log_format == "json";
    if (!cfg.sluice.logfile.empty()) {
        try {
            file_sink = std::make_shared<spdlog::sinks::dist_sink_mt>();
            file_sink->add_sink(
                std::make_shared<spdlog::sinks::basic_file_sink_mt>(cfg.sluice.logfile));
            sinks.push_back(file_sink);
        } catch (const std::exception& e) {
            std::cerr << "sluice: cannot open logfile " << cfg.sluice.logfile << ": " << e.what()
                      << "\n";
            return 1;
        }
    }
    if (sinks.empty()) sinks.push_back(std::make_shared<spdlog::sinks::null_sink_mt>());
    auto logger = std::make_shared<spdlog::logger>("sluice", sinks.begin(), sinks.end());
    spdlog::set_default_logger(logger);
    spdlog::set_formatter(sluice::net::make_log_formatter(json_log));
    verbosity += cfg.sluice.verbose;
    spdlog::set_level(verbosity >= 2 ? spdlog::level::trace
                      : verbosity == 1 ? spdlog::level::debug
                                       : spdlog::level::info);
    spdlog::flush_on(spdlog::level::info);
    if (!no_op_warning.empty()) spdlog::warn("{}", no_op_warning);

    sluice::auth::userlist users;
    if (!cfg.sluice.auth_file.empty()) {
        users = sluice::auth::load_userlist(cfg.sluice.auth_file);
        for (auto& e : users.errors)
            spdlog::warn("{}:{}:{}: {}", cfg.sluice.auth_file, e.line, e.column, e.message);
    }
    std::string pidfile = cfg.sluice.pidfile;
    {
        // Another Sluice on the same pidfile is refused before anything else happens;
        // then the daemon (no thread exists yet: fork copies only this one) writes its pid.
        std::string error;
        if (!pidfile.empty() && !sluice::net::service::check_pidfile(pidfile, error)) {
            spdlog::critical("{}", error);
            return 1;
        }
        if (daemon && !sluice::net::service::daemonize(error)) {
            spdlog::critical("{}", error);
            return 1;
        }
        if (!pidfile.empty() && !sluice::net::service::write_pidfile(pidfile, error)) {
            spdlog::critical("{}", error);
            return 1;
        }
    }

    int rc;
    {
        // TLS contexts and the hba/ident files are built by the runtime: a certificate
        // that cannot be used or a bad pg_hba line stops the start-up here.
        std::unique_ptr<sluice::proxy::runtime> rt;
        try {
            rt = std::make_unique<sluice::proxy::runtime>(std::move(cfg), std::move(users));
        } catch (const std::exception& e) {
            spdlog::critical("{}", e.what());
            if (!pidfile.empty()) std::remove(pidfile.c_str());
            return 1;
        }
        if (file_sink) {
            rt->reopen_log = [file_sink, path = rt->cfg()->sluice.logfile, json_log] {
                try {
                    auto fresh = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path);
                    fresh->set_formatter(sluice::net::make_log_formatter(json_log));
                    file_sink->set_sinks({fresh});
                    spdlog::info("log file {} reopened", path);
                } catch (const std::exception& e) {
                    spdlog::error("cannot reopen log file {}: {} (logging to the old file)",
                                  path, e.what());
                }
            };
        }
        sluice::net::server srv(*rt);
        if (!rt->cfg()->sluice.user.empty()) {
            srv.after_listen = [user = rt->cfg()->sluice.user] {
                std::string error;
                if (!sluice::net::service::drop_privileges(user, error)) {
                    spdlog::critical("{}", error);
                    return false;
                }
                spdlog::info("running as user {} (uid {})", user, ::getuid());
                return true;
            };
        }
        rc = srv.run();
    }
    if (!pidfile.empty()) std::remove(pidfile.c_str());
    return rc;
}
