// rlay/command_worker.hpp: a worker that hosts K envs and steps them when the broker says so
// (docs/guides/worker.md).
//
//   std::vector<std::unique_ptr<rlay::env>> envs;
//   for (int i = 0; i < 4; ++i) envs.push_back(std::make_unique<my_env>());
//   rlay::command_worker worker(cfg, std::move(envs));
//   worker.run();   // registers, serves until the broker's disconnect or worker.stop()
#pragma once

#include <rlay/config.hpp>
#include <rlay/detail/autoreset.hpp>
#include <rlay/detail/link.hpp>
#include <rlay/env.hpp>

#include <atomic>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace rlay {

class command_worker {
public:
    /// Host `envs` (all with the config's spaces) under `cfg.env_id`. Nothing is sent before run().
    command_worker(config cfg, std::vector<std::unique_ptr<env>> envs)
        : envs_(std::move(envs)), done_(envs_.size(), false), link_(std::move(cfg), "command", envs_.size()) {
        for (const auto& e : envs_) {
            if (!e) throw error(errc::registration, "a command worker needs env objects, not null pointers");
        }
    }
    command_worker(const command_worker&) = delete;
    command_worker& operator=(const command_worker&) = delete;

    /// Register (mode "command"), then serve the broker's calls until it sends `disconnect` or
    /// stop() is called; then send `disconnect` (5.4). Throws rlay::error (registration) if the
    /// broker refuses this worker or none answers within the config's register_timeout, at
    /// start or when registering again after the broker was lost (8.5).
    void run() {
        try {
            link_.connect(stopping_);
            serve();
        } catch (const error& e) {
            link_.disconnect();
            if (e.code() == errc::closed) return;  // stopped while registering
            throw;
        }
        link_.disconnect();
    }

    /// Ask run() to return (within 250 ms). Async-signal-safe: it only sets an atomic flag, so
    /// a SIGTERM or SIGINT handler may call it.
    void stop() noexcept { stopping_.store(true); }
    static_assert(std::atomic<bool>::is_always_lock_free, "stop() must be async-signal-safe");

    /// The broker's name for this worker ("w1", ...), once registered.
    const std::string& name() const noexcept { return link_.name(); }

private:
    void serve() {
        while (!stopping_) {
            if (auto lost = link_.broker_lost()) link_.register_again(*lost, stopping_);
            if (!link_.poll(detail::idle_poll_ms)) {
                link_.idle();
                continue;
            }
            detail::reading r = link_.read(link_.receive(), stopping_);
            if (auto* answer = std::get_if<detail::message>(&r)) {
                link_.send(std::move(*answer), "\xc0");
            } else if (auto* req = std::get_if<detail::request>(&r)) {
                link_.send(handle(*req), req->raw_req);
            }
        }
    }

    /// Answer one batched call. Never throws.
    detail::message handle(detail::request& r) {
        try {
            if (r.kind == detail::type::reset) return reset(r);
            if (r.kind == detail::type::step) return step(r);
            if (r.kind == detail::type::call) return call(r);
            return set_attr(r);
        } catch (const detail::env_failures& f) {
            return link_.env_error_message(r.raw_req, f.reports);
        } catch (const error& e) {
            if (e.code() == errc::bad_message || e.code() == errc::type_mismatch || e.code() == errc::key_not_found) {
                return link_.bad_message(r.raw_req, e.what());
            }
            return link_.internal_error(r.raw_req, std::string("rlay::error: ") + e.what());
        } catch (const std::exception& e) {
            return link_.internal_error(r.raw_req, e.what());
        } catch (...) {
            return link_.internal_error(r.raw_req, "an exception that is not a std::exception");
        }
    }

    /// Run `fn(position, env index)` for every env of the part; collect every failure (5.13).
    template <class Fn>
    auto each(const detail::request& r, Fn fn) {
        using result = decltype(fn(std::size_t(0), std::int64_t(0)));
        std::vector<result> results;
        std::vector<detail::env_report> failures;
        for (std::size_t n = 0; n < r.envs.size(); ++n) {
            try {
                results.push_back(fn(n, r.envs[n]));
            } catch (...) {
                failures.push_back(detail::report_current(r.envs[n]));
            }
        }
        if (!failures.empty()) throw detail::env_failures(std::move(failures));
        return results;
    }

