// conformance_env.hpp: the conformance env of docs/protocol.md Appendix B, in C++.
//
// It reproduces the Python reference (rlay/conformance/env.py) bit for bit: SplitMix64 in
// uint64 arithmetic, and float64 +, -, * and abs in the order the spec writes them (build
// with -ffp-contract=off so that no multiply-add is fused). Shared by rlay_example_command
// (hosted envs) and rlay_example_push (each agent of the game wraps one).
#pragma once

#include <rlay/worker.hpp>

#include <cmath>
#include <cstdint>
#include <string>

namespace conformance {

constexpr const char* env_id = "rlay/Conformance-v0";
constexpr std::uint64_t m61 = (std::uint64_t(1) << 61) - 1;  // seeds are reduced modulo this prime
constexpr std::int64_t t_max = 8;                             // steps before truncation
constexpr double pos_limit = 4.0;                             // |pos[0]| that terminates

inline rlay::space observation_space() {
    using namespace rlay::spaces;
    return dict({{"pos", box(-1e6, 1e6, {2}, rlay::dtype::float64())},
                 {"t", discrete(t_max + 1)},
                 {"vel", box(-4.0, 4.0, {2}, rlay::dtype::float32())}});
}

inline rlay::space action_space() { return rlay::spaces::discrete(3); }

inline rlay::value metadata() { return rlay::value::map({{"render_modes", rlay::value::list()}, {"render_fps", 30}}); }

/// Python's name of a value's type, for the messages the reference raises.
inline std::string python_type(const rlay::value& v) {
    switch (v.type()) {
        case rlay::value::kind::nil: return "NoneType";
        case rlay::value::kind::boolean: return "bool";
        case rlay::value::kind::integer: case rlay::value::kind::big_integer: return "int";
        case rlay::value::kind::floating: return "float";
        case rlay::value::kind::str: return "str";
        case rlay::value::kind::bin: return "bytes";
        case rlay::value::kind::list: return "list";
        case rlay::value::kind::map: return "dict";
        case rlay::value::kind::tuple: return "tuple";
        case rlay::value::kind::ndarray: return "numpy.ndarray";
        case rlay::value::kind::scalar: return "numpy.generic";
    }
    return "object";
}

/// Python's truth value of a value (`options.get("fail")` is tested for truth).
inline bool truthy(const rlay::value& v) {
    using k = rlay::value::kind;
    switch (v.type()) {
        case k::nil: return false;
        case k::boolean: return v.as_bool();
        case k::integer: return v.is_negative() || v.as_uint() != 0;
        case k::big_integer: return true;  // minimal bytes: never zero
        case k::floating: return v.as_float() != 0.0;
        case k::str: return !v.as_str().empty();
        case k::bin: return !v.as_bin().empty();
        case k::list: case k::map: case k::tuple: return v.size() != 0;
        case k::scalar: return v.to_double() != 0.0;
        case k::ndarray: {
            const rlay::ndarray& a = v.as_ndarray();
            if (a.size() == 1) return a.item<double>(0) != 0.0;
            if (a.size() == 0) return false;
            throw rlay::env_error("ValueError", "The truth value of an array with more than one element is ambiguous. Use a.any() or a.all()");
        }
    }
    return false;
}

/// Python's float(int), correctly rounded; OverflowError past the float64 range.
inline double int_to_double(const rlay::value& v) {
    if (v.is_int()) return v.is_negative() ? static_cast<double>(v.as_int()) : static_cast<double>(v.as_uint());
    std::string b = v.big_integer_bytes();
    bool negative = static_cast<unsigned char>(b[0]) & 0x80;
    if (negative) {  // magnitude of the two's complement
        for (char& c : b) c = static_cast<char>(~static_cast<unsigned char>(c));
        for (std::size_t i = b.size(); i-- > 0;) {
            unsigned char c = static_cast<unsigned char>(b[i]) + 1;
            b[i] = static_cast<char>(c);
            if (c != 0) break;
        }
    }
    b.erase(0, b.find_first_not_of('\0'));
    int lead = 0;
    for (unsigned char top = static_cast<unsigned char>(b[0]); !(top & 0x80); top <<= 1) ++lead;
    std::size_t nbits = b.size() * 8 - lead;
    auto bit = [&](std::size_t i) {  // bit i of the magnitude, counted from its top bit
        std::size_t at = i + lead;
        return (static_cast<unsigned char>(b[at / 8]) >> (7 - at % 8)) & 1;
    };
    // the top 64 bits, with every lower bit folded into a sticky bit: one correct rounding
    std::uint64_t top = 0;
    bool sticky = false;
    for (std::size_t i = 0; i < nbits; ++i) {
        if (i < 64) top = (top << 1) | bit(i);
        else sticky = sticky || bit(i);
    }
    int shift = nbits > 64 ? static_cast<int>(nbits - 64) : 0;
    double d = std::ldexp(static_cast<double>(top | (sticky ? 1 : 0)), shift);
    if (std::isinf(d)) throw rlay::env_error("OverflowError", "int too large to convert to float");
    return negative ? -d : d;
}

/// The conformance env (Appendix B).
class env : public rlay::env {
public:
    rlay::reset_result reset(const rlay::seed& seed, const rlay::value& options_in) override {
        rlay::value options = options_in.is_nil() ? rlay::value::map() : options_in;                        // 1
        if (seed && seed.is_negative()) {                                                                    // 2
            throw rlay::env_error("ValueError", "the conformance env takes seeds >= 0, got " + seed.as_value().repr(1 << 20));
        }
        if (!options.is_map()) throw rlay::env_error("AttributeError", "'" + python_type(options) + "' object has no attribute 'get'");
        if (const rlay::value* fail = options.find("fail"); fail && truthy(*fail)) {                          // 3
            throw rlay::env_error("ValueError", "reset failed on request (options['fail'])");
        }
        rlay::value start = rlay::value(0);                                                                  // 4
        if (const rlay::value* s = options.find("start")) start = *s;
        if (!start.is_int() && !start.is_big_int()) {
            throw rlay::env_error("ValueError", "options['start'] must be an int, got " + start.repr());
        }
        if (seed) rng_ = seed.mod(m61);                                                                      // 5
        ++episode_;                                                                                          // 6
        t_ = 0;
        double pos0 = int_to_double(start);
        pos_[0] = pos0;
        pos_[1] = uniform() - 0.5;
        vel_[0] = vel_[1] = 0.0;
        return {obs(), rlay::value::map({{"episode", episode_}, {"seeded", seed.has_value()}})};              // 7
    }

