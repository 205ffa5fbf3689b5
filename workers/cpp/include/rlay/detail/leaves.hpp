// rlay/detail/leaves.hpp: observations into leaf descriptors and array frames, action leaves
// into values (3.8, 4.2, 5.10).
#pragma once

#include <rlay/detail/wire.hpp>
#include <rlay/error.hpp>
#include <rlay/spaces.hpp>
#include <rlay/value.hpp>

#include <zmq.hpp>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <unistd.h>
#endif

namespace rlay {
namespace detail {

// -- observations ------------------------------------------------------------------------

/// numpy's `np.asarray(v)` for the values an env returns: an ndarray as it is, a typed scalar
/// as a 0-d array, a bool/int/float as a 0-d array of bool/int64/float64, and (nested) lists
/// or tuples of those as an array of the common kind. Anything else is a TypeError report.
inline ndarray as_array(const value& v) {
    using k = value::kind;
    switch (v.type()) {
        case k::ndarray: return v.as_ndarray();
        case k::scalar: return v.as_scalar();
        case k::boolean: case k::integer: case k::floating: case k::list: case k::tuple: break;
        default:
            throw env_error("TypeError", std::string("an observation leaf must be an array or a number, got ") + value::kind_name(v.type()) +
                                             " " + v.repr(40));
    }
    // the shape: nested lists, rectangular
    ndarray::shape_type shape;
    const value* probe = &v;
    while (probe->is_list() || probe->is_tuple()) {
        shape.push_back(probe->size());
        if (probe->size() == 0) break;
        probe = &(*probe)[0];
    }
    std::vector<const value*> items;
    bool any_float = false, any_int = false, any_unsigned_big = false, any_negative = false;
    std::vector<std::pair<const value*, std::size_t>> todo{{&v, 0}};
    while (!todo.empty()) {
        auto [at, depth] = todo.back();
        todo.pop_back();
        if (at->is_list() || at->is_tuple()) {
            if (depth >= shape.size() || at->size() != shape[depth]) {
                throw env_error("ValueError", "setting an array element with a sequence: the observation " + v.repr(40) +
                                                  " has an inhomogeneous shape");
            }
            for (std::size_t i = at->size(); i-- > 0;) todo.push_back({&(*at)[i], depth + 1});
            continue;
        }
        if (depth != shape.size()) {
            throw env_error("ValueError", "setting an array element with a sequence: the observation " + v.repr(40) +
                                              " has an inhomogeneous shape");
        }
        switch (at->type()) {
            case k::boolean: break;
            case k::integer:
                any_int = true;
                if (at->is_negative()) any_negative = true;
                else if (at->as_uint() > static_cast<std::uint64_t>(INT64_MAX)) any_unsigned_big = true;
                break;
            case k::floating: any_float = true; break;
            default:
                throw env_error("TypeError", std::string("an observation leaf must hold numbers, not ") + value::kind_name(at->type()));
        }
        items.push_back(at);
    }
    if (any_unsigned_big && any_negative && !any_float) {
        throw env_error("TypeError", "an observation mixes negative ints with ints beyond int64");
    }
    dtype dt = any_float ? dtype::float64() : any_unsigned_big ? dtype::uint64() : any_int ? dtype::int64() : dtype::boolean();
    if (items.empty()) dt = dtype::float64();  // np.asarray([]) is float64
    ndarray a(dt, shape);
    unsigned char* out = a.mutable_bytes();
    for (std::size_t i = 0; i < items.size(); ++i) {
        const value& item = *items[i];
        number n;
        if (item.is_bool()) { n.kind = dtype::kind::boolean; n.i = item.as_bool(); }
        else if (item.is_float()) { n.kind = dtype::kind::floating; n.re = item.as_float(); }
        else if (item.is_negative()) { n.kind = dtype::kind::signed_int; n.i = item.as_int(); }
        else { n.kind = dtype::kind::unsigned_int; n.u = item.as_uint(); }
        store_number(dt, out + i * dt.itemsize(), n);
    }
    return a;
}

/// One env's observation split into its leaves (4.2), each checked against its leaf space.
struct obs_leaves {
    std::vector<ndarray> arrays;     // per leaf: the env's array (any dtype that casts same_kind)
    std::vector<std::string> texts;  // per leaf: the env's string (Text leaves)
};

inline void collect_leaves(const space& s, const value& obs, std::vector<const value*>& out) {
    if (s.type() == space::kind::dict) {
        if (!obs.is_map()) throw env_error("TypeError", "an observation of " + s.repr() + " must be a map, got " + obs.repr(40));
        for (const auto& [key, sub] : s.entries()) {
            const value* item = obs.find(key);
            if (!item) throw env_error("KeyError", "'" + key + "'");
            collect_leaves(sub, *item, out);
        }
    } else if (s.type() == space::kind::tuple) {
        if (!obs.is_tuple() && !obs.is_list()) throw env_error("TypeError", "an observation of " + s.repr() + " must be a tuple, got " + obs.repr(40));
        if (obs.size() != s.entries().size()) {
            throw env_error("ValueError", "an observation of " + s.repr() + " needs " + std::to_string(s.entries().size()) +
                                              " items, got " + std::to_string(obs.size()));
        }
        for (std::size_t i = 0; i < obs.size(); ++i) collect_leaves(s.entries()[i].second, obs[i], out);
    } else {
        out.push_back(&obs);
    }
}

/// Split and check one env's observation: each array leaf has the leaf's shape and a dtype
/// that numpy casts to the leaf's with the same_kind rule (a TypeError otherwise, 5.10).
inline obs_leaves check_observation(const space& s, const std::vector<leaf_info>& leaves, const value& obs) {
    std::vector<const value*> items;
    collect_leaves(s, obs, items);
    obs_leaves out;
    out.arrays.resize(leaves.size());
    out.texts.resize(leaves.size());
    for (std::size_t n = 0; n < leaves.size(); ++n) {
        const leaf_info& leaf = leaves[n];
        if (leaf.text) {
            if (!items[n]->is_str()) throw env_error("TypeError", "a Text observation must be a str, got " + items[n]->repr(40));
            out.texts[n] = items[n]->as_str();
            continue;
        }
        ndarray a = as_array(*items[n]);
        if (a.shape() != leaf.row_shape) {
            throw env_error("ValueError", "an observation of shape " + ndarray::shape_text(a.shape()) + " does not fit " + leaf.space.repr());
        }
        if (!can_cast_same_kind(a.dtype(), leaf.dtype)) {
            throw env_error("TypeError", "Cannot cast array data from " + a.dtype().numpy_repr() + " to " + leaf.dtype.numpy_repr() +
                                             " according to the rule 'same_kind'");
        }
        out.arrays[n] = std::move(a);
    }
    return out;
}

/// Where one env's row goes in a trainer's segment (3.9): the segment's open file and the offset.
struct shm_row {
    int fd = -1;
    std::uint64_t offset = 0;
};

/// Rows the trainer's shared memory takes instead of frames: leaf index -> one target per env.
using placement = std::map<std::size_t, std::vector<shm_row>>;

/// Write `n` bytes at `offset` of a segment's file with pwrite, not through a mapping: past
/// the end of a file that shrank after check 3 a pwrite extends it, and on a full tmpfs it
/// fails (false), where a write through a mapping is a SIGBUS that kills the game.
inline bool write_row(int fd, std::uint64_t offset, const unsigned char* bytes, std::size_t n) {
#if defined(__linux__)
    while (n > 0) {
        ssize_t wrote = ::pwrite(fd, bytes, n, static_cast<off_t>(offset));
        if (wrote < 0 && errno == EINTR) continue;
        if (wrote <= 0) return false;
        bytes += wrote;
        n -= static_cast<std::size_t>(wrote);
        offset += static_cast<std::uint64_t>(wrote);
    }
    return true;
#else
    (void)fd; (void)offset; (void)bytes;
    return n == 0;
#endif
}

/// A part's observations on the wire: descriptors for the body, the array frames, and the
/// shared-memory writes to make once the reply is sure (3.9).
struct obs_encoding {
    value descriptors = value::list();
    message frames;
    struct write { ndarray rows; dtype to; shm_row target; };
    std::vector<write> writes;

