/* rlay.h: the C ABI of the rlay native worker SDK (libRLAY, target rlay::c).
 *
 * A plain C interface over the C++ SDK (include/rlay/worker.hpp), so that C# (P/Invoke, for
 * Unity), Rust, Go or C code can join an rlay broker as a worker without a C++ compiler:
 * opaque handles, explicit ownership, status codes, no exception ever crosses it.
 *
 * CONVENTIONS
 *   - Every fallible function returns an rlay_status; RLAY_OK (0) is success. On failure,
 *     rlay_last_error() gives the message (thread-local) and out-parameters are untouched.
 *   - Handles made by an rlay_*_new* function (or handed out through an `out` parameter of
 *     type T**) are OWNED by the caller, who frees each with its rlay_*_free function
 *     (freeing NULL is a no-op).
 *   - A `const rlay_value*` (or other const handle) passed IN is BORROWED for the duration of
 *     the call only: the library copies what it keeps. The caller still owns and frees it.
 *   - A `const T*` handed OUT (rlay_value_item, rlay_command_action, ...) is BORROWED from its
 *     parent: it stays valid until the parent is freed or modified. Never free it.
 *   - Strings are UTF-8. Strings handed out are NUL-terminated and borrowed likewise.
 *   - Threads: values, spaces and configs may be used from any thread, one thread per handle
 *     at a time. A worker is used from one thread, except rlay_command_worker_stop.
 *
 * A COMMAND WORKER (docs/guides/worker.md): give callbacks for reset and step (and
 * optionally call and set_attr); rlay_command_worker_run blocks, calling them from the thread
 * that runs it, until the broker disconnects the worker or rlay_command_worker_stop is called.
 *
 * A PUSH WORKER (section 10): the game owns its loop and calls rlay_push_submit* at each
 * agent's decision point and rlay_push_commands (or rlay_push_poll / rlay_push_wait) to get
 * the agents' next commands. The deadlock rule (docs/guides/push-game.md) applies: block (timeout > 0) only
 * while every agent waits at a decision point, and then in rlay_push_commands.
 */
#ifndef RLAY_H
#define RLAY_H

#include <stddef.h>
#include <stdint.h>

#define RLAY_VERSION_MAJOR 0
#define RLAY_VERSION_MINOR 1
#define RLAY_VERSION_PATCH 0
#define RLAY_PROTOCOL_VERSION 1

#if defined(_WIN32)
#if defined(RLAY_BUILDING_C_ABI)
#define RLAY_API __declspec(dllexport)
#else
#define RLAY_API __declspec(dllimport)
#endif
#elif defined(__GNUC__)
#define RLAY_API __attribute__((visibility("default")))
#else
#define RLAY_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status, errors, versions, logging -------------------------------------------------- */

typedef enum rlay_status {
    RLAY_OK = 0,
    RLAY_ERR_INVALID_ARGUMENT = 1, /* a NULL pointer, a bad dtype text, invalid UTF-8, ... */
    RLAY_ERR_TYPE = 2,             /* a value read as a kind it is not */
    RLAY_ERR_NOT_FOUND = 3,        /* no such map key */
    RLAY_ERR_OUT_OF_RANGE = 4,     /* an index past the end, a number that does not fit */
    RLAY_ERR_BAD_MESSAGE = 5,      /* data the wire refuses (docs/protocol.md 3.7) */
    RLAY_ERR_SPACE = 6,            /* a space that cannot be built */
    RLAY_ERR_REGISTRATION = 7,     /* the broker refused the worker, or none answered in time */
    RLAY_ERR_TIMEOUT = 8,          /* rlay_push_wait ran out */
    RLAY_ERR_CLOSED = 9,           /* the worker was closed or stopped */
    RLAY_ERR_KEY_FILE = 10,        /* a CURVE key file is missing or malformed */
    RLAY_ERR_TRANSPORT = 11,       /* ZeroMQ refused something (an address, CURVE support) */
    RLAY_ERR_USAGE = 12,           /* push API misuse (docs/guides/push-game.md): nothing was sent */
    RLAY_ERR_INTERNAL = 13         /* a bug or an out-of-memory in the library */
} rlay_status;

/* The message of the last failure on this thread. Borrowed: valid until the next rlay_ call
 * on this thread. Never NULL ("" after a success). */
