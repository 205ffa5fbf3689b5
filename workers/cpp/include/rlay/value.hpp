// rlay/value.hpp: rlay::ndarray and rlay::value, the value codec's data model (3.3, 3.4).
//
//   rlay::value info = rlay::value::map({{"t", 3}, {"u", 0.5}});
//   info["tag"] = "odd";
//   info["pos32"] = rlay::value::array<float>({2}, {x, y});      // ext 1
//   info["a8"] = rlay::value::scalar<std::int8_t>(a);             // ext 2
//   info["pair"] = rlay::value::tuple({t, terminated});           // ext 3
//   info["g"] = rlay::value::graph(nodes, nullptr, nullptr);        // ext 5 (a GraphInstance)
//   std::int64_t t = info.at("t").as_int();                       // throws on a kind mismatch
#pragma once

#include <rlay/dtype.hpp>
#include <rlay/error.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace rlay {

/// An n-dimensional array (ext 1): a dtype, a shape and C-order bytes. The bytes are held
/// through a shared owner, so copies are cheap and a large observation can be handed to
/// ZeroMQ as a frame without copying (the frame keeps the owner alive). Writing through
/// mutable_bytes() copies first if the bytes are shared or borrowed (copy on write).
class ndarray {
public:
    using shape_type = std::vector<std::size_t>;

    /// An empty float64 array of shape [0].
    ndarray() : ndarray(rlay::dtype::float64(), {0}) {}

    /// Zeros of `dt` and `shape`.
    ndarray(rlay::dtype dt, shape_type shape) : dtype_(dt), shape_(std::move(shape)) {
        nbytes_ = checked_nbytes(dtype_, shape_);
        auto storage = std::make_shared<std::vector<unsigned char>>(nbytes_);
        data_ = storage->data();
        owner_ = std::move(storage);
        writable_ = true;
    }

    /// A view of `nbytes` bytes at `data`, kept alive by `owner`: no copy is made.
    /// The bytes must not change while any copy of this array (or a frame made of it) lives.
    ndarray(rlay::dtype dt, shape_type shape, std::shared_ptr<const void> owner, const void* data, std::size_t nbytes)
        : dtype_(dt), shape_(std::move(shape)), owner_(std::move(owner)), data_(static_cast<const unsigned char*>(data)),
          nbytes_(nbytes) {
        std::size_t expected = checked_nbytes(dtype_, shape_);
        if (expected != nbytes_) {
            throw error(errc::bad_message, "array data holds " + std::to_string(nbytes_) + " bytes but dtype " + dtype_.str() +
                                               " and shape " + shape_text(shape_) + " need " + std::to_string(expected));
        }
    }

