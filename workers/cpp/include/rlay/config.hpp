// rlay/config.hpp: what a worker registers with (5.2), and its CURVE keys (section 13).
#pragma once

#include <rlay/error.hpp>
#include <rlay/log.hpp>
#include <rlay/spaces.hpp>
#include <rlay/value.hpp>

#include <zmq.hpp>

#include <chrono>
#include <cstdlib>
#include <cstdint>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

namespace rlay {

/// A CURVE client's keys (section 13), each 40 characters of Z85: this peer's keypair and the
/// broker's public key. With keys in the config, the main and heartbeat sockets are CURVE clients.
struct curve_keys {
    std::string public_key;
    std::string secret_key;
    std::string server_key;

    /// The keys `rlay keys generate DIR` wrote for clients: DIR/client.key_secret (this peer's
    /// keypair) and DIR/broker.key (the broker's public key). Throws rlay::error (key_file),
    /// naming the file, if one is missing or malformed.
    static curve_keys from_dir(const std::string& dir) {
        return from_files(dir + "/client.key_secret", dir + "/broker.key");
    }

    /// The keys of a secret certificate file and the broker's public certificate file.
    static curve_keys from_files(const std::string& secret_file, const std::string& server_key_file) {
        curve_keys keys;
        keys.public_key = read_key(secret_file, "public-key");
        keys.secret_key = read_key(secret_file, "secret-key");
        keys.server_key = read_key(server_key_file, "public-key");
        return keys;
    }

    /// Read one key of a certificate file as pyzmq's load_certificate does: skip `#` lines,
    /// take the line that starts (after white space) with `name`, strip spaces, tabs and
    /// quotes from the text after its first `=`.
    static std::string read_key(const std::string& path, const std::string& name) {
        std::ifstream in(path);
        if (!in) throw error(errc::key_file, "cannot read the CURVE key file " + path);
        std::string line;
        while (std::getline(in, line)) {
            std::size_t first = line.find_first_not_of(" \t");
            if (first == std::string::npos || line[first] == '#') continue;
            if (line.compare(first, name.size(), name) != 0) continue;
            std::size_t eq = line.find('=', first);
            if (eq == std::string::npos) continue;
            std::string key;
            for (char c : line.substr(eq + 1)) {
                if (c != ' ' && c != '\t' && c != '"' && c != '\r') key += c;
            }
            check_z85(key, path);
            return key;
        }
        throw error(errc::key_file, "the CURVE key file " + path + " has no " + name + " line");
    }

    static void check_z85(const std::string& key, const std::string& where) {
        static const std::string alphabet =
            "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
        if (key.size() != 40 || key.find_first_not_of(alphabet) != std::string::npos) {
            throw error(errc::key_file, "a CURVE key in " + where + " is not 40 characters of Z85");
        }
    }
};

/// An environment variable, or `fallback` if it is not set.
inline std::string env_or(const char* name, const char* fallback) {
    const char* value = std::getenv(name);
    return value ? value : fallback;
}

/// RLAY_INSTANCE as an index, or -1 if it is not set or not a non-negative integer.
inline std::int64_t instance_from_env() {
    std::string text = env_or("RLAY_INSTANCE", "");
    if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string::npos) return -1;
    return std::stoll(text);
}

/// What a worker registers with (5.2), and how it connects.
struct config {
    /// The broker's back end (workers' address), e.g. "tcp://127.0.0.1:5556".
    std::string broker = "tcp://127.0.0.1:5556";
    /// The env id trainers lease by, e.g. "rlay/Conformance-v0".
    std::string env_id;
    /// The single-env (single-agent) spaces; every env of the worker shares them.
    space observation_space;
    space action_space;
    /// The env's metadata, handed to trainers as is. A header carries plain msgpack only
    /// (3.2): tuples and arrays are sent as lists, typed scalars as numbers; an entry with no
    /// plain form (a big integer, a non-str key at the top) is left out with a log line.
    value metadata = value::map();
    /// nil or a str.
    value render_mode;
    /// Leases take free slots sorted by (rank, registration order, env index).
    std::int64_t rank = 0;
    /// The fleet program this process is an instance of, and which (5.2, 5.16): a launcher
    /// (`rlay up`) says so in RLAY_PROGRAM and RLAY_INSTANCE, the defaults. Sent when both are set.
    std::string program = env_or("RLAY_PROGRAM", "");
    std::int64_t instance = instance_from_env();
    /// Shown in errors and `rlay status`; empty: gethostname().
    std::string host;
    /// How long to wait for `registered` (8.3), at start and when registering again.
    std::chrono::duration<double> register_timeout = std::chrono::seconds(60);
    /// CURVE keys (section 13); none: plain sockets.
    std::optional<curve_keys> curve;
    /// Where this worker's log lines go; empty: the handler of rlay::set_log_handler, or stderr.
    log_handler logger;
    /// The most values (array items, map keys and values) one header or body from the broker
    /// may decode to; a message with more is answered bad_message. The walk of the actions of
    /// value leaves (3.8.1) may visit as many again. Each decoded value takes ~115 bytes of
    /// memory, so this bounds what one message can make the game allocate (the default, 2^21,
    /// ~240 MB; 2^16 is plenty for a worker that serves no call/set_attr with large values and
    /// hosts at most a few thousand envs).
    std::size_t max_decoded_values = std::size_t(1) << 21;
};

namespace detail {

/// Make `sock` a CURVE client with `keys` (before it connects), or do nothing without keys.
inline void secure(zmq::socket_t& sock, const std::optional<curve_keys>& keys) {
    if (!keys) return;
    if (!zmq_has("curve")) throw error(errc::transport, "this libzmq has no CURVE support (zmq_has(\"curve\") is false)");
    auto raw = [&](const std::string& z85, const char* what) {
        curve_keys::check_z85(z85, what);
        std::string key(32, '\0');
        if (!zmq_z85_decode(reinterpret_cast<std::uint8_t*>(&key[0]), z85.c_str())) {
            throw error(errc::key_file, std::string("cannot decode the ") + what);
        }
        return key;
    };
    sock.set(zmq::sockopt::curve_serverkey, zmq::buffer(raw(keys->server_key, "broker's public key")));
    sock.set(zmq::sockopt::curve_publickey, zmq::buffer(raw(keys->public_key, "public key")));
    sock.set(zmq::sockopt::curve_secretkey, zmq::buffer(raw(keys->secret_key, "secret key")));
}

}  // namespace detail
}  // namespace rlay
