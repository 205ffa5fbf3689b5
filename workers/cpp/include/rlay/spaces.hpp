// rlay/spaces.hpp: observation and action spaces (4.1), their leaves (4.2), built as in gymnasium.
//
//   using namespace rlay::spaces;
//   rlay::space obs = dict({{"pos", box(-1e6, 1e6, {2}, rlay::dtype::float64())},
//                           {"t",   discrete(9)},
//                           {"vel", box(-4.0, 4.0, {2}, rlay::dtype::float32())}});
//   rlay::space act = discrete(3);
//   rlay::space net = graph(box(-1, 1, {2}), discrete(3));          // a value leaf (3.8.1)
//   rlay::space seq = sequence(dict({{"id", discrete(5)}}), true);  // stacked
//   rlay::space any = one_of({discrete(2), text(4)});
//
// A space encodes to exactly the map the Python reference writes (`rlay.spaces.encode_space`),
// byte for byte, because the broker compares the space maps of all workers of one env id
// (4.4). Dict entries keep the order given here, and that order is the leaf order on the
// wire. gymnasium's Dict sorts the keys of a plain dict, so a native worker that shares an
// env id with Python workers MUST list its Dict keys sorted (as above), and build Box
// bounds, Discrete start and dtypes exactly as the Python env does.
#pragma once

#include <rlay/dtype.hpp>
#include <rlay/error.hpp>
#include <rlay/value.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace rlay {

class space;

/// Tuple, Dict, Graph, Sequence and OneOf nest in one another at most this deep (4.1): every
/// walk of a space or its values recurses once a level. The builders refuse deeper nesting.
constexpr int max_space_depth = 32;

/// One leaf of a space (4.2): what a row of it looks like on the wire.
struct leaf_info;

class space {
public:
    enum class kind { box, discrete, multi_discrete, multi_binary, text, tuple, dict, graph, sequence, one_of };
    using entry = std::pair<std::string, space>;

    /// A placeholder (an empty float64 Box); assign a space built by rlay::spaces.
    space() = default;

    kind type() const noexcept { return kind_; }
    /// Box, Discrete, MultiDiscrete, MultiBinary, Text, Graph, Sequence and OneOf are leaves;
    /// Tuple and Dict are not.
    bool is_leaf() const noexcept { return kind_ != kind::tuple && kind_ != kind::dict; }
    /// Graph, Sequence and OneOf: value leaves, whose values vary in size (3.8.1).
    bool is_value_leaf() const noexcept { return kind_ == kind::graph || kind_ == kind::sequence || kind_ == kind::one_of; }
    /// Box, Discrete, MultiDiscrete and MultiBinary: the spaces with a dtype and a shape.
    bool is_array() const noexcept { return is_leaf() && kind_ != kind::text && !is_value_leaf(); }
    /// The dtype of an array leaf (MultiBinary: int8).
    const rlay::dtype& dtype() const {
        if (!is_array()) throw error(errc::invalid_space, repr() + " has no dtype");
        return dtype_;
    }
    /// The shape of one env's row of an array leaf (Discrete: []).
    const ndarray::shape_type& shape() const { return shape_; }
    /// Bytes of one env's row of an array leaf.
    std::size_t row_bytes() const {
        std::size_t n = dtype_.itemsize();
        for (std::size_t d : shape_) n *= d;
        return n;
    }
    const ndarray& low() const { return low_; }     // Box
    const ndarray& high() const { return high_; }   // Box
    std::int64_t n() const noexcept { return n_; }   // Discrete
    std::int64_t start() const noexcept { return start_; }  // Discrete
    const ndarray& nvec() const { return low_; }     // MultiDiscrete
    const ndarray& starts() const { return high_; }  // MultiDiscrete
    std::int64_t min_length() const noexcept { return n_; }     // Text
    std::int64_t max_length() const noexcept { return start_; } // Text
    const std::string& charset() const noexcept { return charset_; }  // Text (UTF-8, in order)
    /// Tuple entries ("" keys), Dict entries or OneOf choices ("" keys), in order.
    const std::vector<entry>& entries() const noexcept { return entries_; }
    /// Graph: the space of one node's features.
    const space& node_space() const { return part(kind::graph, 0); }
    /// Graph: the space of one edge's features, or nullptr for a graph without edges.
    const space* edge_space() const {
        part(kind::graph, 0);  // (throws for another kind of space)
        return entries_.size() > 1 ? &entries_[1].second : nullptr;
    }
    /// Sequence: the space of one item.
    const space& feature_space() const { return part(kind::sequence, 0); }
    /// Sequence: whether its values are stacked (gymnasium's stack=True).
    bool stack() const noexcept { return stack_; }
    /// How deep Tuple, Dict, Graph, Sequence and OneOf nest in it: 0 for a leaf that holds
    /// nothing (a Box), 1 for a Tuple of Boxes; at most max_space_depth.
    int depth() const noexcept { return depth_; }