    /// A copy of `nbytes` bytes at `data`.
    /// The size is checked before anything is allocated: the shape may come from the wire, and
    /// a 20-byte body must not make the worker allocate (and zero) what its shape claims.
    static ndarray copy_of(rlay::dtype dt, shape_type shape, const void* data, std::size_t nbytes) {
        std::size_t expected = checked_nbytes(dt, shape);
        if (expected != nbytes) {
            throw error(errc::bad_message, "array data holds " + std::to_string(nbytes) + " bytes but dtype " + dt.str() +
                                               " and shape " + shape_text(shape) + " need " + std::to_string(expected));
        }
        auto storage = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(data),
                                                                    static_cast<const unsigned char*>(data) + nbytes);
        const void* at = storage->data();
        ndarray a(dt, std::move(shape), std::shared_ptr<const void>(std::move(storage)), at, nbytes);
        a.writable_ = true;
        return a;
    }

    /// An array of C++ items (moved in, not copied): `ndarray::from<float>({2}, {x, y})`.
    template <class T>
    static ndarray from(shape_type shape, std::vector<T> items) {
        static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>,
                      "ndarray::from takes integer or floating-point items; use from_bools for bool");
        auto storage = std::make_shared<std::vector<T>>(std::move(items));
        const void* at = storage->data();
        std::size_t n = storage->size() * sizeof(T);
        ndarray a(rlay::dtype::of<T>(), std::move(shape), std::shared_ptr<const void>(storage), at, n);
        a.writable_ = true;
        return a;
    }

    static ndarray from_bools(shape_type shape, const std::vector<bool>& items) {
        ndarray a(rlay::dtype::boolean(), std::move(shape));
        if (items.size() != a.size()) throw error(errc::bad_message, "from_bools: the item count does not match the shape");
        unsigned char* d = a.mutable_bytes();
        for (std::size_t i = 0; i < items.size(); ++i) d[i] = items[i] ? 1 : 0;
        return a;
    }

    const rlay::dtype& dtype() const noexcept { return dtype_; }
    const shape_type& shape() const noexcept { return shape_; }
    std::size_t ndim() const noexcept { return shape_.size(); }
    /// The number of items.
    std::size_t size() const noexcept { return dtype_.itemsize() ? nbytes_ / dtype_.itemsize() : 0; }
    std::size_t nbytes() const noexcept { return nbytes_; }
    const unsigned char* bytes() const noexcept { return data_; }
    /// The shared owner of the bytes (what a zero-copy frame keeps alive).
    const std::shared_ptr<const void>& owner() const noexcept { return owner_; }

    /// Writable bytes; copies them first if they are shared or borrowed.
    unsigned char* mutable_bytes() {
        if (!writable_ || owner_.use_count() > 1) {
            auto storage = std::make_shared<std::vector<unsigned char>>(data_, data_ + nbytes_);
            data_ = storage->data();
            owner_ = std::move(storage);
            writable_ = true;
        }
        return const_cast<unsigned char*>(data_);
    }

    /// The items as T; the dtype must be exactly T's (host byte order).
    template <class T>
    const T* data() const {
        check_view<T>();
        return reinterpret_cast<const T*>(data_);
    }

    template <class T>
    T* mutable_data() {
        check_view<T>();
        return reinterpret_cast<T*>(mutable_bytes());
    }

    /// Item `index` (C order) converted to T, from any numeric dtype.
    template <class T>
    T item(std::size_t index) const {
        static_assert(std::is_arithmetic_v<T>, "item<T> converts to an arithmetic type");
        if (index >= size()) throw std::out_of_range("index " + std::to_string(index) + " is out of range for an array of " + std::to_string(size()) + " items");
        T out{};
        detail::store_number(rlay::dtype::of<T>(), &out, detail::load_number(dtype_, data_ + index * dtype_.itemsize()));
        return out;
    }

    /// A copy converted to `to` (numeric dtypes; numpy's astype, with out-of-range floats refused).
    ndarray astype(const rlay::dtype& to) const {
        if (to == dtype_) return *this;
        ndarray out(to, shape_);
        detail::convert_items(dtype_, data_, to, out.mutable_bytes(), size());
        return out;
    }

    friend bool operator==(const ndarray& a, const ndarray& b) {
        return a.dtype_ == b.dtype_ && a.shape_ == b.shape_ && a.nbytes_ == b.nbytes_ &&
               (a.nbytes_ == 0 || std::memcmp(a.data_, b.data_, a.nbytes_) == 0);
    }
    friend bool operator!=(const ndarray& a, const ndarray& b) { return !(a == b); }

    static std::string shape_text(const shape_type& shape) {
        std::string s = "(";
        for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
        return s + (shape.size() == 1 ? ",)" : ")");
    }

