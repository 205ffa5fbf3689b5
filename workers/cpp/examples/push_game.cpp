// rlay_example_push: a game that owns its main loop and pushes decisions to rlay (section 10).
//
//   rlay_example_push --broker tcp://127.0.0.1:5556 [--agents 3] [--every 4] [--tick-hz 240] [--warmup 0] [--curve DIR]
//
// The game ticks at a fixed rate. Each of its agents wraps a conformance env (Appendix B) and
// reaches a decision point every --every ticks after it carried out its last command; agent
// j's first decision point is at tick --warmup + j, so the agents decide at different ticks.
// At a decision point an agent hands over its state (submit) and idles in the world, while
// the game keeps ticking, until its command comes. The loop never blocks while an agent is
// between decision points (the deadlock rule (docs/guides/push-game.md)); it waits in commands() only while every
// agent waits for a command. Registered as "rlay/Conformance-v0", mode push: its results equal
// SyncVectorEnv over the reference. It exits 0 after the broker's disconnect, and on SIGTERM
// or SIGINT calls close(), which sends disconnect.
//
// A push game cannot fail a command (10.1): if an agent's env throws, the game logs it and
// leaves (as the Python tick_game does), and the trainer's call fails with worker_lost.
#include "conformance_env.hpp"
#include "example_args.hpp"

#include <rlay/worker.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <optional>
#include <thread>
#include <vector>

namespace {

std::atomic<bool> stop_requested{false};

extern "C" void on_signal(int) { stop_requested.store(true); }

/// One env in the game world, and the state it reports at its next decision point.
struct agent {
    conformance::env env;
    bool waiting = false;              // submitted its state; idles until its command comes
    long next_decision = 0;            // the tick of its next decision point
    std::optional<rlay::command_kind> carried;  // the command it carried out, if any
    rlay::reset_result reset_state;
    rlay::step_result step_state;

    void carry_out(const rlay::command& c, long tick, long every) {
        if (c.kind == rlay::command_kind::reset) reset_state = env.reset(c.seed, c.options);
        else step_state = env.step(c.action);
        carried = c.kind;
        next_decision = tick + every;
    }

    void submit(rlay::push_worker& game, int j) {
        if (!carried) game.submit(j);
        else if (*carried == rlay::command_kind::reset) game.submit_reset(j, reset_state.obs, reset_state.info);
        else game.submit_step(j, step_state.obs, step_state.reward, step_state.terminated, step_state.truncated, step_state.info);
        waiting = true;
    }
};

}  // namespace

int main(int argc, char** argv) {
    try {
        example::args args(argc, argv, {{"broker", ""}, {"agents", "3"}, {"every", "4"}, {"tick-hz", "240"}, {"warmup", "0"}, {"curve", ""}});
        int count = args.integer("agents");
        long every = args.integer("every");
        double hz = args.number("tick-hz");
        long warmup = args.integer("warmup");

        rlay::config cfg;
        cfg.broker = args["broker"];
        cfg.env_id = conformance::env_id;
        cfg.observation_space = conformance::observation_space();
        cfg.action_space = conformance::action_space();
        cfg.metadata = conformance::metadata();
        if (!args["curve"].empty()) cfg.curve = rlay::curve_keys::from_dir(args["curve"]);

        std::signal(SIGTERM, on_signal);
        std::signal(SIGINT, on_signal);
        rlay::push_worker game(cfg, count);  // registers, mode "push"
        std::vector<agent> agents(count);
        for (int j = 0; j < count; ++j) agents[j].next_decision = warmup + j;  // staggered

        using clock = std::chrono::steady_clock;
        auto period = std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(1.0 / hz));
        auto next_tick = clock::now();
        int status = 0;
        for (long tick = 0; !stop_requested; ++tick) {
            for (int j = 0; j < count; ++j) {  // hand over the states of agents at their decision points
                if (!agents[j].waiting && tick >= agents[j].next_decision) agents[j].submit(game, j);
            }
            // block only while no agent can move; otherwise ask and keep ticking
            bool all_wait = std::all_of(agents.begin(), agents.end(), [](const agent& a) { return a.waiting; });
            for (auto& [j, c] : game.commands(all_wait ? std::chrono::milliseconds(250) : std::chrono::milliseconds(0))) {
                if (c.kind == rlay::command_kind::close) {
                    stop_requested = true;
                    break;
                }
                agents[j].waiting = false;
                try {
                    agents[j].carry_out(c, tick, every);
                } catch (const std::exception& e) {  // a game cannot report a failed command (10.1)
                    std::fprintf(stderr, "rlay_example_push: agent %d failed: %s; leaving\n", j, e.what());
                    stop_requested = true;
                    status = 1;
                    break;
                }
            }
            next_tick += period;  // the game's frame timer
            std::this_thread::sleep_until(next_tick);
            if (clock::now() > next_tick + 100 * period) next_tick = clock::now();  // after a long block, do not race to catch up
        }
        game.close();  // sends disconnect
        return status;
    } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "%s\nusage: rlay_example_push --broker ADDR [--agents N] [--every K] [--tick-hz HZ] [--warmup T] [--curve DIR]\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "rlay_example_push: %s\n", e.what());
        return 1;
    }
}