    /// The space map of 4.1 (plain msgpack), as `rlay.spaces.encode_space` writes it.
    value encode() const {
        switch (kind_) {
            case kind::box:
                return value::map({{"type", "Box"}, {"dtype", dtype_.str()}, {"shape", shape_value(shape_)},
                                   {"low", array_field(low_)}, {"high", array_field(high_)}});
            case kind::discrete:
                return value::map({{"type", "Discrete"}, {"n", n_}, {"start", start_}, {"dtype", dtype_.str()}});
            case kind::multi_discrete:
                return value::map({{"type", "MultiDiscrete"}, {"nvec", array_field(low_)}, {"start", array_field(high_)},
                                   {"dtype", dtype_.str()}});
            case kind::multi_binary:
                return value::map({{"type", "MultiBinary"}, {"n", n_is_list_ ? shape_value(shape_) : value(shape_[0])}});
            case kind::text:
                return value::map({{"type", "Text"}, {"min_length", n_}, {"max_length", start_}, {"charset", charset_}});
            case kind::tuple: {
                value list = value::list();
                for (const entry& e : entries_) list.push_back(e.second.encode());
                return value::map({{"type", "Tuple"}, {"spaces", std::move(list)}});
            }
            case kind::dict: {
                value list = value::list();
                for (const entry& e : entries_) list.push_back(value::list({e.first, e.second.encode()}));
                return value::map({{"type", "Dict"}, {"spaces", std::move(list)}});
            }
            case kind::graph:
                return value::map({{"type", "Graph"}, {"node_space", entries_[0].second.encode()},
                                   {"edge_space", entries_.size() > 1 ? entries_[1].second.encode() : value()}});
            case kind::sequence:
                return value::map({{"type", "Sequence"}, {"feature_space", entries_[0].second.encode()}, {"stack", stack_}});
            case kind::one_of: {
                value list = value::list();
                for (const entry& e : entries_) list.push_back(e.second.encode());
                return value::map({{"type", "OneOf"}, {"spaces", std::move(list)}});
            }
        }
        return value();
    }

