// rlay/detail/link.hpp: what every worker does on the wire, command and push alike.
//
// Connect a DEALER to the broker's back end with a routing id of its own, register the K
// envs with their spaces (5.2) and wait for `registered` (8.3), ping from the heartbeat
// thread (8.5), register again on a new socket with the same id when the broker is lost,
// read the broker's batched calls (checking what docs/guides/worker.md checks), and answer each with
// one reply or error (5.8 leg 3), within the broker's max_message_size (5.3).
#pragma once

#include <rlay/config.hpp>
#include <rlay/detail/heartbeat.hpp>
#include <rlay/detail/leaves.hpp>
#include <rlay/detail/shm.hpp>
#include <rlay/detail/wire.hpp>
#include <rlay/log.hpp>

#include <zmq.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <thread>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#if defined(_WIN32)
#include <process.h>
#include <winsock2.h>
#else
#include <unistd.h>
#endif

namespace rlay {
namespace detail {

inline long current_pid() {
#if defined(_WIN32)
    return _getpid();
#else
    return static_cast<long>(::getpid());
#endif
}

inline std::string host_name() {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0) return "localhost";
    return buf;
}

/// "r" and 11 random bytes (8.5): never a leading zero byte, never ending in "|hb".
inline std::string new_identity() {
    std::random_device rd;
    for (;;) {
        std::string id = "r";
        for (int i = 0; i < 11; ++i) id += static_cast<char>(rd() & 0xff);
        if (id.compare(id.size() - 3, 3, "|hb") != 0) return id;  // 1 in 2^24 would end so (8.5: MUST NOT)
    }
}

/// A value as a header may carry it (3.2, 5.2 metadata): tuples and arrays become lists,
/// typed scalars numbers; none if it has no plain form.
inline std::optional<value> plain_form(const value& v) {
    using k = value::kind;
    switch (v.type()) {
        case k::big_integer: return std::nullopt;
        case k::tuple: case k::list: {
            value list = value::list();
            for (const value& item : v.items()) {
                auto p = plain_form(item);
                if (!p) return std::nullopt;
                list.push_back(std::move(*p));
            }
            return list;
        }
        case k::map: {
            value map = value::map();
            for (const auto& [key, item] : v.as_map()) {
                auto pk = plain_form(key), pv = plain_form(item);
                if (!pk || !pv || pk->is_list() || pk->is_map()) return std::nullopt;
                map.as_map().emplace_back(std::move(*pk), std::move(*pv));
            }
            return map;
        }
        case k::scalar: case k::ndarray: {
            const ndarray& a = v.type() == k::scalar ? v.as_scalar() : v.as_ndarray();
            auto item = [&](std::size_t i) -> std::optional<value> {
                const unsigned char* p = a.bytes() + i * a.dtype().itemsize();
                switch (a.dtype().type()) {
                    case dtype::kind::boolean: return value(*p != 0);
                    case dtype::kind::signed_int: return value(load_number(a.dtype(), p).i);
                    case dtype::kind::unsigned_int: return value(load_number(a.dtype(), p).u);
                    case dtype::kind::floating:
                        if (a.dtype().itemsize() > 8) return std::nullopt;
                        return value(load_number(a.dtype(), p).re);
                    case dtype::kind::bytes: {
                        std::string s(reinterpret_cast<const char*>(p), a.dtype().itemsize());
                        return value::bin(s.substr(0, s.find_last_not_of('\0') + 1));
                    }
                    default: return std::nullopt;  // complex and unicode: left out
                }
            };
            if (a.ndim() == 0) return item(0);
            // nested lists, C order
            std::size_t index = 0;
            struct nest {
                static std::optional<value> build(const ndarray& a, std::size_t dim, std::size_t& index, decltype(item)& one) {
                    value list = value::list();
                    for (std::size_t i = 0; i < a.shape()[dim]; ++i) {
                        auto sub = dim + 1 == a.ndim() ? one(index++) : build(a, dim + 1, index, one);
                        if (!sub) return std::nullopt;
                        list.push_back(std::move(*sub));
                    }
                    return list;
                }
            };
            return nest::build(a, 0, index, item);
        }
        default: return v;
    }
}

/// A batched call from the broker (5.8 leg 2): its kind, `req`, env indices, body and frames.
struct request {
    std::string kind;
    std::string raw_req;
    std::vector<std::int64_t> envs;
    value body;
    message frames;  // the whole message; array frames start at index 2
};

/// What read() makes of a message: a request, an answer to send at once, or nothing.
using reading = std::variant<std::monostate, request, message>;

class link {
public:
    logger log;

