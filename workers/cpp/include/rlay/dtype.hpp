// rlay/dtype.hpp: dtype strings (3.5) and the numeric conversions between them.
#pragma once

#include <rlay/error.hpp>

#include <cmath>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>

namespace rlay {

namespace detail {
constexpr bool host_little_endian() noexcept {
#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return false;
#else
    return true;
#endif
}
constexpr char native_order = host_little_endian() ? '<' : '>';
}  // namespace detail

/// A dtype as the wire names it (3.5): byte order, kind and size, e.g. "<f4", "|u1", "|b1",
/// "<U7". Only what the protocol accepts can be built; the text is always numpy's own
/// `dtype.str` (so "<u1" reads as "|u1" and "<f04" as "<f4").
class dtype {
public:
    enum class kind : char {
        boolean = 'b',
        signed_int = 'i',
        unsigned_int = 'u',
        floating = 'f',
        complex = 'c',
        bytes = 'S',
        unicode = 'U',
    };

    /// Parse a dtype string from the wire; throws rlay::error (bad_message) on anything 3.5 refuses.
    static dtype parse(std::string_view text) {
        auto refuse = [&](const char* why) {
            return error(errc::bad_message, "unsupported dtype '" + std::string(text) + "': " + why);
        };
        if (text.size() < 3 || text.size() > 6) throw refuse("expected a numpy dtype string such as '<f4', '|u1' or '|b1'");
        char order = text[0], k = text[1];
        if (order != '<' && order != '>' && order != '|') throw refuse("the byte order must be '<', '>' or '|'");
        if (std::string_view("biufcSU").find(k) == std::string_view::npos)
            throw refuse("only numeric, bool, bytes and unicode dtypes cross the wire (never object or structured ones)");
        std::uint32_t n = 0;
        for (char c : text.substr(2)) {
            if (c < '0' || c > '9') throw refuse("expected a numpy dtype string such as '<f4', '|u1' or '|b1'");
            n = n * 10 + static_cast<std::uint32_t>(c - '0');
        }
        bool known = false;
        switch (k) {
            case 'b': known = n == 1; break;
            case 'i': case 'u': known = n == 1 || n == 2 || n == 4 || n == 8; break;
            case 'f': known = n == 2 || n == 4 || n == 8 || n == 16; break;  // f16: numpy's long double here
            case 'c': known = n == 8 || n == 16 || n == 32; break;
            default: known = true;  // S and U: any count
        }
        if (!known) throw refuse("numpy does not know it");
        if (n == 0) throw refuse("its items have no size");
        std::size_t itemsize = k == 'U' ? std::size_t(n) * 4 : n;
        if (order == '|' && itemsize > 1 && k != 'S') throw refuse("it needs a byte order, '<' or '>'");
        if (itemsize == 1 || k == 'S') order = '|';
        return dtype(order, static_cast<kind>(k), n);
    }

    /// The dtype of a C++ arithmetic type in the host's byte order.
    template <class T>
    static dtype of() {
        static_assert(std::is_arithmetic_v<T>, "dtype::of<T> takes bool, an integer or a floating-point type");
        if constexpr (std::is_same_v<T, bool>) return dtype('|', kind::boolean, 1);
        else if constexpr (std::is_floating_point_v<T>) {
            static_assert(sizeof(T) == 4 || sizeof(T) == 8, "only float and double have a dtype");
            return dtype(detail::native_order, kind::floating, sizeof(T));
        } else {
            return dtype(sizeof(T) == 1 ? '|' : detail::native_order,
                         std::is_signed_v<T> ? kind::signed_int : kind::unsigned_int, sizeof(T));
        }
    }

    static dtype boolean() { return of<bool>(); }
    static dtype int8() { return of<std::int8_t>(); }
    static dtype int16() { return of<std::int16_t>(); }
    static dtype int32() { return of<std::int32_t>(); }
    static dtype int64() { return of<std::int64_t>(); }
    static dtype uint8() { return of<std::uint8_t>(); }
    static dtype uint16() { return of<std::uint16_t>(); }
    static dtype uint32() { return of<std::uint32_t>(); }
    static dtype uint64() { return of<std::uint64_t>(); }
    static dtype float16() { return dtype(detail::native_order, kind::floating, 2); }
    static dtype float32() { return of<float>(); }
    static dtype float64() { return of<double>(); }

