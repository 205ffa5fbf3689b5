// rlay/detail/autoreset.hpp: the autoreset modes of 6.2, written once as a plan (10.2).
//
// A plan yields env commands (reset, step) and receives their results; it ends with the
// env's entries of the reply. A command worker carries a plan out at once against its env;
// a push worker hands each command to the game at the agent's next decision point and feeds
// back the state the game submits there. Either way the results are SyncVectorEnv's.
#pragma once

#include <rlay/env.hpp>
#include <rlay/error.hpp>
#include <rlay/value.hpp>

#include <optional>
#include <string>
#include <utility>

namespace rlay {
namespace detail {

enum class autoreset_mode { next_step, same_step, disabled };

inline std::optional<autoreset_mode> parse_autoreset(const value* v) {
    if (!v || !v->is_str()) return std::nullopt;
    if (v->as_str() == "NextStep") return autoreset_mode::next_step;
    if (v->as_str() == "SameStep") return autoreset_mode::same_step;
    if (v->as_str() == "Disabled") return autoreset_mode::disabled;
    return std::nullopt;
}

/// 6.2's Disabled failure: an AssertionError, so that a Python trainer raises what gymnasium does.
inline env_error stepped_after_end(std::int64_t env_index) {
    return env_error("AssertionError", "env " + std::to_string(env_index) +
                                           " was stepped after its episode ended; with autoreset_mode=Disabled, "
                                           "reset it first (reset(options={'reset_mask': ...}))");
}

/// One env command of a plan: reset(seed, options) or step(action).
struct env_command {
    bool is_reset = false;
    rlay::seed seed;
    value options;
    value action;
};

/// An env's entries in a reset or step reply.
struct env_outcome {
    bool is_reset_request = false;  // a reset reply has obs and info only (5.9)
    value obs;
    double reward = 0.0;
    bool terminated = false;
    bool truncated = false;
    value info;
    value final;  // nil, or [final obs, final info] (SameStep)
};

/// A plan (10.2): first() is its first command (none: refused, throws); feed() takes a
/// command's result and returns the next command, or none when the outcome is ready.
class plan {
public:
    /// reset(seed, options): receives (obs, info).
    static plan for_reset(rlay::seed seed, value options) {
        plan p;
        p.first_.is_reset = true;
        p.first_.seed = std::move(seed);
        p.first_.options = std::move(options);
        p.outcome_.is_reset_request = true;
        return p;
    }

    /// step(action) under `mode` for an env whose last episode ended iff `done`. Throws the
    /// Disabled AssertionError (6.2) when that mode meets a finished episode.
    static plan for_step(autoreset_mode mode, bool done, value action, std::int64_t env_index) {
        plan p;
        p.mode_ = mode;
        if (done && mode == autoreset_mode::disabled) throw stepped_after_end(env_index);
        if (done && mode == autoreset_mode::next_step) {
            p.first_.is_reset = true;  // the action is ignored
            p.stage_ = stage::next_step_reset;
        } else {
            p.first_.action = std::move(action);
            p.stage_ = stage::step;
        }
        return p;
    }

    const env_command& first() const noexcept { return first_; }
    /// first(), moved out (its action or options are not copied: a large value leaf stays one copy);
    /// is_reset stays readable.
    env_command take_first() noexcept { return std::move(first_); }

    /// The result of the last command: a reset's (obs, info) or a step's five values.
    std::optional<env_command> feed_reset(value obs, value info) {
        outcome_.obs = std::move(obs);
        outcome_.info = std::move(info);
        if (stage_ == stage::next_step_reset) {
            outcome_.reward = 0.0;
            outcome_.terminated = outcome_.truncated = false;
        }
        stage_ = stage::finished;
        return std::nullopt;
    }
    std::optional<env_command> feed_step(value obs, double reward, bool terminated, bool truncated, value info) {
        outcome_.reward = reward;
        outcome_.terminated = terminated;
        outcome_.truncated = truncated;
        if (mode_ == autoreset_mode::same_step && (terminated || truncated)) {
            outcome_.final = value::list({std::move(obs), std::move(info)});
            stage_ = stage::same_step_reset;
            env_command reset;
            reset.is_reset = true;
            return reset;
        }
        outcome_.obs = std::move(obs);
        outcome_.info = std::move(info);
        stage_ = stage::finished;
        return std::nullopt;
    }

    /// Whether the plan waits for a reset's result (else a step's).
    bool awaits_reset() const noexcept { return stage_ == stage::next_step_reset || stage_ == stage::same_step_reset || (first_.is_reset && stage_ == stage::reset); }
    bool finished() const noexcept { return stage_ == stage::finished; }
    env_outcome& outcome() noexcept { return outcome_; }

private:
    enum class stage { reset, step, next_step_reset, same_step_reset, finished };
    autoreset_mode mode_ = autoreset_mode::next_step;
    stage stage_ = stage::reset;
    env_command first_;
    env_outcome outcome_;
};

/// Carry a plan out against an env right away (a command worker).
inline env_outcome run_plan(plan p, env& e) {
    std::optional<env_command> command = p.take_first();
    while (command) {
        if (command->is_reset) {
            reset_result r = e.reset(command->seed, command->options);
            command = p.feed_reset(std::move(r.obs), std::move(r.info));
        } else {
            step_result r = e.step(command->action);
            command = p.feed_step(std::move(r.obs), r.reward, r.terminated, r.truncated, std::move(r.info));
        }
    }
    return std::move(p.outcome());
}

}  // namespace detail
}  // namespace rlay
