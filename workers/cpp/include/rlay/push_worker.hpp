// rlay/push_worker.hpp: the game-side API of a push worker (section 10).
//
// The game owns its main loop. Each agent reaches decision points at the game's pace; at
// each one the game hands over the agent's state (submit) and later takes the agent's next
// command (poll, wait, commands). The worker turns the trainer's requests into one autoreset
// plan per agent (10.2) and answers each request once all of its agents have reported.
//
//   rlay::push_worker game(cfg, 3);                       // registers, mode "push"
//   for (int j = 0; j < 3; ++j) game.submit(j);           // first decision points: no state
//   for (;;) {
//       for (auto& [j, cmd] : game.commands(all_agents_waiting ? 250ms : 0ms)) {
//           if (cmd.kind == rlay::command_kind::close) ...leave the loop...
//           if (cmd.kind == rlay::command_kind::reset) world.reset(j, cmd.seed, cmd.options);
//           else world.apply(j, cmd.action);
//       }
//       world.tick();
//       // at agent j's next decision point:
//       //   game.submit_reset(j, obs, info)            after a reset command
//       //   game.submit_step(j, obs, reward, terminated, truncated, info)   after an action
//   }
//   game.close();                                        // sends disconnect
//
// THE DEADLOCK RULE (docs/guides/push-game.md). One request names several agents, and the trainer sends its next
// request only after the answer. So the game MUST keep ticking while any agent is between
// decision points (it has no state submitted yet, or carries out a command): only the game
// loop can bring that agent to its decision point. Block (a timeout above 0) only while
// every agent waits at a decision point, and then block in commands(), which returns any
// agent's command. wait(j) and decide(j) return only agent j's command: with several
// agents they deadlock as soon as the trainer sends a request that does not name j (a
// partial reset, say). Otherwise ask with timeout 0 and keep ticking.
//
// The API is single-threaded: call it from the game loop. The broker's socket is read only
// inside poll, wait, decide and commands (a game MUST call one of them every frame), and that
// is also where a lost broker is noticed and the worker registers again (8.5; docs/guides/push-game.md): that
// call then blocks until `registered` arrives. A heartbeat thread pings meanwhile, so a
// loading screen or a long tick is not silence. Misuse (docs/guides/push-game.md) throws rlay::usage_error (a
// std::logic_error) and sends nothing.
#pragma once

#include <rlay/config.hpp>
#include <rlay/detail/autoreset.hpp>
#include <rlay/detail/link.hpp>
#include <rlay/env.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace rlay {

enum class command_kind { reset, action, close };

/// What the game is told at a decision point (docs/guides/push-game.md).
struct command {
    /// reset: reset the agent's episode with `seed` and `options` (both nil for an autoreset),
    /// then submit_reset(obs, info) at its next decision point. action: apply `action` (a value
    /// of the action space), run the game to the agent's next decision point, then
    /// submit_step(...). close: the worker stopped; leave the loop and call close().
    command_kind kind = command_kind::close;
    value action;
    rlay::seed seed;
    value options;
};

class push_worker {
public:
    using seconds = std::chrono::duration<double>;

    /// Connect to the broker's back end, start the heartbeat thread and register `num_agents`
    /// agents (mode "push"). Returns once `registered` arrives; throws rlay::error
    /// (registration) on a refusal or after the config's register_timeout (8.3). Every agent
    /// starts before its first decision point.
    push_worker(config cfg, int num_agents)
        : link_(std::move(cfg), "push", num_agents > 0 ? static_cast<std::size_t>(num_agents) : 0), agents_(num_agents > 0 ? num_agents : 0) {
        link_.connect(stopping_);
    }
    push_worker(const push_worker&) = delete;
    push_worker& operator=(const push_worker&) = delete;
    ~push_worker() { close(); }

    int num_agents() const noexcept { return static_cast<int>(agents_.size()); }
    /// Whether close() was called or the broker sent `disconnect`.
    bool closed() const noexcept { return stopping_; }
    const std::string& name() const noexcept { return link_.name(); }

    /// Agent j's first decision point: no state to hand over.
    void submit(int agent) { submit_state(agent, kind::none, value(), 0.0, false, false, value()); }

    /// After a reset command: the reset's observation and info.
    void submit_reset(int agent, value obs, value info = value::map()) {
        submit_state(agent, kind::reset, std::move(obs), 0.0, false, false, std::move(info));
    }

    /// After an action command: the state at this decision point, the reward earned since the
    /// command, and whether the episode ended (terminated) or was cut off (truncated).
    void submit_step(int agent, value obs, double reward, bool terminated, bool truncated, value info = value::map()) {
        submit_state(agent, kind::step, std::move(obs), reward, terminated, truncated, std::move(info));
    }