RLAY_API const char* rlay_last_error(void);
/* A constant name for a status: "RLAY_ERR_TYPE". */
RLAY_API const char* rlay_status_name(rlay_status status);
/* "0.1.0" (a constant string). */
RLAY_API const char* rlay_version(void);
/* The wire protocol version this library speaks: 1. */
RLAY_API int rlay_protocol_version(void);

typedef enum rlay_log_level { RLAY_LOG_DEBUG = 0, RLAY_LOG_INFO = 1, RLAY_LOG_WARNING = 2, RLAY_LOG_ERROR = 3 } rlay_log_level;
/* Receives each log line (borrowed, NUL-terminated, valid during the call). May be called from
 * the worker's heartbeat thread as well as from the thread running the worker, never at once. */
typedef void (*rlay_log_fn)(void* user, rlay_log_level level, const char* line);
/* Send every worker's log lines to `fn` (NULL: back to stderr). */
RLAY_API void rlay_set_log_handler(rlay_log_fn fn, void* user);

/* ---- values (the value codec, 3.3) ------------------------------------------------------ */

typedef struct rlay_value rlay_value;

typedef enum rlay_kind {
    RLAY_NIL = 0, RLAY_BOOL, RLAY_INT, RLAY_BIG_INT, RLAY_FLOAT, RLAY_STR, RLAY_BIN,
    RLAY_LIST, RLAY_MAP, RLAY_TUPLE, RLAY_NDARRAY, RLAY_SCALAR,
    RLAY_GRAPH /* ext 5, gymnasium's GraphInstance: 3 items (nodes, edges, edge_links), read with rlay_value_item */
} rlay_kind;

/* Builders: each makes a new value owned by the caller (free with rlay_value_free). */
RLAY_API rlay_status rlay_value_new_nil(rlay_value** out);
RLAY_API rlay_status rlay_value_new_bool(int b, rlay_value** out);
RLAY_API rlay_status rlay_value_new_int(int64_t i, rlay_value** out);
RLAY_API rlay_status rlay_value_new_uint(uint64_t u, rlay_value** out);
RLAY_API rlay_status rlay_value_new_float(double f, rlay_value** out);
/* A str of `len` bytes of UTF-8 (copied; invalid UTF-8 is refused). */
RLAY_API rlay_status rlay_value_new_str(const char* utf8, size_t len, rlay_value** out);
/* A bin of `len` bytes (copied). */
RLAY_API rlay_status rlay_value_new_bytes(const void* data, size_t len, rlay_value** out);
/* An integer of any size from `len` (1 to 1024) bytes of big-endian two's complement. */
RLAY_API rlay_status rlay_value_new_big_int(const uint8_t* be_bytes, size_t len, rlay_value** out);
/* An ndarray (ext 1) of dtype `dtype` ("<f4", "|u1", ...), `ndim` dimensions `shape`, and
 * `nbytes` bytes of C-order data (copied; nbytes must equal itemsize * product(shape)). */
RLAY_API rlay_status rlay_value_new_ndarray(const char* dtype, const size_t* shape, size_t ndim, const void* data, size_t nbytes,
                                            rlay_value** out);
/* A typed scalar (ext 2): one item of `dtype` (copied). */
RLAY_API rlay_status rlay_value_new_scalar(const char* dtype, const void* data, size_t nbytes, rlay_value** out);
/* Empty containers: append items with rlay_value_append, map entries with rlay_value_set. */
RLAY_API rlay_status rlay_value_new_list(rlay_value** out);
RLAY_API rlay_status rlay_value_new_tuple(rlay_value** out);
RLAY_API rlay_status rlay_value_new_map(rlay_value** out);
/* A graph (ext 5, 3.8.1) of COPIES of `nodes`, `edges` and `edge_links`; `edges` and `edge_links`
 * may both be NULL (nil) for a graph without edges. */
RLAY_API rlay_status rlay_value_new_graph(const rlay_value* nodes, const rlay_value* edges, const rlay_value* edge_links, rlay_value** out);
/* Append a COPY of `item` to a list or tuple. */
RLAY_API rlay_status rlay_value_append(rlay_value* list_or_tuple, const rlay_value* item);
/* Set str key `key` of a map to a COPY of `item` (replacing the value of an existing key). */
RLAY_API rlay_status rlay_value_set(rlay_value* map, const char* key, const rlay_value* item);
/* A deep copy (array bytes are shared, copy-on-write). */
RLAY_API rlay_status rlay_value_copy(const rlay_value* v, rlay_value** out);
RLAY_API void rlay_value_free(rlay_value* v);

