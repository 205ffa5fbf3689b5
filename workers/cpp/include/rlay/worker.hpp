// rlay/worker.hpp: the rlay native worker SDK, header-only C++17 over libzmq and cppzmq.
//
// A worker joins an rlay broker (docs/protocol.md) and serves its envs to trainers:
//   - rlay::command_worker hosts env objects (rlay::env) and steps them on request (docs/guides/worker.md);
//   - rlay::push_worker is the game-side API of a game that owns its main loop (section 10).
// Values (rlay::value, rlay::ndarray), spaces (rlay::spaces::box, discrete, ...) and the
// config (rlay::config, rlay::curve_keys) are shared by both. Errors are exceptions:
// rlay::error (with an rlay::errc code), rlay::usage_error for misuse of the push API, and
// rlay::env_error, which env code throws to fail with a named Python exception type.
#pragma once

#include <rlay/command_worker.hpp>
#include <rlay/config.hpp>
#include <rlay/dtype.hpp>
#include <rlay/env.hpp>
#include <rlay/error.hpp>
#include <rlay/log.hpp>
#include <rlay/push_worker.hpp>
#include <rlay/spaces.hpp>
#include <rlay/value.hpp>

#define RLAY_VERSION_MAJOR 0
#define RLAY_VERSION_MINOR 1
#define RLAY_VERSION_PATCH 0