private:
    template <class T>
    void check_view() const {
        if (rlay::dtype::of<T>() != dtype_) {
            throw error(errc::type_mismatch, "the array holds " + dtype_.numpy_repr() + ", not " + rlay::dtype::of<T>().numpy_repr());
        }
        if (reinterpret_cast<std::uintptr_t>(data_) % alignof(T) != 0) {
            throw error(errc::type_mismatch, "the array's bytes are not aligned for its dtype; use item<T>()");
        }
    }

    static std::size_t checked_nbytes(const rlay::dtype& dt, const shape_type& shape) {
        if (shape.size() > 32) throw error(errc::bad_message, "bad array shape: more than 32 dimensions");
        std::size_t n = dt.itemsize();
        for (std::size_t d : shape) {
            if (d != 0 && n > std::size_t(-1) / d) throw error(errc::bad_message, "bad array shape: too many bytes");
            n *= d;
        }
        return n;
    }

    rlay::dtype dtype_;
    shape_type shape_;
    std::shared_ptr<const void> owner_;
    const unsigned char* data_ = nullptr;
    std::size_t nbytes_ = 0;
    bool writable_ = false;
};

/// One value of the value codec (3.3): nil, bool, integer (int64 and uint64 range), big
/// integer (ext 4), float64, str, bin, list, map (ordered pairs; keys normally str), tuple
/// (ext 3), ndarray (ext 1), typed scalar (ext 2) or graph (ext 5: gymnasium's GraphInstance,
/// three items: nodes, edges, edge_links).
class value {
public:
    enum class kind { nil, boolean, integer, big_integer, floating, str, bin, list, map, tuple, ndarray, scalar, graph };
    using list_type = std::vector<value>;
    using map_type = std::vector<std::pair<value, value>>;

    value() noexcept {}
    value(std::nullptr_t) noexcept {}
    value(bool b) noexcept : kind_(kind::boolean), b_(b) {}
    template <class T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool> && !std::is_same_v<T, char>, int> = 0>
    value(T i) noexcept : kind_(kind::integer) {
        if constexpr (std::is_signed_v<T>) {
            negative_ = i < 0;
            u_ = static_cast<std::uint64_t>(static_cast<std::int64_t>(i));
        } else {
            u_ = static_cast<std::uint64_t>(i);
        }
    }
    value(double f) noexcept : kind_(kind::floating), f_(f) {}
    value(float f) noexcept : kind_(kind::floating), f_(f) {}
    value(const char* s) : kind_(kind::str), bytes_(s) {}
    value(std::string s) : kind_(kind::str), bytes_(std::move(s)) {}
    value(std::string_view s) : kind_(kind::str), bytes_(s) {}
    value(rlay::ndarray a) : kind_(kind::ndarray), array_(std::make_shared<const rlay::ndarray>(std::move(a))) {}

