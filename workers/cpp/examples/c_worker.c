/* rlay_example_c: the conformance env (docs/protocol.md Appendix B) written in C99 over the
 * C ABI (include/rlay.h).
 *
 *   rlay_example_c --broker tcp://127.0.0.1:5556 [--envs 4] [--curve DIR]           command mode
 *   rlay_example_c --broker tcp://127.0.0.1:5556 --mode push [--agents 2] [--curve DIR]
 *
 * Command mode hosts N envs behind reset and step callbacks. Push mode is a lockstep game
 * loop over N agents: every agent that carried out a command reaches its next decision point
 * at once and submits its state, and the loop then blocks in rlay_push_commands (allowed by
 * the deadlock rule (docs/guides/push-game.md): every agent waits at a decision point when it blocks). Both
 * register as "rlay/Conformance-v0" and equal SyncVectorEnv over the Python reference. The
 * worker exits 0 after the broker's disconnect, and on SIGTERM or SIGINT sends its own.
 * (Array dtypes are written for the host's byte order: "<" on little-endian hosts.)
 */
#include <rlay.h>

#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define M61 ((UINT64_C(1) << 61) - 1)
#define T_MAX 8
#define POS_LIMIT 4.0
#define MAX_START (INT64_C(1) << 53) /* options["start"] is exact as a float64 up to this */

typedef struct conformance_env {
    uint64_t rng;
    int64_t episode;
    int64_t t;
    double pos[2];
    double vel[2];
} conformance_env;

/* ---- small helpers ------------------------------------------------------------------------ */

static int little_endian(void) {
    const uint16_t one = 1;
    return *(const unsigned char*)&one == 1;
}

static const char* dtype(const char* kind_and_size) { /* "f8" -> "<f8" on this host */
    static char text[2][8];
    static int next = 0;
    char* out = text[next++ & 1];
    snprintf(out, 8, "%c%s", little_endian() ? '<' : '>', kind_and_size);
    return out;
}

static void die(const char* what, rlay_status status) {
    fprintf(stderr, "rlay_example_c: %s failed: %s: %s\n", what, rlay_status_name(status), rlay_last_error());
    exit(1);
}