    dtype() : dtype(detail::native_order, kind::floating, 8) {}

    kind type() const noexcept { return kind_; }
    char byte_order() const noexcept { return order_; }
    /// Bytes per item (for "U": 4 per code point).
    std::size_t itemsize() const noexcept { return kind_ == kind::unicode ? std::size_t(count_) * 4 : count_; }
    /// The wire text, e.g. "<f4".
    std::string str() const { return std::string(1, order_) + static_cast<char>(kind_) + std::to_string(count_); }
    /// Numeric kinds (b, i, u, f, c) can be converted; bytes and unicode cannot.
    bool is_numeric() const noexcept { return kind_ != kind::bytes && kind_ != kind::unicode; }
    /// Whether the bytes are in the host's order (or the order does not matter).
    bool host_order() const noexcept { return order_ == '|' || order_ == detail::native_order; }
    /// numpy's name, as its error messages write it: dtype('float32'), dtype('>f4'), dtype('<U7').
    std::string numpy_repr() const {
        std::string name;
        if (kind_ == kind::boolean) name = "bool";
        else if (kind_ == kind::bytes) name = "S" + std::to_string(count_);
        else if (kind_ == kind::unicode) name = str();
        else if (order_ != '|' && order_ != '<') name = str();
        else {
            std::size_t bits = itemsize() * 8;
            if (kind_ == kind::signed_int) name = "int" + std::to_string(bits);
            else if (kind_ == kind::unsigned_int) name = "uint" + std::to_string(bits);
            else if (kind_ == kind::floating) name = "float" + std::to_string(bits);
            else name = "complex" + std::to_string(bits);
        }
        return "dtype('" + name + "')";
    }

    friend bool operator==(const dtype& a, const dtype& b) noexcept {
        return a.order_ == b.order_ && a.kind_ == b.kind_ && a.count_ == b.count_;
    }
    friend bool operator!=(const dtype& a, const dtype& b) noexcept { return !(a == b); }

private:
    dtype(char order, kind k, std::uint32_t count) : order_(order), kind_(k), count_(count) {}

