#pragma once
// The process as a service: what PgBouncer users expect from `-d`, `-u` and `pidfile`, and
// what systemd expects from a `Type=notify` unit. Plain POSIX calls, no protocol; main.cpp
// and net::server call them at these points of the start-up:
//
//   load config -> check_pidfile -> [daemonize] -> write_pidfile -> build runtime
//     -> open listeners -> [drop_privileges] -> start workers -> ready()
//
// Invariants: daemonize runs before any thread exists (fork copies only the calling
// thread); privileges are dropped after the listeners are bound (a port under 1024) and
// before the workers start, so no thread ever serves a client as root; the parent of a
// daemon exits 0 only once the daemon listens, and otherwise with the daemon's exit code,
// so `sluice -d` in a script fails when the start-up fails.
#include <string>
#include <string_view>

namespace sluice::net::service {

// The pidfile names a live process (not this one): another Sluice is running. A stale
// file (its process gone) is not an error.
bool check_pidfile(const std::string& path, std::string& error);
// Writes this process's pid (through a temporary file renamed into place).
bool write_pidfile(const std::string& path, std::string& error);

// Forks: the parent waits for the child's ready() and exits; the call returns in the
// child, which leads a new session. Start-up errors still reach the terminal's stderr
// until ready() points stdin, stdout and stderr at /dev/null.
bool daemonize(std::string& error);

// Switches to `user` (its uid, gid and supplementary groups), for good: no way back to
// root. Nothing to do when the process already runs as that user.
bool drop_privileges(const std::string& user, std::string& error);

// Start-up is complete (listening, workers running): tells a waiting daemon parent and
// systemd (READY=1).
void ready(std::string_view status);

// systemd's notification protocol (sd_notify(3)), without libsystemd: one datagram to
// $NOTIFY_SOCKET, nothing when it is not set. Returns whether it was sent.
bool notify(std::string_view state);
void notify_reloading();  // RELOADING=1 with MONOTONIC_USEC, as systemd 253+ wants
void notify_stopping();   // STOPPING=1

// syslog_facility's names (PgBouncer's list) to LOG_* values; -1 when unknown.
int syslog_facility(std::string_view name);

}  // namespace sluice::net::service
