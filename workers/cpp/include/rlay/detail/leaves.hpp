// rlay/detail/leaves.hpp: observations into leaf descriptors and array frames, action leaves
// into values (3.8, 3.8.1, 4.2, 5.10).
#pragma once

#include <rlay/detail/wire.hpp>
#include <rlay/error.hpp>
#include <rlay/spaces.hpp>
#include <rlay/value.hpp>

#include <zmq.hpp>

#include <algorithm>
#include <cmath>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
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

// -- value leaves (3.8.1) ----------------------------------------------------------------

/// A value that does not fit its value leaf's space (3.8.1). `type` is the Python exception a
/// worker reports for such an observation: "TypeError" (another kind of value) or "ValueError".
class value_mismatch : public std::runtime_error {
public:
    value_mismatch(const char* type, const std::string& message) : std::runtime_error(message), type_(type) {}
    const char* type() const noexcept { return type_; }

private:
    const char* type_;
};

/// "float32" for dtype('float32').
inline std::string numpy_name(const dtype& dt) {
    std::string r = dt.numpy_repr();
    return r.size() > 9 ? r.substr(7, r.size() - 9) : r;
}

/// The most items L one batch in a value leaf may have (3.8.1): a batch of a zero-size space (a
/// Box of shape (0,)) takes no bytes, so only this bounds what a receiver's env iterates.
constexpr std::size_t max_batch = std::size_t(1) << 20;

/// One walk of a value of a value leaf's space, the same in both directions, as the Python
/// reference's (rlay/spaces.py: _Walk), made in place so that a large value is never copied:
/// `array` turns what stands where an array belongs into its other form (an ndarray into an
/// array reference, encoding; a reference into the ndarray of its frame, decoding) and returns
/// the array; the walk checks everything else. Lists stay lists and tuples tuples (3.8.1,
/// "Tuples and lists").
class value_walk {
public:
    using array_fn = std::function<ndarray(value& slot, const std::string& path)>;
    struct options {
        bool check_dtype = false;  ///< observations: every array casts same_kind to its space's dtype
        /// Actions, as action leaves are (3.6): every array becomes its space's dtype, edge links
        /// host-order int64, a Discrete value or a OneOf index a plain int; what cannot is refused.
        bool convert = false;
        /// The values the walk may visit in all (rlay::config::max_decoded_values): a decoded
        /// message's values, walked, count again.
        std::size_t max_values = SIZE_MAX;
    };

    value_walk(array_fn array, options o) : array_(std::move(array)), options_(o), remaining_(o.max_values) {}

    /// Check `v`, one value of `s` (3.8.1, `one`), and rewrite its arrays in place.
    void walk(const space& s, value& v) {
        path_ = "value";
        one(s, v);
    }

    /// Whether a map has some key more than once (3.8.1 refuses it in a value), keys compared as
    /// Python compares them: 1, 1.0 and true are one key; a str and a bin of the same bytes are two.
    static bool repeats_a_key(const value& map) {
        std::vector<std::string> keys;
        for (const auto& entry : map.as_map()) keys.push_back(key_identity(entry.first));
        std::sort(keys.begin(), keys.end());
        return std::adjacent_find(keys.begin(), keys.end()) != keys.end();
    }

    static std::string key_identity(const value& key) {
        if (key.is_str()) return "s" + key.as_str();
        if (key.is_bin()) return "b" + key.as_bin();
        if (key.is_bool()) return key.as_bool() ? "n1" : "n0";
        if (key.is_int()) return key.is_negative() ? "n" + std::to_string(key.as_int()) : "n" + std::to_string(key.as_uint());
        if (key.is_float()) {
            double x = key.as_float();
            if (std::trunc(x) == x && std::fabs(x) < 9.2e18) return "n" + std::to_string(static_cast<std::int64_t>(x));
            return "f" + key.repr();
        }
        return "o" + key.repr();  // (nil, a big integer, a tuple...: by its text)
    }

private:
    /// Appends to the walk's path for as long as it lives: the place of a value, for messages.
    class step {
    public:
        step(std::string& path, std::size_t index) : path_(path), size_(path.size()) {
            path += '[';
            path += std::to_string(index);
            path += ']';
        }
        step(std::string& path, std::initializer_list<std::string_view> parts) : path_(path), size_(path.size()) {
            for (std::string_view p : parts) path += p;
        }
        step(const step&) = delete;
        step& operator=(const step&) = delete;
        ~step() { path_.resize(size_); }

