// rlay/detail/wire.hpp: headers, frames and failure reports (3.1, 3.2, 5.13).
#pragma once

#include <rlay/detail/msgpack.hpp>
#include <rlay/error.hpp>
#include <rlay/value.hpp>

#include <zmq.hpp>

#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rlay {

/// The protocol version this SDK speaks (8.1).
constexpr int protocol_version = 1;

namespace detail {

// Message types (5.1) and error codes (5.13), with the spec's names.
namespace type {
constexpr const char* register_ = "register";
constexpr const char* registered = "registered";
constexpr const char* disconnect = "disconnect";
constexpr const char* reset = "reset";
constexpr const char* step = "step";
constexpr const char* call = "call";
constexpr const char* set_attr = "set_attr";
constexpr const char* reply = "reply";
constexpr const char* error = "error";
constexpr const char* heartbeat = "heartbeat";
}  // namespace type

namespace code {
constexpr const char* bad_message = "bad_message";
constexpr const char* version = "version";
constexpr const char* unknown_type = "unknown_type";
constexpr const char* env_error = "env_error";
constexpr const char* internal_error = "internal_error";
}  // namespace code

constexpr std::size_t row_frame_bytes = 65536;  // a Box leaf this large per env goes row by row (3.8)
constexpr std::size_t copy_threshold = 65536;   // smaller frames are copied rather than sent zero-copy

using message = std::vector<zmq::message_t>;

/// A header as received: its fields, and its `req` as the raw msgpack bytes to echo (3.2:
/// "a req made of one [ext] is echoed with the same ext code and payload").
struct header {
    value fields;
    std::string raw_req = std::string(1, '\xc0');  // nil when absent

    const std::string& type() const { return fields.at("type").as_str(); }
    const value* find(std::string_view key) const { return fields.find(key); }
};

/// A header whose `v` is not 1 (8.1); `v_is_int` tells "another version" from "no version".
class version_refusal : public error {
public:
    version_refusal(const std::string& what, bool int_v) : error(errc::version, what), v_is_int(int_v) {}
    bool v_is_int;
};

inline std::string_view bytes_of(const zmq::message_t& frame) {
    return std::string_view(static_cast<const char*>(frame.data()), frame.size());
}

/// Decode and check a header frame (3.2): a map, no bin key "nd", `v` the int 1, `type` a str.
inline header decode_header(std::string_view frame, std::size_t max_values = msgpack::default_max_values) {
    msgpack::reader r(frame, msgpack::mode::plain, max_values);
    header h;
    h.fields = r.read_all("req");
    if (r.has_capture()) h.raw_req = r.captured();
    if (!h.fields.is_map()) throw error(errc::bad_message, std::string("header must be a msgpack map, got ") + value::kind_name(h.fields.type()));
    for (const auto& entry : h.fields.as_map()) {
        if (entry.first.is_bin() && entry.first.as_bin() == "nd") throw error(errc::bad_message, msgpack::msgpack_numpy_refusal);
    }
    const value* v = h.fields.find("v");
    if (!v || !v->is_int() || v->is_negative() || v->as_uint() != static_cast<std::uint64_t>(protocol_version)) {
        throw version_refusal("protocol version " + (v ? v->repr() : std::string("None")) + " is not supported (supported: [1])",
                              v && v->is_int());
    }
    const value* t = h.fields.find("type");
    if (!t || !t->is_str()) throw error(errc::bad_message, "header has no string 'type'");
    return h;
}

/// Builds a header map: {v: 1, type, ...fields} as plain msgpack, keys in the order given.
class header_writer {
public:
    header_writer(std::string_view type_name, std::size_t extra_fields) {
        w_.map(2 + extra_fields);
        w_.str("v");
        w_.uint(protocol_version);
        w_.str("type");
        w_.str(type_name);
    }
    header_writer& field(std::string_view key, const value& v) {
        w_.str(key);
        w_.write(v, true);
        return *this;
    }
    /// A field whose value is already msgpack (an echoed req).
    header_writer& raw_field(std::string_view key, std::string_view bytes) {
        w_.str(key);
        w_.raw(bytes);
        return *this;
    }
    std::string done() { return std::move(w_.out); }

private:
    msgpack::writer w_;
};

inline zmq::message_t frame_of(std::string_view bytes) { return zmq::message_t(bytes.data(), bytes.size()); }

inline void release_owner(void*, void* hint) noexcept { delete static_cast<std::shared_ptr<const void>*>(hint); }

/// An array's bytes as a frame: zero-copy for a large one (the frame keeps the bytes alive).
inline zmq::message_t frame_of(const ndarray& a) {
    if (a.nbytes() < copy_threshold || !a.owner()) return zmq::message_t(a.bytes(), a.nbytes());
    auto* hint = new std::shared_ptr<const void>(a.owner());
    return zmq::message_t(const_cast<unsigned char*>(a.bytes()), a.nbytes(), release_owner, hint);
}

/// The columns of a reply body (5.9, 5.10): (body key, one value per env), in body order.
using reply_columns = std::vector<std::pair<std::string, value>>;

inline void add_columns(reply_columns&) {}
template <class... Rest>
void add_columns(reply_columns& out, const char* key, value&& column, Rest&&... rest) {
    out.emplace_back(key, std::move(column));
    add_columns(out, std::forward<Rest>(rest)...);
}

/// `columns("info", std::move(infos), ...)`: the columns moved in, where a braced list of pairs
/// would copy every value (an info may echo a large action).
template <class... Args>
reply_columns columns(Args&&... args) {
    reply_columns out;
    out.reserve(sizeof...(Args) / 2);
    add_columns(out, std::forward<Args>(args)...);
    return out;
}

inline message single(std::string frame) {
    message m;
    m.push_back(frame_of(frame));
    return m;
}

/// An `error` message (5.13) with the request's raw `req`.
inline message error_message(std::string_view raw_req, const char* code_name, const std::string& text,
                             const value* errors = nullptr, bool supported = false) {
    header_writer h(type::error, 3 + (errors ? 1 : 0) + (supported ? 1 : 0));
    h.raw_field("req", raw_req).field("code", code_name).field("message", msgpack::valid_utf8_text(text));
    if (errors) h.field("errors", *errors);
    if (supported) h.field("supported", value::list({protocol_version}));
    return single(h.done());
}

inline std::string reply_header(std::string_view raw_req) {
    return header_writer(type::reply, 1).raw_field("req", raw_req).done();
}

// -- env failures (5.13) ------------------------------------------------------------------

/// What the trainer learns of one env's failure: {env, type, message, traceback}.
struct env_report {
    std::int64_t env = 0;
    std::string type;
    std::string message;