    /// gymnasium's repr, for messages: "Box(-4.0, 4.0, (2,), float32)", "Discrete(9)", ...
    std::string repr() const {
        switch (kind_) {
            case kind::box: {
                std::string name = dtype_.numpy_repr();
                name = name.substr(7, name.size() - 9);  // dtype('float32') -> float32
                return "Box(" + bound_repr(low_) + ", " + bound_repr(high_) + ", " + ndarray::shape_text(shape_) + ", " + name + ")";
            }
            case kind::discrete:
                return "Discrete(" + std::to_string(n_) + (start_ ? ", start=" + std::to_string(start_) : "") + ")";
            case kind::multi_discrete: {
                std::string s = "MultiDiscrete([";
                for (std::size_t i = 0; i < low_.size(); ++i) s += (i ? " " : "") + std::to_string(low_.item<std::int64_t>(i));
                return s + "])";
            }
            case kind::multi_binary:
                return "MultiBinary(" + (n_is_list_ ? ndarray::shape_text(shape_) : std::to_string(shape_[0])) + ")";
            case kind::text:
                return "Text(" + std::to_string(n_) + ", " + std::to_string(start_) + ", charset=" + charset_ + ")";
            case kind::graph:
                return "Graph(" + entries_[0].second.repr() + ", " + (entries_.size() > 1 ? entries_[1].second.repr() : "None") + ")";
            case kind::sequence:
                return "Sequence(" + entries_[0].second.repr() + ", stack=" + (stack_ ? "True" : "False") + ")";
            case kind::tuple: case kind::dict: case kind::one_of: {
                std::string s = kind_ == kind::tuple ? "Tuple(" : kind_ == kind::dict ? "Dict(" : "OneOf(";
                for (std::size_t i = 0; i < entries_.size(); ++i) {
                    if (i) s += ", ";
                    if (kind_ == kind::dict) s += "'" + entries_[i].first + "': ";
                    s += entries_[i].second.repr();
                }
                return s + ")";
            }
        }
        return "?";
    }

    /// The leaves in wire order (4.2): depth first, Tuple and Dict entries in order.
    std::vector<leaf_info> leaves() const;

    friend bool operator==(const space& a, const space& b) { return a.encode() == b.encode(); }
    friend bool operator!=(const space& a, const space& b) { return !(a == b); }

private:
    friend struct space_builder;

    const space& part(kind k, std::size_t i) const {
        if (kind_ != k || entries_.size() <= i) throw error(errc::invalid_space, repr() + " has no such part");
        return entries_[i].second;
    }

    static value shape_value(const ndarray::shape_type& shape) {
        value list = value::list();
        for (std::size_t d : shape) list.push_back(d);
        return list;
    }
    static value array_field(const ndarray& a) {
        return value::map({{"dtype", a.dtype().str()}, {"shape", shape_value(a.shape())},
                           {"data", value::bin(a.bytes(), a.nbytes())}});
    }
    static std::string bound_repr(const ndarray& a) {
        if (a.size() == 0) return "[]";
        bool same = true;
        for (std::size_t i = 1; i < a.size() && same; ++i) same = a.item<double>(i) == a.item<double>(0);
        auto one = [&](std::size_t i) {
            char buf[40];
            if (a.dtype().type() == rlay::dtype::kind::floating) {
                std::snprintf(buf, sizeof buf, "%.9g", a.item<double>(i));
                std::string s = buf;
                if (s.find_first_of(".eni") == std::string::npos) s += ".0";
                return s;
            }
            std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(a.item<std::int64_t>(i)));
            return std::string(buf);
        };
        if (same) return one(0);
        std::string s = "[";
        for (std::size_t i = 0; i < a.size() && i < 8; ++i) s += (i ? " " : "") + one(i);
        return s + (a.size() > 8 ? " ...]" : "]");
    }

    kind kind_ = kind::box;
    rlay::dtype dtype_;
    ndarray::shape_type shape_;
    ndarray low_, high_;      // Box bounds; MultiDiscrete nvec and start
    std::int64_t n_ = 0;      // Discrete n; Text min_length
    std::int64_t start_ = 0;  // Discrete start; Text max_length
    bool n_is_list_ = false;  // MultiBinary given as a shape
    bool stack_ = false;      // Sequence
    std::string charset_;
    std::vector<entry> entries_;  // Tuple, Dict, OneOf: the entries; Graph: node (and edge) space; Sequence: the item space
    int depth_ = 0;               // see depth()
};

struct leaf_info {
    rlay::space space;             // the leaf space itself
    bool text = false;             // a Text leaf: k strings in the body, no frame
    bool values = false;           // a value leaf (Graph, Sequence, OneOf: 3.8.1): k values in the body
    rlay::dtype dtype;             // array leaves: the rows' dtype
    ndarray::shape_type row_shape; // array leaves: shape[1:] of the descriptor
    std::size_t row_bytes = 0;     // array leaves: itemsize * product(row_shape)
};