/* Readers. Each fails with RLAY_ERR_TYPE on another kind. */
RLAY_API rlay_kind rlay_value_kind(const rlay_value* v);
RLAY_API rlay_status rlay_value_get_bool(const rlay_value* v, int* out);
/* An integer in the int64 range (also an integer typed scalar). */
RLAY_API rlay_status rlay_value_get_int(const rlay_value* v, int64_t* out);
/* A non-negative integer in the uint64 range. */
RLAY_API rlay_status rlay_value_get_uint(const rlay_value* v, uint64_t* out);
/* A float. */
RLAY_API rlay_status rlay_value_get_float(const rlay_value* v, double* out);
/* Any real number (float, int, big int, bool, numeric typed scalar) as a double. */
RLAY_API rlay_status rlay_value_to_double(const rlay_value* v, double* out);
/* A str: borrowed UTF-8, NUL-terminated, `len` bytes without the NUL. */
RLAY_API rlay_status rlay_value_get_str(const rlay_value* v, const char** utf8, size_t* len);
/* A bin: borrowed bytes. */
RLAY_API rlay_status rlay_value_get_bytes(const rlay_value* v, const void** data, size_t* len);
/* Any integer as big-endian two's complement, minimal: written into `buf` of `cap` bytes;
 * `len` gets the length (RLAY_ERR_OUT_OF_RANGE if cap is too small, len still set). */
RLAY_API rlay_status rlay_value_get_big_int(const rlay_value* v, uint8_t* buf, size_t cap, size_t* len);
/* An ndarray or a typed scalar (ndim 0): its dtype text (copied into `dtype`, 8 bytes with the
 * NUL), and borrowed shape (`ndim` items) and C-order bytes. Any out pointer may be NULL. */
RLAY_API rlay_status rlay_value_get_ndarray(const rlay_value* v, char dtype[8], size_t* ndim, const size_t** shape, const void** data,
                                            size_t* nbytes);
/* Items of a list, tuple or graph, entries of a map. */
RLAY_API rlay_status rlay_value_len(const rlay_value* v, size_t* out);
/* Item `i` of a list, tuple or graph (borrowed). */
RLAY_API rlay_status rlay_value_item(const rlay_value* v, size_t i, const rlay_value** item);
/* The value of str key `key` in a map (borrowed); RLAY_ERR_NOT_FOUND if absent. */
RLAY_API rlay_status rlay_value_find(const rlay_value* map, const char* key, const rlay_value** item);
/* Entry `i` of a map (borrowed key and value). */
RLAY_API rlay_status rlay_value_entry(const rlay_value* map, size_t i, const rlay_value** key, const rlay_value** item);

/* ---- spaces (4.1) ------------------------------------------------------------------------ */

typedef struct rlay_space rlay_space;

/* Box(low, high, shape, dtype) with every bound item equal. dtype NULL: "<f4". */
RLAY_API rlay_status rlay_space_box(double low, double high, const size_t* shape, size_t ndim, const char* dtype, rlay_space** out);
/* Box with per-item bounds (C order, product(shape) items each). */
RLAY_API rlay_status rlay_space_box_bounds(const double* low, const double* high, const size_t* shape, size_t ndim, const char* dtype,
                                           rlay_space** out);
/* Discrete(n, start), dtype int64. */
RLAY_API rlay_status rlay_space_discrete(int64_t n, int64_t start, rlay_space** out);
/* MultiDiscrete(nvec) (1-d, start 0, dtype int64). */
RLAY_API rlay_status rlay_space_multi_discrete(const int64_t* nvec, size_t count, rlay_space** out);
/* MultiBinary(n). */
RLAY_API rlay_status rlay_space_multi_binary(size_t n, rlay_space** out);
/* Text(max_length, min_length, charset); charset NULL: digits and ASCII letters, sorted. */
RLAY_API rlay_status rlay_space_text(int64_t max_length, int64_t min_length, const char* charset, rlay_space** out);
/* An empty Tuple / Dict; add entries in order (each a COPY of `item`). Dict keys in the
 * order added are the leaf order: list them sorted to share an env id with Python workers. */
