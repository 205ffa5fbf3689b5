// rlay/env.hpp: the env contract of a command worker, as gymnasium's Env states it.
#pragma once

#include <rlay/error.hpp>
#include <rlay/value.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace rlay {

/// A reset seed (5.9): nil ("do not reseed") or a non-negative or negative integer of any
/// size (it arrives as a msgpack int or as an ext 4 big integer, 3.4).
class seed {
public:
    seed() = default;
    /// From a wire value: nil, an integer or a big integer; anything else is bad_message.
    explicit seed(value v) : value_(std::move(v)) {
        if (!value_.is_nil() && !value_.is_int() && !value_.is_big_int()) {
            throw error(errc::bad_message, "a seed must be an int or nil, got " + value_.repr(40));
        }
    }
    seed(std::uint64_t s) : value_(s) {}

    /// Whether there is a seed (it is not nil).
    bool has_value() const noexcept { return !value_.is_nil(); }
    explicit operator bool() const noexcept { return has_value(); }
    bool is_negative() const noexcept { return value_.is_negative(); }

    /// The seed if it is in 0 .. 2^64 - 1.
    std::optional<std::uint64_t> as_uint64() const {
        if (!value_.is_int() || value_.is_negative()) return std::nullopt;
        return value_.as_uint();
    }
    /// The seed if it is in the int64 range.
    std::optional<std::int64_t> as_int64() const {
        if (!value_.is_int() || (!value_.is_negative() && value_.as_uint() > static_cast<std::uint64_t>(INT64_MAX))) return std::nullopt;
        return value_.as_int();
    }
    /// The seed as big-endian two's complement bytes, minimal ("" for nil): every byte of a
    /// seed beyond 64 bits.
    std::string big_endian_bytes() const {
        if (value_.is_nil()) return {};
        if (value_.is_big_int()) return value_.big_integer_bytes();
        std::uint64_t u = value_.is_negative() ? static_cast<std::uint64_t>(value_.as_int()) : value_.as_uint();
        std::string b;
        for (int i = 7; i >= 0; --i) b += static_cast<char>(static_cast<unsigned char>(u >> (8 * i)));
        if (!value_.is_negative()) b.insert(b.begin(), '\0');
        return minimal(b);
    }
    /// A non-negative seed modulo `m` (0 < m < 2^63), every byte counted:
    /// r = 0; for b in bytes: r = (r * 256 + b) mod m.
    std::uint64_t mod(std::uint64_t m) const {
        if (!has_value() || is_negative()) throw error(errc::type_mismatch, "mod() needs a non-negative seed");
        if (m == 0 || m >= (std::uint64_t(1) << 63)) throw std::invalid_argument("seed::mod needs 0 < m < 2^63");
        std::uint64_t r = 0;
        for (unsigned char b : big_endian_bytes()) {
            for (int i = 0; i < 8; ++i) r = (r * 2) % m;  // r < m < 2^63: no overflow
            r = (r + b) % m;
        }
        return r;
    }
    /// The seed as it came: nil, an integer or a big integer.
    const value& as_value() const noexcept { return value_; }

private:
    static std::string minimal(std::string b) {
        while (b.size() > 1 && ((b[0] == '\0' && !(static_cast<unsigned char>(b[1]) & 0x80)) ||
                                (static_cast<unsigned char>(b[0]) == 0xff && (static_cast<unsigned char>(b[1]) & 0x80)))) {
            b.erase(0, 1);
        }
        return b;
    }
    value value_;
};

/// What reset returns: the observation (a value of the observation space) and the info map.
struct reset_result {
    value obs;
    value info = value::map();
};

/// What step returns (gymnasium's five values).
struct step_result {
    value obs;
    double reward = 0.0;
    bool terminated = false;
    bool truncated = false;
    value info = value::map();
};

/// An env hosted by a command worker: the gymnasium contract. The worker calls it from the
/// thread that runs the worker, one env and one call at a time. An exception fails that env
/// for this request only (5.13); the worker keeps serving. Throw rlay::env_error to name the
/// Python exception type the trainer should raise.
///
/// Observations are values of the observation space: an rlay::ndarray (or nested lists of
/// numbers) for a Box, MultiDiscrete or MultiBinary; an int for a Discrete; a str for a Text;
/// a map with the Dict's keys; a tuple (or list) for a Tuple. The worker casts each array leaf
/// to the space's dtype as numpy's same_kind rule allows (float64 into a float32 Box, int64
/// into an int8 Box); a float into an integer Box, and a signed int into an unsigned one (a
/// list of ints, which is int64, into a uint8 Box) fail the env with a TypeError (5.10): hand
/// such a Box an rlay::ndarray of its own dtype.
///
/// Actions arrive as values of the action space, converted to its dtypes: an int for a
/// Discrete, an ndarray for a Box, MultiDiscrete or MultiBinary, a str for a Text, a map for a
/// Dict, a tuple for a Tuple.
class env {
public:
    virtual ~env() = default;

    /// Start an episode. `seed`: nil (do not reseed) or an integer; `options`: any value,
    /// usually a map or nil, the same for every env of the request.
    virtual reset_result reset(const rlay::seed& seed, const value& options) = 0;

    /// Apply one action. The worker runs autoreset around this (6.2); the env never resets itself.
    virtual step_result step(const value& action) = 0;

    /// The trainer's call(name, *args, **kwargs), get_attr(name) and render() (5.11). Optional:
    /// by default it fails with NotImplementedError, as the trainer then reports.
    virtual value call(std::string_view name, const value& args, const value& kwargs) {
        (void)args;
        (void)kwargs;
        throw env_error("NotImplementedError", "this native env does not support call('" + std::string(name) +
                                                   "'): it does not override rlay::env::call");
    }

    /// The trainer's set_attr(name, value) (5.12). Optional, as call().
    virtual void set_attr(std::string_view name, const value& v) {
        (void)v;
        throw env_error("NotImplementedError", "this native env does not support set_attr('" + std::string(name) +
                                                   "'): it does not override rlay::env::set_attr");
    }
};

}  // namespace rlay