    char order_;
    kind kind_;
    std::uint32_t count_;  // item size in bytes, or code points for "U"
};

/// numpy's `can_cast(from, to, "same_kind")` for the numeric kinds: what SyncVectorEnv's
/// batching allows when it casts an observation into the space's dtype (5.10). float64 ->
/// float32, int64 -> int8 and uint16 -> uint8 pass; int64 -> uint8, float -> int and int -> bool do not.
inline bool can_cast_same_kind(const dtype& from, const dtype& to) noexcept {
    using k = dtype::kind;
    if (from == to) return true;
    if (!from.is_numeric() || !to.is_numeric()) {
        // numpy: S -> S and U -> U of any size cast within the kind; S -> U too
        if (from.type() == k::bytes) return to.type() == k::bytes || to.type() == k::unicode;
        return from.type() == k::unicode && to.type() == k::unicode;
    }
    auto rank = [](k kind) {
        switch (kind) {
            case k::boolean: return 0;
            case k::unsigned_int: return 1;
            case k::signed_int: return 2;
            case k::floating: return 3;
            default: return 4;  // complex
        }
    };
    if (from.type() == k::signed_int && to.type() == k::unsigned_int) return false;
    return rank(from.type()) <= rank(to.type());
}

namespace detail {

/// One numeric item, read out of any numeric dtype.
struct number {
    dtype::kind kind = dtype::kind::signed_int;
    std::int64_t i = 0;    // signed_int, boolean (0/1)
    std::uint64_t u = 0;   // unsigned_int
    double re = 0, im = 0; // floating, complex
};

inline void reverse_bytes(unsigned char* p, std::size_t n) {
    for (std::size_t a = 0, b = n - 1; a < b; ++a, --b) std::swap(p[a], p[b]);
}

inline double half_to_double(std::uint16_t h) {
    int sign = (h >> 15) & 1, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    double v;
    if (exponent == 0) v = std::ldexp(static_cast<double>(mantissa), -24);
    else if (exponent == 31) v = mantissa ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
    else v = std::ldexp(static_cast<double>(mantissa + 1024), exponent - 25);
    return sign ? -v : v;
}

/// Round a double to the nearest float16, ties to even (numpy's npy_double_to_half).
inline std::uint16_t double_to_half(double x) {
    std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
    double a = std::fabs(x);
    if (std::isnan(x)) return sign | 0x7e00;
    if (a >= 65520.0) return sign | 0x7c00;  // rounds to infinity
    if (a < std::ldexp(1.0, -14)) {           // subnormal (or the smallest normal after rounding)
        return sign | static_cast<std::uint16_t>(std::nearbyint(std::ldexp(a, 24)));
    }
    int e;
    std::frexp(a, &e);                                   // a = m * 2^e, m in [0.5, 1)
    double q = std::nearbyint(std::ldexp(a, 11 - e));     // in [1024, 2048]
    int exponent = e - 1 + 15;
    if (q >= 2048.0) { q = 1024.0; ++exponent; }
    return sign | static_cast<std::uint16_t>((exponent << 10) | (static_cast<int>(q) - 1024));
}

/// Read the item at `p` (any numeric dtype, any byte order).
inline number load_number(const dtype& dt, const void* p) {
    unsigned char raw[16];
    std::size_t n = dt.itemsize();
    if (!dt.is_numeric() || n > 16) throw error(errc::type_mismatch, "items of " + dt.numpy_repr() + " are not numbers");
    std::memcpy(raw, p, n);
    if (!dt.host_order()) {
        if (dt.type() == dtype::kind::complex) { reverse_bytes(raw, n / 2); reverse_bytes(raw + n / 2, n / 2); }
        else reverse_bytes(raw, n);
    }
    number out;
    out.kind = dt.type();
    switch (dt.type()) {
        case dtype::kind::boolean: out.i = raw[0] != 0; break;
        case dtype::kind::signed_int:
            if (n == 1) { std::int8_t v; std::memcpy(&v, raw, 1); out.i = v; }
            else if (n == 2) { std::int16_t v; std::memcpy(&v, raw, 2); out.i = v; }
            else if (n == 4) { std::int32_t v; std::memcpy(&v, raw, 4); out.i = v; }
            else { std::memcpy(&out.i, raw, 8); }
            break;
        case dtype::kind::unsigned_int:
            if (n == 1) out.u = raw[0];
            else if (n == 2) { std::uint16_t v; std::memcpy(&v, raw, 2); out.u = v; }
            else if (n == 4) { std::uint32_t v; std::memcpy(&v, raw, 4); out.u = v; }
            else std::memcpy(&out.u, raw, 8);
            break;
        case dtype::kind::floating:
            if (n == 2) { std::uint16_t v; std::memcpy(&v, raw, 2); out.re = half_to_double(v); }
            else if (n == 4) { float v; std::memcpy(&v, raw, 4); out.re = v; }
            else if (n == 8) std::memcpy(&out.re, raw, 8);
            else throw error(errc::type_mismatch, "items of " + dt.numpy_repr() + " (long double) cannot be converted here");
            break;
        case dtype::kind::complex:
            if (n == 8) { float r, i; std::memcpy(&r, raw, 4); std::memcpy(&i, raw + 4, 4); out.re = r; out.im = i; }
            else if (n == 16) { std::memcpy(&out.re, raw, 8); std::memcpy(&out.im, raw + 8, 8); }
            else throw error(errc::type_mismatch, "items of " + dt.numpy_repr() + " (long double) cannot be converted here");
            break;
        default: break;
    }
    return out;
}

/// The item as a double (bool and integers converted, complex refused).
inline double number_to_double(const number& v) {
    switch (v.kind) {
        case dtype::kind::boolean: case dtype::kind::signed_int: return static_cast<double>(v.i);
        case dtype::kind::unsigned_int: return static_cast<double>(v.u);
        case dtype::kind::floating: return v.re;
        default: throw error(errc::type_mismatch, "a complex number has no real value");
    }
}

/// Write `v` at `p` in dtype `dt`, converting as numpy's astype does, except that a float
/// that is not finite or out of the integer type's range is refused (not undefined).
inline void store_number(const dtype& dt, void* p, const number& v) {
    using k = dtype::kind;
    unsigned char raw[16] = {};
    std::size_t n = dt.itemsize();
    if (!dt.is_numeric() || n > 16) throw error(errc::type_mismatch, "cannot store a number as " + dt.numpy_repr());
    auto to_integer_bits = [&](bool is_signed) -> std::uint64_t {
        switch (v.kind) {
            case k::boolean: case k::signed_int: return static_cast<std::uint64_t>(v.i);
            case k::unsigned_int: return v.u;
            case k::floating: {
                double t = std::trunc(v.re);
                double lo = is_signed ? -std::ldexp(1.0, int(n) * 8 - 1) : 0.0;
                double hi = is_signed ? std::ldexp(1.0, int(n) * 8 - 1) : std::ldexp(1.0, int(n) * 8);
                if (!std::isfinite(t) || t < lo || t >= hi) {
                    throw error(errc::type_mismatch, "the value " + std::to_string(v.re) + " does not fit " + dt.numpy_repr());
                }
                return is_signed ? static_cast<std::uint64_t>(static_cast<std::int64_t>(t)) : static_cast<std::uint64_t>(t);
            }
            default: throw error(errc::type_mismatch, "a complex number cannot be stored as " + dt.numpy_repr());
        }
    };
    switch (dt.type()) {
        case k::boolean:
            raw[0] = v.kind == k::unsigned_int ? v.u != 0 : (v.kind == k::floating || v.kind == k::complex) ? (v.re != 0 || v.im != 0) : v.i != 0;
            break;
        case k::signed_int: case k::unsigned_int: {
            std::uint64_t bits = to_integer_bits(dt.type() == k::signed_int);  // wraps as a C cast does
            for (std::size_t b = 0; b < n; ++b) raw[b] = static_cast<unsigned char>(bits >> (8 * b));  // little-endian
            if (dt.byte_order() == '>') reverse_bytes(raw, n);
            break;
        }
        case k::floating: case k::complex: {
            double re, im = 0;
            if (v.kind == k::complex) {
                if (dt.type() != k::complex) throw error(errc::type_mismatch, "a complex number cannot be stored as " + dt.numpy_repr());
                re = v.re; im = v.im;
            } else {
                re = number_to_double(v);
            }
            std::size_t part = dt.type() == k::complex ? n / 2 : n;
            auto put = [&](double x, unsigned char* at) {
                if (part == 2) { std::uint16_t h = double_to_half(x); std::memcpy(at, &h, 2); }
                else if (part == 4) { float f = static_cast<float>(x); std::memcpy(at, &f, 4); }
                else if (part == 8) std::memcpy(at, &x, 8);
                else throw error(errc::type_mismatch, "cannot store a number as " + dt.numpy_repr() + " (long double)");
            };
            put(re, raw);
            if (dt.type() == k::complex) put(im, raw + part);
            if (!dt.host_order()) {  // put() wrote the host's order
                reverse_bytes(raw, part);
                if (dt.type() == k::complex) reverse_bytes(raw + part, part);
            }
            break;
        }
        default: break;
    }
    std::memcpy(p, raw, n);
}

/// Convert `count` items from one dtype to another (numeric, or the same dtype).
inline void convert_items(const dtype& from, const void* src, const dtype& to, void* dst, std::size_t count) {
    if (from == to) {
        std::memcpy(dst, src, count * from.itemsize());
        return;
    }
    if (!from.is_numeric() || !to.is_numeric()) {
        throw error(errc::type_mismatch, "cannot convert items of " + from.numpy_repr() + " to " + to.numpy_repr());
    }
    const auto* s = static_cast<const unsigned char*>(src);
    auto* d = static_cast<unsigned char*>(dst);
    for (std::size_t i = 0; i < count; ++i) store_number(to, d + i * to.itemsize(), load_number(from, s + i * from.itemsize()));
}

}  // namespace detail
}  // namespace rlay