RLAY_API rlay_status rlay_space_tuple(rlay_space** out);
RLAY_API rlay_status rlay_space_tuple_append(rlay_space* tuple, const rlay_space* item);
RLAY_API rlay_status rlay_space_dict(rlay_space** out);
RLAY_API rlay_status rlay_space_dict_append(rlay_space* dict, const char* key, const rlay_space* item);
/* Graph(node_space, edge_space) (3.8.1); edge_space NULL: a graph without edge features. Copies both. */
RLAY_API rlay_status rlay_space_graph(const rlay_space* node_space, const rlay_space* edge_space, rlay_space** out);
/* Sequence(feature_space, stack) (3.8.1); stack nonzero: gymnasium's stack=True. Copies the space. */
RLAY_API rlay_status rlay_space_sequence(const rlay_space* feature_space, int stack, rlay_space** out);
/* OneOf((first, ...)) (3.8.1); add the other choices with rlay_space_one_of_append. Copies the space. */
RLAY_API rlay_status rlay_space_one_of(const rlay_space* first, rlay_space** out);
RLAY_API rlay_status rlay_space_one_of_append(rlay_space* one_of, const rlay_space* choice);
RLAY_API void rlay_space_free(rlay_space* space);

/* ---- config (5.2, section 13) ------------------------------------------------------------ */

typedef struct rlay_config rlay_config;

/* broker: the broker's back end ("tcp://127.0.0.1:5556"); the spaces are copied. */
RLAY_API rlay_status rlay_config_new(const char* broker, const char* env_id, const rlay_space* observation_space,
                                     const rlay_space* action_space, rlay_config** out);
/* A map (copied); plain msgpack only: see rlay::config::metadata. */
RLAY_API rlay_status rlay_config_set_metadata(rlay_config* cfg, const rlay_value* metadata);
/* NULL: nil. */
RLAY_API rlay_status rlay_config_set_render_mode(rlay_config* cfg, const char* render_mode);
RLAY_API rlay_status rlay_config_set_rank(rlay_config* cfg, int64_t rank);
RLAY_API rlay_status rlay_config_set_host(rlay_config* cfg, const char* host);
RLAY_API rlay_status rlay_config_set_register_timeout(rlay_config* cfg, double seconds);
/* CURVE keys as 40-character Z85 texts: this peer's public and secret key, the broker's public key. */
RLAY_API rlay_status rlay_config_set_curve_keys(rlay_config* cfg, const char* public_key, const char* secret_key, const char* server_key);
/* CURVE keys from a directory made by `rlay keys generate DIR` (client.key_secret, broker.key). */
RLAY_API rlay_status rlay_config_set_curve_dir(rlay_config* cfg, const char* dir);
RLAY_API void rlay_config_free(rlay_config* cfg);

/* ---- command worker (docs/guides/worker.md) --------------------------------------------------------- */

typedef struct rlay_command_worker rlay_command_worker;

/* Callbacks, called from the thread that runs the worker, one env at a time. Each returns 0
 * on success. To fail the env (a report in the trainer's error, 5.13), call rlay_env_fail and
 * return nonzero; the worker keeps serving. Borrowed arguments are valid during the call only.
 * Values handed back through out-parameters are taken over by the library (do not free them).
 *
 * reset:    seed is nil or an integer (rlay_value_get_uint, or rlay_value_get_big_int for any
 *           size); options is any value (usually a map or nil). Set *obs (required) and *info
 *           (a map; NULL: {}).
 * step:     action is a value of the action space (an int for Discrete, an ndarray for Box,
 *           MultiDiscrete, MultiBinary, a str for Text, a map for Dict, a tuple for Tuple).
 * call:     optional (NULL: NotImplementedError); args is a list, kwargs a map; set *result.
 * set_attr: optional (NULL: NotImplementedError). */
typedef int (*rlay_reset_fn)(void* user, size_t env_index, const rlay_value* seed, const rlay_value* options, rlay_value** obs,
                             rlay_value** info);
typedef int (*rlay_step_fn)(void* user, size_t env_index, const rlay_value* action, rlay_value** obs, double* reward, int* terminated,
                            int* truncated, rlay_value** info);
typedef int (*rlay_call_fn)(void* user, size_t env_index, const char* name, const rlay_value* args, const rlay_value* kwargs,
                            rlay_value** result);
typedef int (*rlay_set_attr_fn)(void* user, size_t env_index, const char* name, const rlay_value* value);

typedef struct rlay_env_callbacks {
    rlay_reset_fn reset;
    rlay_step_fn step;
    rlay_call_fn call;         /* may be NULL */
    rlay_set_attr_fn set_attr; /* may be NULL */
} rlay_env_callbacks;

