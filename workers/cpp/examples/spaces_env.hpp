// spaces_env.hpp: "rlay/Spaces-v0", an env whose spaces cover every kind of docs/protocol.md 4.1
// and its edge cases, with dynamics simple enough to restate in a few lines of Python
// (tests/envs.py: SpacesEnv, its twin; the two must agree bit for bit).
//
// Observation: a Dict (keys sorted, as gymnasium sorts them) of Box of bool, int16 (per-item
// bounds, and infinite bounds that become the dtype's limits), int8 0-d (infinite bounds),
// uint8 2-d, uint64 (values beyond int64), float16, big-endian float32, float32 with infinite
// bounds (and infinite values), float64 0-d; Discrete with start != 0 (also int32);
// MultiDiscrete 2-d with start; MultiBinary of n and of a 2-d shape; Text with an unsorted
// charset holding a 2-byte UTF-8 character; a Tuple of a Box and a Discrete; a nested Dict
// holding a Tuple in a Tuple with a Text (min_length 0) between array leaves.
// Action: a Dict of Box of float32, bool and float64 0-d; Discrete with start != 0 (also int32);
// an int32 2-d MultiDiscrete with start; a 2-d MultiBinary; a Text (min_length 0; its leaf
// between array leaves). Each step puts the action it received
// into its info. Observations are arrays of the leaf's own dtype (0-d arrays for 0-d Boxes), as
// the Python twin returns them: SameStep's final observations are the env's values as returned.
//
// State: s (the last seed mod 1000), t (steps since reset), score (from the actions), the last
// "move" action and the env's index. Everything is integer arithmetic,
// except floats that are exact (halves, multiples of 1/8, float32 times 2 and negated).
#pragma once

#include <rlay/worker.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace spaces_example {

constexpr const char* env_id = "rlay/Spaces-v0";
constexpr const char* obs_charset = "zabcxy\xc3\xa9";  // "zabcxyé": unsorted, one 2-byte character
constexpr const char* act_charset = "ba01";

inline rlay::space observation_space() {
    using namespace rlay::spaces;
    using rlay::dtype;
    using rlay::ndarray;
    constexpr double inf = std::numeric_limits<double>::infinity();
    return dict({
        {"bits", multi_binary(4)},
        {"bits_2d", multi_binary(ndarray::shape_type{2, 3})},
        {"choice", discrete(5, -2)},
        {"choice_i32", discrete(3, 10, dtype::int32())},
        {"extremes", box(-inf, inf, {2}, dtype::int16())},
        {"flag", box(0, 1, {2}, dtype::boolean())},
        {"grid", multi_discrete(ndarray::from<std::int64_t>({2, 2}, {2, 3, 4, 5}),
                                ndarray::from<std::int64_t>({2, 2}, {-1, 0, 1, 2}))},
        {"half", box(-2.0, 2.0, {2}, dtype::float16())},
        {"huge", box(ndarray::from<std::uint64_t>({1}, {0}), ndarray::from<std::uint64_t>({1}, {UINT64_MAX}))},
        {"image", box(0, 255, {2, 3}, dtype::uint8())},
        {"nested", dict({{"deeper", dict({{"env", discrete(8)}, {"seed", box(0, 999, {1}, dtype::int64())}})},
                         {"t", discrete(50)},
                         {"trail", tuple({discrete(2), tuple({multi_binary(2), text(3, 0, "ab")})})}})},
        {"pair", tuple({box(0, 100, {2}, dtype::int32()), discrete(7, 3)})},
        {"real", box(-10.0, 10.0, {}, dtype::float64())},
        {"small", box({-1000, -5, 0}, {1000, 5, 7}, {3}, dtype::int16())},
        {"swapped", box(-1.0, 1.0, {2}, dtype::parse(">f4"))},
        {"text", text(6, 1, obs_charset)},
        {"tiny", box(-inf, inf, {}, dtype::int8())},
        {"unbounded", box(-inf, inf, {2}, dtype::float32())},
    });
}