    private:
        std::string& path_;
        std::size_t size_;
    };

    void one(const space& s, value& v) {
        spend();
        using k = space::kind;
        switch (s.type()) {
            case k::box: case k::multi_discrete: case k::multi_binary: {
                ndarray a = array_(v, path_);
                fits(a, s, s.shape());
                convert(v, a, s.dtype());
                return;
            }
            case k::discrete: return discrete(s, v);
            case k::text:
                if (!v.is_str()) throw value_mismatch("TypeError", path_ + ": a value of " + s.repr() + " must be a str, got " + kind(v));
                if (!msgpack::valid_utf8(v.as_str())) throw value_mismatch("ValueError", path_ + ": a str that is not valid UTF-8");
                return;
            case k::tuple: {
                value::list_type& items = sequence(v, s.entries().size());
                for (std::size_t i = 0; i < items.size(); ++i) {
                    step at(path_, i);
                    one(s.entries()[i].second, items[i]);
                }
                return;
            }
            case k::dict: {
                std::vector<const space*> subspaces = entries(s, v);
                value::map_type& map = v.as_map();
                for (std::size_t i = 0; i < map.size(); ++i) {
                    step at(path_, {"['", map[i].first.as_str(), "']"});
                    one(*subspaces[i], map[i].second);
                }
                return;
            }
            case k::graph: return graph(s, v);
            case k::sequence: {
                if (s.stack()) {
                    std::optional<std::size_t> length;
                    return batch(s.feature_space(), v, length);
                }
                value::list_type& items = sequence(v);
                for (std::size_t i = 0; i < items.size(); ++i) {
                    step at(path_, i);
                    one(s.feature_space(), items[i]);
                }
                return;
            }
            case k::one_of: {
                value::list_type& items = sequence(v, 2);
                value& index = items[0];
                bool is_index = index.is_int() || index.is_big_int() || (index.is_scalar() && integer(index.as_scalar().dtype()));
                if (!is_index) {
                    throw value_mismatch("TypeError", path_ + ": a value of " + s.repr() + " starts with an integer index, got " + kind(index));
                }
                if (index.is_negative() || index.is_big_int() || (index.is_int() && index.as_uint() >= s.entries().size()) ||
                    (index.is_scalar() && (index.to_double() < 0 || index.to_double() >= static_cast<double>(s.entries().size())))) {
                    throw value_mismatch("ValueError", path_ + ": index " + index.repr() + " is out of range for " + s.repr());
                }
                std::size_t choice = index.is_int() ? static_cast<std::size_t>(index.as_uint()) : static_cast<std::size_t>(index.to_double());
                if (options_.convert) index = value(static_cast<std::int64_t>(choice));
                step at(path_, 1);
                one(s.entries()[choice].second, items[1]);
                return;
            }
        }
        throw value_mismatch("TypeError", path_ + ": unknown space");
    }

    /// L values of `s` batched as gymnasium batches them (3.8.1, `batch`); `length` is L, unset
    /// until the batch's first leaf says it.
    void batch(const space& s, value& v, std::optional<std::size_t>& length) {
        spend();
        using k = space::kind;
        switch (s.type()) {
            case k::box: case k::multi_discrete: case k::multi_binary: case k::discrete: {
                ndarray a = array_(v, path_);
                if (a.ndim() == 0) {
                    throw value_mismatch("ValueError", path_ + ": a batch of " + s.repr() + " needs a first dimension, got a 0-d array");
                }
                same_length(length, a.shape()[0]);
                ndarray::shape_type shape{a.shape()[0]};
                shape.insert(shape.end(), s.shape().begin(), s.shape().end());
                fits(a, s, shape);
                convert(v, a, s.dtype());
                return;
            }
            case k::tuple: {
                value::list_type& items = sequence(v, s.entries().size());
                for (std::size_t i = 0; i < items.size(); ++i) {
                    step at(path_, i);
                    batch(s.entries()[i].second, items[i], length);
                }
                return;
            }
            case k::dict: {
                std::vector<const space*> subspaces = entries(s, v);
                value::map_type& map = v.as_map();
                for (std::size_t i = 0; i < map.size(); ++i) {
                    step at(path_, {"['", map[i].first.as_str(), "']"});
                    batch(*subspaces[i], map[i].second, length);
                }
                return;
            }
            default: {  // Text, Graph, Sequence, OneOf: a tuple (or list) of single values
                value::list_type& items = sequence(v);
                same_length(length, items.size());
                for (std::size_t i = 0; i < items.size(); ++i) {
                    step at(path_, i);
                    one(s, items[i]);
                }
                return;
            }
        }
    }