    /// Agent j's next command if one is ready within `timeout`, else none. j must be at a
    /// decision point (submitted).
    std::optional<command> poll(int agent, seconds timeout = seconds(0)) {
        agent_state& a = at(agent);
        if (!a.deciding) throw usage_error("agent " + std::to_string(agent) + " is not at a decision point: submit() its state first");
        pump_until([&] { return a.next.has_value(); }, timeout);
        if (stopping_) return command{};
        if (a.next) return hand(agent);
        return std::nullopt;
    }

    /// poll until agent j's command arrives; rlay::error (timeout) after `timeout`; none:
    /// wait until a command or a disconnect. With several agents, see the deadlock rule.
    command wait(int agent, std::optional<seconds> timeout = std::nullopt) {
        return wait_for(agent, timeout.has_value(), timeout.value_or(seconds(0)));
    }

    /// submit(j) then wait(j): the blocking form for a game with one agent.
    command decide(int agent, std::optional<seconds> timeout = std::nullopt) {
        submit(agent);
        return wait(agent, timeout);
    }
    command decide_reset(int agent, value obs, value info, std::optional<seconds> timeout = std::nullopt) {
        submit_reset(agent, std::move(obs), std::move(info));
        return wait(agent, timeout);
    }
    command decide_step(int agent, value obs, double reward, bool terminated, bool truncated, value info,
                        std::optional<seconds> timeout = std::nullopt) {
        submit_step(agent, std::move(obs), reward, terminated, truncated, std::move(info));
        return wait(agent, timeout);
    }

    /// The next command of every agent at a decision point that has one, waiting up to
    /// `timeout` for at least one; an empty map if none. After a disconnect, every agent gets
    /// close. The form for several agents (see the deadlock rule).
    std::map<int, command> commands(seconds timeout = seconds(0)) {
        auto ready = [](const agent_state& a) { return a.deciding && a.next.has_value(); };
        pump_until([&] { return std::any_of(agents_.begin(), agents_.end(), ready); }, timeout);
        std::map<int, command> out;
        if (stopping_) {
            for (int j = 0; j < num_agents(); ++j) out[j] = command{};
            return out;
        }
        for (int j = 0; j < num_agents(); ++j) {
            if (ready(agents_[j])) out[j] = hand(j);
        }
        return out;
    }

    /// Leave the broker: send `disconnect` and close the socket. The trainer's calls on these
    /// agents fail (docs/guides/push-game.md); requests still being served are never answered.
    void close() noexcept {
        link_.disconnect();
        stopping_ = true;
    }

private:
    enum class kind { none, reset, step };

    /// A broker request being served by some of this game's agents.
    struct batch {
        detail::request request;
        std::map<std::int64_t, detail::env_outcome> results;
        std::vector<detail::env_report> failures;
        std::set<std::int64_t> waiting;
        bool answered = false;
    };

    /// 10.3: phase (IDLE / DECIDING / HANDED) is `deciding` and `handed`.
    struct agent_state {
        std::shared_ptr<batch> serving;
        std::optional<detail::plan> plan;
        std::optional<detail::env_command> next;    // asked for by the plan, not yet handed out
        std::optional<detail::env_command> handed;  // handed to the game, awaiting its state
        bool deciding = false;
        bool stale = false;    // its handed command belongs to a request the broker forgot
        bool started = false;  // some plan completed: it has been reset
        bool done = false;     // 6.2's done flag
    };

    command wait_for(int agent, bool limited, seconds timeout) {
        auto deadline = detail::clock::now() + std::chrono::duration_cast<detail::clock::duration>(timeout);
        for (;;) {
            seconds slice = std::chrono::milliseconds(detail::idle_poll_ms);
            if (limited) slice = std::max(seconds(0), std::min<seconds>(slice, deadline - detail::clock::now()));
            if (auto c = poll(agent, slice)) return *c;
            if (limited && detail::clock::now() >= deadline) {
                char buf[32];
                std::snprintf(buf, sizeof buf, "%g", timeout.count());
                throw error(errc::timeout, "no command for agent " + std::to_string(agent) + " of '" + link_.cfg().env_id + "' within " + buf +
                                               " s (broker " + link_.cfg().broker + ")");
            }
        }
    }

    agent_state& at(int agent) {
        if (agent < 0 || agent >= num_agents()) {
            throw usage_error("agent " + std::to_string(agent) + " out of range: this game registered " + std::to_string(num_agents()) + " agent(s)");
        }
        return agents_[agent];
    }

