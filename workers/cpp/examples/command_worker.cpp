// rlay_example_command: a command worker hosting N envs (docs/guides/worker.md).
//
//   rlay_example_command --broker tcp://127.0.0.1:5556 [--envs 4] [--env conformance|noop|spaces|var-spaces|frame:HxWxC] [--curve DIR]
//
// conformance: the conformance env of Appendix B, "rlay/Conformance-v0".
// spaces:      "rlay/Spaces-v0": every kind of space of 4.1 and its edge cases (spaces_env.hpp;
//              its Python twin is tests/envs.py: SpacesEnv).
// var-spaces:  "rlay/VarSpaces-v0": Graph, Sequence and OneOf, alone and nested (3.8.1;
//              var_spaces_env.hpp; its Python twin is tests/envs.py: VarSpacesEnv).
// noop:        "rlay/Noop-v0": Box(0, 255, (4,), uint8) zeros, Discrete(2), reward 0, never ends.
// frame:HxWxC: "rlay/Frame-HxWxC-v0": Box(0, 255, (H, W, C), uint8) whose byte i is
//              (steps since the last reset + env index + i) mod 256; Discrete(2), reward 0,
//              never ends (row frames and shared memory).
// It exits 0 after the broker's disconnect, and on SIGTERM or SIGINT sends its own.
#include "conformance_env.hpp"
#include "example_args.hpp"
#include "spaces_env.hpp"
#include "var_spaces_env.hpp"

#include <rlay/worker.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace {

std::atomic<rlay::command_worker*> running{nullptr};

extern "C" void on_signal(int) {
    if (rlay::command_worker* w = running.load()) w->stop();  // async-signal-safe: an atomic store
}

class noop_env : public rlay::env {
public:
    rlay::reset_result reset(const rlay::seed&, const rlay::value&) override { return {obs(), rlay::value::map()}; }
    rlay::step_result step(const rlay::value&) override { return {obs(), 0.0, false, false, rlay::value::map()}; }

private:
    static rlay::value obs() { return rlay::value(rlay::ndarray(rlay::dtype::uint8(), {4})); }
};

class frame_env : public rlay::env {
public:
    frame_env(rlay::ndarray::shape_type shape, std::size_t index) : shape_(std::move(shape)), index_(index) {}
    rlay::reset_result reset(const rlay::seed&, const rlay::value&) override {
        steps_ = 0;
        return {obs(), rlay::value::map()};
    }
    rlay::step_result step(const rlay::value&) override {
        ++steps_;
        return {obs(), 0.0, false, false, rlay::value::map()};
    }

private:
    rlay::value obs() const {
        rlay::ndarray a(rlay::dtype::uint8(), shape_);  // a fresh buffer per observation: sent zero-copy
        std::uint8_t* p = a.mutable_data<std::uint8_t>();
        for (std::size_t i = 0; i < a.size(); ++i) p[i] = static_cast<std::uint8_t>((steps_ + index_ + i) & 0xff);
        return rlay::value(std::move(a));
    }
    rlay::ndarray::shape_type shape_;
    std::size_t index_;
    std::size_t steps_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
    try {
        example::args args(argc, argv, {{"broker", ""}, {"envs", "4"}, {"env", "conformance"}, {"curve", ""}});
        int count = args.integer("envs");
        std::string kind = args["env"];

        rlay::config cfg;
        cfg.broker = args["broker"];
        std::vector<std::unique_ptr<rlay::env>> envs;
        if (kind == "conformance") {
            cfg.env_id = conformance::env_id;
            cfg.observation_space = conformance::observation_space();
            cfg.action_space = conformance::action_space();
            cfg.metadata = conformance::metadata();
            for (int i = 0; i < count; ++i) envs.push_back(std::make_unique<conformance::env>());
        } else if (kind == "noop") {
            cfg.env_id = "rlay/Noop-v0";
            cfg.observation_space = rlay::spaces::box(0, 255, {4}, rlay::dtype::uint8());
            cfg.action_space = rlay::spaces::discrete(2);
            for (int i = 0; i < count; ++i) envs.push_back(std::make_unique<noop_env>());
        } else if (kind == "spaces") {
            cfg.env_id = spaces_example::env_id;
            cfg.observation_space = spaces_example::observation_space();
            cfg.action_space = spaces_example::action_space();
            for (int i = 0; i < count; ++i) envs.push_back(std::make_unique<spaces_example::env>(i));
        } else if (kind == "var-spaces") {
            cfg.env_id = var_spaces_example::env_id;
            cfg.observation_space = var_spaces_example::observation_space();
            cfg.action_space = var_spaces_example::action_space();
            for (int i = 0; i < count; ++i) envs.push_back(std::make_unique<var_spaces_example::env>(i));
        } else if (kind.rfind("frame:", 0) == 0) {
            unsigned h = 0, w = 0, c = 0;
            if (std::sscanf(kind.c_str() + 6, "%ux%ux%u", &h, &w, &c) != 3 || !h || !w || !c) {
                throw std::invalid_argument("--env frame:HxWxC needs three positive sizes, e.g. frame:84x84x3");
            }
            cfg.env_id = "rlay/Frame-" + std::to_string(h) + "x" + std::to_string(w) + "x" + std::to_string(c) + "-v0";
            cfg.observation_space = rlay::spaces::box(0, 255, {h, w, c}, rlay::dtype::uint8());
            cfg.action_space = rlay::spaces::discrete(2);
            for (int i = 0; i < count; ++i) envs.push_back(std::make_unique<frame_env>(rlay::ndarray::shape_type{h, w, c}, i));
        } else {
            throw std::invalid_argument("unknown --env " + kind + " (conformance, noop, spaces, var-spaces or frame:HxWxC)");
        }
        if (!args["curve"].empty()) cfg.curve = rlay::curve_keys::from_dir(args["curve"]);

        rlay::command_worker worker(cfg, std::move(envs));
        running = &worker;
        std::signal(SIGTERM, on_signal);
        std::signal(SIGINT, on_signal);
        worker.run();
        running = nullptr;
        return 0;
    } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "%s\nusage: rlay_example_command --broker ADDR [--envs N] [--env conformance|noop|spaces|var-spaces|frame:HxWxC] [--curve DIR]\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "rlay_example_command: %s\n", e.what());
        return 1;
    }
}