    void discrete(const space& s, value& v) {
        if (v.is_int() || v.is_big_int()) {
            // (a msgpack uint64 above 2^63 - 1 does not fit the int64 that env code reads with as_int())
            bool too_big = v.is_big_int() || (v.is_int() && !v.is_negative() && v.as_uint() > static_cast<std::uint64_t>(INT64_MAX));
            if (options_.convert && too_big) {
                throw value_mismatch("ValueError", path_ + ": the integer " + v.repr() + " does not fit " + numpy_name(s.dtype()));
            }
            return;
        }
        if (v.is_scalar()) {
            if (!integer(v.as_scalar().dtype())) {
                throw value_mismatch("TypeError", path_ + ": a value of " + s.repr() + " must be an integer, got a " +
                                                      numpy_name(v.as_scalar().dtype()) + " scalar");
            }
            if (options_.convert) v = plain_int(v.as_scalar(), s.dtype());
            return;
        }
        ndarray a;
        try {
            a = array_(v, path_);
        } catch (const value_mismatch&) {
            throw value_mismatch("TypeError", path_ + ": a value of " + s.repr() + " must be an integer, a numpy integer or a 0-d array, got " + kind(v));
        }
        if (a.ndim() == 0 && !integer(a.dtype())) {  // (as a bool or an ext 2 float is refused)
            throw value_mismatch("TypeError", path_ + ": a value of " + s.repr() + " must be an integer, got a 0-d " + numpy_name(a.dtype()) + " array");
        }
        fits(a, s, {});
        if (options_.convert) v = plain_int(a, s.dtype());
    }

    void graph(const space& s, value& v) {
        if (!v.is_graph()) throw value_mismatch("TypeError", path_ + ": a value of " + s.repr() + " must be a GraphInstance, got " + kind(v));
        value::list_type& it = v.items();
        if (it.size() != 3) {  // (env code can change a graph's items)
            throw value_mismatch("ValueError", path_ + ": a graph has 3 items (nodes, edges, edge_links), not " + std::to_string(it.size()));
        }
        std::optional<std::size_t> node_count;
        {
            step at(path_, {".nodes"});
            batch(s.node_space(), it[0], node_count);
        }
        if (it[1].is_nil() && it[2].is_nil()) return;
        if (!s.edge_space()) {
            throw value_mismatch("ValueError", path_ + ": " + s.repr() + " has no edge space, so its edges and edge_links must be None");
        }
        if (it[1].is_nil() || it[2].is_nil()) throw value_mismatch("ValueError", path_ + ": edges and edge_links must both be None, or neither");
        std::optional<std::size_t> edge_count;
        {
            step at(path_, {".edges"});
            batch(*s.edge_space(), it[1], edge_count);
        }
        step at(path_, {".edge_links"});
        spend();
        ndarray a = array_(it[2], path_);
        if (!integer(a.dtype()) || a.ndim() != 2 || a.shape()[1] != 2) {
            throw value_mismatch("ValueError", path_ + ": expected an integer array of shape (m, 2), got " + numpy_name(a.dtype()) + " " +
                                                   ndarray::shape_text(a.shape()));
        }
        same_length(edge_count, a.shape()[0]);
        if (node_count) links_name_nodes(a, *node_count);
        convert(it[2], a, dtype::int64());
    }