    void submit_state(int agent, kind k, value obs, double reward, bool terminated, bool truncated, value info) {
        agent_state& a = at(agent);
        std::string j = std::to_string(agent);
        if (a.deciding) throw usage_error("agent " + j + " already submitted; wait for its command");
        if (a.stale) {  // the state answers a request the restarted broker forgot: drop it
            a.stale = false;
            a.handed.reset();
            a.deciding = true;
            return;
        }
        if (!a.handed && k != kind::none) throw usage_error("agent " + j + " was not given a command, so it has no state to submit");
        if (a.handed && k == kind::none) {
            throw usage_error("agent " + j + " owes the state that its '" + (a.handed->is_reset ? "reset" : "action") + "' command produced");
        }
        if (a.handed && a.handed->is_reset != (k == kind::reset)) {
            throw usage_error("agent " + j + " was handed " + (a.handed->is_reset ? "a reset: submit_reset" : "an action: submit_step") + " its state");
        }
        a.deciding = true;
        if (!a.handed) return;  // a first decision: nothing to report yet
        a.handed.reset();
        if (info.is_nil()) info = value::map();
        std::optional<detail::env_command> next = k == kind::reset ? a.plan->feed_reset(std::move(obs), std::move(info))
                                                                  : a.plan->feed_step(std::move(obs), reward, terminated, truncated, std::move(info));
        if (next) {
            a.next = std::move(next);
            return;
        }
        detail::env_outcome& o = a.plan->outcome();
        a.started = true;
        a.done = o.terminated || o.truncated;
        settle(agent, std::move(o), std::nullopt);
    }

    command hand(int agent) {
        agent_state& a = agents_[agent];
        a.handed = std::move(a.next);
        a.next.reset();
        a.deciding = false;
        command c;
        if (a.handed->is_reset) {
            c.kind = command_kind::reset;
            c.seed = a.handed->seed;
            c.options = a.handed->options;
        } else {
            c.kind = command_kind::action;
            c.action = a.handed->action;
        }
        return c;
    }