    // -- builders --------------------------------------------------------------------------
    static value str(std::string s) { return value(std::move(s)); }
    static value bin(std::string bytes) {
        value v;
        v.kind_ = kind::bin;
        v.bytes_ = std::move(bytes);
        return v;
    }
    static value bin(const void* data, std::size_t n) { return bin(std::string(static_cast<const char*>(data), n)); }
    static value list(list_type items = {}) {
        value v;
        v.kind_ = kind::list;
        v.items_ = std::move(items);
        return v;
    }
    static value list(std::initializer_list<value> items) { return list(list_type(items)); }
    static value tuple(list_type items = {}) {
        value v = list(std::move(items));
        v.kind_ = kind::tuple;
        return v;
    }
    static value tuple(std::initializer_list<value> items) { return tuple(list_type(items)); }
    /// A graph (ext 5), gymnasium's GraphInstance(nodes, edges, edge_links): for a Graph space,
    /// nodes is an ndarray of n rows (or a map, tuple, ... of them, as the node space batches),
    /// edges and edge_links both nil or both set (edge_links an integer ndarray of shape [m, 2]).
    /// Read its items with v[0], v[1], v[2].
    static value graph(value nodes, value edges, value edge_links) {
        value v = list({std::move(nodes), std::move(edges), std::move(edge_links)});
        v.kind_ = kind::graph;
        return v;
    }
    static value map(map_type entries = {}) {
        value v;
        v.kind_ = kind::map;
        v.entries_ = std::move(entries);
        return v;
    }
    static value map(std::initializer_list<std::pair<value, value>> entries) { return map(map_type(entries)); }
    /// An ndarray (ext 1) of C++ items: `value::array<float>({2}, {x, y})`.
    template <class T>
    static value array(ndarray::shape_type shape, std::vector<T> items) {
        return value(ndarray::from<T>(std::move(shape), std::move(items)));
    }
    /// A typed scalar (ext 2): `value::scalar<std::int8_t>(a)`, `value::scalar<float>(1.0f)`.
    template <class T>
    static value scalar(T x) {
        static_assert(std::is_arithmetic_v<T>, "value::scalar<T> takes bool, an integer or a floating-point type");
        ndarray a(dtype::of<T>(), {});
        if constexpr (std::is_same_v<T, bool>) a.mutable_bytes()[0] = x ? 1 : 0;
        else std::memcpy(a.mutable_bytes(), &x, sizeof(T));
        return scalar(std::move(a));
    }
    /// A typed scalar from a 0-d array (any dtype, also "|S3" or "<U2").
    static value scalar(ndarray zero_d) {
        if (zero_d.ndim() != 0) throw error(errc::type_mismatch, "a typed scalar needs a 0-d array");
        value v;
        v.kind_ = kind::scalar;
        v.array_ = std::make_shared<const rlay::ndarray>(std::move(zero_d));
        return v;
    }
    /// An integer given as big-endian two's complement bytes (1 to 1024 of them): an ext 4
    /// big integer, or a plain integer when it fits the int64 or uint64 range.
    static value big_integer(std::string_view be_twos_complement) {
        if (be_twos_complement.empty() || be_twos_complement.size() > 1024) {
            throw error(errc::bad_message, "a big integer needs 1 to 1024 bytes, got " + std::to_string(be_twos_complement.size()));
        }
        std::string b(be_twos_complement);
        std::size_t skip = 0;  // drop redundant sign bytes
        while (skip + 1 < b.size()) {
            unsigned char c = b[skip], next = b[skip + 1];
            if ((c == 0x00 && !(next & 0x80)) || (c == 0xff && (next & 0x80))) ++skip;
            else break;
        }
        b.erase(0, skip);
        bool negative = static_cast<unsigned char>(b[0]) & 0x80;
        if (b.size() <= 8 || (b.size() == 9 && b[0] == 0)) {
            std::uint64_t u = negative ? ~std::uint64_t(0) : 0;
            for (unsigned char c : b) u = (u << 8) | c;
            value v;
            v.kind_ = kind::integer;
            v.u_ = u;
            v.negative_ = negative;
            return v;
        }
        value v;
        v.kind_ = kind::big_integer;
        v.bytes_ = std::move(b);
        return v;
    }

    // -- what it is --------------------------------------------------------------------------
    kind type() const noexcept { return kind_; }
    bool is_nil() const noexcept { return kind_ == kind::nil; }
    bool is_bool() const noexcept { return kind_ == kind::boolean; }
    bool is_int() const noexcept { return kind_ == kind::integer; }
    bool is_big_int() const noexcept { return kind_ == kind::big_integer; }
    bool is_float() const noexcept { return kind_ == kind::floating; }
    bool is_str() const noexcept { return kind_ == kind::str; }
    bool is_bin() const noexcept { return kind_ == kind::bin; }
    bool is_list() const noexcept { return kind_ == kind::list; }
    bool is_tuple() const noexcept { return kind_ == kind::tuple; }
    bool is_map() const noexcept { return kind_ == kind::map; }
    bool is_ndarray() const noexcept { return kind_ == kind::ndarray; }
    bool is_scalar() const noexcept { return kind_ == kind::scalar; }
    bool is_graph() const noexcept { return kind_ == kind::graph; }
    /// An integer that is negative (plain or big).
    bool is_negative() const noexcept {
        return (kind_ == kind::integer && negative_) || (kind_ == kind::big_integer && (static_cast<unsigned char>(bytes_[0]) & 0x80));
    }