    /// Write the rows placed in shared memory (cast to the leaf's dtype); false if one failed.
    bool write_shared_memory() const {
        std::vector<unsigned char> cast;
        for (const write& w : writes) {
            const unsigned char* bytes = w.rows.bytes();
            std::size_t n = w.rows.nbytes();
            if (w.rows.dtype() != w.to) {
                cast.resize(w.rows.size() * w.to.itemsize());
                convert_items(w.rows.dtype(), w.rows.bytes(), w.to, cast.data(), w.rows.size());
                bytes = cast.data();
                n = cast.size();
            }
            if (!write_row(w.target.fd, w.target.offset, bytes, n)) return false;
        }
        return true;
    }
};

inline value shape_list(std::size_t k, const ndarray::shape_type& row_shape) {
    value list = value::list({k});
    for (std::size_t d : row_shape) list.push_back(d);
    return list;
}

/// Encode the checked observations of the k envs of a part (3.8): a Box leaf of at least
/// 64 KiB per env row by row (each env's own array, zero-copy when it has the leaf's dtype),
/// a leaf placed in shared memory with no frame, every other array leaf as one frame.
inline obs_encoding encode_observations(const std::vector<leaf_info>& leaves, const std::vector<obs_leaves>& envs,
                                        const placement* placed) {
    obs_encoding out;
    std::size_t k = envs.size();
    for (std::size_t n = 0; n < leaves.size(); ++n) {
        const leaf_info& leaf = leaves[n];
        if (leaf.text) {
            value texts = value::list();
            for (const obs_leaves& e : envs) texts.push_back(e.texts[n]);
            out.descriptors.push_back(value::map({{"text", std::move(texts)}}));
            continue;
        }
        value desc = value::map({{"dtype", leaf.dtype.str()}, {"shape", shape_list(k, leaf.row_shape)}});
        auto place = placed ? placed->find(n) : placement::const_iterator();
        if (placed && place != placed->end()) {
            for (std::size_t e = 0; e < k; ++e) out.writes.push_back({envs[e].arrays[n], leaf.dtype, place->second[e]});
            desc["shm"] = true;
        } else if (leaf.space.type() == space::kind::box && leaf.row_bytes >= row_frame_bytes) {
            for (const obs_leaves& e : envs) {
                const ndarray& a = e.arrays[n];
                out.frames.push_back(frame_of(a.dtype() == leaf.dtype ? a : a.astype(leaf.dtype)));
            }
            desc["rows"] = true;
        } else {
            zmq::message_t frame(k * leaf.row_bytes);
            auto* dst = static_cast<unsigned char*>(frame.data());
            for (std::size_t e = 0; e < k; ++e) {
                const ndarray& a = envs[e].arrays[n];
                convert_items(a.dtype(), a.bytes(), leaf.dtype, dst + e * leaf.row_bytes, a.size());
            }
            out.frames.push_back(std::move(frame));
        }
        out.descriptors.push_back(std::move(desc));
    }
    return out;
}

// -- actions -----------------------------------------------------------------------------

inline ndarray::shape_type wire_shape(const value* shape, std::size_t skip = 0) {
    auto bad = [&] {
        return error(errc::bad_message, "bad array shape " + (shape ? shape->repr() : std::string("None")) +
                                            ": expected a list of at most 32 non-negative ints");
    };
    if (!shape || !shape->is_list() || shape->size() < skip || shape->size() - skip > 32) throw bad();
    ndarray::shape_type out;
    for (std::size_t i = skip; i < shape->size(); ++i) {
        const value& d = (*shape)[i];
        if (!d.is_int() || d.is_negative()) throw bad();
        std::uint64_t n = d.as_uint();
        if (static_cast<std::uint64_t>(static_cast<std::size_t>(n)) != n) throw bad();  // 32-bit hosts
        out.push_back(static_cast<std::size_t>(n));
    }
    return out;
}

/// A copy of an array frame, after checking it against its dtype and shape exactly (3.8).
inline ndarray array_from_frame(const value* dtype_text, ndarray::shape_type shape, const zmq::message_t& frame) {
    if (!dtype_text || !dtype_text->is_str()) {
        throw error(errc::bad_message, "unsupported dtype " + (dtype_text ? dtype_text->repr() : std::string("None")) +
                                           ": expected a numpy dtype string such as '<f4', '|u1' or '|b1'");
    }
    ndarray a = ndarray::copy_of(dtype::parse(dtype_text->as_str()), std::move(shape), frame.data(), frame.size());
    msgpack::reader::check_code_points(a);
    return a;
}

/// Turn the action leaves of a step body and its array frames into one action value per env,
/// converted to the action space's dtypes (3.6: any accepted dtype and byte order arrives).
/// Accepts both leaf forms (3.8). Throws rlay::error (bad_message) when they do not fit.
inline std::vector<value> decode_actions(const value* descriptors, const message& msg, std::size_t first_frame,
                                         const space& act_space, const std::vector<leaf_info>& leaves, std::size_t k) {
    if (!descriptors || !descriptors->is_list()) throw error(errc::bad_message, "leaf descriptors must be a list");
    if (descriptors->size() != leaves.size()) {
        throw error(errc::bad_message, "expected " + std::to_string(leaves.size()) + " leaves, got " + std::to_string(descriptors->size()));
    }
    std::size_t next_frame = first_frame;
    auto leaf_error = [](std::size_t n, const std::string& what) { return error(errc::bad_message, "leaf " + std::to_string(n) + ": " + what); };
    std::vector<std::vector<value>> per_leaf(leaves.size());  // leaf -> k row values
    for (std::size_t n = 0; n < leaves.size(); ++n) {
        const value& desc = (*descriptors)[n];
        const leaf_info& leaf = leaves[n];
        if (!desc.is_map()) throw error(errc::bad_message, "a leaf descriptor must be a map");
        if (const value* texts = desc.find("text")) {
            if (!texts->is_list()) throw error(errc::bad_message, "a text leaf must be a list of strings");
            for (const value& t : texts->as_list()) if (!t.is_str()) throw error(errc::bad_message, "a text leaf must be a list of strings");
            if (!leaf.text) throw leaf_error(n, "got text for " + leaf.space.repr());
            if (texts->size() != k) throw leaf_error(n, "expected " + std::to_string(k) + " strings, got " + std::to_string(texts->size()));
            per_leaf[n] = texts->as_list();
            continue;
        }
        const value* shm = desc.find("shm");
        if (shm && shm->is_bool() && shm->as_bool()) {
            throw error(errc::bad_message, "leaf " + std::to_string(n) + " is said to be in shared memory, which was not offered for it");
        }
        std::vector<ndarray> rows;
        const value* rows_flag = desc.find("rows");
        if (rows_flag && rows_flag->is_bool() && rows_flag->as_bool()) {  // one frame per row
            const value* shape = desc.find("shape");
            if (!shape || !shape->is_list() || shape->size() == 0 || !(*shape)[0].is_int() || (*shape)[0].is_negative()) {
                throw leaf_error(n, "a row-framed leaf needs a shape [rows, ...]");
            }
            if ((*shape)[0].as_uint() != k) throw leaf_error(n, "expected " + std::to_string(k) + " rows, got " + (*shape)[0].repr());
            ndarray::shape_type row_shape = wire_shape(shape, 1);
            for (std::size_t r = 0; r < k; ++r) {
                if (next_frame >= msg.size()) throw error(errc::bad_message, "leaf " + std::to_string(n) + " announces " + std::to_string(k) + " row frames; some are missing");
                rows.push_back(array_from_frame(desc.find("dtype"), row_shape, msg[next_frame++]));
            }
            if (leaf.text || row_shape != leaf.row_shape) {
                throw leaf_error(n, "rows of shape " + ndarray::shape_text(row_shape) + " do not fit " + leaf.space.repr());
            }
        } else {  // one frame
            if (next_frame >= msg.size()) throw error(errc::bad_message, "leaf " + std::to_string(n) + " announces an array frame that is missing");
            ndarray::shape_type shape = wire_shape(desc.find("shape"));
            ndarray all = array_from_frame(desc.find("dtype"), shape, msg[next_frame++]);
            if (shape.empty() || shape[0] != k) throw leaf_error(n, "expected " + std::to_string(k) + " rows, got shape " + ndarray::shape_text(shape));
            if (leaf.text) throw leaf_error(n, "got an array for " + leaf.space.repr());
            ndarray::shape_type row_shape(shape.begin() + 1, shape.end());
            if (row_shape != leaf.row_shape) throw leaf_error(n, "rows of shape " + ndarray::shape_text(row_shape) + " do not fit " + leaf.space.repr());
            std::size_t row_bytes = all.nbytes() / k;
            for (std::size_t r = 0; r < k; ++r) rows.push_back(ndarray::copy_of(all.dtype(), row_shape, all.bytes() + r * row_bytes, row_bytes));
        }
        for (ndarray& row : rows) {
            ndarray converted;
            try {
                converted = row.astype(leaf.dtype);
            } catch (const error& e) {
                throw leaf_error(n, "actions of " + row.dtype().str() + " do not fit " + leaf.space.repr() + ": " + e.what());
            }
            if (leaf.space.type() == space::kind::discrete) {
                number item = load_number(leaf.dtype, converted.bytes());
                per_leaf[n].push_back(item.kind == dtype::kind::unsigned_int ? value(item.u) : value(item.i));
            } else {
                per_leaf[n].push_back(value(std::move(converted)));
            }
        }
    }
    if (next_frame != msg.size()) throw error(errc::bad_message, "more array frames than leaf descriptors");

    std::vector<value> actions(k);
    for (std::size_t e = 0; e < k; ++e) {
        std::size_t leaf_index = 0;
        struct builder {
            static value build(const space& s, const std::vector<std::vector<value>>& per_leaf, std::size_t e, std::size_t& at) {
                if (s.type() == space::kind::dict) {
                    value m = value::map();
                    for (const auto& [key, sub] : s.entries()) m[key] = build(sub, per_leaf, e, at);
                    return m;
                }
                if (s.type() == space::kind::tuple) {
                    value t = value::tuple();
                    for (const auto& entry : s.entries()) t.push_back(build(entry.second, per_leaf, e, at));
                    return t;
                }
                return per_leaf[at++][e];
            }
        };
        actions[e] = builder::build(act_space, per_leaf, e, leaf_index);
    }
    return actions;
}

}  // namespace detail
}  // namespace rlay