    link(config cfg, const char* mode, std::size_t num_envs)
        : log(cfg.logger), cfg_(std::move(cfg)), mode_(mode), num_envs_(num_envs), identity_(new_identity()),
          obs_leaves_(cfg_.observation_space.leaves()), act_leaves_(cfg_.action_space.leaves()) {
        if (cfg_.env_id.empty()) throw error(errc::registration, "the config has no env_id");
        if (num_envs_ < 1 || num_envs_ > 1000000) throw error(errc::registration, "a worker hosts 1 to 1000000 envs, not " + std::to_string(num_envs_));
        if (cfg_.host.empty()) cfg_.host = host_name();
        if (!cfg_.render_mode.is_nil() && !cfg_.render_mode.is_str()) throw error(errc::registration, "render_mode must be nil or a str");
        if (!cfg_.metadata.is_map()) throw error(errc::registration, "metadata must be a map");
        value plain = value::map();
        for (const auto& [key, item] : cfg_.metadata.as_map()) {
            auto p = plain_form(item);
            if (!key.is_str() || !p) {
                log(log_level::info, "metadata entry " + key.repr() + " cannot go in a header; the trainer will not see it");
                continue;
            }
            plain.as_map().emplace_back(key, std::move(*p));
        }
        metadata_ = std::move(plain);
        curve_keys_checked();
    }
    link(const link&) = delete;
    link& operator=(const link&) = delete;
    ~link() { disconnect(); }

    // -- connection ----------------------------------------------------------------------

    /// Connect and register; returns once the broker accepted this worker's slots. Throws
    /// rlay::error (registration) if it refused or none answered within the register
    /// timeout, and (closed) if `stopping` was set meanwhile.
    void connect(const std::atomic<bool>& stopping) {
        sock_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::dealer);
        sock_->set(zmq::sockopt::linger, 1000);
        sock_->set(zmq::sockopt::sndtimeo, 10000);  // 8.2: a reply that cannot go in 10 s is dropped
        sock_->set(zmq::sockopt::routing_id, zmq::buffer(identity_));
        secure(*sock_, cfg_.curve);
        try {
            sock_->connect(cfg_.broker);
        } catch (const zmq::error_t& e) {
            throw error(errc::transport, "cannot connect to the broker at " + cfg_.broker + ": " + e.what());
        }
        // Ping from before registering: the broker then watches this worker from the moment
        // it registers, and one that dies right after is not missed (8.5).
        if (!heartbeat_) heartbeat_ = std::make_unique<heartbeat>(ctx_, cfg_.broker, identity_, cfg_.curve, log);
        try {
            await_registration(stopping);
        } catch (...) {
            disconnect();
            throw;
        }
        heartbeat_->reset();
        registered_at_ = clock::now();
    }

    /// Why this worker must register again (8.5 rules 1 and 2), or nothing.
    std::optional<std::string> broker_lost() const {
        if (!heartbeat_ || !sock_) return std::nullopt;
        if (heartbeat_->lost()) {
            char buf[64];
            std::snprintf(buf, sizeof buf, "%.1f", heartbeat_->silence());
            return "the broker has not answered heartbeats for " + std::string(buf) + " s";
        }
        if (heartbeat_->forgotten_since(registered_at_)) return std::string("the broker no longer knows this worker (it restarted, or counted it lost)");
        return std::nullopt;
    }

    /// Drop the connection (whatever is queued on it) and register anew with the same id.
    void register_again(const std::string& why, const std::atomic<bool>& stopping) {
        log(log_level::warning, why + ": registering again with " + cfg_.broker);
        sock_->set(zmq::sockopt::linger, 0);
        sock_.reset();
        connect(stopping);
    }

    /// Tell the broker this worker is leaving (5.4), close the socket, stop the heartbeat.
    void disconnect() noexcept {
        try {
            segments_.close();
            if (heartbeat_) heartbeat_->stop();
            heartbeat_.reset();
            if (sock_) {
                try {
                    sock_->send(zmq::buffer(header_writer(type::disconnect, 0).done()), zmq::send_flags::dontwait);
                } catch (const zmq::error_t&) {
                }
                sock_->set(zmq::sockopt::linger, 100);  // a broker that is gone gets no longer wait
                sock_.reset();
            }
        } catch (...) {
        }
    }