    /// Every edge link names a node: 0 <= link < n (3.8.1), as gymnasium's Graph.contains checks.
    void links_name_nodes(const ndarray& links, std::size_t n) const {
        std::size_t width = links.dtype().itemsize();
        for (std::size_t i = 0; i < links.size(); ++i) {
            number x = load_number(links.dtype(), links.bytes() + i * width);
            bool ok = x.kind == dtype::kind::unsigned_int ? x.u < n : x.i >= 0 && static_cast<std::uint64_t>(x.i) < n;
            if (!ok) {
                throw value_mismatch("ValueError", path_ + ": a link names no node (each must be at least 0 and below " + std::to_string(n) +
                                                       ", the nodes)");
            }
        }
    }

    void fits(const ndarray& a, const space& s, const ndarray::shape_type& shape) const {
        if (a.shape() != shape) {
            throw value_mismatch("ValueError", path_ + ": an array of shape " + ndarray::shape_text(a.shape()) + " does not fit " + s.repr() +
                                                   " (expected " + ndarray::shape_text(shape) + ")");
        }
        if (options_.check_dtype && !can_cast_same_kind(a.dtype(), s.dtype())) {
            throw value_mismatch("TypeError", path_ + ": an array of " + numpy_name(a.dtype()) + " does not fit " + s.repr() + " (it casts to " +
                                                  numpy_name(s.dtype()) + " only unsafely)");
        }
    }

    /// With options.convert, `slot` (which holds `a`) becomes `a` in dtype `to`.
    void convert(value& slot, const ndarray& a, const dtype& to) const {
        if (!options_.convert || a.dtype() == to) return;
        try {
            slot = value(a.astype(to));
        } catch (const error& e) {
            throw value_mismatch("TypeError", path_ + ": an array of " + numpy_name(a.dtype()) + " does not convert to " + numpy_name(to) + ": " + e.what());
        }
    }

    value plain_int(const ndarray& zero_d, const dtype& to) const {
        // (astype wraps: a <u8 holding 2^64 - 1 became -1; a value that does not fit is refused, 3.8.1)
        number given = load_number(zero_d.dtype(), zero_d.bytes());
        bool to_unsigned = to.type() == dtype::kind::unsigned_int;
        if ((given.kind == dtype::kind::unsigned_int && !to_unsigned && given.u > static_cast<std::uint64_t>(INT64_MAX)) ||
            (given.kind == dtype::kind::signed_int && to_unsigned && given.i < 0)) {
            throw value_mismatch("ValueError", path_ + ": the integer " + value(zero_d).repr() + " does not fit " + numpy_name(to));
        }
        ndarray item;
        try {
            item = zero_d.astype(to);
        } catch (const error& e) {
            throw value_mismatch("TypeError", path_ + ": a " + numpy_name(zero_d.dtype()) + " does not convert to " + numpy_name(to) + ": " + e.what());
        }
        number n = load_number(item.dtype(), item.bytes());
        return n.kind == dtype::kind::unsigned_int ? value(n.u) : value(n.i);
    }

    void spend() {
        if (remaining_ == 0) {
            throw error(errc::bad_message, "the values hold more than a decode may make (rlay::config::max_decoded_values)");
        }
        --remaining_;
    }

    void same_length(std::optional<std::size_t>& length, std::size_t n) const {
        if (n > max_batch) {
            throw value_mismatch("ValueError", path_ + ": a batch of " + std::to_string(n) + " items, more than the " + std::to_string(max_batch) +
                                                   " a value leaf carries");
        }
        if (!length) length = n;
        else if (*length != n) {
            throw value_mismatch("ValueError", path_ + ": a batch of " + std::to_string(n) + " where its siblings have " + std::to_string(*length));
        }
    }

    static bool integer(const dtype& dt) { return dt.type() == dtype::kind::signed_int || dt.type() == dtype::kind::unsigned_int; }
    static std::string kind(const value& v) { return value::kind_name(v.type()); }

    value::list_type& sequence(value& v, std::optional<std::size_t> count = std::nullopt) const {
        if (!v.is_tuple() && !v.is_list()) throw value_mismatch("TypeError", path_ + ": expected a tuple or a list, got " + kind(v));
        if (count && v.size() != *count) {
            throw value_mismatch("ValueError", path_ + ": expected " + std::to_string(*count) + " items, got " + std::to_string(v.size()));
        }
        return v.items();
    }