    // -- typed readers: each throws rlay::error (type_mismatch) on another kind --------------
    bool as_bool() const {
        expect(kind::boolean);
        return b_;
    }
    /// A plain integer in the int64 range (or a typed integer scalar).
    std::int64_t as_int() const {
        if (kind_ == kind::scalar && array_->dtype().is_numeric() && array_->dtype().type() != dtype::kind::floating &&
            array_->dtype().type() != dtype::kind::complex) {
            detail::number n = detail::load_number(array_->dtype(), array_->bytes());
            if (n.kind == dtype::kind::unsigned_int) return checked_int(n.u, false);
            return n.i;
        }
        expect(kind::integer);
        return checked_int(u_, negative_);
    }
    /// A plain integer in the uint64 range.
    std::uint64_t as_uint() const {
        expect(kind::integer);
        if (negative_) throw error(errc::type_mismatch, "the integer " + repr() + " is negative, not a uint64");
        return u_;
    }
    /// A float (msgpack float 32 or 64).
    double as_float() const {
        expect(kind::floating);
        return f_;
    }
    /// Any real number as a double: float, integer, big integer, bool or a numeric typed scalar.
    double to_double() const {
        switch (kind_) {
            case kind::floating: return f_;
            case kind::boolean: return b_ ? 1.0 : 0.0;
            case kind::integer: return negative_ ? static_cast<double>(static_cast<std::int64_t>(u_)) : static_cast<double>(u_);
            case kind::big_integer: {
                double d = 0;
                bool neg = is_negative();
                for (unsigned char c : bytes_) d = d * 256.0 + (neg ? static_cast<unsigned char>(~c) : c);
                return neg ? -(d + 1.0) : d;
            }
            case kind::scalar: return detail::number_to_double(detail::load_number(array_->dtype(), array_->bytes()));
            default: throw mismatch("a number");
        }
    }
    const std::string& as_str() const {
        expect(kind::str);
        return bytes_;
    }
    const std::string& as_bin() const {
        expect(kind::bin);
        return bytes_;
    }
    /// The big-endian two's complement bytes of a big integer (ext 4 payload, minimal).
    const std::string& big_integer_bytes() const {
        expect(kind::big_integer);
        return bytes_;
    }
    const list_type& as_list() const {
        expect(kind::list);
        return items_;
    }
    const list_type& as_tuple() const {
        expect(kind::tuple);
        return items_;
    }
    /// The items of a list, a tuple or a graph (nodes, edges, edge_links).
    const list_type& items() const {
        if (kind_ != kind::list && kind_ != kind::tuple && kind_ != kind::graph) throw mismatch("a list or tuple");
        return items_;
    }
    list_type& items() {
        if (kind_ != kind::list && kind_ != kind::tuple && kind_ != kind::graph) throw mismatch("a list or tuple");
        return items_;
    }
    const map_type& as_map() const {
        expect(kind::map);
        return entries_;
    }
    map_type& as_map() {
        expect(kind::map);
        return entries_;
    }
    const rlay::ndarray& as_ndarray() const {
        expect(kind::ndarray);
        return *array_;
    }
    /// A typed scalar's dtype and bytes, as a 0-d array.
    const rlay::ndarray& as_scalar() const {
        expect(kind::scalar);
        return *array_;
    }

