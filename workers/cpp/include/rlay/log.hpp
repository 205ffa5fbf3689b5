// rlay/log.hpp: where the SDK's log lines go.
//
// The SDK logs what it does not throw: a malformed message from the broker (answered and
// survived), a registration, a broker found lost. By default the lines go to stderr;
// rlay::set_log_handler sends them anywhere else (a game engine's own log), and
// rlay::config::logger does so for one worker.
#pragma once

#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace rlay {

enum class log_level { debug, info, warning, error };

inline const char* to_string(log_level level) noexcept {
    switch (level) {
        case log_level::debug: return "debug";
        case log_level::info: return "info";
        case log_level::warning: return "warning";
        case log_level::error: return "error";
    }
    return "?";
}

/// Receives each log line. It may be called from the heartbeat thread as well as from the
/// thread that runs the worker, never from two at once.
using log_handler = std::function<void(log_level, std::string_view)>;

namespace detail {

struct log_sink {
    std::mutex lock;
    log_handler handler;
};

inline log_sink& global_log_sink() {
    static log_sink sink;
    return sink;
}

inline void default_log(log_level level, std::string_view line) {
    if (level == log_level::debug) return;
    std::fprintf(stderr, "rlay %s: %.*s\n", to_string(level), static_cast<int>(line.size()), line.data());
}

/// A worker's logger: its config's handler, else the global one, else stderr.
class logger {
public:
    explicit logger(log_handler own = {}) : own_(std::move(own)) {}

    void operator()(log_level level, std::string_view line) const noexcept {
        log_sink& sink = global_log_sink();
        std::lock_guard<std::mutex> hold(sink.lock);
        try {
            if (own_) own_(level, line);
            else if (sink.handler) sink.handler(level, line);
            else default_log(level, line);
        } catch (...) {
            // a failing log handler must not take the worker down
        }
    }

private:
    log_handler own_;
};

}  // namespace detail

/// Send every worker's log lines (of workers whose config has no logger) to `handler`;
/// an empty handler restores stderr.
inline void set_log_handler(log_handler handler) {
    detail::log_sink& sink = detail::global_log_sink();
    std::lock_guard<std::mutex> hold(sink.lock);
    sink.handler = std::move(handler);
}

}  // namespace rlay
