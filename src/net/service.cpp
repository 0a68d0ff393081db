#include "sluice/net/service.hpp"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <string>
#include <vector>

namespace sluice::net::service {

namespace {

std::string errno_text() { return std::strerror(errno); }

// The write end of the pipe a daemon's parent waits on; -1 when not a daemon (or ready).
int ready_fd = -1;

}  // namespace

bool check_pidfile(const std::string& path, std::string& error) {
    std::ifstream in(path);
    if (!in) return true;  // none yet
    long pid = 0;
    if (!(in >> pid) || pid <= 0) return true;  // not a pid: overwritten
    if (pid == ::getpid()) return true;
    if (::kill(pid_t(pid), 0) == 0 || errno == EPERM) {
        error = "pidfile " + path + " names process " + std::to_string(pid) +
                ", which is running: is another Sluice using this configuration?";
        return false;
    }
    return true;  // stale
}

bool write_pidfile(const std::string& path, std::string& error) {
    // A new file of our own (O_EXCL, never through a symlink someone left in a shared
    // directory), renamed over the pidfile: readers see the old or the new pid, whole.
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
        error = "cannot write pidfile " + tmp + ": " + errno_text();
        return false;
    }
    const std::string text = std::to_string(::getpid()) + "\n";
    const bool written = ::write(fd, text.data(), text.size()) == ssize_t(text.size());
    const int saved = errno;
    ::close(fd);
    if (!written) {
        errno = saved;
        error = "cannot write pidfile " + tmp + ": " + errno_text();
        std::remove(tmp.c_str());
        return false;
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        error = "cannot write pidfile " + path + ": " + errno_text();
        std::remove(tmp.c_str());
        return false;
    }
    return true;
}

// Runs before the runtime and any thread exist, and before any auth::random_bytes call:
// that function keeps a per-thread block of random bytes, which a fork after it would
// give to two processes.
bool daemonize(std::string& error) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
        error = "cannot daemonize: pipe: " + errno_text();
        return false;
    }
    pid_t pid = ::fork();
    if (pid < 0) {
        error = "cannot daemonize: fork: " + errno_text();
        return false;
    }
    if (pid > 0) {
        // The parent: exit 0 when the daemon says it listens; otherwise (it exited
        // before) with its exit code.
        ::close(fds[1]);
        char c = 0;
        ssize_t n;
        do n = ::read(fds[0], &c, 1);
        while (n < 0 && errno == EINTR);
        if (n == 1 && c == 'R') std::_Exit(0);
        int status = 0;
        if (::waitpid(pid, &status, 0) == pid && WIFEXITED(status))
            std::_Exit(WEXITSTATUS(status) ? WEXITSTATUS(status) : 1);
        std::_Exit(1);
    }
    ::close(fds[0]);
    ready_fd = fds[1];
    if (::setsid() < 0) {
        error = "cannot daemonize: setsid: " + errno_text();
        return false;
    }
    return true;
}

bool drop_privileges(const std::string& user, std::string& error) {
    std::vector<char> buf(16384);
    passwd pw{};
    passwd* found = nullptr;
    int rc = ::getpwnam_r(user.c_str(), &pw, buf.data(), buf.size(), &found);
    if (rc != 0 || !found) {
        error = "cannot switch to user " + user + ": " +
                (rc ? std::string(std::strerror(rc)) : std::string("no such user"));
        return false;
    }
    if (::geteuid() == pw.pw_uid && ::getuid() == pw.pw_uid) return true;  // already
    if (::initgroups(pw.pw_name, pw.pw_gid) != 0 || ::setgid(pw.pw_gid) != 0 ||
        ::setuid(pw.pw_uid) != 0) {
        error = "cannot switch to user " + user + ": " + errno_text() +
                (::geteuid() != 0 ? " (only root can switch users)" : "");
        return false;
    }
    // setuid from root drops all three user ids; make sure no way back is left.
    if (pw.pw_uid != 0 && ::setuid(0) == 0) {
        error = "cannot switch to user " + user + ": root could be regained";
        return false;
    }
    return true;
}

void ready(std::string_view status) {
    if (ready_fd >= 0) {
        // stdin, stdout and stderr leave the terminal the daemon was started from.
        int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null >= 0) {
            ::dup2(null, 0);
            ::dup2(null, 1);
            ::dup2(null, 2);
            ::close(null);
        }
        char c = 'R';
        (void)!::write(ready_fd, &c, 1);
        ::close(ready_fd);
        ready_fd = -1;
    }
    std::string msg = "READY=1\nSTATUS=";
    msg += status;
    msg += "\nMAINPID=" + std::to_string(::getpid());
    notify(msg);
}

bool notify(std::string_view state) {
    const char* path = std::getenv("NOTIFY_SOCKET");
    if (!path || !*path) return false;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::size_t len = std::strlen(path);
    if (len >= sizeof(addr.sun_path)) return false;
    std::memcpy(addr.sun_path, path, len);
    if (path[0] == '@') addr.sun_path[0] = '\0';  // an abstract socket
    int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    auto n = ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL,
                      reinterpret_cast<const sockaddr*>(&addr),
                      socklen_t(offsetof(sockaddr_un, sun_path) + len));
    ::close(fd);
    return n == ssize_t(state.size());
}

void notify_reloading() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    auto usec = std::uint64_t(ts.tv_sec) * 1000000u + std::uint64_t(ts.tv_nsec) / 1000u;
    notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec));
}

void notify_stopping() { notify("STOPPING=1"); }

int syslog_facility(std::string_view name) {
    struct entry {
        const char* name;
        int value;
    };
    static const entry facilities[] = {
        {"auth", LOG_AUTH},     {"authpriv", LOG_AUTHPRIV}, {"daemon", LOG_DAEMON},
        {"user", LOG_USER},     {"local0", LOG_LOCAL0},     {"local1", LOG_LOCAL1},
        {"local2", LOG_LOCAL2}, {"local3", LOG_LOCAL3},     {"local4", LOG_LOCAL4},
        {"local5", LOG_LOCAL5}, {"local6", LOG_LOCAL6},     {"local7", LOG_LOCAL7},
    };
    for (const auto& f : facilities)
        if (name == f.name) return f.value;
    return -1;
}

}  // namespace sluice::net::service