    bool connected() const noexcept { return sock_ != nullptr; }
    zmq::socket_t& socket() { return *sock_; }

    /// Wait up to `ms` for a message from the broker.
    bool poll(long ms) { return poll_one(*sock_, ZMQ_POLLIN, ms); }
    message receive() { return recv_message(*sock_); }

    /// Send an answer. One with a frame over the broker's max_message_size becomes a
    /// bad_message error that says so (5.3); one ZeroMQ cannot take within 10 s (no
    /// connection) is dropped with a log line.
    void send(message m, std::string_view raw_req) {
        if (!sock_) return;
        std::size_t largest = 0;
        for (const zmq::message_t& f : m) largest = std::max(largest, f.size());
        if (max_frame_ && largest > *max_frame_) {
            m = error_message(raw_req, code::bad_message,
                              "worker " + name_ + " on host " + cfg_.host + " cannot send its reply: a frame of " + std::to_string(largest) +
                                  " bytes is over the broker's max_message_size of " + std::to_string(*max_frame_));
        }
        try {
            for (std::size_t i = 0; i < m.size(); ++i) {
                auto flags = i + 1 < m.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
                for (;;) {
                    try {
                        if (!sock_->send(m[i], flags)) {
                            log(log_level::warning, "could not send a reply to " + cfg_.broker + " within 10 s (no connection); dropped it");
                            return;
                        }
                        break;
                    } catch (const zmq::error_t& e) {
                        if (!interrupted(e)) throw;
                    }
                }
            }
        } catch (const zmq::error_t& e) {
            log(log_level::error, std::string("could not send a reply to ") + cfg_.broker + ": " + e.what());
        }
    }

    /// The idle tick: let go of removed shared-memory segments.
    void idle() { segments_.prune(); }

    // -- requests ------------------------------------------------------------------------

    /// Make a request of a message from the broker, or the answer to send at once (a bad
    /// message, an unknown type), or nothing (disconnect, error). Never throws on bad input.
    reading read(message m, std::atomic<bool>& stopping) {
        std::string raw_req(1, '\xc0');
        try {
            header h = decode_header(bytes_of(m.at(0)), cfg_.max_decoded_values);
            raw_req = h.raw_req;
            const std::string& kind = h.type();
            if (kind == type::disconnect) {
                const value* reason = h.find("reason");
                log(log_level::info, "broker disconnected this worker: " + (reason && reason->is_str() ? reason->as_str() : std::string()));
                stopping = true;
                return std::monostate{};
            }
            if (kind == type::error) {
                const value* text = h.find("message");
                log(log_level::error, "broker reports: " + (text ? (text->is_str() ? text->as_str() : text->repr()) : std::string("(no message)")));
                return std::monostate{};
            }
            if (kind == type::heartbeat) return std::monostate{};  // an answer to a ping; never answered
            if (kind != type::reset && kind != type::step && kind != type::call && kind != type::set_attr) {
                log(log_level::warning, "unknown message type '" + kind + "' from the broker");
                return error_message(raw_req, code::unknown_type, "unknown message type '" + kind + "'");
            }
            request r;
            r.kind = kind;
            r.raw_req = raw_req;
            const value* envs = h.find("envs");
            bool ok = envs && envs->is_list() && envs->size() > 0 && envs->size() <= num_envs_;
            if (ok) {
                std::vector<bool> seen(num_envs_, false);  // linear: a list of K indices is checked in O(K)
                r.envs.reserve(envs->size());
                for (const value& i : envs->as_list()) {
                    if (!i.is_int() || i.is_negative() || i.as_uint() >= num_envs_ || seen[static_cast<std::size_t>(i.as_uint())]) {
                        ok = false;
                        break;
                    }
                    seen[static_cast<std::size_t>(i.as_uint())] = true;
                    r.envs.push_back(static_cast<std::int64_t>(i.as_uint()));
                }
            }
            if (!ok) throw error(errc::bad_message, "'envs' must be a non-empty list of distinct env indices below " + std::to_string(num_envs_));
            if (m.size() < 2) throw error(errc::bad_message, "a " + kind + " message needs a body frame");
            r.body = msgpack::decode(bytes_of(m[1]), cfg_.max_decoded_values);
            if (!r.body.is_map()) throw error(errc::bad_message, std::string("body must be a msgpack map, got ") + value::kind_name(r.body.type()));
            r.frames = std::move(m);
            return r;
        } catch (const version_refusal& e) {
            log(log_level::warning, std::string("bad message from the broker: ") + e.what());
            return error_message(std::string(1, '\xc0'), code::version, e.what(), nullptr, true);
        } catch (const std::exception& e) {
            return bad_message(raw_req, e.what());
        }
    }