    detail::message reset(const detail::request& r) {
        const value* seeds = r.body.find("seeds");
        if (!seeds || !seeds->is_list() || seeds->size() != r.envs.size()) {
            throw error(errc::bad_message, "reset needs 'seeds', one int or nil per env");
        }
        std::vector<seed> parsed;
        for (const value& s : seeds->as_list()) parsed.emplace_back(s);
        const value* options = r.body.find("options");
        value no_options;
        auto outcomes = each(r, [&](std::size_t n, std::int64_t i) {
            detail::env_outcome o = detail::run_plan(detail::plan::for_reset(parsed[n], options ? *options : no_options), *envs_[i]);
            done_[i] = false;
            return o;
        });
        std::vector<value> obs;
        value infos = value::list();
        for (auto& o : outcomes) {
            obs.push_back(std::move(o.obs));
            infos.push_back(std::move(o.info));
        }
        return link_.reply(r, obs, detail::columns("info", std::move(infos)));
    }

    detail::message step(detail::request& r) {
        auto mode = detail::parse_autoreset(r.body.find("autoreset"));
        if (!mode) {
            const value* m = r.body.find("autoreset");
            throw error(errc::bad_message, "unknown autoreset mode " + (m ? m->repr() : std::string("None")));
        }
        value* leaves = r.body.find("actions");  // moved out, not copied: an action may be large
        std::vector<value> actions = detail::decode_actions(leaves ? std::move(*leaves) : value(), r.frames, 2, link_.cfg().action_space,
                                                            link_.act_leaves(), r.envs.size(), link_.cfg().max_decoded_values);
        auto outcomes = each(r, [&](std::size_t n, std::int64_t i) {
            detail::env_outcome o = detail::run_plan(detail::plan::for_step(*mode, done_[i], std::move(actions[n]), i), *envs_[i]);
            done_[i] = o.terminated || o.truncated;
            return o;
        });
        std::vector<value> obs;
        value reward = value::list(), terminated = value::list(), truncated = value::list(), info = value::list(), final = value::list();
        for (auto& o : outcomes) {
            obs.push_back(std::move(o.obs));
            reward.push_back(o.reward);
            terminated.push_back(o.terminated);
            truncated.push_back(o.truncated);
            info.push_back(std::move(o.info));
            final.push_back(std::move(o.final));
        }
        return link_.reply(r, obs, detail::columns("reward", std::move(reward), "terminated", std::move(terminated),
                                    "truncated", std::move(truncated), "info", std::move(info), "final", std::move(final)));
    }

    detail::message call(const detail::request& r) {
        const value* name = r.body.find("name");
        const value* args = r.body.find("args");
        const value* kwargs = r.body.find("kwargs");
        value no_args = value::list(), no_kwargs = value::map();
        if (!name || !name->is_str() || (args && !args->is_list()) || (kwargs && !kwargs->is_map())) {
            throw error(errc::bad_message, "call needs 'name' (str), 'args' (list) and 'kwargs' (map)");
        }
        const std::string& n = name->as_str();
        if (n == "reset" || n == "step" || n == "close") {
            throw error(errc::bad_message, "`" + n + "` cannot be called with call(); use `" + n + "` directly");
        }
        auto results = each(r, [&](std::size_t, std::int64_t i) { return envs_[i]->call(n, args ? *args : no_args, kwargs ? *kwargs : no_kwargs); });
        return link_.plain_reply(r, value::map({{"results", value::list(std::move(results))}}));
    }

    detail::message set_attr(const detail::request& r) {
        const value* name = r.body.find("name");
        const value* values = r.body.find("values");
        if (!name || !name->is_str() || !values || !values->is_list() || values->size() != r.envs.size()) {
            throw error(errc::bad_message, "set_attr needs 'name' (str) and 'values', one per env");
        }
        each(r, [&](std::size_t n, std::int64_t i) {
            envs_[i]->set_attr(name->as_str(), (*values)[n]);
            return true;
        });
        return link_.plain_reply(r, value::map());
    }

    std::vector<std::unique_ptr<env>> envs_;
    std::vector<bool> done_;  // 7.2: per env, its last step ended the episode
    std::atomic<bool> stopping_{false};
    detail::link link_;
};

}  // namespace rlay
