// rlay/detail/heartbeat.hpp: the worker side of 8.5, on a thread and a socket of its own.
//
// The thread pings the broker every interval from a DEALER whose routing id is the main id
// followed by "|hb", so a long env step, a game's loading screen or a big frame being sent
// on the main socket is never silence. The main thread reads the outcome (rules 1 and 2 of
// 8.5) between messages; the only shared state is atomics.
#pragma once

#include <rlay/config.hpp>
#include <rlay/detail/wire.hpp>
#include <rlay/log.hpp>

#include <zmq.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <thread>

namespace rlay {
namespace detail {

using clock = std::chrono::steady_clock;

inline std::int64_t ticks(clock::time_point t) { return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count(); }

constexpr double default_heartbeat_interval = 0.5;  // s, until `registered` says otherwise
constexpr int default_heartbeat_liveness = 4;
constexpr int idle_poll_ms = 250;
constexpr int cut_grace_intervals = 3;  // the broker's window: expiry + 3 intervals (8.5)

/// True when a blocking ZeroMQ call was only interrupted by a signal.
inline bool interrupted(const zmq::error_t& e) { return e.num() == EINTR; }

/// poll one socket for `events` up to `ms`; a signal interrupting it counts as nothing yet.
inline bool poll_one(zmq::socket_t& sock, short events, long ms) {
    zmq::pollitem_t item{sock.handle(), 0, events, 0};
    try {
        return zmq::poll(&item, 1, std::chrono::milliseconds(ms)) > 0;
    } catch (const zmq::error_t& e) {
        if (interrupted(e)) return false;
        throw;
    }
}

/// Receive every frame of the next message (one that has arrived).
inline message recv_message(zmq::socket_t& sock) {
    message m;
    for (;;) {
        zmq::message_t frame;
        zmq::recv_result_t got;
        try {
            got = sock.recv(frame, zmq::recv_flags::none);
        } catch (const zmq::error_t& e) {
            if (interrupted(e)) continue;
            throw;
        }
        if (!got) continue;
        bool more = frame.more();
        m.push_back(std::move(frame));
        if (!more) return m;
    }
}

class heartbeat {
public:
    heartbeat(zmq::context_t& ctx, std::string endpoint, std::string identity, std::optional<curve_keys> curve, logger log)
        : ctx_(ctx), endpoint_(std::move(endpoint)), identity_(std::move(identity)), curve_(std::move(curve)), log_(std::move(log)) {
        last_answer_ = ticks(clock::now());
        thread_ = std::thread([this] { run(); });
    }
    heartbeat(const heartbeat&) = delete;
    heartbeat& operator=(const heartbeat&) = delete;
    ~heartbeat() { stop(); }

    /// Take the broker's settings (from `registered`): the next ping is due at most one new
    /// interval from now.
    void configure(double interval_s, int liveness) {
        interval_ns_ = static_cast<std::int64_t>(interval_s * 1e9);
        liveness_ = liveness;
        changed_ = true;
    }
    double interval() const { return static_cast<double>(interval_ns_.load()) * 1e-9; }
    int liveness() const { return liveness_; }

    /// Count silence and `known` afresh (after registering).
    void reset() {
        last_answer_ = ticks(clock::now());
        last_unknown_ = none;
    }
    /// Seconds since the broker last answered a ping.
    double silence() const { return static_cast<double>(ticks(clock::now()) - last_answer_.load()) * 1e-9; }
    /// Rule 1: no answer for more than the peer window: the expiry (interval * liveness), the
    /// broker's grace for a network cut, and one interval more for the broker's verdict to come first.
    bool lost() const { return silence() > interval() * (liveness() + cut_grace_intervals + 1); }
    /// Rule 2: an answer said known: false, received more than an interval after `registered_at`.
    bool forgotten_since(clock::time_point registered_at) const {
        std::int64_t unknown = last_unknown_;
        return unknown != none && unknown > ticks(registered_at) + interval_ns_;
    }

    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }

private:
    static constexpr std::int64_t none = std::numeric_limits<std::int64_t>::min();

    /// Ping until stop(). Nothing ends the thread early: a socket that fails (a host name that
    /// does not resolve when the socket is made again, an out-of-memory) is logged and made
    /// again 100 ms later. A thread that died would leave its worker registering again, and
    /// being lost again, every expiry for the rest of its life.
    void run() noexcept {
        int hwm = liveness_;
        std::optional<zmq::socket_t> sock;
        bool failing = false;
        std::int64_t next = ticks(clock::now());
        while (!stop_) {
            try {
                if (!sock) {
                    hwm = liveness_;
                    sock.emplace(open(hwm));
                }
                std::int64_t now = ticks(clock::now());
                if (changed_.exchange(false)) {
                    next = std::min(next, now + interval_ns_.load());
                    if (liveness_ != hwm) {  // ZMQ_SNDHWM applies to new connections only: a new socket
                        sock.reset();
                        hwm = liveness_;
                        sock.emplace(open(hwm));
                    }
                }
                if (now >= next) {
                    try {
                        sock->send(zmq::buffer(ping_), zmq::send_flags::dontwait);  // EAGAIN: dropped
                    } catch (const zmq::error_t& e) {
                        if (!interrupted(e)) throw;
                    }
                    next = now + interval_ns_;
                }
                failing = false;
                long wait_ms = static_cast<long>(std::clamp<std::int64_t>((next - ticks(clock::now())) / 1000000, 0, 50));
                if (!poll_one(*sock, ZMQ_POLLIN, wait_ms)) continue;
                message answer = recv_message(*sock);
                try {
                    header h = decode_header(bytes_of(answer[0]), 256);  // an answer has 3 keys
                    if (h.type() == type::heartbeat) {
                        std::int64_t at = ticks(clock::now());
                        last_answer_ = at;
                        const value* known = h.find("known");
                        last_unknown_ = (known && known->is_bool() && known->as_bool()) ? none : at;
                    }
                } catch (const error& e) {
                    log_(log_level::warning, std::string("unreadable answer to a heartbeat: ") + e.what());
                }
            } catch (const std::exception& e) {
                try {
                    if (!failing) log_(log_level::error, std::string("the heartbeat socket failed (making it again): ") + e.what());
                } catch (...) {
                }
                failing = true;
                sock.reset();
                for (int i = 0; i < 10 && !stop_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
            } catch (...) {
                failing = true;
                sock.reset();
                for (int i = 0; i < 10 && !stop_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
        }
    }

    zmq::socket_t open(int hwm) {
        zmq::socket_t sock(ctx_, zmq::socket_type::dealer);
        sock.set(zmq::sockopt::linger, 0);
        sock.set(zmq::sockopt::routing_id, zmq::buffer(identity_ + "|hb"));
        sock.set(zmq::sockopt::sndhwm, hwm);  // a broker that is away gets no backlog of pings
        secure(sock, curve_);
        sock.connect(endpoint_);
        return sock;
    }

    zmq::context_t& ctx_;
    std::string endpoint_;
    std::string identity_;
    std::string ping_ = header_writer(type::heartbeat, 0).done();
    std::optional<curve_keys> curve_;
    logger log_;
    std::atomic<std::int64_t> interval_ns_{static_cast<std::int64_t>(default_heartbeat_interval * 1e9)};
    std::atomic<int> liveness_{default_heartbeat_liveness};
    std::atomic<bool> changed_{false};
    std::atomic<std::int64_t> last_answer_{0};
    std::atomic<std::int64_t> last_unknown_{none};
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

}  // namespace detail
}  // namespace rlay
