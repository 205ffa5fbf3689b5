// rlay/error.hpp: the exceptions of the rlay SDK.
//
// As in cppzmq, nothing fails silently: every failure is an exception that carries a
// code (an rlay::errc) and a one-line text saying what was awaited, from whom, and why.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace rlay {

/// The kind of an rlay::error.
enum class errc {
    bad_message,    ///< malformed or refused wire data (3.7); a worker answers it with `bad_message`
    version,        ///< a header names a protocol version other than 1 (8.1)
    type_mismatch,  ///< a value read as a kind it is not (value::as_int on a str, ...)
    key_not_found,  ///< value::at(key) on a map without that key
    invalid_space,  ///< a space that cannot be built or carried (4.1)
    registration,   ///< the broker refused the registration, or none answered in time (5.2, 8.3)
    timeout,        ///< a wait of the game-side API ran out (push_worker::wait)
    closed,         ///< the worker was closed, or stopped while registering
    key_file,       ///< a CURVE key file is missing or malformed (section 13)
    transport,      ///< ZeroMQ refused something (an address, CURVE without libsodium, ...)
};

inline const char* to_string(errc code) noexcept {
    switch (code) {
        case errc::bad_message: return "bad_message";
        case errc::version: return "version";
        case errc::type_mismatch: return "type_mismatch";
        case errc::key_not_found: return "key_not_found";
        case errc::invalid_space: return "invalid_space";
        case errc::registration: return "registration";
        case errc::timeout: return "timeout";
        case errc::closed: return "closed";
        case errc::key_file: return "key_file";
        case errc::transport: return "transport";
    }
    return "?";
}

/// Every failure of the SDK itself: a code and a one-line text.
class error : public std::runtime_error {
public:
    error(errc code, const std::string& what) : std::runtime_error(what), code_(code) {}
    errc code() const noexcept { return code_; }

private:
    errc code_;
};

/// Thrown by env code to fail with a named exception type, as a Python env raises one.
/// The trainer sees it as the report {type, message} of 5.13 and raises that Python class
/// when it is a builtin: `throw rlay::env_error("ValueError", "action 7 is not in Discrete(3)")`.
///
/// Other exceptions thrown by env code are reported as: std::invalid_argument and
/// std::domain_error -> "ValueError", std::out_of_range -> "IndexError", an rlay::error
/// of code type_mismatch -> "TypeError" and key_not_found -> "KeyError", anything else ->
/// "RuntimeError".
class env_error : public std::runtime_error {
public:
    env_error(std::string type, const std::string& message)
        : std::runtime_error(message), type_(std::move(type)) {}
    const std::string& type() const noexcept { return type_; }

private:
    std::string type_;
};

/// Misuse of the game-side API of a push worker (docs/guides/push-game.md): an agent index out of
/// range, a submit out of turn, a poll for an agent that is not at a decision point. It is
/// thrown in the game and nothing is sent.
class usage_error : public std::logic_error {
public:
    using std::logic_error::logic_error;
};

}  // namespace rlay