    /// The subspace of each entry of a Dict value, in the value's own order (the order its arrays'
    /// frames go in); the keys must be exactly the space's, each once.
    std::vector<const space*> entries(const space& s, const value& v) const {
        if (!v.is_map()) throw value_mismatch("TypeError", path_ + ": a value of a Dict space must be a dict, got " + kind(v));
        if (repeats_a_key(v)) throw value_mismatch("ValueError", path_ + ": a map that has a key more than once");
        std::vector<const space*> out;
        bool ok = v.size() == s.entries().size();
        for (const auto& entry : v.as_map()) {
            std::size_t i = 0;
            while (ok && i < s.entries().size() && !(entry.first.is_str() && entry.first.as_str() == s.entries()[i].first)) ++i;
            ok = ok && i < s.entries().size();
            if (!ok) break;
            out.push_back(&s.entries()[i].second);
        }
        if (!ok) {
            std::string want;
            for (const auto& e : s.entries()) want += (want.empty() ? "'" : ", '") + e.first + "'";
            throw value_mismatch("ValueError", path_ + ": keys " + v.repr(120) + " do not match [" + want + "]");
        }
        return out;
    }

    array_fn array_;
    options options_;
    std::size_t remaining_;
    std::string path_ = "value";
};

/// The arrays of values being encoded: each ndarray becomes an array reference, and is kept, in
/// order, for its frame (3.8.1).
inline value_walk::array_fn referencing(std::vector<ndarray>& arrays) {
    return [&arrays](value& slot, const std::string& path) -> ndarray {
        if (!slot.is_ndarray()) throw value_mismatch("TypeError", path + ": expected a numpy array, got " + std::string(value::kind_name(slot.type())));
        ndarray a = slot.as_ndarray();
        value shape = value::list();
        for (std::size_t d : a.shape()) shape.push_back(d);
        arrays.push_back(a);
        slot = value::map({{"dtype", a.dtype().str()}, {"shape", std::move(shape)}});
        return a;
    };
}