/* Inside a callback: say how the env failed, as a Python exception type name ("ValueError")
 * and a message (both copied); then return nonzero. Without it a failing callback is reported
 * as a RuntimeError. */
RLAY_API void rlay_env_fail(const char* type, const char* message);

/* A worker hosting `num_envs` envs served by `callbacks` (copied) with `user` passed to each.
 * Nothing is sent until run. */
RLAY_API rlay_status rlay_command_worker_new(const rlay_config* cfg, size_t num_envs, const rlay_env_callbacks* callbacks, void* user,
                                             rlay_command_worker** out);
/* Register, serve until the broker's disconnect or rlay_command_worker_stop, send disconnect.
 * RLAY_OK after a disconnect or a stop; RLAY_ERR_REGISTRATION if the broker refused the
 * worker or none answered within the register timeout. */
RLAY_API rlay_status rlay_command_worker_run(rlay_command_worker* worker);
/* Ask run to return (within 250 ms). Async-signal-safe: a signal handler may call it. */
RLAY_API void rlay_command_worker_stop(rlay_command_worker* worker);
RLAY_API void rlay_command_worker_free(rlay_command_worker* worker);

/* ---- push worker (section 10) ------------------------------------------------------------ */

typedef struct rlay_push_worker rlay_push_worker;
typedef struct rlay_command rlay_command;

typedef enum rlay_command_kind { RLAY_COMMAND_RESET = 0, RLAY_COMMAND_ACTION = 1, RLAY_COMMAND_CLOSE = 2 } rlay_command_kind;

/* Connect, start the heartbeat thread and register `num_agents` agents (mode "push");
 * returns once the broker answered (RLAY_ERR_REGISTRATION on a refusal or a timeout). */
RLAY_API rlay_status rlay_push_worker_new(const rlay_config* cfg, int num_agents, rlay_push_worker** out);
/* Agent `agent`'s first decision point: no state. */
RLAY_API rlay_status rlay_push_submit(rlay_push_worker* game, int agent);
/* After a reset command: obs and info (copied; info NULL: {}). */
RLAY_API rlay_status rlay_push_submit_reset(rlay_push_worker* game, int agent, const rlay_value* obs, const rlay_value* info);
/* After an action command: the state at this decision point (copied; info NULL: {}). */
RLAY_API rlay_status rlay_push_submit_step(rlay_push_worker* game, int agent, const rlay_value* obs, double reward, int terminated,
                                           int truncated, const rlay_value* info);
/* The agent's next command if one is ready within `timeout_s` seconds: *out is a new command
 * (owned; rlay_command_free), or NULL if none is ready yet. */
RLAY_API rlay_status rlay_push_poll(rlay_push_worker* game, int agent, double timeout_s, rlay_command** out);
/* Wait for the agent's next command, up to `timeout_s` seconds (< 0: no limit); *out owned.
 * With several agents mind the deadlock rule (docs/guides/push-game.md): prefer rlay_push_commands. */
RLAY_API rlay_status rlay_push_wait(rlay_push_worker* game, int agent, double timeout_s, rlay_command** out);
/* rlay_push_submit (first decision point) then rlay_push_wait. */
RLAY_API rlay_status rlay_push_decide(rlay_push_worker* game, int agent, double timeout_s, rlay_command** out);
/* The next command of every agent at a decision point that has one, waiting up to
 * `timeout_s` for one: commands[j] (an array of num_agents entries, filled by the call) is a
 * new command (owned; rlay_command_free) or NULL; *count gets how many are set. After a
 * disconnect every agent gets a close command. */
RLAY_API rlay_status rlay_push_commands(rlay_push_worker* game, double timeout_s, rlay_command** commands, size_t* count);
/* Send disconnect and close the socket (also done by free). */
RLAY_API rlay_status rlay_push_close(rlay_push_worker* game);
RLAY_API void rlay_push_worker_free(rlay_push_worker* game);

RLAY_API rlay_command_kind rlay_command_kind_of(const rlay_command* command);
/* Borrowed from the command: the action (nil unless ACTION), the seed (nil or an integer) and
 * the options (nil unless RESET). */
RLAY_API const rlay_value* rlay_command_action(const rlay_command* command);
RLAY_API const rlay_value* rlay_command_seed(const rlay_command* command);
RLAY_API const rlay_value* rlay_command_options(const rlay_command* command);
RLAY_API void rlay_command_free(rlay_command* command);

#ifdef __cplusplus
}
#endif

#endif /* RLAY_H */