    message bad_message(std::string_view raw_req, const std::string& what) {
        log(log_level::warning, "bad message from the broker: " + what);
        return error_message(raw_req, code::bad_message, "worker could not read the message: " + what);
    }

    message internal_error(std::string_view raw_req, const std::string& what) {
        log(log_level::error, "unexpected error answering the broker: " + what);
        return error_message(raw_req, code::internal_error, "worker internal error: " + what);
    }

    message env_error_message(std::string_view raw_req, const std::vector<env_report>& reports) {
        value errors = reports_value(reports);
        return error_message(raw_req, code::env_error, "env code raised in worker " + name_ + " on host " + cfg_.host, &errors);
    }

    // -- replies -------------------------------------------------------------------------

    /// The reply to a reset or step (5.9, 5.10): the k observations as leaves, and `columns`
    /// (one list per body key, one entry per env, in body order). Throws env_failures naming
    /// every env whose observation does not fit the space (5.10) or whose values cannot
    /// cross the wire (5.13). Shared memory is written only once the reply is sure (3.9).
    message reply(const request& r, const std::vector<value>& obs, std::vector<std::pair<std::string, value>> columns) {
        std::vector<detail::obs_leaves> checked(obs.size());
        std::vector<env_report> failures;
        for (std::size_t n = 0; n < obs.size(); ++n) {
            try {
                checked[n] = check_observation(cfg_.observation_space, obs_leaves_, obs[n]);
            } catch (...) {
                failures.push_back(report_current(r.envs[n]));
            }
        }
        if (!failures.empty()) throw env_failures(std::move(failures));
        std::optional<placement> placed;
        if (const value* offer = r.body.find("shm")) placed = segments_.place(offer, obs_leaves_, obs.size());
        obs_encoding enc = encode_observations(obs_leaves_, checked, placed ? &*placed : nullptr);
        value body = value::map();
        body.as_map().emplace_back(value("obs"), std::move(enc.descriptors));
        for (auto& [key, column] : columns) body.as_map().emplace_back(value(key), std::move(column));
        auto build = [&](obs_encoding& e) {
            message out;
            out.push_back(frame_of(reply_header(r.raw_req)));
            out.push_back(frame_of(pack_body(r.envs, body)));
            for (zmq::message_t& f : e.frames) out.push_back(std::move(f));
            return out;
        };
        message m = build(enc);
        if (!enc.writes.empty() && !enc.write_shared_memory()) {  // only now: a reply that fails writes nothing
            // the segment shrank or its tmpfs is full: forget it, and send frames after all
            log(log_level::warning, "could not write observation rows into the trainer's shared memory; sending frames");
            for (const auto& leaf : *placed) if (!leaf.second.empty()) segments_.forget(leaf.second.front().fd);
            obs_encoding frames = encode_observations(obs_leaves_, checked, nullptr);
            body.as_map()[0].second = std::move(frames.descriptors);
            m = build(frames);
        }
        return m;
    }

    /// The reply to a call or set_attr: a body of per-env values, no array frames.
    message plain_reply(const request& r, const value& body) {
        message m;
        m.push_back(frame_of(reply_header(r.raw_req)));
        m.push_back(frame_of(pack_body(r.envs, body)));
        return m;
    }

    /// Pack a reply body; if some env's value cannot cross the wire (or an info is not a map),
    /// fail those envs with TypeError reports whose message starts with the body key (5.13).
    std::string pack_body(const std::vector<std::int64_t>& envs, const value& body) {
        std::vector<env_report> failures;
        for (const auto& [key, column] : body.as_map()) {
            if (!column.is_list() || key.as_str() == "obs") continue;
            for (std::size_t n = 0; n < column.size() && n < envs.size(); ++n) {
                try {
                    if (key.as_str() == "info" && !column[n].is_map()) {
                        throw error(errc::type_mismatch, std::string("an info must be a map, got ") + value::kind_name(column[n].type()));
                    }
                    msgpack::encode(column[n]);
                } catch (const error& e) {
                    failures.push_back(env_report{envs[n], "TypeError", key.as_str() + ": " + e.what()});
                }
            }
        }
        if (!failures.empty()) throw env_failures(std::move(failures));
        try {
            return msgpack::encode(body);
        } catch (const error& e) {
            throw env_failures({env_report{envs.at(0), "TypeError", std::string("reply cannot be encoded: ") + e.what()}});
        }
    }