inline std::vector<leaf_info> space::leaves() const {
    std::vector<leaf_info> out;
    std::vector<const space*> todo{this};
    while (!todo.empty()) {
        const space* s = todo.back();
        todo.pop_back();
        if (!s->is_leaf()) {
            for (auto it = s->entries_.rbegin(); it != s->entries_.rend(); ++it) todo.push_back(&it->second);
            continue;
        }
        leaf_info leaf;
        leaf.space = *s;
        leaf.text = s->kind_ == kind::text;
        leaf.values = s->is_value_leaf();
        if (s->is_array()) {
            leaf.dtype = s->dtype_;
            leaf.row_shape = s->shape_;
            leaf.row_bytes = s->row_bytes();
        }
        out.push_back(std::move(leaf));
    }
    return out;
}

struct space_builder {
    static space make(space::kind k) {
        space s;
        s.kind_ = k;
        return s;
    }
    static space& set_box(space& s, ndarray low, ndarray high) {
        if (low.shape() != high.shape() || low.dtype() != high.dtype()) {
            throw error(errc::invalid_space, "Box: low and high must have the same dtype and shape");
        }
        auto k = low.dtype().type();
        if (k != dtype::kind::boolean && k != dtype::kind::signed_int && k != dtype::kind::unsigned_int &&
            !(k == dtype::kind::floating && low.dtype().itemsize() <= 8)) {
            throw error(errc::invalid_space, "Box: the dtype must be bool, an integer or a float, got " + low.dtype().str());
        }
        s.dtype_ = low.dtype();
        s.shape_ = low.shape();
        s.low_ = std::move(low);
        s.high_ = std::move(high);
        return s;
    }
    static space& set_multi_discrete(space& s, ndarray nvec, ndarray start) {
        s.dtype_ = nvec.dtype();
        s.shape_ = nvec.shape();
        s.low_ = std::move(nvec);
        s.high_ = std::move(start);
        return s;
    }
    static space& set_numbers(space& s, std::int64_t n, std::int64_t start, rlay::dtype dt) {
        s.n_ = n;
        s.start_ = start;
        s.dtype_ = dt;
        return s;
    }
    static space& set_multi_binary(space& s, ndarray::shape_type shape, bool as_list) {
        s.dtype_ = dtype::int8();
        s.shape_ = std::move(shape);
        s.n_is_list_ = as_list;
        return s;
    }
    static space& set_charset(space& s, std::string charset) {
        s.charset_ = std::move(charset);
        return s;
    }
    static space& set_entries(space& s, std::vector<space::entry> entries) {
        int depth = 0;
        for (const space::entry& e : entries) depth = e.second.depth_ > depth ? e.second.depth_ : depth;
        if (depth >= max_space_depth) {
            throw error(errc::invalid_space, "Tuple, Dict, Graph, Sequence and OneOf spaces nest more than " + std::to_string(max_space_depth) +
                                                 " deep (4.1)");
        }
        s.entries_ = std::move(entries);
        s.depth_ = depth + 1;
        return s;
    }
    static space& set_stack(space& s, bool stack) {
        s.stack_ = stack;
        return s;
    }
};