    value to_value() const {
        // (free text: it may quote a value that is not valid UTF-8, which no header may carry)
        return value::map({{"env", env}, {"type", msgpack::valid_utf8_text(type)}, {"message", msgpack::valid_utf8_text(message)},
                           {"traceback", ""}});
    }
};

/// Map the exception being handled (call inside a catch) to a report, as the SDK promises:
/// rlay::env_error keeps its type; std::invalid_argument and std::domain_error are ValueError,
/// std::out_of_range IndexError, an rlay::error of type_mismatch TypeError and key_not_found
/// KeyError; anything else RuntimeError.
inline env_report report_current(std::int64_t env) {
    env_report r;
    r.env = env;
    try {
        throw;
    } catch (const env_error& e) {
        r.type = e.type().empty() ? "RuntimeError" : e.type();
        r.message = e.what();
    } catch (const error& e) {
        r.type = e.code() == errc::type_mismatch ? "TypeError" : e.code() == errc::key_not_found ? "KeyError"
               : e.code() == errc::bad_message || e.code() == errc::invalid_space ? "ValueError" : "RuntimeError";
        r.message = e.what();
    } catch (const std::invalid_argument& e) {
        r.type = "ValueError";
        r.message = e.what();
    } catch (const std::domain_error& e) {
        r.type = "ValueError";
        r.message = e.what();
    } catch (const std::out_of_range& e) {
        r.type = "IndexError";
        r.message = e.what();
    } catch (const std::exception& e) {
        r.type = "RuntimeError";
        r.message = e.what();
    } catch (...) {
        r.type = "RuntimeError";
        r.message = "env code threw something that is not a std::exception";
    }
    return r;
}

/// Env failures of one request: every failing env of the part (5.13), answered as env_error.
class env_failures : public std::exception {
public:
    explicit env_failures(std::vector<env_report> failed) : reports(std::move(failed)) {}
    const char* what() const noexcept override { return "env code failed"; }
    std::vector<env_report> reports;
};

inline value reports_value(const std::vector<env_report>& reports) {
    value list = value::list();
    for (const env_report& r : reports) list.push_back(r.to_value());
    return list;
}

}  // namespace detail
}  // namespace rlay
