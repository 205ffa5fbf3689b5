// rlay_c.cpp: the C ABI (include/rlay.h) over the C++ SDK. No exception crosses it: every
// entry point runs inside guard(), which maps exceptions to an rlay_status and keeps the
// message for rlay_last_error().
#include <rlay.h>
#include <rlay/worker.hpp>

#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

struct rlay_value {
    rlay::value v;
};

// rlay_value_kind casts rlay::value::kind to rlay_kind: the two enums must list the kinds alike.
#define RLAY_SAME_KIND(c, cpp) static_assert(static_cast<int>(c) == static_cast<int>(rlay::value::kind::cpp), #c)
RLAY_SAME_KIND(RLAY_NIL, nil);
RLAY_SAME_KIND(RLAY_BOOL, boolean);
RLAY_SAME_KIND(RLAY_INT, integer);
RLAY_SAME_KIND(RLAY_BIG_INT, big_integer);
RLAY_SAME_KIND(RLAY_FLOAT, floating);
RLAY_SAME_KIND(RLAY_STR, str);
RLAY_SAME_KIND(RLAY_BIN, bin);
RLAY_SAME_KIND(RLAY_LIST, list);
RLAY_SAME_KIND(RLAY_MAP, map);
RLAY_SAME_KIND(RLAY_TUPLE, tuple);
RLAY_SAME_KIND(RLAY_NDARRAY, ndarray);
RLAY_SAME_KIND(RLAY_SCALAR, scalar);
RLAY_SAME_KIND(RLAY_GRAPH, graph);
#undef RLAY_SAME_KIND
struct rlay_space {
    rlay::space s;
};
struct rlay_config {
    rlay::config c;
};
struct rlay_command {
    rlay_command_kind kind;
    rlay_value action, seed, options;
};
struct rlay_command_worker {
    std::unique_ptr<rlay::command_worker> worker;
};
struct rlay_push_worker {
    std::unique_ptr<rlay::push_worker> game;
};

namespace {

thread_local std::string last_error;
thread_local std::optional<std::pair<std::string, std::string>> pending_failure;  // rlay_env_fail

rlay_status fail(rlay_status status, const std::string& message) {
    last_error = message;
    return status;
}

rlay_status status_of(rlay::errc code) {
    switch (code) {
        case rlay::errc::bad_message: case rlay::errc::version: return RLAY_ERR_BAD_MESSAGE;
        case rlay::errc::type_mismatch: return RLAY_ERR_TYPE;
        case rlay::errc::key_not_found: return RLAY_ERR_NOT_FOUND;
        case rlay::errc::invalid_space: return RLAY_ERR_SPACE;
        case rlay::errc::registration: return RLAY_ERR_REGISTRATION;
        case rlay::errc::timeout: return RLAY_ERR_TIMEOUT;
        case rlay::errc::closed: return RLAY_ERR_CLOSED;
        case rlay::errc::key_file: return RLAY_ERR_KEY_FILE;
        case rlay::errc::transport: return RLAY_ERR_TRANSPORT;
    }
    return RLAY_ERR_INTERNAL;
}

/// Run `body` and turn whatever it throws into a status and a message.
template <class Body>
rlay_status guard(Body body) noexcept {
    try {
        last_error.clear();
        body();
        return RLAY_OK;
    } catch (const rlay::error& e) {
        return fail(status_of(e.code()), e.what());
    } catch (const rlay::usage_error& e) {
        return fail(RLAY_ERR_USAGE, e.what());
    } catch (const std::out_of_range& e) {
        return fail(RLAY_ERR_OUT_OF_RANGE, e.what());
    } catch (const std::invalid_argument& e) {
        return fail(RLAY_ERR_INVALID_ARGUMENT, e.what());
    } catch (const zmq::error_t& e) {
        return fail(RLAY_ERR_TRANSPORT, e.what());
    } catch (const std::bad_alloc&) {
        return fail(RLAY_ERR_INTERNAL, "out of memory");
    } catch (const std::exception& e) {
        return fail(RLAY_ERR_INTERNAL, e.what());
    } catch (...) {
        return fail(RLAY_ERR_INTERNAL, "an unknown exception");
    }
}

template <class T>
T& need(T* p, const char* what) {
    if (!p) throw std::invalid_argument(std::string(what) + " is NULL");
    return *p;
}

const char* need_text(const char* s, const char* what) {
    if (!s) throw std::invalid_argument(std::string(what) + " is NULL");
    return s;
}

/// A borrowed C handle for a value that lives inside another one.
const rlay_value* handle(const rlay::value& v) { return reinterpret_cast<const rlay_value*>(&v); }

rlay_value* make(rlay::value v) { return new rlay_value{std::move(v)}; }

template <class Out>
void put(Out** out, Out* made) {
    if (!out) {
        delete made;
        throw std::invalid_argument("the out pointer is NULL");
    }
    *out = made;
}

rlay::dtype dtype_of(const char* text) { return rlay::dtype::parse(text ? text : "<f4"); }

rlay::ndarray::shape_type shape_of(const size_t* shape, size_t ndim) {
    if (ndim && !shape) throw std::invalid_argument("shape is NULL");
    return rlay::ndarray::shape_type(shape, shape + ndim);
}

/// Take over the values a callback handed back.
struct owned {
    rlay_value* p = nullptr;
    ~owned() { rlay_value_free(p); }
};

rlay::env_error callback_failure(const char* what, int rc) {
    if (pending_failure) {
        auto failure = std::move(*pending_failure);
        pending_failure.reset();
        return rlay::env_error(failure.first.empty() ? "RuntimeError" : failure.first, failure.second);
    }
    return rlay::env_error("RuntimeError", std::string("the ") + what + " callback returned " + std::to_string(rc));
}

/// An env whose code is C callbacks.
class c_env : public rlay::env {
public:
    c_env(const rlay_env_callbacks& callbacks, void* user, size_t index) : cb_(callbacks), user_(user), index_(index) {}