    template <class Ready>
    void pump_until(Ready ready, seconds timeout) {
        auto deadline = detail::clock::now() + std::chrono::duration_cast<detail::clock::duration>(timeout);
        while (!ready() && !stopping_) {
            auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - detail::clock::now());
            pump(std::max<long>(0, std::min<long>(static_cast<long>(remaining.count()), detail::idle_poll_ms)));
            if (remaining.count() <= 0) break;
        }
    }

    /// Read what the broker sent, for up to `ms`.
    void pump(long ms) {
        if (!link_.connected()) return;
        if (auto lost = link_.broker_lost()) {
            link_.register_again(*lost, stopping_);
            for (agent_state& a : agents_) {  // the broker forgot the requests they were serving
                a.serving.reset();
                a.plan.reset();
                a.next.reset();
                a.stale = a.handed.has_value();  // the game owes state nobody waits for
            }
        }
        if (!link_.poll(ms)) {
            link_.idle();
            return;
        }
        // At most so many messages a call: a broker (or trainers, through it) sending without
        // pause must not keep the game inside commands(0) for ever; the rest wait for the next call.
        for (int n = 0; n < max_reads_per_call && link_.connected() && link_.poll(0); ++n) {
            detail::reading r = link_.read(link_.receive(), stopping_);
            if (auto* answer = std::get_if<detail::message>(&r)) link_.send(std::move(*answer), "\xc0");
            else if (auto* req = std::get_if<detail::request>(&r)) start(std::move(*req));
        }
    }

    /// Begin serving a request: give each of its agents a plan (10.3).
    void start(detail::request r) {
        std::vector<std::function<detail::plan(std::size_t, std::int64_t)>> make(r.envs.size());
        try {
            make = plan_factories(r);
        } catch (const std::exception& e) {
            link_.send(link_.bad_message(r.raw_req, e.what()), r.raw_req);
            return;
        }
        auto b = std::make_shared<batch>();
        b->waiting.insert(r.envs.begin(), r.envs.end());
        b->request = std::move(r);
        const auto& envs = b->request.envs;
        for (std::size_t n = 0; n < envs.size(); ++n) {
            std::int64_t j = envs[n];
            agent_state& a = agents_[j];
            if (a.serving) {  // leave j alone; only this request learns of it
                b->failures.push_back({j, "RuntimeError", "agent " + std::to_string(j) + " is still serving an earlier request"});
                b->waiting.erase(j);
                continue;
            }
            a.serving = b;
            try {
                a.plan = make[n](n, j);
            } catch (...) {
                settle(static_cast<int>(j), std::nullopt, detail::report_current(j));
                continue;
            }
            a.next = a.plan->first();
        }
        if (b->waiting.empty() && !b->answered) {
            b->answered = true;
            link_.send(finish(*b), b->request.raw_req);
        }
    }

    std::vector<std::function<detail::plan(std::size_t, std::int64_t)>> plan_factories(detail::request& r) {
        std::vector<std::function<detail::plan(std::size_t, std::int64_t)>> out;
        if (r.kind == detail::type::reset) {
            const value* seeds = r.body.find("seeds");
            if (!seeds || !seeds->is_list() || seeds->size() != r.envs.size()) throw error(errc::bad_message, "reset needs 'seeds', one int or nil per env");
            auto parsed = std::make_shared<std::vector<seed>>();
            for (const value& s : seeds->as_list()) parsed->emplace_back(s);
            const value* found = r.body.find("options");
            value options = found ? *found : value();
            for (std::size_t n = 0; n < r.envs.size(); ++n) {
                out.push_back([parsed, options](std::size_t k, std::int64_t) { return detail::plan::for_reset((*parsed)[k], options); });
            }
        } else if (r.kind == detail::type::step) {
            auto mode = detail::parse_autoreset(r.body.find("autoreset"));
            if (!mode) {
                const value* m = r.body.find("autoreset");
                throw error(errc::bad_message, "unknown autoreset mode " + (m ? m->repr() : std::string("None")));
            }
            value* leaves = r.body.find("actions");  // moved out, not copied: an action may be large
            auto actions = std::make_shared<std::vector<value>>(detail::decode_actions(leaves ? std::move(*leaves) : value(), r.frames, 2,
                                                                                       link_.cfg().action_space, link_.act_leaves(),
                                                                                       r.envs.size(), link_.cfg().max_decoded_values));
            for (std::size_t n = 0; n < r.envs.size(); ++n) {
                out.push_back([this, actions, m = *mode](std::size_t k, std::int64_t j) {
                    if (!agents_[j].started) throw env_error("RuntimeError", "agent " + std::to_string(j) + " was stepped before its first reset");
                    return detail::plan::for_step(m, agents_[j].done, (*actions)[k], j);
                });
            }
        } else {  // 10.1 (c): the body is not checked, so even a reserved name gets this
            std::string refusal = "push envs do not support " + r.kind + "(): the game owns its env objects";
            for (std::size_t n = 0; n < r.envs.size(); ++n) {
                out.push_back([refusal](std::size_t, std::int64_t) -> detail::plan { throw env_error("NotImplementedError", refusal); });
            }
        }
        return out;
    }

    /// Record an agent's outcome; answer the broker once every agent of the request has one.
    void settle(int agent, std::optional<detail::env_outcome> result, std::optional<detail::env_report> failure) {
        agent_state& a = agents_[agent];
        std::shared_ptr<batch> b = std::move(a.serving);
        a.serving.reset();
        a.plan.reset();
        a.next.reset();
        a.handed.reset();
        if (!b) return;
        if (failure) b->failures.push_back(std::move(*failure));
        else b->results[agent] = std::move(*result);
        b->waiting.erase(agent);
        if (b->waiting.empty() && !b->answered && link_.connected()) {
            b->answered = true;
            link_.send(finish(*b), b->request.raw_req);
        }
    }

    detail::message finish(batch& b) {
        const detail::request& r = b.request;
        if (!b.failures.empty()) {
            std::vector<std::size_t> position(agents_.size(), 0);  // agent -> its row in envs
            for (std::size_t n = 0; n < r.envs.size(); ++n) position[static_cast<std::size_t>(r.envs[n])] = n;
            std::stable_sort(b.failures.begin(), b.failures.end(), [&](const detail::env_report& x, const detail::env_report& y) {
                return position[static_cast<std::size_t>(x.env)] < position[static_cast<std::size_t>(y.env)];
            });
            return link_.env_error_message(r.raw_req, b.failures);
        }
        try {
            std::vector<value> obs;
            value reward = value::list(), terminated = value::list(), truncated = value::list(), info = value::list(), final = value::list();
            for (std::int64_t j : r.envs) {
                detail::env_outcome& o = b.results.at(j);
                obs.push_back(std::move(o.obs));
                reward.push_back(o.reward);
                terminated.push_back(o.terminated);
                truncated.push_back(o.truncated);
                info.push_back(std::move(o.info));
                final.push_back(std::move(o.final));
            }
            if (r.kind == detail::type::reset) return link_.reply(r, obs, detail::columns("info", std::move(info)));
            return link_.reply(r, obs, detail::columns("reward", std::move(reward), "terminated", std::move(terminated),
                                        "truncated", std::move(truncated), "info", std::move(info), "final", std::move(final)));
        } catch (const detail::env_failures& f) {
            return link_.env_error_message(r.raw_req, f.reports);
        } catch (...) {  // the reference push worker never sends internal_error (10.1)
            return link_.env_error_message(r.raw_req, {detail::report_current(r.envs.at(0))});
        }
    }

    static constexpr int max_reads_per_call = 256;

    std::atomic<bool> stopping_{false};
    detail::link link_;
    std::vector<agent_state> agents_;
};

}  // namespace rlay