    rlay::step_result step(const rlay::value& action) override {
        std::int64_t a = action.as_int();                                                                    // 1
        if (a < 0 || a > 2) throw rlay::env_error("ValueError", "action " + std::to_string(a) + " is not in Discrete(3)");
        double u = uniform();                                                                                // 2
        vel_[0] = vel_[0] * 0.5 + static_cast<double>(a - 1);                                               // 3
        vel_[1] = u - 0.5;
        pos_[0] = pos_[0] + vel_[0];                                                                         // 4
        pos_[1] = pos_[1] * 0.5 + vel_[1];
        t_ += 1;                                                                                             // 5
        double reward = 1.0 - 0.125 * std::fabs(pos_[0]);                                                    // 6
        bool terminated = std::fabs(pos_[0]) >= pos_limit;
        bool truncated = t_ >= t_max;
        bool even = t_ % 2 == 0;
        rlay::value info = rlay::value::map({
            {"t", t_},
            {"u", u},
            {"tag", even ? "even" : "odd"},
            {"pos32", rlay::value::array<float>({2}, {static_cast<float>(pos_[0]), static_cast<float>(pos_[1])})},
            {"a8", rlay::value::scalar<std::int8_t>(static_cast<std::int8_t>(a))},
            {"pair", rlay::value::tuple({t_, terminated})},
            {"sub", rlay::value::map({{"even", even}})},
        });
        return {obs(), reward, terminated, truncated, std::move(info)};                                      // 7
    }

private:
    /// One SplitMix64 step; the top 53 bits of its output times 2^-53 (exact).
    double uniform() {
        rng_ += 0x9E3779B97F4A7C15ull;
        std::uint64_t z = rng_;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z = z ^ (z >> 31);
        return static_cast<double>(z >> 11) * 0x1.0p-53;
    }

    rlay::value obs() const {
        return rlay::value::map({
            {"pos", rlay::value::array<double>({2}, {pos_[0], pos_[1]})},
            {"t", t_},
            {"vel", rlay::value::array<float>({2}, {static_cast<float>(vel_[0]), static_cast<float>(vel_[1])})},
        });
    }

    std::uint64_t rng_ = 0;
    std::int64_t episode_ = 0;
    std::int64_t t_ = 0;
    double pos_[2] = {0.0, 0.0};
    double vel_[2] = {0.0, 0.0};
};

}  // namespace conformance