    rlay::reset_result reset(const rlay::seed& seed, const rlay::value& options) override {
        owned obs, info;
        pending_failure.reset();
        int rc = cb_.reset(user_, index_, handle(seed.as_value()), handle(options), &obs.p, &info.p);
        if (rc != 0) throw callback_failure("reset", rc);
        if (!obs.p) throw rlay::env_error("RuntimeError", "the reset callback set no observation");
        return {std::move(obs.p->v), info.p ? std::move(info.p->v) : rlay::value::map()};
    }

    rlay::step_result step(const rlay::value& action) override {
        owned obs, info;
        double reward = 0.0;
        int terminated = 0, truncated = 0;
        pending_failure.reset();
        int rc = cb_.step(user_, index_, handle(action), &obs.p, &reward, &terminated, &truncated, &info.p);
        if (rc != 0) throw callback_failure("step", rc);
        if (!obs.p) throw rlay::env_error("RuntimeError", "the step callback set no observation");
        return {std::move(obs.p->v), reward, terminated != 0, truncated != 0, info.p ? std::move(info.p->v) : rlay::value::map()};
    }

    rlay::value call(std::string_view name, const rlay::value& args, const rlay::value& kwargs) override {
        if (!cb_.call) return rlay::env::call(name, args, kwargs);
        owned result;
        std::string n(name);
        pending_failure.reset();
        int rc = cb_.call(user_, index_, n.c_str(), handle(args), handle(kwargs), &result.p);
        if (rc != 0) throw callback_failure("call", rc);
        return result.p ? std::move(result.p->v) : rlay::value();
    }