    const config& cfg() const noexcept { return cfg_; }
    const std::string& name() const noexcept { return name_; }
    const std::vector<leaf_info>& obs_leaves() const noexcept { return obs_leaves_; }
    const std::vector<leaf_info>& act_leaves() const noexcept { return act_leaves_; }
    std::size_t num_envs() const noexcept { return num_envs_; }

private:
    void curve_keys_checked() {
        if (cfg_.curve) {
            curve_keys::check_z85(cfg_.curve->public_key, "the config's public key");
            curve_keys::check_z85(cfg_.curve->secret_key, "the config's secret key");
            curve_keys::check_z85(cfg_.curve->server_key, "the config's broker key");
        }
    }

    std::string registration() const {
        const bool launched = !cfg_.program.empty() && cfg_.instance >= 0;  // 5.2: both or neither
        header_writer h(type::register_, launched ? 12 : 10);
        if (launched) h.field("program", cfg_.program).field("instance", cfg_.instance);
        return h.field("mode", mode_)
            .field("env_id", cfg_.env_id)
            .field("num_envs", num_envs_)
            .field("host", cfg_.host)
            .field("pid", static_cast<std::int64_t>(current_pid()))
            .field("rank", cfg_.rank)
            .field("obs_space", cfg_.observation_space.encode())
            .field("act_space", cfg_.action_space.encode())
            .field("metadata", metadata_)
            .field("render_mode", cfg_.render_mode)
            .done();
    }