#define CHECK(call)                                  \
    do {                                             \
        rlay_status status_ = (call);                \
        if (status_ != RLAY_OK) die(#call, status_); \
    } while (0)

/* Set `key` of `map` to `item` and free `item`. */
static void set_owned(rlay_value* map, const char* key, rlay_value* item) {
    CHECK(rlay_value_set(map, key, item));
    rlay_value_free(item);
}

static rlay_value* new_int(int64_t i) {
    rlay_value* v;
    CHECK(rlay_value_new_int(i, &v));
    return v;
}

static rlay_value* new_bool(int b) {
    rlay_value* v;
    CHECK(rlay_value_new_bool(b, &v));
    return v;
}

/* The magnitude of an integer value as big-endian bytes; returns its length, 0 if too large. */
static size_t integer_bytes(const rlay_value* v, uint8_t* buf, size_t cap, int* negative) {
    size_t len = 0;
    if (rlay_value_get_big_int(v, buf, cap, &len) != RLAY_OK) return 0;
    *negative = (buf[0] & 0x80) != 0;
    if (*negative) { /* two's complement -> magnitude */
        size_t i;
        for (i = 0; i < len; ++i) buf[i] = (uint8_t)~buf[i];
        for (i = len; i-- > 0;) {
            if (++buf[i] != 0) break;
        }
    }
    return len;
}

/* options["fail"] asks for a failure only when it is the bool true. */
static int is_true(const rlay_value* v) {
    int b = 0;
    return rlay_value_kind(v) == RLAY_BOOL && rlay_value_get_bool(v, &b) == RLAY_OK && b;
}

/* ---- the conformance env ------------------------------------------------------------------- */

static double uniform(conformance_env* e) {
    uint64_t z;
    e->rng += UINT64_C(0x9E3779B97F4A7C15);
    z = e->rng;
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    z = z ^ (z >> 31);
    return (double)(z >> 11) * ldexp(1.0, -53);
}

static rlay_value* observation(const conformance_env* e) {
    rlay_value *obs, *pos, *vel;
    size_t two = 2;
    float vel32[2];
    vel32[0] = (float)e->vel[0];
    vel32[1] = (float)e->vel[1];
    CHECK(rlay_value_new_map(&obs));
    CHECK(rlay_value_new_ndarray(dtype("f8"), &two, 1, e->pos, sizeof e->pos, &pos));
    CHECK(rlay_value_new_ndarray(dtype("f4"), &two, 1, vel32, sizeof vel32, &vel));
    set_owned(obs, "pos", pos);
    set_owned(obs, "t", new_int(e->t));
    set_owned(obs, "vel", vel);
    return obs;
}

static int env_reset(void* user, size_t index, const rlay_value* seed, const rlay_value* options, rlay_value** obs, rlay_value** info) {
    conformance_env* e = (conformance_env*)user + index;
    const rlay_value* item = NULL;
    double start = 0.0;
    uint8_t b[1024];
    int negative = 0;
    size_t len = 0, i;
    int has_options = rlay_value_kind(options) != RLAY_NIL; /* 1: nil counts as {} */
    if (rlay_value_kind(seed) != RLAY_NIL) {                 /* 2 */
        len = integer_bytes(seed, b, sizeof b, &negative);
        if (negative) {
            rlay_env_fail("ValueError", "the conformance env takes seeds >= 0");
            return 1;
        }
    }
    if (has_options && rlay_value_kind(options) != RLAY_MAP) {
        rlay_env_fail("ValueError", "options must be a map or nil");
        return 1;
    }
    if (has_options && rlay_value_find(options, "fail", &item) == RLAY_OK && is_true(item)) { /* 3 */
        rlay_env_fail("ValueError", "reset failed on request (options['fail'])");
        return 1;
    }
    item = NULL; /* 4: an int from -2^53 to 2^53, exact as a float64 */
    if (has_options && rlay_value_find(options, "start", &item) == RLAY_OK) {
        int64_t value = 0;
        if (rlay_value_kind(item) != RLAY_INT || rlay_value_get_int(item, &value) != RLAY_OK ||
            value > MAX_START || value < -MAX_START) {
            rlay_env_fail("ValueError", "options['start'] must be an int from -2**53 to 2**53");
            return 1;
        }
        start = (double)value;
    }
    if (rlay_value_kind(seed) != RLAY_NIL) { /* 5: every byte counts */
        uint64_t r = 0;
        for (i = 0; i < len; ++i) {
            int k;
            for (k = 0; k < 8; ++k) r = (r * 2) % M61;
            r = (r + b[i]) % M61;
        }
        e->rng = r;
    }
    e->episode += 1; /* 6 */
    e->t = 0;
    e->pos[0] = start;
    e->pos[1] = uniform(e) - 0.5;
    e->vel[0] = e->vel[1] = 0.0;
    *obs = observation(e); /* 7 */
    CHECK(rlay_value_new_map(info));
    set_owned(*info, "episode", new_int(e->episode));
    set_owned(*info, "seeded", new_bool(rlay_value_kind(seed) != RLAY_NIL));
    return 0;
}

static int env_step(void* user, size_t index, const rlay_value* action, rlay_value** obs, double* reward, int* terminated, int* truncated,
                    rlay_value** info) {
    conformance_env* e = (conformance_env*)user + index;
    int64_t a = 0;
    double u;
    int even;
    float pos32[2];
    int8_t a8;
    size_t two = 2;
    rlay_value *value, *pair, *sub, *tag;
    if (rlay_value_get_int(action, &a) != RLAY_OK || a < 0 || a > 2) { /* 1 */
        char message[96];
        snprintf(message, sizeof message, "action %lld is not in Discrete(3)", (long long)a);
        rlay_env_fail("ValueError", message);
        return 1;
    }
    u = uniform(e);                               /* 2 */
    e->vel[0] = e->vel[0] * 0.5 + (double)(a - 1); /* 3 */
    e->vel[1] = u - 0.5;
    e->pos[0] = e->pos[0] + e->vel[0]; /* 4 */
    e->pos[1] = e->pos[1] * 0.5 + e->vel[1];
    e->t += 1;                                  /* 5 */
    *reward = 1.0 - 0.125 * fabs(e->pos[0]);    /* 6 */
    *terminated = fabs(e->pos[0]) >= POS_LIMIT;
    *truncated = e->t >= T_MAX;
    *obs = observation(e); /* 7 */
    even = e->t % 2 == 0;
    CHECK(rlay_value_new_map(info));
    set_owned(*info, "t", new_int(e->t));
    CHECK(rlay_value_new_float(u, &value));
    set_owned(*info, "u", value);
    CHECK(rlay_value_new_str(even ? "even" : "odd", even ? 4 : 3, &tag));
    set_owned(*info, "tag", tag);
    pos32[0] = (float)e->pos[0];
    pos32[1] = (float)e->pos[1];
    CHECK(rlay_value_new_ndarray(dtype("f4"), &two, 1, pos32, sizeof pos32, &value));
    set_owned(*info, "pos32", value);
    a8 = (int8_t)a;
    CHECK(rlay_value_new_scalar("|i1", &a8, 1, &value));
    set_owned(*info, "a8", value);
    CHECK(rlay_value_new_tuple(&pair));
    value = new_int(e->t);
    CHECK(rlay_value_append(pair, value));
    rlay_value_free(value);
    value = new_bool(*terminated);
    CHECK(rlay_value_append(pair, value));
    rlay_value_free(value);
    set_owned(*info, "pair", pair);
    CHECK(rlay_value_new_map(&sub));
    set_owned(sub, "even", new_bool(even));
    set_owned(*info, "sub", sub);
    return 0;
}

/* ---- spaces and config --------------------------------------------------------------------- */

static rlay_config* make_config(const char* broker, const char* curve) {
    rlay_space *obs, *act, *pos, *t, *vel;
    rlay_config* cfg;
    rlay_value *metadata, *modes, *fps;
    size_t two = 2;
    CHECK(rlay_space_box(-1e6, 1e6, &two, 1, dtype("f8"), &pos));
    CHECK(rlay_space_discrete(T_MAX + 1, 0, &t));
    CHECK(rlay_space_box(-4.0, 4.0, &two, 1, dtype("f4"), &vel));
    CHECK(rlay_space_dict(&obs)); /* keys sorted, as gymnasium's Dict has them */
    CHECK(rlay_space_dict_append(obs, "pos", pos));
    CHECK(rlay_space_dict_append(obs, "t", t));
    CHECK(rlay_space_dict_append(obs, "vel", vel));
    CHECK(rlay_space_discrete(3, 0, &act));
    CHECK(rlay_config_new(broker, "rlay/Conformance-v0", obs, act, &cfg));
    CHECK(rlay_value_new_map(&metadata));
    CHECK(rlay_value_new_list(&modes));
    set_owned(metadata, "render_modes", modes);
    CHECK(rlay_value_new_int(30, &fps));
    set_owned(metadata, "render_fps", fps);
    CHECK(rlay_config_set_metadata(cfg, metadata));
    if (curve) CHECK(rlay_config_set_curve_dir(cfg, curve));
    rlay_value_free(metadata);
    rlay_space_free(pos);
    rlay_space_free(t);
    rlay_space_free(vel);
    rlay_space_free(obs);
    rlay_space_free(act);
    return cfg;
}

/* ---- the two modes ------------------------------------------------------------------------- */

static rlay_command_worker* volatile running_worker = NULL;
static volatile sig_atomic_t stop_requested = 0;

static void on_signal(int signo) {
    (void)signo;
    stop_requested = 1;
    if (running_worker) rlay_command_worker_stop(running_worker); /* async-signal-safe */
}

static int run_command(const rlay_config* cfg, size_t count) {
    conformance_env* envs = (conformance_env*)calloc(count, sizeof *envs);
    rlay_env_callbacks callbacks = {env_reset, env_step, NULL, NULL};
    rlay_command_worker* worker;
    rlay_status status;
    CHECK(rlay_command_worker_new(cfg, count, &callbacks, envs, &worker));
    running_worker = worker;
    status = rlay_command_worker_run(worker);
    running_worker = NULL;
    rlay_command_worker_free(worker);
    free(envs);
    if (status != RLAY_OK) die("rlay_command_worker_run", status);
    return 0;
}

typedef struct agent_state {
    int carried; /* -1: no command yet; else the rlay_command_kind it carried out */
    rlay_value *obs, *info;
    double reward;
    int terminated, truncated;
} agent_state;

static int run_push(const rlay_config* cfg, int count) {
    conformance_env* envs = (conformance_env*)calloc((size_t)count, sizeof *envs);
    agent_state* agents = (agent_state*)calloc((size_t)count, sizeof *agents);
    rlay_command** commands = (rlay_command**)calloc((size_t)count, sizeof *commands);
    rlay_push_worker* game;
    int j, running = 1, status = 0;
    CHECK(rlay_push_worker_new(cfg, count, &game));
    for (j = 0; j < count; ++j) agents[j].carried = -1;
    while (running && !stop_requested) {
        size_t ready = 0;
        for (j = 0; j < count; ++j) { /* every agent that carried out a command is at its next decision point */
            agent_state* a = &agents[j];
            if (a->carried == -2) continue; /* waiting for its command */
            if (a->carried == -1) CHECK(rlay_push_submit(game, j));
            else if (a->carried == RLAY_COMMAND_RESET) CHECK(rlay_push_submit_reset(game, j, a->obs, a->info));
            else CHECK(rlay_push_submit_step(game, j, a->obs, a->reward, a->terminated, a->truncated, a->info));
            rlay_value_free(a->obs);
            rlay_value_free(a->info);
            a->obs = a->info = NULL;
            a->carried = -2;
        }
        CHECK(rlay_push_commands(game, 0.25, commands, &ready)); /* every agent waits: blocking is allowed */
        for (j = 0; j < count; ++j) {
            rlay_command* c = commands[j];
            agent_state* a = &agents[j];
            int rc = 0;
            if (!c) continue;
            switch (rlay_command_kind_of(c)) {
                case RLAY_COMMAND_CLOSE: running = 0; break;
                case RLAY_COMMAND_RESET:
                    rc = env_reset(envs, (size_t)j, rlay_command_seed(c), rlay_command_options(c), &a->obs, &a->info);
                    a->carried = RLAY_COMMAND_RESET;
                    break;
                case RLAY_COMMAND_ACTION:
                    rc = env_step(envs, (size_t)j, rlay_command_action(c), &a->obs, &a->reward, &a->terminated, &a->truncated, &a->info);
                    a->carried = RLAY_COMMAND_ACTION;
                    break;
            }
            rlay_command_free(c);
            if (rc != 0) { /* a game cannot fail a command (10.1): leave */
                fprintf(stderr, "rlay_example_c: agent %d's env failed; leaving\n", j);
                running = 0;
                status = 1;
            }
        }
    }
    CHECK(rlay_push_close(game));
    rlay_push_worker_free(game);
    for (j = 0; j < count; ++j) {
        rlay_value_free(agents[j].obs);
        rlay_value_free(agents[j].info);
    }
    free(commands);
    free(agents);
    free(envs);
    return status;
}

int main(int argc, char** argv) {
    const char* broker = getenv("RLAY_BROKER");
    const char* mode = "command";
    const char* curve = NULL;
    int envs = 4, agents = 2, i, result;
    rlay_config* cfg;
    for (i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--broker") == 0) broker = argv[i + 1];
        else if (strcmp(argv[i], "--envs") == 0) envs = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--agents") == 0) agents = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--mode") == 0) mode = argv[i + 1];
        else if (strcmp(argv[i], "--curve") == 0) curve = argv[i + 1];
        else break;
    }
    if (i != argc || !broker || !*broker || (strcmp(mode, "command") != 0 && strcmp(mode, "push") != 0)) {
        fprintf(stderr, "usage: rlay_example_c --broker ADDR [--mode command|push] [--envs N] [--agents N] [--curve DIR]\n"
                        "       (or set RLAY_BROKER)\n");
        return 2;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    cfg = make_config(broker, curve);
    result = strcmp(mode, "push") == 0 ? run_push(cfg, agents) : run_command(cfg, (size_t)envs);
    rlay_config_free(cfg);
    return result;
}