    void set_attr(std::string_view name, const rlay::value& v) override {
        if (!cb_.set_attr) return rlay::env::set_attr(name, v);
        std::string n(name);
        pending_failure.reset();
        int rc = cb_.set_attr(user_, index_, n.c_str(), handle(v));
        if (rc != 0) throw callback_failure("set_attr", rc);
    }

private:
    rlay_env_callbacks cb_;
    void* user_;
    size_t index_;
};

rlay_command* command_handle(const rlay::command& c) {
    auto* out = new rlay_command{RLAY_COMMAND_CLOSE, {}, {}, {}};
    out->kind = c.kind == rlay::command_kind::reset ? RLAY_COMMAND_RESET : c.kind == rlay::command_kind::action ? RLAY_COMMAND_ACTION : RLAY_COMMAND_CLOSE;
    out->action.v = c.action;
    out->seed.v = c.seed.as_value();
    out->options.v = c.options;
    return out;
}

std::chrono::duration<double> seconds(double s) { return std::chrono::duration<double>(s > 0 ? s : 0.0); }

}  // namespace

extern "C" {

// ---- status, errors, versions, logging -----------------------------------------------------

const char* rlay_last_error(void) { return last_error.c_str(); }

const char* rlay_status_name(rlay_status status) {
    switch (status) {
        case RLAY_OK: return "RLAY_OK";
        case RLAY_ERR_INVALID_ARGUMENT: return "RLAY_ERR_INVALID_ARGUMENT";
        case RLAY_ERR_TYPE: return "RLAY_ERR_TYPE";
        case RLAY_ERR_NOT_FOUND: return "RLAY_ERR_NOT_FOUND";
        case RLAY_ERR_OUT_OF_RANGE: return "RLAY_ERR_OUT_OF_RANGE";
        case RLAY_ERR_BAD_MESSAGE: return "RLAY_ERR_BAD_MESSAGE";
        case RLAY_ERR_SPACE: return "RLAY_ERR_SPACE";
        case RLAY_ERR_REGISTRATION: return "RLAY_ERR_REGISTRATION";
        case RLAY_ERR_TIMEOUT: return "RLAY_ERR_TIMEOUT";
        case RLAY_ERR_CLOSED: return "RLAY_ERR_CLOSED";
        case RLAY_ERR_KEY_FILE: return "RLAY_ERR_KEY_FILE";
        case RLAY_ERR_TRANSPORT: return "RLAY_ERR_TRANSPORT";
        case RLAY_ERR_USAGE: return "RLAY_ERR_USAGE";
        case RLAY_ERR_INTERNAL: return "RLAY_ERR_INTERNAL";
    }
    return "RLAY_ERR_UNKNOWN";
}

const char* rlay_version(void) { return "0.1.0"; }

int rlay_protocol_version(void) { return rlay::protocol_version; }

void rlay_set_log_handler(rlay_log_fn fn, void* user) {
    if (!fn) {
        rlay::set_log_handler({});
        return;
    }
    rlay::set_log_handler([fn, user](rlay::log_level level, std::string_view line) {
        std::string text(line);
        fn(user, static_cast<rlay_log_level>(level), text.c_str());
    });
}

// ---- values --------------------------------------------------------------------------------

rlay_status rlay_value_new_nil(rlay_value** out) { return guard([&] { put(out, make(rlay::value())); }); }
rlay_status rlay_value_new_bool(int b, rlay_value** out) { return guard([&] { put(out, make(rlay::value(b != 0))); }); }
rlay_status rlay_value_new_int(int64_t i, rlay_value** out) { return guard([&] { put(out, make(rlay::value(i))); }); }
rlay_status rlay_value_new_uint(uint64_t u, rlay_value** out) { return guard([&] { put(out, make(rlay::value(u))); }); }
rlay_status rlay_value_new_float(double f, rlay_value** out) { return guard([&] { put(out, make(rlay::value(f))); }); }

rlay_status rlay_value_new_str(const char* utf8, size_t len, rlay_value** out) {
    return guard([&] {
        if (len && !utf8) throw std::invalid_argument("utf8 is NULL");
        std::string s(utf8 ? utf8 : "", len);
        if (!rlay::detail::msgpack::valid_utf8(s)) throw std::invalid_argument("the str is not valid UTF-8");
        put(out, make(rlay::value(std::move(s))));
    });
}

rlay_status rlay_value_new_bytes(const void* data, size_t len, rlay_value** out) {
    return guard([&] {
        if (len && !data) throw std::invalid_argument("data is NULL");
        put(out, make(rlay::value::bin(data ? data : "", len)));
    });
}

rlay_status rlay_value_new_big_int(const uint8_t* be_bytes, size_t len, rlay_value** out) {
    return guard([&] {
        if (!be_bytes) throw std::invalid_argument("be_bytes is NULL");
        put(out, make(rlay::value::big_integer(std::string_view(reinterpret_cast<const char*>(be_bytes), len))));
    });
}

rlay_status rlay_value_new_ndarray(const char* dtype, const size_t* shape, size_t ndim, const void* data, size_t nbytes, rlay_value** out) {
    return guard([&] {
        if (nbytes && !data) throw std::invalid_argument("data is NULL");
        rlay::ndarray a = rlay::ndarray::copy_of(rlay::dtype::parse(need_text(dtype, "dtype")), shape_of(shape, ndim), data, nbytes);
        rlay::detail::msgpack::reader::check_code_points(a);
        put(out, make(rlay::value(std::move(a))));
    });
}

rlay_status rlay_value_new_scalar(const char* dtype, const void* data, size_t nbytes, rlay_value** out) {
    return guard([&] {
        if (nbytes && !data) throw std::invalid_argument("data is NULL");
        rlay::ndarray a = rlay::ndarray::copy_of(rlay::dtype::parse(need_text(dtype, "dtype")), {}, data, nbytes);
        rlay::detail::msgpack::reader::check_code_points(a);
        put(out, make(rlay::value::scalar(std::move(a))));
    });
}

rlay_status rlay_value_new_list(rlay_value** out) { return guard([&] { put(out, make(rlay::value::list())); }); }
rlay_status rlay_value_new_tuple(rlay_value** out) { return guard([&] { put(out, make(rlay::value::tuple())); }); }
rlay_status rlay_value_new_map(rlay_value** out) { return guard([&] { put(out, make(rlay::value::map())); }); }

rlay_status rlay_value_new_graph(const rlay_value* nodes, const rlay_value* edges, const rlay_value* edge_links, rlay_value** out) {
    return guard([&] {
        rlay::value e = edges ? edges->v : rlay::value(), l = edge_links ? edge_links->v : rlay::value();
        put(out, make(rlay::value::graph(need(nodes, "nodes").v, std::move(e), std::move(l))));
    });
}

rlay_status rlay_value_append(rlay_value* list_or_tuple, const rlay_value* item) {
    return guard([&] {
        rlay::value& target = need(list_or_tuple, "list_or_tuple").v;
        if (!target.is_list() && !target.is_tuple()) throw rlay::error(rlay::errc::type_mismatch, "append needs a list or tuple");
        target.push_back(need(item, "item").v);
    });
}

rlay_status rlay_value_set(rlay_value* map, const char* key, const rlay_value* item) {
    return guard([&] {
        rlay::value& target = need(map, "map").v;
        if (!target.is_map()) throw rlay::error(rlay::errc::type_mismatch, "set needs a map");
        target[std::string_view(need_text(key, "key"))] = need(item, "item").v;
    });
}

rlay_status rlay_value_copy(const rlay_value* v, rlay_value** out) { return guard([&] { put(out, make(need(v, "v").v)); }); }

void rlay_value_free(rlay_value* v) { delete v; }

rlay_kind rlay_value_kind(const rlay_value* v) { return v ? static_cast<rlay_kind>(v->v.type()) : RLAY_NIL; }

rlay_status rlay_value_get_bool(const rlay_value* v, int* out) {
    return guard([&] { need(out, "out") = need(v, "v").v.as_bool() ? 1 : 0; });
}
rlay_status rlay_value_get_int(const rlay_value* v, int64_t* out) { return guard([&] { need(out, "out") = need(v, "v").v.as_int(); }); }
rlay_status rlay_value_get_uint(const rlay_value* v, uint64_t* out) { return guard([&] { need(out, "out") = need(v, "v").v.as_uint(); }); }
rlay_status rlay_value_get_float(const rlay_value* v, double* out) { return guard([&] { need(out, "out") = need(v, "v").v.as_float(); }); }
rlay_status rlay_value_to_double(const rlay_value* v, double* out) { return guard([&] { need(out, "out") = need(v, "v").v.to_double(); }); }

rlay_status rlay_value_get_str(const rlay_value* v, const char** utf8, size_t* len) {
    return guard([&] {
        const std::string& s = need(v, "v").v.as_str();
        if (utf8) *utf8 = s.c_str();
        if (len) *len = s.size();
    });
}

rlay_status rlay_value_get_bytes(const rlay_value* v, const void** data, size_t* len) {
    return guard([&] {
        const std::string& s = need(v, "v").v.as_bin();
        if (data) *data = s.data();
        if (len) *len = s.size();
    });
}

rlay_status rlay_value_get_big_int(const rlay_value* v, uint8_t* buf, size_t cap, size_t* len) {
    return guard([&] {
        const rlay::value& x = need(v, "v").v;
        if (!x.is_int() && !x.is_big_int()) throw rlay::error(rlay::errc::type_mismatch, std::string("expected an integer, got ") + rlay::value::kind_name(x.type()));
        std::string bytes = rlay::seed(x).big_endian_bytes();
        if (len) *len = bytes.size();
        if (bytes.size() > cap) throw std::out_of_range("the integer needs " + std::to_string(bytes.size()) + " bytes");
        if (!buf) throw std::invalid_argument("buf is NULL");
        std::memcpy(buf, bytes.data(), bytes.size());
    });
}

rlay_status rlay_value_get_ndarray(const rlay_value* v, char dtype[8], size_t* ndim, const size_t** shape, const void** data, size_t* nbytes) {
    return guard([&] {
        const rlay::value& x = need(v, "v").v;
        const rlay::ndarray& a = x.is_scalar() ? x.as_scalar() : x.as_ndarray();
        if (dtype) {
            std::string text = a.dtype().str();
            std::memcpy(dtype, text.c_str(), text.size() + 1);
        }
        if (ndim) *ndim = a.ndim();
        if (shape) *shape = a.shape().data();
        if (data) *data = a.bytes();
        if (nbytes) *nbytes = a.nbytes();
    });
}

rlay_status rlay_value_len(const rlay_value* v, size_t* out) { return guard([&] { need(out, "out") = need(v, "v").v.size(); }); }

rlay_status rlay_value_item(const rlay_value* v, size_t i, const rlay_value** item) {
    return guard([&] { need(item, "item") = handle(need(v, "v").v[i]); });
}

rlay_status rlay_value_find(const rlay_value* map, const char* key, const rlay_value** item) {
    return guard([&] { need(item, "item") = handle(need(map, "map").v.at(need_text(key, "key"))); });
}

rlay_status rlay_value_entry(const rlay_value* map, size_t i, const rlay_value** key, const rlay_value** item) {
    return guard([&] {
        const auto& entries = need(map, "map").v.as_map();
        if (i >= entries.size()) throw std::out_of_range("entry " + std::to_string(i) + " of a map of " + std::to_string(entries.size()));
        if (key) *key = handle(entries[i].first);
        if (item) *item = handle(entries[i].second);
    });
}

// ---- spaces --------------------------------------------------------------------------------

rlay_status rlay_space_box(double low, double high, const size_t* shape, size_t ndim, const char* dtype, rlay_space** out) {
    return guard([&] { put(out, new rlay_space{rlay::spaces::box(low, high, shape_of(shape, ndim), dtype_of(dtype))}); });
}

rlay_status rlay_space_box_bounds(const double* low, const double* high, const size_t* shape, size_t ndim, const char* dtype, rlay_space** out) {
    return guard([&] {
        auto s = shape_of(shape, ndim);
        size_t n = 1;
        for (size_t d : s) n *= d;
        if (n && (!low || !high)) throw std::invalid_argument("low or high is NULL");
        put(out, new rlay_space{rlay::spaces::box(std::vector<double>(low, low + n), std::vector<double>(high, high + n), s, dtype_of(dtype))});
    });
}

rlay_status rlay_space_discrete(int64_t n, int64_t start, rlay_space** out) {
    return guard([&] { put(out, new rlay_space{rlay::spaces::discrete(n, start)}); });
}

rlay_status rlay_space_multi_discrete(const int64_t* nvec, size_t count, rlay_space** out) {
    return guard([&] {
        if (count && !nvec) throw std::invalid_argument("nvec is NULL");
        put(out, new rlay_space{rlay::spaces::multi_discrete(std::vector<std::int64_t>(nvec, nvec + count))});
    });
}

rlay_status rlay_space_multi_binary(size_t n, rlay_space** out) { return guard([&] { put(out, new rlay_space{rlay::spaces::multi_binary(n)}); }); }

rlay_status rlay_space_text(int64_t max_length, int64_t min_length, const char* charset, rlay_space** out) {
    return guard([&] {
        std::string chars = charset ? charset : rlay::spaces::alphanumeric;
        if (!rlay::detail::msgpack::valid_utf8(chars)) throw std::invalid_argument("the charset is not valid UTF-8");
        put(out, new rlay_space{rlay::spaces::text(max_length, min_length, chars)});
    });
}

rlay_status rlay_space_tuple(rlay_space** out) { return guard([&] { put(out, new rlay_space{rlay::spaces::tuple({})}); }); }

rlay_status rlay_space_tuple_append(rlay_space* tuple, const rlay_space* item) {
    return guard([&] {
        rlay::space& t = need(tuple, "tuple").s;
        if (t.type() != rlay::space::kind::tuple) throw rlay::error(rlay::errc::invalid_space, "tuple_append needs a Tuple space");
        std::vector<rlay::space> items;
        for (const auto& e : t.entries()) items.push_back(e.second);
        items.push_back(need(item, "item").s);
        t = rlay::spaces::tuple(std::move(items));
    });
}

rlay_status rlay_space_dict(rlay_space** out) { return guard([&] { put(out, new rlay_space{rlay::spaces::dict({})}); }); }

rlay_status rlay_space_dict_append(rlay_space* dict, const char* key, const rlay_space* item) {
    return guard([&] {
        rlay::space& d = need(dict, "dict").s;
        if (d.type() != rlay::space::kind::dict) throw rlay::error(rlay::errc::invalid_space, "dict_append needs a Dict space");
        auto entries = d.entries();
        entries.emplace_back(need_text(key, "key"), need(item, "item").s);
        d = rlay::spaces::dict(std::move(entries));
    });
}

rlay_status rlay_space_graph(const rlay_space* node_space, const rlay_space* edge_space, rlay_space** out) {
    return guard([&] {
        const rlay::space& node = need(node_space, "node_space").s;
        put(out, new rlay_space{edge_space ? rlay::spaces::graph(node, edge_space->s) : rlay::spaces::graph(node)});
    });
}

rlay_status rlay_space_sequence(const rlay_space* feature_space, int stack, rlay_space** out) {
    return guard([&] { put(out, new rlay_space{rlay::spaces::sequence(need(feature_space, "feature_space").s, stack != 0)}); });
}

rlay_status rlay_space_one_of(const rlay_space* first, rlay_space** out) {
    return guard([&] { put(out, new rlay_space{rlay::spaces::one_of({need(first, "first").s})}); });
}

rlay_status rlay_space_one_of_append(rlay_space* one_of, const rlay_space* choice) {
    return guard([&] {
        rlay::space& o = need(one_of, "one_of").s;
        if (o.type() != rlay::space::kind::one_of) throw rlay::error(rlay::errc::invalid_space, "one_of_append needs a OneOf space");
        std::vector<rlay::space> choices;
        for (const auto& e : o.entries()) choices.push_back(e.second);
        choices.push_back(need(choice, "choice").s);
        o = rlay::spaces::one_of(std::move(choices));
    });
}

void rlay_space_free(rlay_space* space) { delete space; }

// ---- config --------------------------------------------------------------------------------

rlay_status rlay_config_new(const char* broker, const char* env_id, const rlay_space* observation_space, const rlay_space* action_space,
                            rlay_config** out) {
    return guard([&] {
        auto cfg = std::make_unique<rlay_config>();
        cfg->c.broker = need_text(broker, "broker");
        cfg->c.env_id = need_text(env_id, "env_id");
        cfg->c.observation_space = need(observation_space, "observation_space").s;
        cfg->c.action_space = need(action_space, "action_space").s;
        put(out, cfg.release());
    });
}

rlay_status rlay_config_set_metadata(rlay_config* cfg, const rlay_value* metadata) {
    return guard([&] {
        const rlay::value& m = need(metadata, "metadata").v;
        if (!m.is_map()) throw rlay::error(rlay::errc::type_mismatch, "metadata must be a map");
        need(cfg, "cfg").c.metadata = m;
    });
}

rlay_status rlay_config_set_render_mode(rlay_config* cfg, const char* render_mode) {
    return guard([&] { need(cfg, "cfg").c.render_mode = render_mode ? rlay::value(render_mode) : rlay::value(); });
}

rlay_status rlay_config_set_rank(rlay_config* cfg, int64_t rank) { return guard([&] { need(cfg, "cfg").c.rank = rank; }); }

rlay_status rlay_config_set_host(rlay_config* cfg, const char* host) {
    return guard([&] { need(cfg, "cfg").c.host = need_text(host, "host"); });
}

rlay_status rlay_config_set_register_timeout(rlay_config* cfg, double seconds_) {
    return guard([&] {
        if (!(seconds_ > 0)) throw std::invalid_argument("the register timeout must be positive");
        need(cfg, "cfg").c.register_timeout = std::chrono::duration<double>(seconds_);
    });
}

rlay_status rlay_config_set_curve_keys(rlay_config* cfg, const char* public_key, const char* secret_key, const char* server_key) {
    return guard([&] {
        rlay::curve_keys keys{need_text(public_key, "public_key"), need_text(secret_key, "secret_key"), need_text(server_key, "server_key")};
        rlay::curve_keys::check_z85(keys.public_key, "public_key");
        rlay::curve_keys::check_z85(keys.secret_key, "secret_key");
        rlay::curve_keys::check_z85(keys.server_key, "server_key");
        need(cfg, "cfg").c.curve = keys;
    });
}

rlay_status rlay_config_set_curve_dir(rlay_config* cfg, const char* dir) {
    return guard([&] { need(cfg, "cfg").c.curve = rlay::curve_keys::from_dir(need_text(dir, "dir")); });
}

void rlay_config_free(rlay_config* cfg) { delete cfg; }

// ---- command worker ------------------------------------------------------------------------

void rlay_env_fail(const char* type, const char* message) {
    pending_failure = std::make_pair(std::string(type ? type : "RuntimeError"), std::string(message ? message : ""));
}

rlay_status rlay_command_worker_new(const rlay_config* cfg, size_t num_envs, const rlay_env_callbacks* callbacks, void* user,
                                    rlay_command_worker** out) {
    return guard([&] {
        const rlay_env_callbacks& cb = need(callbacks, "callbacks");
        if (!cb.reset || !cb.step) throw std::invalid_argument("the reset and step callbacks are required");
        std::vector<std::unique_ptr<rlay::env>> envs;
        for (size_t i = 0; i < num_envs; ++i) envs.push_back(std::make_unique<c_env>(cb, user, i));
        auto w = std::make_unique<rlay_command_worker>();
        w->worker = std::make_unique<rlay::command_worker>(need(cfg, "cfg").c, std::move(envs));
        put(out, w.release());
    });
}

rlay_status rlay_command_worker_run(rlay_command_worker* worker) { return guard([&] { need(worker, "worker").worker->run(); }); }

void rlay_command_worker_stop(rlay_command_worker* worker) {
    if (worker && worker->worker) worker->worker->stop();
}

void rlay_command_worker_free(rlay_command_worker* worker) { delete worker; }

// ---- push worker ---------------------------------------------------------------------------

rlay_status rlay_push_worker_new(const rlay_config* cfg, int num_agents, rlay_push_worker** out) {
    return guard([&] {
        auto g = std::make_unique<rlay_push_worker>();
        g->game = std::make_unique<rlay::push_worker>(need(cfg, "cfg").c, num_agents);
        put(out, g.release());
    });
}

rlay_status rlay_push_submit(rlay_push_worker* game, int agent) { return guard([&] { need(game, "game").game->submit(agent); }); }

rlay_status rlay_push_submit_reset(rlay_push_worker* game, int agent, const rlay_value* obs, const rlay_value* info) {
    return guard([&] { need(game, "game").game->submit_reset(agent, need(obs, "obs").v, info ? info->v : rlay::value::map()); });
}

rlay_status rlay_push_submit_step(rlay_push_worker* game, int agent, const rlay_value* obs, double reward, int terminated, int truncated,
                                  const rlay_value* info) {
    return guard([&] {
        need(game, "game").game->submit_step(agent, need(obs, "obs").v, reward, terminated != 0, truncated != 0, info ? info->v : rlay::value::map());
    });
}

rlay_status rlay_push_poll(rlay_push_worker* game, int agent, double timeout_s, rlay_command** out) {
    return guard([&] {
        need(out, "out") = nullptr;
        if (auto c = need(game, "game").game->poll(agent, seconds(timeout_s))) *out = command_handle(*c);
    });
}

rlay_status rlay_push_wait(rlay_push_worker* game, int agent, double timeout_s, rlay_command** out) {
    return guard([&] {
        need(out, "out");
        auto limit = timeout_s < 0 ? std::nullopt : std::optional<std::chrono::duration<double>>(seconds(timeout_s));
        *out = command_handle(need(game, "game").game->wait(agent, limit));
    });
}

rlay_status rlay_push_decide(rlay_push_worker* game, int agent, double timeout_s, rlay_command** out) {
    return guard([&] {
        need(out, "out");
        auto limit = timeout_s < 0 ? std::nullopt : std::optional<std::chrono::duration<double>>(seconds(timeout_s));
        *out = command_handle(need(game, "game").game->decide(agent, limit));
    });
}

rlay_status rlay_push_commands(rlay_push_worker* game, double timeout_s, rlay_command** commands, size_t* count) {
    return guard([&] {
        rlay::push_worker& g = *need(game, "game").game;
        if (!commands) throw std::invalid_argument("commands is NULL");
        auto got = g.commands(seconds(timeout_s));
        // made first, handed out after: an out-of-memory leaves the array untouched, and leaks nothing
        std::vector<std::unique_ptr<rlay_command>> made(static_cast<std::size_t>(g.num_agents()));
        for (const auto& [j, c] : got) made[static_cast<std::size_t>(j)].reset(command_handle(c));
        for (int j = 0; j < g.num_agents(); ++j) commands[j] = made[static_cast<std::size_t>(j)].release();
        if (count) *count = got.size();
    });
}

rlay_status rlay_push_close(rlay_push_worker* game) { return guard([&] { need(game, "game").game->close(); }); }

void rlay_push_worker_free(rlay_push_worker* game) { delete game; }

rlay_command_kind rlay_command_kind_of(const rlay_command* command) { return command ? command->kind : RLAY_COMMAND_CLOSE; }
const rlay_value* rlay_command_action(const rlay_command* command) { return command ? &command->action : nullptr; }
const rlay_value* rlay_command_seed(const rlay_command* command) { return command ? &command->seed : nullptr; }
const rlay_value* rlay_command_options(const rlay_command* command) { return command ? &command->options : nullptr; }
void rlay_command_free(rlay_command* command) { delete command; }

}  // extern "C"
