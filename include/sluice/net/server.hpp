#pragma once
// The process: worker threads (one io_context each), listeners, signals, the periodic
// janitor (idle timeouts, shutdown conditions). The only module that knows threads.
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "sluice/net/io.hpp"
#include "sluice/proxy/client_session.hpp"
#include "sluice/proxy/runtime.hpp"

namespace sluice::net {

struct accepted_fd;  // (server.cpp)

// What `workers: 0` means: half the cores this process may run on, at least one.
int default_workers();

class server {
public:
    explicit server(proxy::runtime& rt);
    ~server();
    // Opens the listeners and runs until shutdown. Returns the process exit code.
    int run();
    // Called once the listeners are bound, before any worker thread starts (to drop
    // privileges): false stops the start-up.
    std::function<bool()> after_listen;

    // Shutdown modes, as PgBouncer's signals and SHUTDOWN commands.
    void shutdown_now();
    void shutdown_when_clients_gone();   // SIGTERM, SHUTDOWN WAIT_FOR_CLIENTS
    void shutdown_when_servers_idle();   // SIGINT, SHUTDOWN WAIT_FOR_SERVERS

private:
    bool open_listeners();
    void close_listeners();
    asio::awaitable<void> accept_loop(stream_acceptor& acceptor);
    // An accepted connection to the next worker; there (start_session) its socket and
    // session are made, and its login started. With one worker the accept loop runs on
    // that worker (accept_on_worker()), and the session is started in place.
    void hand_off(accepted_fd fd, asio::generic::stream_protocol protocol);
    // One worker: it accepts too. A connection then costs no wake-up of the main thread
    // and no cross-thread post (an epoll_ctl to interrupt the worker, and its wake-up).
    bool accept_on_worker() const { return workers_.size() == 1; }
    // Where the listeners and their accept loops live: the only worker, or main_.
    asio::io_context& accept_context() { return accept_on_worker() ? *workers_[0] : main_; }
    void start_session(accepted_fd fd, asio::generic::stream_protocol protocol, int w,
                       const proxy::client_session::refusal* refuse);
    asio::awaitable<void> signal_loop();
    asio::awaitable<void> janitor_loop();
    // Runs a loop that must keep running: an exception is logged, counted and the loop
    // started again (after a pause), unless Sluice is stopping.
    void supervise(const char* name, std::function<asio::awaitable<void>()> start,
                   asio::io_context* on = nullptr);  // on: where it runs (default main_)
    void check_shutdown();

    // Threads: stop_, listeners_closed_, next_worker_ and the signal set belong to the
    // main thread (main_). The acceptors and their accept loops belong to accept_context():
    // worker 0 when accept_on_worker(), main_ otherwise.
    proxy::runtime& rt_;
    // Workers are declared (so constructed) before main_ and destroyed after it: handlers
    // left in main_ (accepts in flight) own sockets of the workers' contexts.
    std::vector<std::unique_ptr<asio::io_context>> workers_;
    std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards_;
    std::vector<std::thread> threads_;
    asio::io_context main_;
    std::vector<std::unique_ptr<stream_acceptor>> acceptors_;
    asio::signal_set signals_;
    std::string unix_socket_path_;
    unsigned next_worker_ = 0;
    bool listeners_closed_ = false;
    enum class stop_mode { none, clients_gone, servers_idle, now } stop_ = stop_mode::none;
    int exit_code_ = 0;
};

}  // namespace sluice::net
