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

/// The conformance env (Appendix B).
class env : public rlay::env {
public:
    rlay::reset_result reset(const rlay::seed& seed, const rlay::value& options_in) override {
        rlay::value options = options_in.is_nil() ? rlay::value::map() : options_in;                        // 1
        if (seed && seed.is_negative()) {                                                                    // 2
            throw rlay::env_error("ValueError", "the conformance env takes seeds >= 0, got " + seed.as_value().repr(1 << 20));
        }
        if (!options.is_map()) throw rlay::env_error("ValueError", "options must be a map or nil");
        if (const rlay::value* fail = options.find("fail"); fail && fail->is_bool() && fail->as_bool()) {     // 3
            throw rlay::env_error("ValueError", "reset failed on request (options['fail'])");
        }
        std::int64_t start = 0;                                                                              // 4
        if (const rlay::value* s = options.find("start")) {
            constexpr std::int64_t max_start = std::int64_t(1) << 53;
            if (!s->is_int() || (!s->is_negative() && s->as_uint() > std::uint64_t(max_start)) ||
                (s->is_negative() && s->as_int() < -max_start)) {
                throw rlay::env_error("ValueError", "options['start'] must be an int from -2**53 to 2**53, got " + s->repr());
            }
            start = s->as_int();
        }
        if (seed) rng_ = seed.mod(m61);                                                                      // 5
        ++episode_;                                                                                          // 6
        t_ = 0;
        pos_[0] = static_cast<double>(start);  // exact: |start| <= 2^53
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