/// One env's observation split into its leaves (4.2), each checked against its leaf space.
struct obs_leaves {
    std::vector<ndarray> arrays;     // per leaf: the env's array (any dtype that casts same_kind)
    std::vector<std::string> texts;  // per leaf: the env's string (Text leaves)
    std::vector<value> values;       // per leaf: the env's value in its wire form (value leaves, 3.8.1)
    std::vector<std::vector<ndarray>> value_arrays;  // per leaf: the arrays its references stand for, in order
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
    out.values.resize(leaves.size());
    out.value_arrays.resize(leaves.size());
    for (std::size_t n = 0; n < leaves.size(); ++n) {
        const leaf_info& leaf = leaves[n];
        if (leaf.values) {  // the env's own value, checked as 3.8.1 says; its arrays go as they are
            value wire = *items[n];
            try {
                value_walk(referencing(out.value_arrays[n]), {true, false}).walk(leaf.space, wire);
            } catch (const value_mismatch& m) {
                throw env_error(m.type(), m.what());
            }
            out.values[n] = std::move(wire);
            continue;
        }
        if (leaf.text) {
            if (!items[n]->is_str()) throw env_error("TypeError", "a Text observation must be a str, got " + items[n]->repr(40));
            if (!msgpack::valid_utf8(items[n]->as_str())) throw env_error("ValueError", "a Text observation is not valid UTF-8");
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
        if (leaf.values) {  // 3.8.1: the values in the body, their arrays as frames, env by env
            value values = value::list();
            for (const obs_leaves& e : envs) {
                values.push_back(e.values[n]);
                for (const ndarray& a : e.value_arrays[n]) out.frames.push_back(frame_of(a));
            }
            out.descriptors.push_back(value::map({{"values", std::move(values)}}));
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
/// converted to the action space's dtypes (3.6: any accepted dtype and byte order arrives),
/// arrays inside value leaves too (3.8.1). Accepts both leaf forms (3.8). Throws rlay::error
/// (bad_message) when they do not fit. The values of value leaves and Text leaves become the
/// actions in place (no copy of a large action is made); `max_values` bounds what the walk of
/// value leaves visits (rlay::config::max_decoded_values).
inline std::vector<value> decode_actions(value&& descriptors, const message& msg, std::size_t first_frame, const space& act_space,
                                         const std::vector<leaf_info>& leaves, std::size_t k,
                                         std::size_t max_values = msgpack::default_max_values) {
    if (!descriptors.is_list()) throw error(errc::bad_message, "leaf descriptors must be a list");
    if (descriptors.size() != leaves.size()) {
        throw error(errc::bad_message, "expected " + std::to_string(leaves.size()) + " leaves, got " + std::to_string(descriptors.size()));
    }
    std::size_t next_frame = first_frame;
    auto leaf_error = [](std::size_t n, const std::string& what) { return error(errc::bad_message, "leaf " + std::to_string(n) + ": " + what); };
    std::vector<std::vector<value>> per_leaf(leaves.size());  // leaf -> k row values
    // Value leaves: each array reference becomes the array of its frame, in place (3.8.1).
    value_walk walk(
        [&](value& ref, const std::string& path) -> ndarray {
            if (!ref.is_map()) {
                throw value_mismatch("TypeError", path + ": expected an array reference {dtype, shape}, got " + std::string(value::kind_name(ref.type())));
            }
            if (value_walk::repeats_a_key(ref)) throw value_mismatch("ValueError", path + ": an array reference that has a key more than once");
            if (next_frame >= msg.size()) throw value_mismatch("ValueError", path + ": an array reference whose frame is missing");
            ndarray a = array_from_frame(ref.find("dtype"), wire_shape(ref.find("shape")), msg[next_frame++]);
            ref = value(a);
            return a;
        },
        {false, true, max_values});  // actions: any dtype arrives (3.6), and is converted
    for (std::size_t n = 0; n < leaves.size(); ++n) {
        value& desc = descriptors[n];
        const leaf_info& leaf = leaves[n];
        if (!desc.is_map()) throw error(errc::bad_message, "a leaf descriptor must be a map");
        if (value* texts = desc.find("text")) {
            if (!texts->is_list()) throw error(errc::bad_message, "a text leaf must be a list of strings");
            for (const value& t : texts->as_list()) if (!t.is_str()) throw error(errc::bad_message, "a text leaf must be a list of strings");
            if (!leaf.text) throw leaf_error(n, "got text for " + leaf.space.repr());
            if (texts->size() != k) throw leaf_error(n, "expected " + std::to_string(k) + " strings, got " + std::to_string(texts->size()));
            per_leaf[n] = std::move(texts->items());
            continue;
        }
        if (value* values = desc.find("values")) {  // a value leaf (3.8.1)
            if (!values->is_list()) throw leaf_error(n, "a value leaf's values must be a list");
            if (!leaf.values) throw leaf_error(n, "got values for " + leaf.space.repr());
            if (values->size() != k) throw leaf_error(n, "expected " + std::to_string(k) + " values, got " + std::to_string(values->size()));
            per_leaf[n].reserve(k);
            for (value& item : values->items()) {
                try {
                    walk.walk(leaf.space, item);
                    per_leaf[n].push_back(std::move(item));
                } catch (const value_mismatch& m) {
                    throw leaf_error(n, m.what());
                } catch (const error& e) {
                    throw leaf_error(n, e.what());
                }
            }
            continue;
        }
        if (leaf.values) throw leaf_error(n, "got an array for " + leaf.space.repr() + ", whose values travel in the body (protocol 3.8.1)");
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
        struct builder {  // moves each leaf's value into its place: nothing is copied
            static value build(const space& s, std::vector<std::vector<value>>& per_leaf, std::size_t e, std::size_t& at) {
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
                return std::move(per_leaf[at++][e]);
            }
        };
        actions[e] = builder::build(act_space, per_leaf, e, leaf_index);
    }
    return actions;
}

/// decode_actions of a copy of `descriptors` (nullptr: none).
inline std::vector<value> decode_actions(const value* descriptors, const message& msg, std::size_t first_frame, const space& act_space,
                                         const std::vector<leaf_info>& leaves, std::size_t k,
                                         std::size_t max_values = msgpack::default_max_values) {
    return decode_actions(descriptors ? value(*descriptors) : value(), msg, first_frame, act_space, leaves, k, max_values);
}

}  // namespace detail
}  // namespace rlay