inline rlay::space action_space() {
    using namespace rlay::spaces;
    return dict({
        {"choice", discrete(3, -1)},
        {"flip", box(0, 1, {2}, rlay::dtype::boolean())},
        {"label", text(4, 0, act_charset)},
        {"level", box(-1.0, 1.0, {}, rlay::dtype::float64())},
        {"move", box(-1.0, 1.0, {2}, rlay::dtype::float32())},
        {"multi", multi_discrete(rlay::ndarray::from<std::int32_t>({2, 1}, {3, 4}), rlay::ndarray::from<std::int32_t>({2, 1}, {1, -1}))},
        {"pick", discrete(4, 5, rlay::dtype::int32())},
        {"switches", multi_binary(rlay::ndarray::shape_type{2, 2})},
    });
}

/// The characters (code points, as UTF-8) of a UTF-8 string.
inline std::vector<std::string> characters(const std::string& s) {
    std::vector<std::string> out;
    for (unsigned char c : s) {
        if ((c & 0xC0) == 0x80 && !out.empty()) out.back() += static_cast<char>(c);
        else out.emplace_back(1, static_cast<char>(c));
    }
    return out;
}

/// Python's a % m (m > 0): never negative.
inline std::int64_t pmod(std::int64_t a, std::int64_t m) { return ((a % m) + m) % m; }

class env : public rlay::env {
public:
    explicit env(std::int64_t index) : index_(index) {}

    rlay::reset_result reset(const rlay::seed& seed, const rlay::value& options) override {
        if (seed && seed.is_negative()) throw rlay::env_error("ValueError", "seeds must be >= 0");
        if (seed) s_ = static_cast<std::int64_t>(seed.mod(1000));
        std::int64_t k = 0;
        if (options.is_map()) {
            if (const rlay::value* v = options.find("k"); v && v->is_int()) k = v->as_int();
        }
        t_ = 0;
        score_ = 0;
        move_[0] = move_[1] = 0.0f;
        return {obs(), rlay::value::map({{"seed", s_}, {"k", k}})};
    }