    // -- containers -----------------------------------------------------------------------
    /// Items of a list, tuple or graph, entries of a map.
    std::size_t size() const {
        if (kind_ == kind::map) return entries_.size();
        return items().size();
    }
    /// Item `i` of a list or tuple (std::out_of_range past the end).
    template <class I, std::enable_if_t<std::is_integral_v<I> && !std::is_same_v<I, bool>, int> = 0>
    const value& operator[](I i) const {
        const list_type& all = items();
        if (i < 0 || static_cast<std::size_t>(i) >= all.size()) {
            throw std::out_of_range("index " + std::to_string(i) + " is out of range for " + std::to_string(all.size()) + " items");
        }
        return all[static_cast<std::size_t>(i)];
    }
    template <class I, std::enable_if_t<std::is_integral_v<I> && !std::is_same_v<I, bool>, int> = 0>
    value& operator[](I i) {
        return const_cast<value&>(static_cast<const value&>(*this)[i]);
    }
    /// The value of str key `key` in a map (the last one, if the map repeats it), or nullptr.
    const value* find(std::string_view key) const {
        expect(kind::map);
        for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
            if (it->first.kind_ == kind::str && it->first.bytes_ == key) return &it->second;
        }
        return nullptr;
    }
    value* find(std::string_view key) { return const_cast<value*>(static_cast<const value&>(*this).find(key)); }
    bool contains(std::string_view key) const { return find(key) != nullptr; }
    /// The value of str key `key` in a map; rlay::error (key_not_found) if it has none.
    const value& at(std::string_view key) const {
        const value* v = find(key);
        if (!v) throw error(errc::key_not_found, "no key '" + std::string(key) + "' in the map");
        return *v;
    }
    /// The value of `key` in a map, inserted as nil if missing; a nil value becomes an empty map.
    value& operator[](std::string_view key) {
        if (kind_ == kind::nil) kind_ = kind::map;
        expect(kind::map);
        for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
            if (it->first.kind_ == kind::str && it->first.bytes_ == key) return it->second;
        }
        entries_.emplace_back(value(key), value());
        return entries_.back().second;
    }
    value& operator[](const char* key) { return (*this)[std::string_view(key)]; }
    /// Append to a list or tuple; a nil value becomes a list.
    void push_back(value item) {
        if (kind_ == kind::nil) kind_ = kind::list;
        if (kind_ == kind::graph) throw mismatch("a list or tuple");  // a graph has exactly 3 items
        items().push_back(std::move(item));
    }

    friend bool operator==(const value& a, const value& b) {
        if (a.kind_ != b.kind_) return false;
        switch (a.kind_) {
            case kind::nil: return true;
            case kind::boolean: return a.b_ == b.b_;
            case kind::integer: return a.u_ == b.u_ && a.negative_ == b.negative_;
            case kind::floating: return a.f_ == b.f_;
            case kind::big_integer: case kind::str: case kind::bin: return a.bytes_ == b.bytes_;
            case kind::list: case kind::tuple: case kind::graph: return a.items_ == b.items_;
            case kind::map: return a.entries_ == b.entries_;
            case kind::ndarray: case kind::scalar: return *a.array_ == *b.array_;
        }
        return false;
    }
    friend bool operator!=(const value& a, const value& b) { return !(a == b); }

    /// A short Python-like text of the value, for messages.
    std::string repr(std::size_t limit = 80) const {
        std::string s;
        append_repr(s, limit);
        if (s.size() > limit) s = s.substr(0, limit) + "...";
        return s;
    }

    static const char* kind_name(kind k) noexcept {
        switch (k) {
            case kind::nil: return "nil";
            case kind::boolean: return "bool";
            case kind::integer: return "int";
            case kind::big_integer: return "big int";
            case kind::floating: return "float";
            case kind::str: return "str";
            case kind::bin: return "bin";
            case kind::list: return "list";
            case kind::map: return "map";
            case kind::tuple: return "tuple";
            case kind::ndarray: return "ndarray";
            case kind::scalar: return "typed scalar";
            case kind::graph: return "graph";
        }
        return "?";
    }