    /// 8.3: send `register`, wait for `registered`. A refusal with code `limit` and a
    /// `retry_after` of 0 to 60 s (the broker's registration rate limit) is retried after that
    /// long, within the registration timeout; any other `error` ends the registration.
    void await_registration(const std::atomic<bool>& stopping) {
        const std::string reg = registration();
        auto deadline = clock::now() + std::chrono::duration_cast<clock::duration>(cfg_.register_timeout);
        std::string refusal;
        for (;;) {
            send_registration(reg, deadline, stopping);
            std::optional<double> retry_after = registration_answer(reg, deadline, stopping, refusal);
            if (!retry_after) return;
            char buf[32];
            std::snprintf(buf, sizeof buf, "%.2f", *retry_after);
            log(log_level::info, std::string("the broker asks to register again in ") + buf + " s: " + refusal);
            auto until = std::min(deadline, clock::now() + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(*retry_after)));
            while (clock::now() < until) {
                if (stopping) throw error(errc::closed, "stopped while registering with " + cfg_.broker);
                std::this_thread::sleep_for(std::min<clock::duration>(std::chrono::milliseconds(idle_poll_ms), until - clock::now()));
            }
        }
    }

    std::string seconds_text() const {
        char seconds[32];
        std::snprintf(seconds, sizeof seconds, "%g", cfg_.register_timeout.count());
        return seconds;
    }

    void send_registration(const std::string& reg, clock::time_point deadline, const std::atomic<bool>& stopping) {
        // ZeroMQ queues the registration until the broker is there, unless the connection was
        // refused outright (a CURVE key the broker does not know): then the send itself waits.
        for (;;) {
            if (stopping) throw error(errc::closed, "stopped while registering with " + cfg_.broker);
            if (clock::now() > deadline) {
                throw error(errc::registration, "could not send the registration of '" + cfg_.env_id + "' to " + cfg_.broker +
                                                    " within " + seconds_text() + " s: no connection" +
                                                    (cfg_.curve ? " (is this worker's CURVE key among the broker's authorized keys?)" : ""));
            }
            if (!poll_one(*sock_, ZMQ_POLLOUT, idle_poll_ms)) continue;
            try {
                if (sock_->send(zmq::buffer(reg), zmq::send_flags::dontwait)) return;
            } catch (const zmq::error_t& e) {
                if (!interrupted(e)) throw error(errc::transport, std::string("cannot send the registration: ") + e.what());
            }
        }
    }

    /// Wait for `registered` (nothing) or a refusal to retry after so many seconds; throw on any other.
    std::optional<double> registration_answer(const std::string& reg, clock::time_point deadline, const std::atomic<bool>& stopping,
                                              std::string& refusal) {
        for (;;) {
            if (stopping) throw error(errc::closed, "stopped while registering with " + cfg_.broker);
            if (clock::now() > deadline) {
                if (!refusal.empty()) {
                    throw error(errc::registration, "the broker at " + cfg_.broker + " kept refusing the registration of '" + cfg_.env_id +
                                                        "' for " + seconds_text() + " s: " + refusal);
                }
                throw error(errc::registration, "no broker answered the registration of '" + cfg_.env_id + "' at " + cfg_.broker +
                                                    " within " + seconds_text() + " s (the registration was " + std::to_string(reg.size()) +
                                                    " bytes: a broker drops one over its max_message_size unseen)");
            }
            if (!poll(idle_poll_ms)) continue;
            message m = receive();
            header h;
            try {
                h = decode_header(bytes_of(m[0]));
            } catch (const version_refusal& e) {
                if (e.v_is_int) {
                    throw error(errc::registration, "the broker at " + cfg_.broker + " answered the registration in another protocol version: " + e.what());
                }
                log(log_level::warning, std::string("ignoring an unreadable message before registration: ") + e.what());
                continue;
            } catch (const error& e) {
                log(log_level::warning, std::string("ignoring an unreadable message before registration: ") + e.what());
                continue;
            }
            if (h.type() == type::registered) {
                take_registration(h);
                return std::nullopt;
            }
            if (h.type() == type::error) {
                const value* text = h.find("message");
                std::string why = text && text->is_str() ? text->as_str() : std::string("(no message)");
                const value* code_v = h.find("code");
                const value* retry = h.find("retry_after");
                if (code_v && code_v->is_str() && code_v->as_str() == "limit" && retry && (retry->is_int() || retry->is_float()) &&
                    retry->to_double() >= 0 && retry->to_double() <= 60) {
                    refusal = why;
                    return retry->to_double();
                }
                throw error(errc::registration, "the broker at " + cfg_.broker + " refused the registration of '" + cfg_.env_id + "': " + why);
            }
            log(log_level::warning, "ignoring '" + h.type() + "' before registration");
        }
    }

    void take_registration(const header& h) {
        const value* worker = h.find("worker");
        name_ = worker && worker->is_str() ? worker->as_str() : "?";
        const value* limit = h.find("max_message_size");
        max_frame_.reset();
        if (limit && limit->is_int() && !limit->is_negative()) max_frame_ = limit->as_uint();
        // 5.3: an interval of 0.01 to 3600 s and a liveness of 1 to 1000; a setting that is
        // missing or out of range keeps the one this worker had: the last one announced (the
        // heartbeat lives across registrations), or its own default (0.5 s and 4) before any.
        double interval = heartbeat_->interval();
        int liveness = heartbeat_->liveness();
        const value* hi = h.find("heartbeat_interval");
        if (hi && (hi->is_float() || hi->is_int()) && hi->to_double() >= 0.01 && hi->to_double() <= 3600) interval = hi->to_double();
        const value* hl = h.find("heartbeat_liveness");
        if (hl && hl->is_int() && !hl->is_negative() && hl->as_uint() >= 1 && hl->as_uint() <= 1000) liveness = static_cast<int>(hl->as_uint());
        heartbeat_->configure(interval, liveness);
        const value* slots = h.find("slots");
        log(log_level::info, "registered with " + cfg_.broker + " as " + name_ + " with slots " + (slots ? slots->repr(200) : std::string("?")));
    }

    config cfg_;
    const char* mode_;
    std::size_t num_envs_;
    std::string identity_;
    std::vector<leaf_info> obs_leaves_;
    std::vector<leaf_info> act_leaves_;
    value metadata_;
    zmq::context_t ctx_;
    std::unique_ptr<zmq::socket_t> sock_;
    std::unique_ptr<heartbeat> heartbeat_;
    segment_cache segments_;
    std::string name_ = "?";
    std::optional<std::uint64_t> max_frame_;
    clock::time_point registered_at_ = clock::now();
};

}  // namespace detail
}  // namespace rlay
