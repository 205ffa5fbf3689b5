// rlay/detail/msgpack.hpp: the msgpack reader and writer of the value codec (3.2-3.7).
//
// Why not msgpack-c: the refusal rules of 3.7 (trailing bytes, invalid UTF-8, ext codes
// other than 1-5 including the timestamp -1, every ext format, nesting limits, ext payload
// rules, msgpack-numpy maps, the dtype rules of 3.5) have to be checked at the byte level
// anyway, and a game build (Unreal, a console toolchain) is simpler with no Boost or
// msgpack-c to configure. This file is the whole codec: the writer encodes exactly as the
// Python reference (`msgpack.packb(..., use_bin_type=True)`) does, smallest formats first,
// so that the space maps of 4.1 are byte-identical; the reader never recurses on arrays or
// maps (an explicit stack), so a hostile depth cannot exhaust a game thread's stack.
#pragma once

#include <rlay/dtype.hpp>
#include <rlay/error.hpp>
#include <rlay/value.hpp>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace rlay {
namespace detail {
namespace msgpack {

constexpr int max_tuple_depth = 16;      // 3.7 item 4: tuples (ext 3) and graphs (ext 5) together
// Arrays and maps nested, counted across tuples too (3.7 item 4): a value's copy and destructor
// recurse once per level, and 16 tuples of 1024 levels each would overflow a 1 MB thread stack.
constexpr int max_container_depth = 1024;
constexpr std::size_t max_big_integer_bytes = 1024;
/// Array items and map keys and values one decode may make, ext payloads and tuples included.
/// A decoded value takes ~115 bytes for each byte of input (a nil), so without a bound a 100 MB
/// body of nils takes ~11 GB. 2^21 fits a seeds list of the 1,000,000 envs 5.2 allows; lower
/// it with rlay::config::max_decoded_values.
constexpr std::size_t default_max_values = std::size_t(1) << 21;
constexpr const char* msgpack_numpy_refusal =
    "refusing a msgpack-numpy array map: its decoder runs pickle on object arrays; "
    "rlay carries arrays as raw frames or as ext type 1";

inline error malformed(const std::string& why) { return error(errc::bad_message, "malformed msgpack: " + why); }

/// Whether `s` is valid UTF-8 as Python decodes it (no overlongs, no surrogates, <= U+10FFFF):
/// the reader refuses a str that is not (3.7 item 1), and the writer never writes one.
inline bool valid_utf8(std::string_view s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    std::size_t n = s.size(), i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c < 0x80) { ++i; continue; }
        std::size_t len;
        std::uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) { len = 2; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { len = 3; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { len = 4; cp = c & 0x07; min = 0x10000; }
        else return false;
        if (i + len > n) return false;
        for (std::size_t j = 1; j < len; ++j) {
            if ((p[i + j] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (p[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += len;
    }
    return true;
}

/// `s` with each byte that is not part of valid UTF-8 replaced by U+FFFD (as Python's
/// errors="replace" does, near enough): for free text such as an error message, which may quote
/// what env code or a peer sent.
inline std::string valid_utf8_text(std::string_view s) {
    if (valid_utf8(s)) return std::string(s);
    std::string out;
    std::size_t i = 0;
    while (i < s.size()) {
        std::size_t len = 1;
        auto c = static_cast<unsigned char>(s[i]);
        if (c >= 0x80) len = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (len && i + len <= s.size() && valid_utf8(s.substr(i, len))) {
            out += s.substr(i, len);
            i += len;
        } else {
            out += "\xef\xbf\xbd";
            ++i;
        }
    }
    return out;
}

// -- writer ------------------------------------------------------------------------------

class writer {
public:
    std::string out;

    void nil() { out += '\xc0'; }
    void boolean(bool b) { out += b ? '\xc3' : '\xc2'; }
    void uint(std::uint64_t u) {
        if (u < 128) byte(u);
        else if (u < 0x100) { byte(0xcc); be(u, 1); }
        else if (u < 0x10000) { byte(0xcd); be(u, 2); }
        else if (u < 0x100000000ull) { byte(0xce); be(u, 4); }
        else { byte(0xcf); be(u, 8); }
    }
    void sint(std::int64_t i) {
        if (i >= 0) return uint(static_cast<std::uint64_t>(i));
        if (i >= -32) byte(static_cast<std::uint8_t>(i));
        else if (i >= -128) { byte(0xd0); be(static_cast<std::uint64_t>(i), 1); }
        else if (i >= -32768) { byte(0xd1); be(static_cast<std::uint64_t>(i), 2); }
        else if (i >= -2147483648ll) { byte(0xd2); be(static_cast<std::uint64_t>(i), 4); }
        else { byte(0xd3); be(static_cast<std::uint64_t>(i), 8); }
    }
    void float64(double d) {
        std::uint64_t bits;
        std::memcpy(&bits, &d, 8);
        byte(0xcb);
        be(bits, 8);
    }
    /// A str; rlay::error (bad_message) if it is not valid UTF-8, which every receiver refuses (3.3).
    void str(std::string_view s) {
        if (!valid_utf8(s)) throw error(errc::bad_message, "a str that is not valid UTF-8 cannot cross the wire (send bytes as bin)");
        if (s.size() < 32) byte(0xa0 | s.size());
        else if (s.size() < 0x100) { byte(0xd9); be(s.size(), 1); }
        else if (s.size() < 0x10000) { byte(0xda); be(s.size(), 2); }
        else { byte(0xdb); be(s.size(), 4); }
        out += s;
    }
    void bin(std::string_view b) {
        if (b.size() < 0x100) { byte(0xc4); be(b.size(), 1); }
        else if (b.size() < 0x10000) { byte(0xc5); be(b.size(), 2); }
        else { byte(0xc6); be(b.size(), 4); }
        out += b;
    }
    void array(std::size_t n) {
        if (n < 16) byte(0x90 | n);
        else if (n < 0x10000) { byte(0xdc); be(n, 2); }
        else { byte(0xdd); be(n, 4); }
    }
    void map(std::size_t n) {
        if (n < 16) byte(0x80 | n);
        else if (n < 0x10000) { byte(0xde); be(n, 2); }
        else { byte(0xdf); be(n, 4); }
    }
    void ext(std::int8_t code, std::string_view payload) {
        std::size_t n = payload.size();
        if (n == 1) byte(0xd4);
        else if (n == 2) byte(0xd5);
        else if (n == 4) byte(0xd6);
        else if (n == 8) byte(0xd7);
        else if (n == 16) byte(0xd8);
        else if (n < 0x100) { byte(0xc7); be(n, 1); }
        else if (n < 0x10000) { byte(0xc8); be(n, 2); }
        else { byte(0xc9); be(n, 4); }
        byte(static_cast<std::uint8_t>(code));
        out += payload;
    }
    /// Bytes that are already msgpack (an echoed `req`).
    void raw(std::string_view bytes) { out += bytes; }

    /// Encode `v`: with the value codec, or as plain msgpack (`plain`: a header, where an
    /// ext value is refused, 3.2).
    void write(const value& v, bool plain = false, int tuple_depth = 0, int depth = 0) {
        if (depth > 511) throw error(errc::bad_message, "cannot encode a value nested more than 511 deep");
        using k = value::kind;
        if (plain && (v.type() == k::tuple || v.type() == k::ndarray || v.type() == k::scalar || v.type() == k::big_integer ||
                      v.type() == k::graph)) {
            throw error(errc::bad_message, std::string("a header cannot carry a ") + value::kind_name(v.type()) +
                                               " (plain msgpack only, no extension types)");
        }
        switch (v.type()) {
            case k::nil: nil(); break;
            case k::boolean: boolean(v.as_bool()); break;
            case k::integer:
                if (v.is_negative()) sint(v.as_int());
                else uint(v.as_uint());
                break;
            case k::big_integer: {
                const std::string& b = v.big_integer_bytes();
                std::string payload;
                // Python writes (bit_length + 8) // 8 bytes: one more than the minimal two's
                // complement for -2^(8k-1) (bytes 80 00 ... 00).
                if (static_cast<unsigned char>(b[0]) == 0x80 && b.find_first_not_of('\0', 1) == std::string::npos) payload = "\xff";
                payload += b;
                if (payload.size() > max_big_integer_bytes) throw error(errc::bad_message, "an integer is too large for the wire");
                ext(4, payload);
                break;
            }
            case k::floating: float64(v.as_float()); break;
            case k::str: str(v.as_str()); break;
            case k::bin: bin(v.as_bin()); break;
            case k::list:
                array(v.as_list().size());
                for (const value& item : v.as_list()) write(item, plain, tuple_depth, depth + 1);
                break;
            case k::map:
                map(v.as_map().size());
                for (const auto& [key, item] : v.as_map()) {
                    write(key, plain, tuple_depth, depth + 1);
                    write(item, plain, tuple_depth, depth + 1);
                }
                break;
            case k::tuple: case k::graph: {
                if (v.type() == k::graph && v.items().size() != 3) {  // (env code can change a graph's items)
                    throw error(errc::bad_message, "a graph has 3 items (nodes, edges, edge_links), not " + std::to_string(v.items().size()));
                }
                if (tuple_depth >= max_tuple_depth) {
                    throw error(errc::bad_message, "tuples nested more than " + std::to_string(max_tuple_depth) +
                                                       " deep (graphs count as tuples)");
                }
                writer inner;
                inner.array(v.items().size());
                for (const value& item : v.items()) inner.write(item, false, tuple_depth + 1, 1);
                ext(v.type() == k::tuple ? 3 : 5, inner.out);
                break;
            }
            case k::ndarray: case k::scalar: {
                const ndarray& a = v.type() == k::ndarray ? v.as_ndarray() : v.as_scalar();
                writer inner;
                inner.array(v.type() == k::ndarray ? 3 : 2);
                inner.str(a.dtype().str());
                if (v.type() == k::ndarray) {
                    inner.array(a.ndim());
                    for (std::size_t d : a.shape()) inner.uint(d);
                }
                inner.bin(std::string_view(reinterpret_cast<const char*>(a.bytes()), a.nbytes()));
                ext(v.type() == k::ndarray ? 1 : 2, inner.out);
                break;
            }
        }
    }

private:
    void byte(std::uint64_t b) { out += static_cast<char>(static_cast<std::uint8_t>(b)); }
    void be(std::uint64_t x, int n) {
        for (int i = n - 1; i >= 0; --i) out += static_cast<char>(static_cast<std::uint8_t>(x >> (8 * i)));
    }
};

/// `v` in the value codec (bodies).
inline std::string encode(const value& v) {
    writer w;
    w.write(v);
    return std::move(w.out);
}

/// `v` as plain msgpack (headers, space maps): refuses extension types.
inline std::string encode_plain(const value& v) {
    writer w;
    w.write(v, true);
    return std::move(w.out);
}

// -- reader ------------------------------------------------------------------------------

/// Python's hashability, which decides what the reference accepts as a map key.
inline bool hashable(const value& v) {
    switch (v.type()) {
        case value::kind::list: case value::kind::map: case value::kind::ndarray: return false;
        case value::kind::tuple: case value::kind::graph:
            for (const value& item : v.items()) if (!hashable(item)) return false;
            return true;
        default: return true;
    }
}

enum class mode {
    values,  ///< the value codec: ext 1-5 decoded and checked, any other ext refused (bodies)
    plain,   ///< plain msgpack: an ext value is not decoded and reads as nil (headers, ext payloads)
};

class reader {
public:
    /// `max_values`: the array items and map keys and values this decode may make in all.
    reader(std::string_view data, mode m, std::size_t max_values = default_max_values)
        : data_(data), mode_(m), tuple_depth_(0), own_budget_(max_values), budget_(&own_budget_) {}
    reader(const reader&) = delete;
    reader& operator=(const reader&) = delete;

    /// Decode one value that spans all of the data (trailing bytes are refused).
    /// `capture`: the top-level map key whose value's raw bytes to keep (a header's "req").
    value read_all(std::string_view capture = {}) {
        value root;
        std::vector<frame> stack;
        stack_ = &stack;
        value* target = &root;
        bool capturing = false;
        std::size_t capture_begin = 0;
        for (;;) {
            read_item(*target, stack);
            for (;;) {
                if (capturing && stack.size() == 1) {
                    captured_ = std::string(data_.substr(capture_begin, pos_ - capture_begin));
                    has_capture_ = true;
                    capturing = false;
                }
                if (stack.empty()) break;
                frame& f = stack.back();
                if (f.remaining == 0) {
                    if (f.is_map && mode_ == mode::values) check_not_msgpack_numpy(*f.container);
                    stack.pop_back();
                    continue;
                }
                --f.remaining;
                if (f.is_map) {
                    value key;
                    std::size_t at = pos_;
                    if (at < data_.size()) {
                        unsigned char c = static_cast<unsigned char>(data_[at]);
                        if ((c >= 0x80 && c <= 0x9f) || c == 0xdc || c == 0xdd || c == 0xde || c == 0xdf) {
                            throw malformed(std::string("TypeError: unhashable type: '") + (c <= 0x8f || c >= 0xde ? "dict" : "list") + "'");
                        }
                    }
                    read_item(key, stack);
                    if (!hashable(key)) throw malformed(std::string("TypeError: unhashable type: '") + value::kind_name(key.type()) + "'");
                    if (stack.size() == 1 && !capture.empty() && key.is_str() && key.as_str() == capture) {
                        capturing = true;
                        capture_begin = pos_;
                    }
                    auto& entries = f.container->as_map();
                    entries.emplace_back(std::move(key), value());
                    target = &entries.back().second;
                } else {
                    auto& items = f.container->items();
                    items.emplace_back();
                    target = &items.back();
                }
                break;
            }
            if (stack.empty()) break;
        }
        if (pos_ != data_.size()) {
            throw malformed("ExtraData: " + std::to_string(data_.size() - pos_) + " trailing bytes after the value");
        }
        return root;
    }

    /// The raw msgpack of the captured key's value, if the map had that key.
    bool has_capture() const noexcept { return has_capture_; }
    const std::string& captured() const noexcept { return captured_; }

private:
    struct frame {
        value* container;
        std::size_t remaining;
        bool is_map;
    };

    void need(std::size_t n) const {
        if (n > data_.size() - pos_) throw malformed("the data ends inside a value");
    }
    std::uint64_t be(std::size_t n) {
        need(n);
        std::uint64_t x = 0;
        for (std::size_t i = 0; i < n; ++i) x = (x << 8) | static_cast<unsigned char>(data_[pos_ + i]);
        pos_ += n;
        return x;
    }
    std::string_view take(std::size_t n) {
        need(n);
        std::string_view s = data_.substr(pos_, n);
        pos_ += n;
        return s;
    }

    void open(value& target, std::vector<frame>& stack, std::size_t count, bool is_map) {
        if (outer_depth_ + stack.size() + 1 > static_cast<std::size_t>(max_container_depth)) {
            throw malformed("StackError: arrays and maps nested more than " + std::to_string(max_container_depth) + " deep");
        }
        // every item needs at least one byte: a count beyond the data is malformed (and not allocated)
        if (count > (data_.size() - pos_) / (is_map ? 2 : 1) + 0) throw malformed("the data ends inside a container");
        std::size_t values = is_map ? 2 * count : count;  // <= the data's size: no overflow
        if (values > *budget_) {
            throw error(errc::bad_message, "the message holds more values than a decode may make (rlay::config::max_decoded_values)");
        }
        *budget_ -= values;
        target = is_map ? value::map() : value::list();
        if (is_map) target.as_map().reserve(count);
        else target.items().reserve(count);
        if (count) stack.push_back(frame{&target, count, is_map});
    }

    void read_item(value& target, std::vector<frame>& stack) {
        need(1);
        unsigned char c = static_cast<unsigned char>(data_[pos_++]);
        if (c <= 0x7f) { target = value(static_cast<std::uint64_t>(c)); return; }
        if (c >= 0xe0) { target = value(static_cast<std::int64_t>(static_cast<std::int8_t>(c))); return; }
        if (c >= 0xa0 && c <= 0xbf) return read_str(target, c & 0x1f);
        if (c >= 0x90 && c <= 0x9f) return open(target, stack, c & 0x0f, false);
        if (c >= 0x80 && c <= 0x8f) return open(target, stack, c & 0x0f, true);
        switch (c) {
            case 0xc0: target = value(); return;
            case 0xc2: target = value(false); return;
            case 0xc3: target = value(true); return;
            case 0xcc: target = value(be(1)); return;
            case 0xcd: target = value(be(2)); return;
            case 0xce: target = value(be(4)); return;
            case 0xcf: target = value(be(8)); return;
            case 0xd0: target = value(static_cast<std::int64_t>(static_cast<std::int8_t>(be(1)))); return;
            case 0xd1: target = value(static_cast<std::int64_t>(static_cast<std::int16_t>(be(2)))); return;
            case 0xd2: target = value(static_cast<std::int64_t>(static_cast<std::int32_t>(be(4)))); return;
            case 0xd3: target = value(static_cast<std::int64_t>(be(8))); return;
            case 0xca: {
                std::uint32_t bits = static_cast<std::uint32_t>(be(4));
                float f;
                std::memcpy(&f, &bits, 4);
                target = value(static_cast<double>(f));
                return;
            }
            case 0xcb: {
                std::uint64_t bits = be(8);
                double d;
                std::memcpy(&d, &bits, 8);
                target = value(d);
                return;
            }
            case 0xd9: return read_str(target, be(1));
            case 0xda: return read_str(target, be(2));
            case 0xdb: return read_str(target, be(4));
            case 0xc4: target = value::bin(std::string(take(be(1)))); return;
            case 0xc5: target = value::bin(std::string(take(be(2)))); return;
            case 0xc6: target = value::bin(std::string(take(be(4)))); return;
            case 0xdc: return open(target, stack, be(2), false);
            case 0xdd: return open(target, stack, be(4), false);
            case 0xde: return open(target, stack, be(2), true);
            case 0xdf: return open(target, stack, be(4), true);
            case 0xd4: return read_ext(target, 1);
            case 0xd5: return read_ext(target, 2);
            case 0xd6: return read_ext(target, 4);
            case 0xd7: return read_ext(target, 8);
            case 0xd8: return read_ext(target, 16);
            case 0xc7: return read_ext(target, be(1));
            case 0xc8: return read_ext(target, be(2));
            case 0xc9: return read_ext(target, be(4));
            default: throw malformed("the byte 0xc1 is never used in msgpack");
        }
    }

    void read_str(value& target, std::size_t n) {
        std::string_view s = take(n);
        if (!valid_utf8(s)) throw malformed("UnicodeDecodeError: a str is not valid UTF-8");
        target = value(std::string(s));
    }

    void read_ext(value& target, std::size_t n) {
        need(1);
        auto code = static_cast<std::int8_t>(data_[pos_++]);
        std::string_view payload = take(n);
        if (code == -1) {  // msgpack's timestamp: only 4, 8 or 12 bytes, nanoseconds below 1e9
            bool ok = n == 4;
            if (n == 8) ok = (reader_be(payload.substr(0, 4)) >> 2) <= 999999999u;
            if (n == 12) ok = reader_be(payload.substr(0, 4)) <= 999999999u;
            if (!ok) throw malformed("ValueError: invalid timestamp data (length " + std::to_string(n) + ")");
            if (mode_ == mode::values) throw error(errc::bad_message, "unknown msgpack extension type -1 (a msgpack timestamp)");
            target = value();  // opaque in a header
            return;
        }
        if (mode_ == mode::plain) {
            target = value();  // opaque: a header does not decode extension values (3.2)
            return;
        }
        switch (code) {
            case 1: case 2: {
                value fields = reader(payload, mode::plain, 0, budget_, outer_depth_ + stack_->size()).read_all();
                std::size_t want = code == 1 ? 3 : 2;
                if (!fields.is_list() || fields.size() != want || !fields.as_list().back().is_bin()) {
                    throw error(errc::bad_message, code == 1 ? "ndarray extension must hold [dtype, shape, data]"
                                                             : "numpy scalar extension must hold [dtype, data]");
                }
                const auto& f = fields.as_list();
                if (!f[0].is_str()) throw error(errc::bad_message, "unsupported dtype " + f[0].repr() + ": expected a str");
                dtype dt = dtype::parse(f[0].as_str());
                ndarray::shape_type shape;
                if (code == 1) shape = read_shape(f[1]);
                const std::string& data = f.back().as_bin();
                ndarray a = ndarray::copy_of(dt, std::move(shape), data.data(), data.size());
                check_code_points(a);
                target = code == 1 ? value(std::move(a)) : value::scalar(std::move(a));
                return;
            }
            case 3: case 5: {
                if (tuple_depth_ >= max_tuple_depth) {
                    throw error(errc::bad_message, "tuples nested more than " + std::to_string(max_tuple_depth) +
                                                       " deep (graphs count as tuples)");
                }
                value items = reader(payload, mode::values, tuple_depth_ + 1, budget_, outer_depth_ + stack_->size()).read_all();
                if (code == 3) {
                    if (!items.is_list()) throw error(errc::bad_message, "tuple extension must hold an array");
                    target = value::tuple(std::move(items.items()));
                } else {
                    if (!items.is_list() || items.size() != 3) {
                        throw error(errc::bad_message, "graph extension must hold an array of 3: nodes, edges, edge_links");
                    }
                    auto& it = items.items();
                    target = value::graph(std::move(it[0]), std::move(it[1]), std::move(it[2]));
                }
                return;
            }
            case 4:
                if (n == 0 || n > max_big_integer_bytes) throw error(errc::bad_message, "bad big int extension");
                target = value::big_integer(payload);
                return;
            default:
                throw error(errc::bad_message, "unknown msgpack extension type " + std::to_string(code));
        }
    }

    static std::uint64_t reader_be(std::string_view s) {
        std::uint64_t x = 0;
        for (char c : s) x = (x << 8) | static_cast<unsigned char>(c);
        return x;
    }

    static ndarray::shape_type read_shape(const value& shape) {
        auto bad = [&] {
            return error(errc::bad_message, "bad array shape " + shape.repr() + ": expected a list of at most 32 non-negative ints");
        };
        if (!shape.is_list() || shape.size() > 32) throw bad();
        ndarray::shape_type out;
        for (const value& d : shape.as_list()) {
            if (!d.is_int() || d.is_negative()) throw bad();
            std::uint64_t n = d.as_uint();
            if (static_cast<std::uint64_t>(static_cast<std::size_t>(n)) != n) throw bad();  // 32-bit hosts
            out.push_back(static_cast<std::size_t>(n));
        }
        return out;
    }

    void check_not_msgpack_numpy(const value& map) const {
        int found = 0;
        for (const auto& entry : map.as_map()) {
            if (!entry.first.is_bin()) continue;
            const std::string& k = entry.first.as_bin();
            if (k == "nd") found |= 1;
            else if (k == "type") found |= 2;
            else if (k == "data") found |= 4;
        }
        if (found == 7) throw error(errc::bad_message, msgpack_numpy_refusal);
    }

public:
    /// A unicode array ("U") holding a code point past U+10FFFF is refused (3.7 item 3).
    static void check_code_points(const ndarray& a) {
        if (a.dtype().type() != dtype::kind::unicode) return;
        bool big = a.dtype().byte_order() == '>';
        const unsigned char* p = a.bytes();
        for (std::size_t i = 0; i + 4 <= a.nbytes(); i += 4) {
            std::uint32_t cp = big ? (std::uint32_t(p[i]) << 24 | std::uint32_t(p[i + 1]) << 16 | std::uint32_t(p[i + 2]) << 8 | p[i + 3])
                                   : (std::uint32_t(p[i + 3]) << 24 | std::uint32_t(p[i + 2]) << 16 | std::uint32_t(p[i + 1]) << 8 | p[i]);
            if (cp > 0x10ffff) throw error(errc::bad_message, "a " + a.dtype().str() + " array holds a code point beyond U+10FFFF");
        }
    }

private:
    std::string_view data_;
    std::size_t pos_ = 0;
    mode mode_;
    int tuple_depth_;
    std::string captured_;
    bool has_capture_ = false;
    std::size_t own_budget_;
    std::size_t* budget_;  // own_budget_, or the outermost reader's (a nested ext payload)
    std::size_t outer_depth_ = 0;  // arrays and maps open in the readers around this one
    const std::vector<frame>* stack_ = nullptr;  // read_all's, while it runs

    /// The reader of a nested ext payload: it spends the outer decode's budget and depth.
    reader(std::string_view data, mode m, int tuple_depth, std::size_t* budget, std::size_t outer_depth)
        : data_(data), mode_(m), tuple_depth_(tuple_depth), own_budget_(0), budget_(budget), outer_depth_(outer_depth) {}
};

/// Decode a body (value codec); refuses everything 3.7 lists.
inline value decode(std::string_view data, std::size_t max_values = default_max_values) {
    return reader(data, mode::values, max_values).read_all();
}

/// Decode plain msgpack (a header): extension values read as nil.
inline value decode_plain(std::string_view data, std::size_t max_values = default_max_values) {
    return reader(data, mode::plain, max_values).read_all();
}

}  // namespace msgpack
}  // namespace detail
}  // namespace rlay