private:
    void expect(kind k) const {
        if (kind_ != k) throw mismatch(std::string(k == kind::integer ? "an " : "a ") + kind_name(k));
    }
    error mismatch(const std::string& wanted) const {
        return error(errc::type_mismatch, "expected " + wanted + ", got " + kind_name(kind_) + " " + repr(40));
    }
    static std::int64_t checked_int(std::uint64_t u, bool negative) {
        if (!negative && u > static_cast<std::uint64_t>(INT64_MAX)) {
            throw error(errc::type_mismatch, "the integer " + std::to_string(u) + " does not fit an int64");
        }
        return static_cast<std::int64_t>(u);
    }

    /// The decimal text of big-endian two's complement bytes.
    static std::string big_decimal(const std::string& be) {
        bool negative = static_cast<unsigned char>(be[0]) & 0x80;
        std::vector<unsigned> mag(be.begin(), be.end());
        for (unsigned& b : mag) b = static_cast<unsigned char>(negative ? ~b : b);
        if (negative) {  // two's complement: magnitude = ~x + 1
            for (std::size_t i = mag.size(); i-- > 0;) {
                if (++mag[i] < 256) break;
                mag[i] = 0;
            }
        }
        std::string digits;
        for (;;) {
            unsigned rem = 0;
            bool nonzero = false;
            for (unsigned& b : mag) {
                unsigned cur = rem * 256 + b;
                b = cur / 10;
                rem = cur % 10;
                nonzero = nonzero || b != 0;
            }
            digits += static_cast<char>('0' + rem);
            if (!nonzero) break;
        }
        if (negative) digits += '-';
        return std::string(digits.rbegin(), digits.rend());
    }

    void append_repr(std::string& s, std::size_t limit) const {
        if (s.size() > limit) return;
        switch (kind_) {
            case kind::nil: s += "None"; break;
            case kind::boolean: s += b_ ? "True" : "False"; break;
            case kind::integer: s += negative_ ? std::to_string(static_cast<std::int64_t>(u_)) : std::to_string(u_); break;
            case kind::big_integer: s += big_decimal(bytes_); break;
            case kind::floating: {
                char buf[32];
                std::snprintf(buf, sizeof buf, "%.17g", f_);
                s += buf;
                break;
            }
            case kind::str: s += "'" + bytes_ + "'"; break;
            case kind::bin: s += "b<" + std::to_string(bytes_.size()) + " bytes>"; break;
            case kind::list: case kind::tuple: {
                s += kind_ == kind::list ? "[" : "(";
                for (std::size_t i = 0; i < items_.size() && s.size() <= limit; ++i) {
                    if (i) s += ", ";
                    items_[i].append_repr(s, limit);
                }
                s += kind_ == kind::list ? "]" : (items_.size() == 1 ? ",)" : ")");
                break;
            }
            case kind::map: {
                s += "{";
                for (std::size_t i = 0; i < entries_.size() && s.size() <= limit; ++i) {
                    if (i) s += ", ";
                    entries_[i].first.append_repr(s, limit);
                    s += ": ";
                    entries_[i].second.append_repr(s, limit);
                }
                s += "}";
                break;
            }
            case kind::ndarray: s += "array(" + array_->dtype().str() + " " + ndarray::shape_text(array_->shape()) + ")"; break;
            case kind::scalar: s += "scalar(" + array_->dtype().str() + ")"; break;
            case kind::graph: {
                const char* names[3] = {"nodes=", ", edges=", ", edge_links="};
                s += "GraphInstance(";
                for (std::size_t i = 0; i < items_.size() && i < 3 && s.size() <= limit; ++i) {
                    s += names[i];
                    items_[i].append_repr(s, limit);
                }
                s += ")";
                break;
            }
        }
    }

    kind kind_ = kind::nil;
    bool negative_ = false;  // integer: u_ holds an int64 in two's complement
    union {
        bool b_;
        std::uint64_t u_ = 0;
        double f_;
    };
    std::string bytes_;     // str, bin, big integer (big-endian two's complement, minimal)
    list_type items_;       // list, tuple, graph
    map_type entries_;      // map
    // ndarray, scalar (0-d). Behind a pointer so that every other value (a decoded message holds
    // millions) is smaller and makes no allocation of an empty array; never changed once set.
    std::shared_ptr<const rlay::ndarray> array_;
};

}  // namespace rlay