/// Builders with gymnasium's names, arguments and defaults.
namespace spaces {

namespace detail {
inline ndarray filled(const rlay::dtype& dt, const ndarray::shape_type& shape, const std::vector<double>& values, const char* what) {
    ndarray a(dt, shape);
    if (values.size() != 1 && values.size() != a.size()) {
        throw error(errc::invalid_space, std::string("Box: ") + what + " has " + std::to_string(values.size()) +
                                             " values for " + std::to_string(a.size()) + " items");
    }
    unsigned char* out = a.mutable_bytes();
    bool integer = dt.type() == dtype::kind::signed_int || dt.type() == dtype::kind::unsigned_int;
    for (std::size_t i = 0; i < a.size(); ++i) {
        double v = values.size() == 1 ? values[0] : values[i];
        rlay::detail::number n;
        if (integer && std::isinf(v)) {  // gymnasium: an infinite bound of an integer Box is the dtype's limit
            if (dt.type() == dtype::kind::signed_int) {
                n.kind = dtype::kind::signed_int;
                n.i = v < 0 ? -(std::int64_t(1) << (8 * dt.itemsize() - 1)) : (dt.itemsize() == 8 ? INT64_MAX : (std::int64_t(1) << (8 * dt.itemsize() - 1)) - 1);
            } else {
                n.kind = dtype::kind::unsigned_int;
                n.u = v < 0 ? 0 : (dt.itemsize() == 8 ? UINT64_MAX : (std::uint64_t(1) << (8 * dt.itemsize())) - 1);
            }
        } else {
            n.kind = dtype::kind::floating;
            n.re = v;
        }
        rlay::detail::store_number(dt, out + i * dt.itemsize(), n);
    }
    return a;
}
}  // namespace detail

/// Box(low, high, shape, dtype): every item of low and high set to the given bound.
inline space box(double low, double high, ndarray::shape_type shape, dtype dt = dtype::float32()) {
    space s = space_builder::make(space::kind::box);
    return space_builder::set_box(s, detail::filled(dt, shape, {low}, "low"), detail::filled(dt, shape, {high}, "high"));
}

/// Box with per-item bounds (C order).
inline space box(const std::vector<double>& low, const std::vector<double>& high, ndarray::shape_type shape,
                 dtype dt = dtype::float32()) {
    space s = space_builder::make(space::kind::box);
    return space_builder::set_box(s, detail::filled(dt, shape, low, "low"), detail::filled(dt, shape, high, "high"));
}

/// Box from bound arrays of the space's dtype and shape.
inline space box(ndarray low, ndarray high) {
    space s = space_builder::make(space::kind::box);
    return space_builder::set_box(s, std::move(low), std::move(high));
}

/// Discrete(n, start): the ints start .. start + n - 1; dtype int64 as in gymnasium.
inline space discrete(std::int64_t n, std::int64_t start = 0, dtype dt = dtype::int64()) {
    if (n <= 0) throw error(errc::invalid_space, "Discrete: n must be positive");
    if (dt.type() != dtype::kind::signed_int && dt.type() != dtype::kind::unsigned_int) {
        throw error(errc::invalid_space, "Discrete: the dtype must be an integer dtype");
    }
    space s = space_builder::make(space::kind::discrete);
    return space_builder::set_numbers(s, n, start, dt);
}

/// MultiDiscrete(nvec, start): one Discrete per item of nvec (1-d; see the ndarray overload).
inline space multi_discrete(const std::vector<std::int64_t>& nvec, std::vector<std::int64_t> start = {},
                            dtype dt = dtype::int64()) {
    if (start.empty()) start.assign(nvec.size(), 0);
    if (start.size() != nvec.size()) throw error(errc::invalid_space, "MultiDiscrete: start must match nvec");
    for (std::int64_t n : nvec) if (n <= 0) throw error(errc::invalid_space, "MultiDiscrete: every nvec item must be positive");
    std::vector<double> n_d(nvec.begin(), nvec.end()), s_d(start.begin(), start.end());
    space s = space_builder::make(space::kind::multi_discrete);
    return space_builder::set_multi_discrete(s, detail::filled(dt, {nvec.size()}, n_d, "nvec"),
                                             detail::filled(dt, {nvec.size()}, s_d, "start"));
}

/// MultiDiscrete of any shape: nvec and start are arrays of the space's dtype.
inline space multi_discrete(ndarray nvec, ndarray start) {
    if (nvec.shape() != start.shape() || nvec.dtype() != start.dtype()) {
        throw error(errc::invalid_space, "MultiDiscrete: nvec and start must have the same dtype and shape");
    }
    space s = space_builder::make(space::kind::multi_discrete);
    return space_builder::set_multi_discrete(s, std::move(nvec), std::move(start));
}

/// MultiBinary(n): n zeros and ones (int8).
inline space multi_binary(std::size_t n) {
    space s = space_builder::make(space::kind::multi_binary);
    return space_builder::set_multi_binary(s, {n}, false);
}

/// MultiBinary([d0, d1, ...]): an n-dimensional MultiBinary.
inline space multi_binary(ndarray::shape_type shape) {
    space s = space_builder::make(space::kind::multi_binary);
    return space_builder::set_multi_binary(s, std::move(shape), true);
}

/// gymnasium's default Text charset is a frozenset, whose order Python varies from process to
/// process; this SDK's default lists the same characters sorted. Give the charset explicitly
/// when a Python worker shares the env id.
constexpr const char* alphanumeric = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Text(max_length, min_length, charset): strings of the charset's characters (UTF-8), in its order.
inline space text(std::int64_t max_length, std::int64_t min_length = 1, std::string charset = alphanumeric) {
    if (min_length < 0 || max_length < min_length) throw error(errc::invalid_space, "Text: need 0 <= min_length <= max_length");
    space s = space_builder::make(space::kind::text);
    space_builder::set_numbers(s, min_length, max_length, dtype::int64());
    return space_builder::set_charset(s, std::move(charset));
}

/// Tuple((a, b, ...)).
inline space tuple(std::vector<space> items) {
    std::vector<space::entry> entries;
    for (space& item : items) entries.emplace_back("", std::move(item));
    space s = space_builder::make(space::kind::tuple);
    return space_builder::set_entries(s, std::move(entries));
}

/// Dict([(key, space), ...]) in the order given, which is the leaf order (4.2).
inline space dict(std::vector<space::entry> entries) {
    for (std::size_t i = 0; i < entries.size(); ++i) {
        for (std::size_t j = 0; j < i; ++j) {
            if (entries[i].first == entries[j].first) throw error(errc::invalid_space, "Dict: the key '" + entries[i].first + "' appears twice");
        }
    }
    space s = space_builder::make(space::kind::dict);
    return space_builder::set_entries(s, std::move(entries));
}

/// Graph(node_space, edge_space): a graph of any number of nodes, each with a value of
/// node_space, and edges, each with a value of edge_space and two node indices. Any space
/// (gymnasium 1.4; 1.1 to 1.3 take only Box and Discrete). A value: rlay::value::graph.
inline space graph(space node_space, space edge_space) {
    space s = space_builder::make(space::kind::graph);
    return space_builder::set_entries(s, {{"node_space", std::move(node_space)}, {"edge_space", std::move(edge_space)}});
}

/// Graph(node_space, None): a graph whose edges have no features, and so are never sent.
inline space graph(space node_space) {
    space s = space_builder::make(space::kind::graph);
    return space_builder::set_entries(s, {{"node_space", std::move(node_space)}});
}

/// Sequence(feature_space, stack): any number of values of feature_space; a tuple (or list)
/// of them, or with stack, batched as gymnasium batches them (a Box: one array of n rows).
inline space sequence(space feature_space, bool stack = false) {
    space s = space_builder::make(space::kind::sequence);
    space_builder::set_stack(s, stack);
    return space_builder::set_entries(s, {{"feature_space", std::move(feature_space)}});
}

/// OneOf((a, b, ...)): a value of one of them, as the tuple (index, value).
inline space one_of(std::vector<space> choices) {
    if (choices.empty()) throw error(errc::invalid_space, "OneOf: empty OneOf spaces are not supported");
    std::vector<space::entry> entries;
    for (space& c : choices) entries.emplace_back("", std::move(c));
    space s = space_builder::make(space::kind::one_of);
    return space_builder::set_entries(s, std::move(entries));
}

}  // namespace spaces
}  // namespace rlay