    rlay::step_result step(const rlay::value& action) override {
        std::int64_t choice = action.at("choice").as_int();
        std::int64_t pick = action.at("pick").as_int();
        const rlay::ndarray& flip = action.at("flip").as_ndarray();
        const rlay::ndarray& move = action.at("move").as_ndarray();
        const rlay::ndarray& multi = action.at("multi").as_ndarray();
        const rlay::ndarray& switches = action.at("switches").as_ndarray();
        const std::string& label = action.at("label").as_str();
        std::int64_t on = 0;
        for (std::size_t i = 0; i < switches.size(); ++i) on += switches.item<std::int64_t>(i);
        t_ += 1;
        score_ += 3 * choice + multi.item<std::int64_t>(0) - 2 * multi.item<std::int64_t>(1) + 5 * on + 7 * flip.item<std::int64_t>(0) + pick +
                  static_cast<std::int64_t>(characters(label).size());
        move_[0] = move.item<float>(0);
        move_[1] = move.item<float>(1);
        double reward = static_cast<double>(score_) / 4.0 + static_cast<double>(t_);
        bool terminated = t_ >= 2 && pmod(score_ + index_, 3) == 0;
        bool truncated = t_ >= 4;
        rlay::value info = rlay::value::map({
            {"t", t_},
            {"score", score_},
            {"half", static_cast<double>(score_) / 2.0},
            {"action", rlay::value::map({{"choice", choice},
                                         {"flip", action.at("flip")},
                                         {"label", label},
                                         {"level", action.at("level")},
                                         {"move", action.at("move")},
                                         {"multi", action.at("multi")},
                                         {"pick", pick},
                                         {"switches", action.at("switches")}})},
        });
        return {obs(), reward, terminated, truncated, std::move(info)};
    }

private:
    rlay::value obs() const {
        using rlay::dtype;
        using rlay::ndarray;
        using rlay::value;
        using i8 = std::int8_t;
        using i16 = std::int16_t;
        using i32 = std::int32_t;
        std::int64_t u = pmod(s_ + 7 * index_ + 13 * t_ + 31 * score_, 65536);
        std::vector<i8> bits, bits_2d;
        for (int j = 0; j < 4; ++j) bits.push_back(static_cast<i8>((u >> j) & 1));
        for (int j = 0; j < 6; ++j) bits_2d.push_back(static_cast<i8>(((u >> (j + 1)) + index_) & 1));
        const std::int64_t nvec[4] = {2, 3, 4, 5}, start[4] = {-1, 0, 1, 2};
        std::vector<std::int64_t> grid;
        for (int j = 0; j < 4; ++j) grid.push_back(start[j] + (u + j) % nvec[j]);
        std::vector<std::uint8_t> image;
        for (int j = 0; j < 6; ++j) image.push_back(static_cast<std::uint8_t>((u + 37 * j + index_) % 256));
        std::vector<std::string> chars = characters(obs_charset);
        std::string text;
        for (std::int64_t j = 0; j < 1 + u % 6; ++j) text += chars[static_cast<std::size_t>((u + 3 * j + index_) % 7)];
        // arrays of the leaf's own dtype, as the Python twin returns them (SameStep's final
        // observations are the env's values as returned); the SDK would cast a float64 array too
        ndarray half = ndarray::from<double>({2}, {static_cast<double>(u % 16) / 8.0 - 1.0, -static_cast<double>(t_) / 4.0})
                           .astype(dtype::float16());
        ndarray swapped = ndarray::from<float>({2}, {static_cast<float>(u % 8) / 8.0f, -1.0f}).astype(dtype::parse(">f4"));
        ndarray real = ndarray::from<double>({}, {static_cast<double>(u % 160) / 8.0 - 10.0});  // 0-d
        ndarray tiny = ndarray::from<i8>({}, {static_cast<i8>(-128 + u % 256)});                // 0-d
        constexpr float inf = std::numeric_limits<float>::infinity();
        std::vector<float> unbounded = t_ == 0 ? std::vector<float>{inf, -inf} : std::vector<float>{move_[0] * 2.0f, -move_[1]};
        value trail = value::tuple({t_ % 2, value::tuple({value::array<i8>({2}, {static_cast<i8>(u & 1), static_cast<i8>((u >> 1) & 1)}),
                                                          std::string(static_cast<std::size_t>(t_ % 4), "ab"[u % 2])})});
        return value::map({
            {"bits", value::array<i8>({4}, bits)},
            {"bits_2d", value::array<i8>({2, 3}, bits_2d)},
            {"choice", u % 5 - 2},
            {"choice_i32", 10 + (u / 5) % 3},
            {"extremes", value::array<i16>({2}, {static_cast<i16>(-32768 + u % 7), static_cast<i16>(32767 - index_)})},
            {"flag", value(ndarray::from_bools({2}, {u % 2 == 0, t_ % 2 == 1}))},
            {"grid", value::array<std::int64_t>({2, 2}, grid)},
            {"half", value(half)},
            {"huge", value::array<std::uint64_t>({1}, {UINT64_MAX - static_cast<std::uint64_t>(u)})},
            {"image", value::array<std::uint8_t>({2, 3}, image)},
            {"nested", value::map({{"deeper", value::map({{"env", index_}, {"seed", value::array<std::int64_t>({1}, {s_})}})},
                                   {"t", t_},
                                   {"trail", trail}})},
            {"pair", value::tuple({value::array<i32>({2}, {static_cast<i32>(pmod(score_, 101)), static_cast<i32>(t_)}), 3 + u % 7})},
            {"real", value(real)},
            {"small", value::array<i16>({3}, {static_cast<i16>(u % 2001 - 1000), static_cast<i16>(u % 11 - 5), static_cast<i16>(u % 8)})},
            {"swapped", value(swapped)},
            {"text", text},
            {"tiny", value(tiny)},
            {"unbounded", value::array<float>({2}, unbounded)},
        });
    }

    std::int64_t index_;
    std::int64_t s_ = 0;
    std::int64_t t_ = 0;
    std::int64_t score_ = 0;
    float move_[2] = {0.0f, 0.0f};
};

}  // namespace spaces_example
