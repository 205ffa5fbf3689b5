// rlay_sdk_tests: the codec against the byte examples of docs/protocol.md (3.2, 3.4, 4.1,
// 4.3, 5.14, 15) and the refusals of 3.7; the header checks of 3.2; dtypes (3.5); leaves in
// both forms (3.8) and value leaves (3.8.1); autoreset plans (6.2, 10.2). No broker needed:
// `ctest` runs it.
#include <rlay/worker.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

namespace {

int failures = 0, checks = 0;

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        ++checks;                                                                         \
        if (!(cond)) {                                                                    \
            ++failures;                                                                   \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                                 \
    } while (0)

std::string hex(std::string_view bytes) {
    std::string out;
    char buf[3];
    for (unsigned char c : bytes) {
        std::snprintf(buf, sizeof buf, "%02x", c);
        out += buf;
    }
    return out;
}

std::string unhex(std::string text) {
    std::string out;
    std::string digits;
    for (char c : text) if (c != ' ' && c != '\n') digits += c;
    for (std::size_t i = 0; i + 1 < digits.size(); i += 2) out += static_cast<char>(std::stoi(digits.substr(i, 2), nullptr, 16));
    return out;
}

/// `bytes` are exactly the hex text `expected` (spaces ignored).
bool same(std::string_view bytes, const std::string& expected) { return hex(bytes) == hex(unhex(expected)); }

using rlay::value;
namespace mp = rlay::detail::msgpack;

value decode_hex(const std::string& h) { return mp::decode(unhex(h)); }

/// Decoding `h` is refused with rlay::error (bad_message).
bool refused(const std::string& h) {
    try {
        mp::decode(unhex(h));
    } catch (const rlay::error& e) {
        return e.code() == rlay::errc::bad_message;
    }
    return false;
}

/// `h` decodes, and encodes back to exactly `h` (the reference encoder's bytes).
bool round_trip(const std::string& h) {
    try {
        return hex(mp::encode(decode_hex(h))) == hex(unhex(h));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "  round trip of %s threw %s\n", h.c_str(), e.what());
        return false;
    }
}

/// A request as a worker receives it: two header frames (left empty), then `frames`.
rlay::detail::message message_of(std::vector<std::string> frames) {
    rlay::detail::message m;
    m.emplace_back();
    m.emplace_back();
    for (auto& f : frames) m.push_back(rlay::detail::frame_of(f));
    return m;
}

/// An array leaf's reference, {dtype, shape}.
value ref(const char* dtype, std::vector<std::size_t> shape) {
    value s = value::list();
    for (std::size_t d : shape) s.push_back(d);
    return value::map({{"dtype", dtype}, {"shape", s}});
}

std::string nested(const std::string& open, int depth, const std::string& inner) {
    std::string out;
    for (int i = 0; i < depth; ++i) out += open;
    return out + inner;
}

void header_examples() {
    // 3.2: {v: 1, type: "step", req: 7, envs: [0, 2]}
    std::string h = rlay::detail::header_writer("step", 2).field("req", 7).field("envs", value::list({0, 2})).done();
    CHECK(hex(h) == "84a17601a474797065a473746570a372657107a4656e7673920002");
    rlay::detail::header parsed = rlay::detail::decode_header(h);
    CHECK(parsed.type() == "step");
    CHECK(hex(parsed.raw_req) == "07");
    // 5.14: the ping, and the answers
    CHECK(hex(rlay::detail::header_writer("heartbeat", 0).done()) == "82a17601a474797065a9686561727462656174");
    auto known = rlay::detail::decode_header(unhex("83a17601a474797065a9686561727462656174a56b6e6f776ec3"));
    CHECK(known.find("known")->as_bool());
    // 15: trainer -> broker and broker -> worker headers
    auto trainer = rlay::detail::decode_header(unhex(
        "85a17601a474797065a473746570a372657112a570617274739192920001 02a774696d656f7574cb404e000000000000"));
    CHECK(trainer.find("parts")->repr() == "[[[0, 1], 2]]");
    CHECK(trainer.find("timeout")->as_float() == 60.0);
    auto to_worker = rlay::detail::decode_header(unhex("84a17601a474797065a473746570a372657103a4656e7673920001"));
    CHECK(hex(to_worker.raw_req) == "03");
    CHECK(to_worker.find("envs")->repr() == "[0, 1]");
    // 15: the worker's reply header and body
    CHECK(same(rlay::detail::reply_header(to_worker.raw_req), "83a17601a474797065a57265706c79a372657103"));
    value body = value::map({{"obs", value::list({value::map({{"dtype", "<f4"}, {"shape", value::list({2, 4})}})})},
                             {"reward", value::list({1.0, 0.0})},
                             {"terminated", value::list({false, false})},
                             {"truncated", value::list({true, false})},
                             {"info", value::list({value::map(), value::map()})},
                             {"final", value::list({value(), value()})}});
    CHECK(hex(mp::encode(body)) ==
          "86a36f62739182a56474797065a33c6634a57368617065920204a672657761726492cb3ff0000000000000cb0000000000000000aa7465726d696e61746564"
          "92c2c2a97472756e636174656492c3c2a4696e666f928080a566696e616c92c0c0");
    // an ext value in a header is opaque, and a req made of one is echoed byte for byte (3.2)
    auto ext_req = rlay::detail::decode_header(unhex("83a17601a474797065a473746570a3726571d40501"));
    CHECK(hex(ext_req.raw_req) == "d40501");
    CHECK(ext_req.find("req")->is_nil());
}

void header_refusals() {
    auto version_refused = [](const std::string& h, bool v_is_int) {
        try {
            rlay::detail::decode_header(unhex(h));
        } catch (const rlay::detail::version_refusal& e) {
            return e.v_is_int == v_is_int;
        } catch (...) {
        }
        return false;
    };
    auto bad = [](const std::string& h) {
        try {
            rlay::detail::decode_header(unhex(h));
        } catch (const rlay::detail::version_refusal&) {
            return false;
        } catch (const rlay::error& e) {
            return e.code() == rlay::errc::bad_message;
        }
        return false;
    };
    CHECK(bad("93010203"));                                       // not a map
    CHECK(bad("81c4026e64c3"));                                   // a bin key nd, even alone
    CHECK(bad("82a17601a474797065"));                             // malformed: ends inside
    CHECK(version_refused("81a474797065a473746570", false));      // no v
    CHECK(version_refused("82a176c3a474797065a473746570", false)); // v: true
    CHECK(version_refused("82a176cb3ff0000000000000a474797065a473746570", false));  // v: 1.0
    CHECK(version_refused("82a17602a474797065a473746570", true));  // v: 2
    CHECK(bad("82a17601a47479706501"));                            // type not a str
    CHECK(bad("83a17601a474797065a473746570a3726571c703ff000000"));  // ext -1 of 3 bytes: malformed
}

void extension_examples() {
    // 3.4 ext 1
    CHECK(round_trip("c71101 93 a33c6634 9102 c408 0000c03f 000000c0"));
    value a = decode_hex("c71101 93 a33c6634 9102 c408 0000c03f 000000c0");
    CHECK(a.is_ndarray() && a.as_ndarray().dtype() == rlay::dtype::float32() && a.as_ndarray().data<float>()[0] == 1.5f &&
          a.as_ndarray().data<float>()[1] == -2.0f);
    CHECK(hex(mp::encode(value::array<float>({2}, {1.5f, -2.0f}))) == "c7110193a33c66349102c4080000c03f000000c0");
    CHECK(round_trip("c70e0193a37c7531920202c40401020304"));
    // ext 2
    CHECK(round_trip("c70f0292a33c6638c4080000000000 00e03f"));
    CHECK(same(mp::encode(value::scalar<double>(0.5)), "c70f0292a33c6638c408 000000000000e03f"));
    CHECK(hex(mp::encode(value::scalar<float>(1.0f))) == "c70b0292a33c6634c4040000803f");
    CHECK(hex(mp::encode(value::scalar<bool>(true))) == "d70292a37c6231c40101");
    // ext 3
    CHECK(hex(mp::encode(value::tuple({1, "a"}))) == "d6039201a161");
    CHECK(hex(mp::encode(value::map({{"a", value::tuple({1, value::scalar<std::int64_t>(2)})}}))) ==
          "81a161c714039201c70f0292a33c6938c4080200000000000000");
    // ext 4
    CHECK(round_trip("c70904010000000000000000"));                      // 2**64
    CHECK(round_trip("c70904ff7fffffffffffffff"));                      // -(2**63) - 1
    CHECK(round_trip("c71104 0080000000000000000000000000000000"));
    CHECK(hex(mp::encode(value::big_integer(unhex("ff800000000000000000")))) == "c70a04ff800000000000000000");  // -(2**71)
    CHECK(decode_hex("d40400").is_int() && decode_hex("d40400").as_int() == 0);  // fits a msgpack int: accepted
    CHECK(decode_hex("d504ffff").as_int() == -1);
    CHECK(decode_hex("c70904000000000000000005").as_uint() == 5);
    // unicode arrays
    CHECK(round_trip("c7110193a33c55329101c4086100000062000000"));
    // every ext format: fixext 1/2/4/8/16, ext 8/16/32
    CHECK(decode_hex("d40405").as_int() == 5);
    CHECK(decode_hex("c7010405").as_int() == 5);
    CHECK(decode_hex("c800010405").as_int() == 5);
    CHECK(decode_hex("c9000000010405").as_int() == 5);
    CHECK(decode_hex("d6039201a161") == value::tuple({1, "a"}));
    CHECK(decode_hex("c704039201a161") == value::tuple({1, "a"}));
    CHECK(decode_hex("c80004039201a161") == value::tuple({1, "a"}));
    CHECK(decode_hex("c900000004039201a161") == value::tuple({1, "a"}));
    CHECK(decode_hex("d80400000000000000000000000000000007").as_int() == 7);
    CHECK(decode_hex("d704 0000000000000009").as_int() == 9);
    CHECK(decode_hex("d5040100").as_int() == 256);
    // float 32 accepted on read
    CHECK(decode_hex("ca3f800000").as_float() == 1.0);
    // str keys "nd", "type", "data" are just a map
    CHECK(decode_hex("83a26e64c3a474797065c0a464617461c0").is_map());
    // a tuple as a map key is fine
    CHECK(decode_hex("81d40390c0").is_map());
}

void refusals() {
    CHECK(refused("c0c0"));          // 1: trailing bytes
    CHECK(refused("92c0"));          // 1: ends inside
    CHECK(refused("a2c328"));        // 1: invalid UTF-8
    CHECK(refused("a3eda080"));      // 1: a surrogate
    CHECK(refused("a2c0af"));        // 1: an overlong
    CHECK(refused("c1"));            // 1: never used
    CHECK(refused("d6ff00000000"));  // 2: ext -1, a valid timestamp
    CHECK(refused("d40500"));        // 2: ext 5
    CHECK(refused("d47f00"));        // 2: ext 127
    // 3: ext 1 / ext 2 payloads
    CHECK(refused("c70e0192a37c7531920202"));                  // two fields
    CHECK(refused("c70e0193a37c7531920202a40102030400"));      // data is a str
    CHECK(refused("c70e0193a37c7531920202c40301020304"));      // trailing byte in the payload
    CHECK(refused("c70e0193a37c7531920202c403010203"));        // 3 bytes for 4
    CHECK(refused("c70e0193a37c753192ff02c40401020304"));      // negative dimension
    CHECK(refused("c70e0193a37c753192c302c40401020304"));      // bool dimension
    CHECK(refused("c70e0193a3 7c4f 31 9102c40401020304"));     // |O1: object
    CHECK(refused(hex(mp::encode(value::map())) + "00") );     // trailing
    auto ext1 = [](const std::string& dtype, std::vector<std::size_t> shape, std::size_t nbytes) {
        mp::writer inner;
        inner.array(3);
        inner.str(dtype);
        inner.array(shape.size());
        for (auto d : shape) inner.uint(d);
        inner.bin(std::string(nbytes, '\0'));
        mp::writer w;
        w.ext(1, inner.out);
        return hex(w.out);
    };
    for (const char* bad : {"|O8", "=f4", "|f4", "<i3", "|S0", "<U0", "<u16", "<b2", "|V8", "<M8", "|U1", "<f4 ", "f4", "<f12345"}) {
        CHECK(refused(ext1(bad, {1}, 4)));
    }
    CHECK(!refused(ext1("<f16", {1}, 16)));  // numpy knows f16 on this platform (3.5)
    CHECK(!refused(ext1("<S3", {1}, 3)));
    CHECK(!refused(ext1("|S3", {2}, 6)));
    CHECK(!refused(ext1("<u1", {1}, 1)));
    CHECK(refused(ext1("<f4", std::vector<std::size_t>(33, 1), 4)));  // 33 dimensions
    CHECK(!refused(ext1("<f4", std::vector<std::size_t>(32, 1), 4)));
    CHECK(refused(ext1("<U1", {1}, 4).substr(0, ext1("<U1", {1}, 4).size() - 8) + "00001100"));  // U+110000
    CHECK(refused("c7050292a33c6634"));   // ext 2: one field
    CHECK(refused("c70b0292a33c6634c403000080"));  // ext 2: 3 bytes for 4
    CHECK(refused("d40301"));             // ext 3: not an array
    CHECK(refused("c70004"));             // ext 4: empty
    CHECK(refused("c90000040104" + std::string(2050, '0')));  // ext 4: 1025 bytes
    CHECK(!refused("c90000040004" + std::string(2048, '0')));  // 1024 bytes
    // 4: tuples nested 16 deep pass, 17 are refused
    auto tuples = [](int depth) {
        value v = value();
        for (int i = 0; i < depth; ++i) v = value::tuple({v});
        return v;
    };
    CHECK(!refused(hex(mp::encode(tuples(16)))));
    bool encoder_refuses = false;
    try {
        mp::encode(tuples(17));
    } catch (const rlay::error&) {
        encoder_refuses = true;
    }
    CHECK(encoder_refuses);
    {
        std::string seventeen = "c0";
        for (int i = 0; i < 17; ++i) {
            mp::writer w;
            w.ext(3, unhex("91" + seventeen));
            seventeen = hex(w.out);
        }
        CHECK(refused(seventeen));
    }
    // arrays and maps: 1024 deep pass, 1025 are refused (empty ones count)
    CHECK(!refused(nested("91", 1024, "c0")));
    CHECK(refused(nested("91", 1025, "c0")));
    CHECK(refused(nested("91", 1024, "90")));
    CHECK(!refused(nested("81c0", 1024, "c0")));
    CHECK(refused(nested("81c0", 1025, "c0")));
    // 5: msgpack-numpy array maps, at any depth, in tuples too
    CHECK(refused("83c4026e64c3c404747970 65c0c40464617461c0"));
    CHECK(refused("83c4026e64c3c40474797065c0c40464617461c0"));
    CHECK(refused("9183c4026e64c3c40474797065c0c40464617461c0"));
    CHECK(refused("c7150391 83c4026e64c3c40474797065c0c40464617461c0"));
    CHECK(refused("83c5 0002 6e64c3c40474797065c0c40464617461c0"));  // bin 16 key
    CHECK(!refused("82c4026e64c3c40474797065c0"));                 // two of the three keys: a map
    // unhashable keys, as the reference decoder refuses them
    CHECK(refused("8190c0"));
    CHECK(refused("8180c0"));
    CHECK(refused("81d4039190c0"));  // a tuple holding a list
}

void dtypes() {
    CHECK(rlay::dtype::parse("<u1").str() == "|u1");
    CHECK(rlay::dtype::parse(">b1").str() == "|b1");
    CHECK(rlay::dtype::parse("<S3").str() == "|S3");
    CHECK(rlay::dtype::parse("<f04").str() == "<f4");
    CHECK(rlay::dtype::parse("<U7").itemsize() == 28);
    CHECK(rlay::can_cast_same_kind(rlay::dtype::float64(), rlay::dtype::float32()));
    CHECK(rlay::can_cast_same_kind(rlay::dtype::int64(), rlay::dtype::uint8()) == false);
    CHECK(rlay::can_cast_same_kind(rlay::dtype::uint64(), rlay::dtype::int8()));
    CHECK(!rlay::can_cast_same_kind(rlay::dtype::float64(), rlay::dtype::uint8()));
    CHECK(!rlay::can_cast_same_kind(rlay::dtype::int64(), rlay::dtype::boolean()));
    CHECK(rlay::can_cast_same_kind(rlay::dtype::boolean(), rlay::dtype::float32()));
    // byte order conversions
    rlay::ndarray big = rlay::ndarray::copy_of(rlay::dtype::parse(">i4"), {1}, "\x00\x00\x01\x02", 4);
    CHECK(big.item<std::int64_t>(0) == 258);
    CHECK(big.astype(rlay::dtype::int32()).data<std::int32_t>()[0] == 258);
    rlay::ndarray be_f = rlay::ndarray::copy_of(rlay::dtype::parse(">f8"), {1}, "\x3f\xf0\x00\x00\x00\x00\x00\x00", 8);
    CHECK(be_f.item<double>(0) == 1.0);
    // float16, correctly rounded
    CHECK(rlay::detail::double_to_half(1.0) == 0x3c00);
    CHECK(rlay::detail::double_to_half(65504.0) == 0x7bff);
    CHECK(rlay::detail::double_to_half(65520.0) == 0x7c00);
    CHECK(rlay::detail::double_to_half(5.960464477539063e-08) == 0x0001);
    CHECK(rlay::detail::double_to_half(1.0 + 1.0 / 2048) == 0x3c00);  // a tie: to even
    CHECK(rlay::detail::half_to_double(0xc000) == -2.0);
}

void spaces_and_leaves() {
    using namespace rlay::spaces;
    rlay::space obs = dict({{"pos", box(-1e6, 1e6, {2}, rlay::dtype::float64())},
                            {"t", discrete(9)},
                            {"vel", box(-4.0, 4.0, {2}, rlay::dtype::float32())}});
    // byte-identical to rlay.spaces.encode_space of the conformance env's space (4.1, 4.4)
    CHECK(hex(mp::encode_plain(obs.encode())) ==
          "82a474797065a444696374a67370616365739392a3706f7385a474797065a3426f78a56474797065a33c6638a573686170659102a36c6f7783a56474797065a33c"
          "6638a573686170659102a464617461c4100000000080842ec10000000080842ec1a46869676883a56474797065a33c6638a573686170659102a464617461c410"
          "0000000080842e410000000080842e4192a17484a474797065a84469736372657465a16e09a5737461727400a56474797065a33c693892a376656c85a4747970"
          "65a3426f78a56474797065a33c6634a573686170659102a36c6f7783a56474797065a33c6634a573686170659102a464617461c408000080c0000080c0a46869"
          "676883a56474797065a33c6634a573686170659102a464617461c4080000804000008040");
    CHECK(hex(mp::encode_plain(discrete(2).encode())) == "84a474797065a84469736372657465a16e02a5737461727400a56474797065a33c6938");
    auto leaves = obs.leaves();
    CHECK(leaves.size() == 3 && leaves[1].row_shape.empty() && leaves[2].dtype == rlay::dtype::float32());

    // observations: float64 into a float32 Box is cast; into a uint8 Box it is a TypeError (5.10)
    value one = value::map({{"pos", value::array<double>({2}, {0.1, 0.2})}, {"t", 3}, {"vel", value::array<double>({2}, {0.5, -0.25})}});
    auto checked = rlay::detail::check_observation(obs, leaves, one);
    auto enc = rlay::detail::encode_observations(leaves, {checked, checked}, nullptr);
    CHECK(enc.frames.size() == 3 && enc.frames[2].size() == 16);
    CHECK(hex(mp::encode(enc.descriptors)) == hex(mp::encode(value::list({value::map({{"dtype", "<f8"}, {"shape", value::list({2, 2})}}),
                                                                          value::map({{"dtype", "<i8"}, {"shape", value::list({2})}}),
                                                                          value::map({{"dtype", "<f4"}, {"shape", value::list({2, 2})}})}))));
    bool type_error = false;
    try {
        rlay::detail::check_observation(box(0, 255, {2}, rlay::dtype::uint8()), box(0, 255, {2}, rlay::dtype::uint8()).leaves(),
                                        value::array<double>({2}, {1.0, 2.0}));
    } catch (const rlay::env_error& e) {
        type_error = e.type() == "TypeError" &&
                     std::string(e.what()) == "Cannot cast array data from dtype('float64') to dtype('uint8') according to the rule 'same_kind'";
    }
    CHECK(type_error);
    bool key_error = false;
    try {
        rlay::detail::check_observation(obs, leaves, value::map({{"pos", value::array<double>({2}, {0, 0})}}));
    } catch (const rlay::env_error& e) {
        key_error = e.type() == "KeyError";
    }
    CHECK(key_error);
    // a Box of 64 KiB per env goes row by row (3.8, 4.3)
    rlay::space image = dict({{"image", box(0, 255, {256, 256, 3}, rlay::dtype::uint8())}, {"speed", box(-1, 1, {2}, rlay::dtype::float32())}});
    auto image_leaves = image.leaves();
    value frame0 = value::map({{"image", rlay::ndarray(rlay::dtype::uint8(), {256, 256, 3})}, {"speed", value::array<float>({2}, {0.5f, -0.25f})}});
    auto e0 = rlay::detail::check_observation(image, image_leaves, frame0);
    auto img = rlay::detail::encode_observations(image_leaves, {e0, e0}, nullptr);
    value body = value::map({{"obs", img.descriptors}, {"info", value::list({value::map(), value::map()})}});
    CHECK(same(mp::encode(body), "82a36f627392 83a56474797065a37c7531a573686170659402cd0100cd010003a4726f7773c3"
                                 "82a56474797065a33c6634a573686170659202 02 a4696e666f928080"));
    CHECK(img.frames.size() == 3 && img.frames[0].size() == 196608);

    // actions: both leaf forms give the same values, converted to the space's dtype (3.6, 3.8)
    rlay::space act = dict({{"move", box(-1, 1, {2}, rlay::dtype::float32())}, {"pick", discrete(3)}});
    auto act_leaves = act.leaves();
    double moves[4] = {0.5, -0.5, 1.0, 0.25};
    std::int32_t picks[2] = {2, 0};
    std::string move_bytes(reinterpret_cast<const char*>(moves), 32), pick_bytes(reinterpret_cast<const char*>(picks), 8);
    value one_frame = value::list({value::map({{"dtype", "<f8"}, {"shape", value::list({2, 2})}}),
                                   value::map({{"dtype", "<i4"}, {"shape", value::list({2})}})});
    value row_frames = value::list({value::map({{"dtype", "<f8"}, {"shape", value::list({2, 2})}, {"rows", true}}),
                                    value::map({{"dtype", "<i4"}, {"shape", value::list({2})}, {"rows", true}})});
    auto a1 = rlay::detail::decode_actions(&one_frame, message_of({move_bytes, pick_bytes}), 2, act, act_leaves, 2);
    auto a2 = rlay::detail::decode_actions(&row_frames,
                                           message_of({move_bytes.substr(0, 16), move_bytes.substr(16), pick_bytes.substr(0, 4), pick_bytes.substr(4)}),
                                           2, act, act_leaves, 2);
    CHECK(a1.size() == 2 && a1 == a2);
    CHECK(a1[1].at("pick").as_int() == 0 && a1[0].at("pick").as_int() == 2);
    CHECK(a1[1].at("move").as_ndarray().dtype() == rlay::dtype::float32() && a1[1].at("move").as_ndarray().data<float>()[1] == 0.25f);
    auto refused_actions = [&](const value& desc, std::vector<std::string> frames) {
        try {
            rlay::detail::decode_actions(&desc, message_of(frames), 2, act, act_leaves, 2);
        } catch (const rlay::error& e) {
            return e.code() == rlay::errc::bad_message;
        }
        return false;
    };
    CHECK(refused_actions(one_frame, {move_bytes}));                        // a frame is missing
    CHECK(refused_actions(one_frame, {move_bytes, pick_bytes, "x"}));       // one too many
    CHECK(refused_actions(one_frame, {move_bytes.substr(1), pick_bytes}));  // wrong length
    CHECK(refused_actions(value::list({one_frame[0]}), {move_bytes}));      // too few leaves
    CHECK(refused_actions(value::list({one_frame[0], value::map({{"text", value::list({"a", "b"})}})}), {move_bytes}));
    CHECK(refused_actions(value::list({one_frame[0], value::map({{"dtype", "<i4"}, {"shape", value::list({2})}, {"shm", true}})}), {move_bytes}));
}

void plans() {
    using rlay::detail::autoreset_mode;
    using rlay::detail::plan;
    // NextStep after an episode end: one reset, the action ignored, reward 0
    plan p = plan::for_step(autoreset_mode::next_step, true, value(1), 0);
    CHECK(p.first().is_reset && p.first().seed.as_value().is_nil() && p.first().options.is_nil());
    CHECK(!p.feed_reset(value("obs"), value::map()));
    CHECK(p.outcome().reward == 0.0 && !p.outcome().terminated && p.outcome().final.is_nil());
    // SameStep: step, then a reset; final holds the step's obs and info
    plan q = plan::for_step(autoreset_mode::same_step, false, value(1), 0);
    CHECK(!q.first().is_reset);
    auto next = q.feed_step(value("last"), 1.5, true, false, value::map({{"k", 1}}));
    CHECK(next && next->is_reset);
    CHECK(!q.feed_reset(value("first"), value::map()));
    CHECK(q.outcome().obs == value("first") && q.outcome().final[0] == value("last") && q.outcome().terminated && q.outcome().reward == 1.5);
    // Disabled after an episode end: an AssertionError naming the env
    bool asserted = false;
    try {
        plan::for_step(autoreset_mode::disabled, true, value(1), 3);
    } catch (const rlay::env_error& e) {
        asserted = e.type() == "AssertionError" && std::string(e.what()).rfind("env 3 was stepped after its episode ended", 0) == 0;
    }
    CHECK(asserted);
}

void seeds() {
    rlay::seed big(value::big_integer(unhex("400000000000000000")));  // 2**70
    CHECK(big.has_value() && !big.as_uint64() && hex(big.big_endian_bytes()) == "400000000000000000");
    CHECK(big.mod((std::uint64_t(1) << 61) - 1) == 512);  // 2**70 mod (2**61 - 1) = 2**9
    rlay::seed small(value(5));
    CHECK(small.as_uint64() == 5u && small.mod(3) == 2);
    CHECK(!rlay::seed().has_value());
    CHECK(value::big_integer(unhex("ff7fffffffffffffff")).repr() == "-9223372036854775809");
}

/// Mutated messages: every decoder either decodes or throws rlay::error, never anything else
/// (and, under a sanitizer, never reads out of bounds).
void fuzz() {
    std::vector<std::string> seeds_ = {
        unhex("86a36f62739182a56474797065a33c6634a57368617065920204a672657761726492cb3ff0000000000000cb0000000000000000aa7465726d696e617465"
              "6492c2c2a97472756e636174656492c3c2a4696e666f928080a566696e616c92c0c0"),
        unhex("81a161c714039201c70f0292a33c6938c4080200000000000000"),
        unhex("c7110193a33c66349102c4080000c03f000000c0"),
        unhex("c7110193a33c55329101c4086100000062000000"),
        unhex("84a17601a474797065a473746570a372657107a4656e7673920002"),
        unhex("c7110400800000000000000000000000000000"),
        unhex("83c4026e64c3c40474797065c0c40464617461c0"),
    };
    std::uint64_t state = 12345;
    auto next = [&] {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        return static_cast<unsigned>(state >> 33);
    };
    int decoded = 0, refused_ = 0, other = 0;
    for (int round = 0; round < 30000; ++round) {
        std::string m = seeds_[next() % seeds_.size()];
        int edits = 1 + next() % 4;
        for (int e = 0; e < edits && !m.empty(); ++e) {
            std::size_t at = next() % m.size();
            switch (next() % 4) {
                case 0: m[at] = static_cast<char>(next()); break;
                case 1: m.erase(at, 1 + next() % 3); break;
                case 2: m.insert(at, 1, static_cast<char>(next())); break;
                default: m[at] = static_cast<char>(m[at] ^ (1u << (next() % 8))); break;
            }
        }
        for (int decoder = 0; decoder < 2; ++decoder) {
            try {
                if (decoder == 0) mp::decode(m);
                else rlay::detail::decode_header(m);
                ++decoded;
            } catch (const rlay::error&) {
                ++refused_;
            } catch (...) {
                ++other;
            }
        }
    }
    CHECK(other == 0);
    CHECK(decoded > 0 && refused_ > 0);
}


/// Seconds `fn` takes.
template <class Fn>
double timed(Fn fn) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// What the broker (or any trainer, through it: bodies pass the broker untouched) can send
/// must not make the game allocate more than the message holds, or hang it.
void hostile_sizes() {
    // Arrays nested 1022 deep inside each of 16 tuples (16 KB) decoded to ~16,000 levels, which a
    // value's copy and destructor recurse through: a crash on a 1 MB thread stack. The depth counts
    // across tuples now: refused, and 600 + 400 levels across two tuples still decode.
    auto deep = [](int tuples, int per_tuple) {
        std::string inner = "\xc0";
        for (int t = 0; t < tuples; ++t) {
            std::string payload = std::string(static_cast<std::size_t>(per_tuple), '\x91') + inner;
            std::uint32_t n = static_cast<std::uint32_t>(payload.size());
            inner = std::string("\xc9") + char(n >> 24) + char((n >> 16) & 0xff) + char((n >> 8) & 0xff) + char(n & 0xff) + "\x03" + payload;
        }
        return inner;
    };
    bool deep_refused = false;
    try {
        mp::decode(deep(16, 1022));
    } catch (const rlay::error& e) {
        deep_refused = e.code() == rlay::errc::bad_message && std::string(e.what()).find("1024 deep") != std::string::npos;
    }
    CHECK(deep_refused);
    CHECK(mp::decode(deep(2, 500)).is_tuple());

    // An ext 1 array of 20 bytes whose shape claims 8 GiB (or 1 TiB) of |u1: refused before
    // anything is allocated. It allocated and zeroed the 8 GiB (35 s, 8 GB resident), and 1 TiB
    // threw std::bad_alloc (an abort under AddressSanitizer).
    auto claim = [](std::uint64_t dim) {
        mp::writer inner;
        inner.array(3);
        inner.str("|u1");
        inner.array(2);
        inner.uint(dim);
        inner.uint(1024);
        inner.bin("x");
        mp::writer w;
        w.ext(1, inner.out);
        return w.out;
    };
    for (std::uint64_t dim : {std::uint64_t(1) << 23, std::uint64_t(1) << 30, std::uint64_t(1) << 53}) {
        bool refused_ = false;
        double took = timed([&] {
            try {
                mp::decode(claim(dim));
            } catch (const rlay::error& e) {
                refused_ = e.code() == rlay::errc::bad_message;
            } catch (...) {
            }
        });
        CHECK(refused_);
        CHECK(took < 0.1);
    }
    // the same claim in a step's action descriptor (one frame of 8 bytes)
    rlay::space act = rlay::spaces::box(-1, 1, {2}, rlay::dtype::float32());
    auto act_leaves = act.leaves();
    rlay::detail::message m;
    m.emplace_back();
    m.emplace_back();
    m.push_back(rlay::detail::frame_of(std::string(8, '\0')));
    for (value desc : {value::map({{"dtype", "<f4"}, {"shape", value::list({1, std::uint64_t(1) << 40})}}),
                       value::map({{"dtype", "<f4"}, {"shape", value::list({1, std::uint64_t(1) << 40})}, {"rows", true}})}) {
        value leaves = value::list({desc});
        bool refused_ = false;
        double took = timed([&] {
            try {
                rlay::detail::decode_actions(&leaves, m, 2, act, act_leaves, 1);
            } catch (const rlay::error& e) {
                refused_ = e.code() == rlay::errc::bad_message;
            } catch (...) {
            }
        });
        CHECK(refused_);
        CHECK(took < 0.1);
    }

    // Each decoded value takes ~115 bytes (~170 before arrays moved behind a pointer): a body of
    // 3 million nils (3 MB) took 500 MB, and 100 MB took 24 GB. A decode makes at most max_decoded_values values (default 2^21).
    auto nils = [](std::size_t n) {
        mp::writer w;
        w.array(n);
        return w.out + std::string(n, '\xc0');
    };
    bool over = false;
    try {
        mp::decode(nils(3000000));
    } catch (const rlay::error& e) {
        over = e.code() == rlay::errc::bad_message;
    }
    CHECK(over);
    CHECK(mp::decode(nils(1000000)).size() == 1000000);  // a seeds list of 1,000,000 envs passes
    over = false;
    try {
        mp::decode(nils(1000), 999);  // a lower limit (rlay::config::max_decoded_values)
    } catch (const rlay::error& e) {
        over = e.code() == rlay::errc::bad_message;
    }
    CHECK(over);
    // the budget is shared with nested ext payloads: 20 tuples of 100,000 nils each
    {
        mp::writer tuple_payload;
        tuple_payload.array(100000);
        tuple_payload.out += std::string(100000, '\xc0');
        mp::writer one;
        one.ext(3, tuple_payload.out);
        mp::writer list;
        list.array(30);
        for (int i = 0; i < 30; ++i) list.out += one.out;
        bool refused_ = false;
        try {
            mp::decode(list.out, 2000000);
        } catch (const rlay::error& e) {
            refused_ = e.code() == rlay::errc::bad_message;
        }
        CHECK(refused_);
        CHECK(mp::decode(list.out, 3100000).size() == 30);
    }

    // A header naming K distinct env indices is checked in O(K), not O(K^2) (it took minutes
    // for a worker of 1,000,000 envs).
    {
        rlay::config cfg;
        cfg.env_id = "Test-v0";
        cfg.observation_space = rlay::spaces::discrete(2);
        cfg.action_space = rlay::spaces::discrete(2);
        cfg.logger = [](rlay::log_level, std::string_view) {};
        std::size_t k = 300000;
        rlay::detail::link link(cfg, "command", k);
        value envs = value::list();
        for (std::size_t i = 0; i < k; ++i) envs.push_back(static_cast<std::uint64_t>(k - 1 - i));
        std::string head = rlay::detail::header_writer("reset", 2).field("req", 5).field("envs", envs).done();
        value seeds = value::map();  // read() checks the header; the body is the call's business
        std::atomic<bool> stopping{false};
        rlay::detail::reading r;
        rlay::detail::message msg;
        msg.push_back(rlay::detail::frame_of(head));
        msg.push_back(rlay::detail::frame_of(mp::encode(seeds)));
        double took = timed([&] { r = link.read(std::move(msg), stopping); });
        auto* req = std::get_if<rlay::detail::request>(&r);
        CHECK(req && req->envs.size() == k && req->envs[0] == static_cast<std::int64_t>(k - 1));
        CHECK(took < 5.0);  // 9 s in a release build before (O(K^2)), 0.1 s now
        envs.push_back(std::uint64_t(7));  // a repeat is still refused
        head = rlay::detail::header_writer("reset", 2).field("req", 5).field("envs", envs).done();
        rlay::detail::message again;
        again.push_back(rlay::detail::frame_of(head));
        again.push_back(rlay::detail::frame_of(mp::encode(seeds)));
        r = link.read(std::move(again), stopping);
        auto* answer = std::get_if<rlay::detail::message>(&r);
        CHECK(answer && rlay::detail::decode_header(rlay::detail::bytes_of((*answer)[0])).find("code")->as_str() == "bad_message");
    }
}

/// The heartbeat thread never dies while its worker lives: a socket that fails is made again.
/// (It ended on the first exception, and its worker then registered again, and was lost
/// again, every expiry for the rest of its life.)
void heartbeat_survives() {
    zmq::context_t ctx;
    std::vector<std::string> lines;
    std::mutex lock;
    rlay::detail::logger log([&](rlay::log_level, std::string_view line) {
        std::lock_guard<std::mutex> hold(lock);
        lines.emplace_back(line);
    });
    {
        rlay::detail::heartbeat hb(ctx, "bogus://endpoint", "rtestid", std::nullopt, log);  // connect() throws
        std::this_thread::sleep_for(std::chrono::milliseconds(350));
        double took = timed([&] { hb.stop(); });
        CHECK(took < 0.5);
    }
    std::lock_guard<std::mutex> hold(lock);
    int stopped = 0, failed = 0;
    for (const auto& l : lines) {
        if (l.find("heartbeat thread stopped") != std::string::npos) ++stopped;
        if (l.find("heartbeat socket failed") != std::string::npos) ++failed;
    }
    CHECK(stopped == 0);
    CHECK(failed == 1);  // logged once, retried quietly
}

/// 3.9: rows land in the trainer's segment, and a segment that shrinks between check 3 and the
/// write (a trainer, or any process of this user, truncating it) cannot SIGBUS the game.
void shared_memory() {
#if defined(__linux__)
    char name[64];
    std::snprintf(name, sizeof name, "rlay-%ld-%016llx", static_cast<long>(::getpid()), 0x1234abcdULL + static_cast<unsigned long long>(::getpid()));
    std::string path = std::string("/dev/shm/") + name;
    ::unlink(path.c_str());
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        std::fprintf(stderr, "  (no /dev/shm here: shared-memory test skipped)\n");
        return;
    }
    const std::size_t row = 64 * 64, size = 4096 + 2 * row;
    CHECK(::posix_fallocate(fd, 0, size) == 0);
    CHECK(::flock(fd, LOCK_EX) == 0);
    std::string token = "0123456789abcdef";
    CHECK(::pwrite(fd, token.data(), 16, 0) == 16);
    void* view = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);  // the trainer's view

    rlay::space obs = rlay::spaces::box(0, 255, {64, 64}, rlay::dtype::uint8());
    auto leaves = obs.leaves();
    value offer = value::map({{"name", name}, {"token", value::bin(token)},
                              {"leaves", value::list({value::list({0, value::list({4096, 4096 + row})})})}});
    auto env_obs = [&](int fill) {
        rlay::ndarray a(rlay::dtype::uint16(), {64, 64});  // uint16: cast to uint8 on the way
        for (std::size_t i = 0; i < a.size(); ++i) a.mutable_data<std::uint16_t>()[i] = static_cast<std::uint16_t>(fill);
        return rlay::detail::check_observation(obs, leaves, value(a));
    };
    rlay::detail::segment_cache cache;
    auto placed = cache.place(&offer, leaves, 2);
    CHECK(placed.has_value() && placed->size() == 1);
    if (placed && view != MAP_FAILED) {
        auto enc = rlay::detail::encode_observations(leaves, {env_obs(7), env_obs(9)}, &*placed);
        CHECK(enc.frames.empty() && enc.descriptors[0].at("shm").as_bool());
        CHECK(enc.write_shared_memory());
        const auto* bytes = static_cast<const unsigned char*>(view);
        CHECK(bytes[4096] == 7 && bytes[4096 + row - 1] == 7 && bytes[4096 + row] == 9 && bytes[size - 1] == 9);
        // the file shrinks after check 3: writing the rows must not raise SIGBUS
        auto again = cache.place(&offer, leaves, 2);
        CHECK(again.has_value());
        if (again) {
            auto enc2 = rlay::detail::encode_observations(leaves, {env_obs(1), env_obs(2)}, &*again);
            CHECK(::ftruncate(fd, 4096) == 0);
            enc2.write_shared_memory();  // survived: that is the check
            CHECK(true);
        }
        // check 4: a wrong token is no offer
        value wrong = offer;
        wrong["token"] = value::bin("fedcba9876543210");
        CHECK(!cache.place(&wrong, leaves, 2));
        // check 5: an offset whose row would pass the end
        value past = offer;
        past["leaves"] = value::list({value::list({0, value::list({4096, size})})});
        CHECK(!cache.place(&past, leaves, 2));
    }
    if (view != MAP_FAILED) ::munmap(view, size);
    ::close(fd);
    ::unlink(path.c_str());
#endif
}

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

/// A broker back end on loopback that follows a script: answers each `register` with the next
/// of `answers` (the last one again once they run out), answers pings with `known`, and sends
/// `flood` error messages to the worker's main socket when asked.
struct fake_broker {
    zmq::context_t ctx;
    zmq::socket_t sock{ctx, zmq::socket_type::router};
    std::string endpoint;
    std::vector<value> answers;
    std::atomic<bool> known{true}, stop{false};
    std::atomic<int> flood{0};
    std::mutex lock;
    std::vector<double> registers, pings;  // when they arrived
    std::thread thread;

    explicit fake_broker(std::vector<value> script) : answers(std::move(script)) {
        sock.set(zmq::sockopt::router_handover, 1);
        sock.set(zmq::sockopt::linger, 0);
        sock.bind("tcp://127.0.0.1:*");
        endpoint = sock.get(zmq::sockopt::last_endpoint);
        thread = std::thread([this] { run(); });
    }
    ~fake_broker() {
        stop = true;
        thread.join();
    }
    void send(const std::string& id, const std::string& bytes) {
        sock.send(zmq::buffer(id), zmq::send_flags::sndmore);
        sock.send(zmq::buffer(bytes), zmq::send_flags::dontwait);
    }
    void run() {
        std::string worker;
        std::size_t answered = 0;
        while (!stop) {
            if (int n = flood.exchange(0); n > 0 && !worker.empty()) {
                std::string e = mp::encode_plain(value::map({{"v", 1}, {"type", "error"}, {"req", value()}, {"code", "bad_message"}, {"message", "flood"}}));
                for (int i = 0; i < n; ++i) send(worker, e);
            }
            zmq::pollitem_t item{sock.handle(), 0, ZMQ_POLLIN, 0};
            zmq::poll(&item, 1, std::chrono::milliseconds(5));
            if (!(item.revents & ZMQ_POLLIN)) continue;
            std::vector<zmq::message_t> frames = rlay::detail::recv_message(sock);
            if (frames.size() < 2) continue;
            std::string id = frames[0].to_string();
            rlay::detail::header h;
            try {
                h = rlay::detail::decode_header(rlay::detail::bytes_of(frames[1]));
            } catch (...) {
                continue;
            }
            std::lock_guard<std::mutex> hold(lock);
            if (h.type() == "heartbeat") {
                if (id.size() > 3 && id.compare(id.size() - 3, 3, "|hb") == 0) pings.push_back(now_s());
                send(id, mp::encode_plain(value::map({{"v", 1}, {"type", "heartbeat"}, {"known", known.load()}})));
            } else if (h.type() == "register") {
                worker = id;
                registers.push_back(now_s());
                send(id, mp::encode_plain(answers[std::min(answered++, answers.size() - 1)]));
            }
        }
    }
};

value registered(std::vector<std::pair<value, value>> extra = {}) {
    value m = value::map({{"v", 1}, {"type", "registered"}, {"worker", "w1"}, {"slots", value::list({0})}});
    for (auto& e : extra) m.as_map().push_back(e);
    return m;
}

rlay::config fake_config(const fake_broker& broker, std::vector<std::string>* lines, std::mutex* lock) {
    rlay::config cfg;
    cfg.broker = broker.endpoint;
    cfg.env_id = "Test-v0";
    cfg.observation_space = rlay::spaces::discrete(2);
    cfg.action_space = rlay::spaces::discrete(2);
    cfg.register_timeout = std::chrono::seconds(5);
    cfg.logger = [lines, lock](rlay::log_level, std::string_view line) {
        std::lock_guard<std::mutex> hold(*lock);
        lines->emplace_back(line);
    };
    return cfg;
}

/// 8.3/5.2: a `limit` refusal with retry_after is retried on the same socket after that long;
/// 8.5 rule 2: known: false after the grace makes the worker register again; 5.3: a
/// `registered` without heartbeat settings keeps the last ones announced (it reset them to
/// 0.5 s, and a broker expecting 0.1 s then lost the worker over and over).
void registration_and_heartbeat_settings() {
    fake_broker broker({mp::decode_plain(mp::encode_plain(value::map({{"v", 1}, {"type", "error"}, {"req", value()}, {"code", "limit"},
                                                                      {"message", "too many registrations"}, {"retry_after", 0.3}}))),
                        registered({{"heartbeat_interval", 0.1}, {"heartbeat_liveness", 20}}), registered()});
    std::vector<std::string> lines;
    std::mutex lock;
    rlay::push_worker game(fake_config(broker, &lines, &lock), 1);
    {
        std::lock_guard<std::mutex> hold(broker.lock);
        CHECK(broker.registers.size() == 2 && broker.registers[1] - broker.registers[0] >= 0.29);
    }
    broker.known = false;  // the broker forgot the worker: it must register again (rule 2)
    double until = now_s() + 1.0;
    while (now_s() < until) {
        game.commands(std::chrono::milliseconds(0));
        bool again;
        {
            std::lock_guard<std::mutex> hold(broker.lock);
            again = broker.registers.size() >= 3;
        }
        if (again) broker.known = true;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    double since;
    {
        std::lock_guard<std::mutex> hold(broker.lock);
        CHECK(broker.registers.size() == 3);
        since = broker.registers.back();
        broker.pings.clear();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
    std::lock_guard<std::mutex> hold(broker.lock);
    CHECK(broker.pings.size() >= 5);  // every 0.1 s still, not every 0.5 s
    (void)since;
}

/// A broker sending without pause must not keep the game inside commands(0): one call reads
/// at most a bounded number of messages (it read until the socket was empty, for ever).
void push_flood() {
    fake_broker broker({registered()});
    std::vector<std::string> lines;
    std::mutex lock;
    rlay::push_worker game(fake_config(broker, &lines, &lock), 1);
    broker.flood = 3000;
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    auto reports = [&] {
        std::lock_guard<std::mutex> hold(lock);
        int n = 0;
        for (const auto& l : lines) n += l.find("broker reports: flood") != std::string::npos;
        return n;
    };
    int before = reports();
    game.commands(std::chrono::milliseconds(0));
    int read = reports() - before;
    CHECK(read > 0 && read <= 256);
}

}  // namespace

/// Graph, Sequence and OneOf (3.8.1): ext 5, their space maps, value leaves both ways, refusals.
void value_leaves() {
    using namespace rlay::spaces;
    using rlay::ndarray;
    // ext 5 (3.4): GraphInstance(nodes=uint8[[7]], edges=None, edge_links=None)
    const std::string graph_bytes = "c7 11 05 93 c7 0b 01 93 a3 7c 75 31 92 01 01 c4 01 07 c0 c0";
    CHECK(round_trip(graph_bytes));
    value g = decode_hex(graph_bytes);
    CHECK(g.is_graph() && g.size() == 3 && g[0].as_ndarray().shape() == ndarray::shape_type({1, 1}) && g[1].is_nil());
    CHECK(refused("d6 05 92 01 02"));  // a graph of 2 items
    CHECK(refused("d4 05 01"));        // a payload that is not an array
    bool header_refuses = false;
    try {
        mp::encode_plain(value::map({{"g", g}}));
    } catch (const rlay::error&) {
        header_refuses = true;
    }
    CHECK(header_refuses);

    // space maps: byte-identical to rlay.spaces.encode_space (4.1)
    CHECK(hex(mp::encode_plain(graph(box(-1, 1, {2}, rlay::dtype::float32()), discrete(3)).encode())) ==
          "83a474797065a54772617068aa6e6f64655f737061636585a474797065a3426f78a56474797065a33c6634a573686170659102a36c6f7783a56474797065a33c66"
          "34a573686170659102a464617461c408000080bf000080bfa46869676883a56474797065a33c6634a573686170659102a464617461c4080000803f0000803faa65"
          "6467655f737061636584a474797065a84469736372657465a16e03a5737461727400a56474797065a33c6938");
    CHECK(hex(mp::encode_plain(graph(discrete(4)).encode())) ==
          "83a474797065a54772617068aa6e6f64655f737061636584a474797065a84469736372657465a16e04a5737461727400a56474797065a33c6938aa656467655f7370"
          "616365c0");
    CHECK(hex(mp::encode_plain(sequence(discrete(3), true).encode())) ==
          "83a474797065a853657175656e6365ad666561747572655f737061636584a474797065a84469736372657465a16e03a5737461727400a56474797065a33c6938a573"
          "7461636bc3");
    CHECK(hex(mp::encode_plain(one_of({discrete(2), text(2, 0, "ab")}).encode())) ==
          "82a474797065a54f6e654f66a67370616365739284a474797065a84469736372657465a16e02a5737461727400a56474797065a33c693884a474797065a4546578"
          "74aa6d696e5f6c656e67746800aa6d61785f6c656e67746802a763686172736574a26162");
    CHECK(graph(discrete(4)).repr() == "Graph(Discrete(4), None)" && sequence(discrete(3)).repr() == "Sequence(Discrete(3), stack=False)");

    // the worked example of 4.3: a Dict of a Graph (a value leaf) and a Discrete, 2 envs
    rlay::space obs = dict({{"g", graph(box(-1, 1, {2}, rlay::dtype::float32()), discrete(3))}, {"t", discrete(5)}});
    auto leaves = obs.leaves();
    CHECK(leaves.size() == 2 && leaves[0].values && !leaves[1].values);
    value env0 = value::map({{"g", value::graph(value::array<float>({2, 2}, {0.5f, -1.0f, 0.0f, 0.25f}), value::array<std::int64_t>({1}, {2}),
                                                value::array<std::int32_t>({1, 2}, {0, 1}))},
                             {"t", 3}});
    value env1 = value::map({{"g", value::graph(value::array<float>({1, 2}, {1.0f, 1.0f}), value(), value())}, {"t", 0}});
    auto enc = rlay::detail::encode_observations(
        leaves, {rlay::detail::check_observation(obs, leaves, env0), rlay::detail::check_observation(obs, leaves, env1)}, nullptr);
    CHECK(same(mp::encode(enc.descriptors[0]),
               "81 a6 76 61 6c 75 65 73 92 c7 3c 05 93 82 a5 64 74 79 70 65 a3 3c 66 34 a5 73 68 61 70 65 92 02 02"
               "82 a5 64 74 79 70 65 a3 3c 69 38 a5 73 68 61 70 65 91 01 82 a5 64 74 79 70 65 a3 3c 69 34 a5 73 68 61 70 65 92 01 02"
               "c7 17 05 93 82 a5 64 74 79 70 65 a3 3c 66 34 a5 73 68 61 70 65 92 01 02 c0 c0"));
    CHECK(enc.frames.size() == 5);
    if (enc.frames.size() == 5) {
        auto bytes = [&](std::size_t i) { return std::string_view(static_cast<const char*>(enc.frames[i].data()), enc.frames[i].size()); };
        CHECK(same(bytes(0), "00 00 00 3f 00 00 80 bf 00 00 00 00 00 00 80 3e") && same(bytes(1), "02 00 00 00 00 00 00 00"));
        CHECK(same(bytes(2), "00 00 00 00 01 00 00 00") && same(bytes(3), "00 00 80 3f 00 00 80 3f"));
        CHECK(same(bytes(4), "03 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"));
    }
    // an observation that does not fit: an env_error naming where (5.10)
    auto misfit = [&](const value& o, const char* type, const std::string& what) {
        try {
            rlay::detail::check_observation(obs, leaves, o);
        } catch (const rlay::env_error& e) {
            if (e.type() == type && std::string(e.what()) == what) return true;
            std::fprintf(stderr, "  %s: %s\n", e.type().c_str(), e.what());
        }
        return false;
    };
    CHECK(misfit(value::map({{"g", value::graph(value::list({1, 2}), value(), value())}, {"t", 0}}), "TypeError",
                 "value.nodes: expected a numpy array, got list"));
    CHECK(misfit(value::map({{"g", value::graph(value::array<double>({1, 3}, {0, 0, 0}), value(), value())}, {"t", 0}}), "ValueError",
                 "value.nodes: an array of shape (1, 3) does not fit Box(-1.0, 1.0, (2,), float32) (expected (1, 2))"));
    CHECK(misfit(value::map({{"g", value::tuple({value::array<float>({1, 2}, {0, 0}), value(), value()})}, {"t", 0}}), "TypeError",
                 "value: a value of Graph(Box(-1.0, 1.0, (2,), float32), Discrete(3)) must be a GraphInstance, got tuple"));
    CHECK(misfit(value::map({{"g", value::graph(value::array<std::int64_t>({1, 2}, {0, 0}), value::array<std::int64_t>({1}, {0}), value())}, {"t", 0}}),
                 "ValueError", "value: edges and edge_links must both be None, or neither"));

    // actions: a value leaf decodes to the very values, each array in its space's dtype (as action
    // leaves, 3.6), a Discrete as a plain int; refusals are bad_message (3.8.1)
    rlay::space act = dict({{"g", graph(discrete(4), box(0, 1, {1}, rlay::dtype::float32()))},
                            {"o", one_of({discrete(2), sequence(dict({{"a", discrete(3)}, {"b", text(2, 0, "xy")}}), true)})}});
    auto act_leaves = act.leaves();
    std::int64_t nodes[3] = {3, 0, 1};
    double weights[2] = {0.5, 0.25};
    std::int32_t links[4] = {0, 1, 2, 2};
    std::int64_t as[2] = {2, 1};
    std::string node_bytes(reinterpret_cast<const char*>(nodes), 24), weight_bytes(reinterpret_cast<const char*>(weights), 16),
        link_bytes(reinterpret_cast<const char*>(links), 16), a_bytes(reinterpret_cast<const char*>(as), 16);
    value graph_wire = value::graph(ref("<i8", {3}), ref("<f8", {2, 1}), ref("<i4", {2, 2}));
    value one_wire = value::list({value::scalar<std::int64_t>(1), value::map({{"b", value::tuple({"x", ""})}, {"a", ref("<i8", {2})}})});
    auto descriptors = [&](value g0, value o0) {
        return value::list({value::map({{"values", value::list({g0})}}), value::map({{"values", value::list({o0})}})});
    };
    value good = descriptors(graph_wire, one_wire);
    auto actions = rlay::detail::decode_actions(&good, message_of({node_bytes, weight_bytes, link_bytes, a_bytes}), 2, act, act_leaves, 1);
    CHECK(actions.size() == 1);
    if (actions.size() == 1) {
        const value& ga = actions[0].at("g");
        CHECK(ga.is_graph() && ga[0].as_ndarray().dtype() == rlay::dtype::int64() && ga[1].as_ndarray().dtype() == rlay::dtype::float32());
        CHECK(ga[1].as_ndarray().data<float>()[1] == 0.25f);
        CHECK(ga[2].as_ndarray().shape() == ndarray::shape_type({2, 2}) && ga[2].as_ndarray().data<std::int64_t>()[3] == 2);  // int64 links
        const value& oa = actions[0].at("o");
        CHECK(oa.is_list() && oa[0].is_int() && oa[0].as_int() == 1 && oa[1].as_map()[0].first.as_str() == "b" && oa[1].at("b").is_tuple());
        CHECK(oa[1].at("a").as_ndarray().item<std::int64_t>(0) == 2);
    }
    auto refused_values = [&](const value& desc, std::vector<std::string> frames, std::size_t k = 1) {
        try {
            rlay::detail::decode_actions(&desc, message_of(frames), 2, act, act_leaves, k);
        } catch (const rlay::error& e) {
            return e.code() == rlay::errc::bad_message;
        }
        return false;
    };
    std::vector<std::string> all{node_bytes, weight_bytes, link_bytes, a_bytes};
    CHECK(!refused_values(good, all));
    CHECK(refused_values(good, {node_bytes, weight_bytes, link_bytes}));                              // a frame is missing
    CHECK(refused_values(good, {node_bytes, weight_bytes, link_bytes, a_bytes, "x"}));                // one too many
    CHECK(refused_values(good, {node_bytes.substr(1), weight_bytes, link_bytes, a_bytes}));           // a frame a byte short
    CHECK(refused_values(good, all, 2));                                                              // 1 value for 2 envs
    CHECK(refused_values(value::list({value::map({{"values", 3}}), good[1]}), all));                  // values not a list
    CHECK(refused_values(value::list({ref("<i8", {1}), good[1]}), all));                              // an array for a value leaf
    CHECK(refused_values(value::list({value::map({{"text", value::list({"a"})}}), good[1]}), all));   // text for a value leaf
    CHECK(refused_values(descriptors(value::graph(ref("<i8", {3}), ref("<f8", {2, 1}), value()), one_wire), all));  // links missing
    CHECK(refused_values(descriptors(value::graph(ref("<i8", {3}), ref("<f8", {2, 1}), ref("<f4", {2, 2})), one_wire), all));  // float links
    CHECK(refused_values(descriptors(value::graph(ref("<i8", {3}), ref("<f8", {3, 1}), ref("<i4", {2, 2})), one_wire),
                         {node_bytes, weight_bytes + std::string(8, '\0'), link_bytes, a_bytes}));   // 3 edges, 2 links
    CHECK(refused_values(descriptors(value::graph(ref("|u1", {std::size_t(1) << 40}), value(), value()), one_wire), all));  // a huge claim
    CHECK(refused_values(descriptors(value::graph(3, value(), value()), one_wire), all));             // not a reference
    CHECK(refused_values(descriptors(value::tuple({ref("<i8", {3}), value(), value()}), one_wire), all));  // a tuple, not a graph
    CHECK(refused_values(descriptors(graph_wire, value::list({2, 0})), {node_bytes, weight_bytes, link_bytes}));  // index out of range
    CHECK(refused_values(descriptors(graph_wire, value::list({true, 0})), {node_bytes, weight_bytes, link_bytes}));  // a bool index
    CHECK(refused_values(descriptors(graph_wire, value::list({1, value::map({{"a", ref("<i8", {2})}})})), all));  // a key missing
    CHECK(refused_values(descriptors(graph_wire, value::list({1, value::map({{"a", ref("<i8", {2})}, {"b", value::tuple({"x"})}})})),
                         all));  // batches of 2 and 1
    CHECK(refused_values(value::list({good[0], value::map({{"values", value::list({value::tuple({0, 1, 2})})}})}),
                         {node_bytes, weight_bytes, link_bytes}));  // a OneOf of 3 items
    // the worker does not check action dtypes (3.6): int8 node features for a Discrete pass, as int64
    value small = descriptors(value::graph(ref("|i1", {3}), value(), value()), value::tuple({0, 1}));
    CHECK(!refused_values(small, {std::string("\x01\x02\x03", 3)}));
    auto converted = rlay::detail::decode_actions(&small, message_of({std::string("\x01\x02\x03", 3)}), 2, act, act_leaves, 1);
    CHECK(converted.size() == 1 && converted[0].at("g")[0].as_ndarray().data<std::int64_t>()[2] == 3);

    // a mutation fuzz pass: any change to the descriptors' bytes or the frames decodes or is refused
    // with rlay::error, nothing else
    const std::string good_bytes = mp::encode(good);
    std::uint64_t state = 777;
    auto next = [&] {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        return static_cast<unsigned>(state >> 33);
    };
    int decoded = 0, refused_count = 0, other = 0;
    for (int round = 0; round < 20000; ++round) {
        std::string m = good_bytes;
        for (int e = 0, edits = 1 + next() % 3; e < edits && !m.empty(); ++e) {
            std::size_t at = next() % m.size();
            switch (next() % 3) {
                case 0: m[at] = static_cast<char>(next()); break;
                case 1: m.erase(at, 1 + next() % 3); break;
                default: m[at] = static_cast<char>(m[at] ^ (1u << (next() % 8))); break;
            }
        }
        std::vector<std::string> frames = all;
        if (next() % 4 == 0) frames.erase(frames.begin() + next() % frames.size());
        if (next() % 4 == 0) frames[next() % frames.size()].resize(next() % 32);
        try {
            value desc = mp::decode(m);
            rlay::detail::decode_actions(&desc, message_of(frames), 2, act, act_leaves, 1);
            ++decoded;
        } catch (const rlay::error&) {
            ++refused_count;
        } catch (...) {
            ++other;
        }
    }
    CHECK(other == 0);
    CHECK(decoded > 0 && refused_count > 0);
}

/// The limits and conversions of value leaves (3.8.1, 4.1): a batch's length, edge links that
/// name nodes, integer Discretes, repeated keys, graphs of 3 items, valid UTF-8, space nesting,
/// actions converted as action leaves are, and the walk of a large action by move within budget.
void value_leaf_limits() {
    using namespace rlay::spaces;
    using rlay::ndarray;
    auto one_value = [](value v) { return value::list({value::map({{"values", value::list({std::move(v)})}})}); };
    // the action of one env, or the error's text ("" if accepted); `max` is max_decoded_values
    auto action = [&](const rlay::space& s, value v, std::vector<std::string> frames, value* out = nullptr,
                      std::size_t max = std::size_t(1) << 21) -> std::string {
        auto leaves = s.leaves();
        try {
            auto got = rlay::detail::decode_actions(one_value(std::move(v)), message_of(std::move(frames)), 2, s, leaves, 1, max);
            if (out) *out = got.at(0);
            return "";
        } catch (const rlay::error& e) {
            return e.code() == rlay::errc::bad_message ? e.what() : std::string("not bad_message: ") + e.what();
        }
    };
    auto has_quietly = [](const std::string& text, const char* part) { return text.find(part) != std::string::npos; };
    auto has = [](const std::string& text, const char* part) {
        if (text.find(part) != std::string::npos) return true;
        std::fprintf(stderr, "  expected \"%s\" in \"%s\"\n", part, text.c_str());
        return false;
    };
    // an observation's env_error (type and text), or "" if it fits
    auto observed = [](const rlay::space& s, const value& obs) -> std::string {
        try {
            rlay::detail::check_observation(s, s.leaves(), obs);
            return "";
        } catch (const rlay::env_error& e) {
            return e.type() + ": " + e.what();
        }
    };

    // 1. a batch of a zero-size space takes no bytes: its length is capped at 2^20 both ways
    rlay::space empty_rows = sequence(box(-1, 1, {0}), true);
    CHECK(has(action(empty_rows, ref("<f4", {std::size_t(1) << 40, 0}), {""}), "a batch of 1099511627776 items, more than the 1048576"));
    CHECK(action(empty_rows, ref("<f4", {std::size_t(1) << 20, 0}), {""}).empty());
    CHECK(has(action(empty_rows, ref("<f4", {(std::size_t(1) << 20) + 1, 0}), {""}), "more than the 1048576"));
    CHECK(has(observed(empty_rows, value(ndarray(rlay::dtype::float32(), {(std::size_t(1) << 20) + 1, 0}))), "ValueError: value: a batch of"));
    CHECK(has(action(graph(multi_binary(0)), value::graph(ref("|i1", {std::size_t(1) << 30, 0}), value(), value()), {""}), "more than the"));

    // 3. edge links name nodes (0 <= link < n), and reach env code as host-order int64
    rlay::space net = graph(box(-1, 1, {1}), discrete(3));
    std::string node_bytes(8, '\0'), edge_bytes(8, '\0');  // 2 nodes of float32[1], 1 edge of int64
    auto links_of = [&](const char* dtype, std::string bytes, value* out = nullptr) {
        return action(net, value::graph(ref("<f4", {2, 1}), ref("<i8", {1}), ref(dtype, {1, 2})), {node_bytes, edge_bytes, bytes}, out);
    };
    std::int64_t bad_links[2] = {5, -7};
    CHECK(has(links_of("<i8", std::string(reinterpret_cast<const char*>(bad_links), 16)),
              "value.edge_links: a link names no node (each must be at least 0 and below 2, the nodes)"));
    CHECK(has(links_of("|i1", std::string("\x01\xff", 2)), "a link names no node"));   // -1
    CHECK(has(links_of(">u8", std::string("\0\0\0\0\0\0\0\x02" "\0\0\0\0\0\0\0\0", 16)), "a link names no node"));  // 2
    value g;
    CHECK(links_of(">u8", std::string("\0\0\0\0\0\0\0\x01" "\0\0\0\0\0\0\0\0", 16), &g).empty());
    CHECK(g.is_graph() && g[2].as_ndarray().dtype() == rlay::dtype::int64() && g[2].as_ndarray().data<std::int64_t>()[0] == 1);
    CHECK(links_of("|u1", std::string("\x01\x00", 2), &g).empty() && g[2].as_ndarray().data<std::int64_t>()[0] == 1);
    value out_of_range = value::graph(value::array<float>({2, 1}, {0, 0}), value::array<std::int64_t>({1}, {0}),
                                      value::array<std::int32_t>({1, 2}, {0, 2}));
    CHECK(has(observed(net, out_of_range), "ValueError: value.edge_links: a link names no node"));

    // 8. a Discrete is an integer: a 0-d array reference of a bool or a float is refused both ways
    rlay::space ids = sequence(discrete(5));
    CHECK(has(action(ids, value::list({ref("|b1", {})}), {std::string("\x01", 1)}), "must be an integer, got a 0-d bool array"));
    CHECK(has(action(ids, value::list({ref("<f8", {})}), {std::string(8, '\0')}), "must be an integer, got a 0-d float64 array"));
    CHECK(has(observed(ids, value::list({value(rlay::ndarray(rlay::dtype::boolean(), {}))})), "TypeError: value[0]: a value of Discrete(5)"));
    // 7. ... and reaches env code as a plain int, as a Discrete action leaf does; one that cannot is refused
    value seq;
    CHECK(action(ids, value::list({ref(">u2", {}), value::scalar<std::int8_t>(4), 3}), {std::string("\x00\x02", 2)}, &seq).empty());
    CHECK(seq.is_list() && seq.size() == 3 && seq[0].is_int() && seq[0].as_int() == 2 && seq[1].is_int() && seq[1].as_int() == 4);
    CHECK(has(action(ids, value::list({value::big_integer(std::string("\x01\0\0\0\0\0\0\0\0", 9))}), {}), "does not fit int64"));
    CHECK(has(action(ids, value::list({value(std::uint64_t(1) << 63)}), {}), "value[0]: the integer 9223372036854775808 does not fit int64"));
    // (a <u8 holding 2^64 - 1, as a 0-d reference or a numpy scalar, reached env code as -1)
    CHECK(has(action(ids, value::list({ref("<u8", {})}), {std::string(8, '\xff')}), "does not fit int64"));
    CHECK(has(action(ids, value::list({value::scalar(rlay::ndarray::copy_of(rlay::dtype::parse("<u8"), {}, std::string(8, '\xff').data(), 8))}), {}),
              "does not fit int64"));
    // 7. arrays inside a value leaf reach env code in the space's dtype, host order; bytes and strs are refused
    rlay::space rows = sequence(box(-1, 1, {2}));
    double be[2] = {0.5, -0.25};
    std::string be_bytes(reinterpret_cast<const char*>(be), 16);
    for (std::size_t i = 0; i < 2; ++i) std::reverse(be_bytes.begin() + 8 * i, be_bytes.begin() + 8 * i + 8);
    CHECK(action(rows, value::list({ref(">f8", {2})}), {be_bytes}, &seq).empty());
    CHECK(seq[0].as_ndarray().dtype() == rlay::dtype::float32() && seq[0].as_ndarray().data<float>()[1] == -0.25f);
    CHECK(has(action(rows, value::list({ref("|S4", {2})}), {"abcdefgh"}), "value[0]: an array of S4 does not convert to float32"));
    CHECK(has(action(rows, value::list({ref("<U2", {2})}), {std::string("a\0\0\0b\0\0\0c\0\0\0d\0\0\0", 16)}), "does not convert to float32"));
    CHECK(has(action(sequence(box(0, 9, {1}, rlay::dtype::int32())), value::list({ref("<f8", {1})}), {std::string("\0\0\0\0\0\0\xf8\x7f", 8)}),
              "does not convert to int32"));

    // 5. a shape is an array, not an ext 3 tuple
    CHECK(has(action(rows, value::list({value::map({{"dtype", "<f4"}, {"shape", value::tuple({2})}})}), {std::string(8, '\0')}),
              "bad array shape"));

    // 9. a map that repeats a key: a Dict's value, or an array reference
    rlay::space pairs = sequence(dict({{"a", discrete(2)}, {"b", discrete(2)}}));
    value twice = value::map();
    twice.as_map().emplace_back(value("a"), value(1));
    twice.as_map().emplace_back(value("a"), value(1));
    CHECK(has(action(pairs, value::list({twice}), {}), "value[0]: a map that has a key more than once"));
    value ref_twice = ref("<f4", {2});
    ref_twice.as_map().emplace_back(value("dtype"), value("<f4"));
    CHECK(has(action(rows, value::list({ref_twice}), {std::string(8, '\0')}), "an array reference that has a key more than once"));
    // ... keys compared as Python does (1 and true are one key; a str and a bin are two)
    value int_keys = ref("<f4", {2});
    int_keys.as_map().emplace_back(value(1), value(0));
    int_keys.as_map().emplace_back(value(true), value(0));
    CHECK(has(action(rows, value::list({int_keys}), {std::string(8, '\0')}), "an array reference that has a key more than once"));
    value str_and_bin = ref("<f4", {2});
    str_and_bin.as_map().emplace_back(value::bin("dtype"), value(0));
    CHECK(!has_quietly(action(rows, value::list({str_and_bin}), {std::string(8, '\0')}), "more than once"));

    // 10. a graph has 3 items, even when env code shrank one
    value shrunk = value::graph(value::array<float>({1, 1}, {0}), value(), value());
    shrunk.items().pop_back();
    CHECK(has(observed(graph(box(-1, 1, {1})), shrunk), "ValueError: value: a graph has 3 items (nodes, edges, edge_links), not 2"));
    bool writer_refuses = false;
    try {
        mp::encode(value::map({{"g", shrunk}}));
    } catch (const rlay::error& e) {
        writer_refuses = e.code() == rlay::errc::bad_message;
    }
    CHECK(writer_refuses);

    // 6. invalid UTF-8 never leaves the SDK: a value leaf's str, a Text leaf, the writer; an error's text is mended
    rlay::space words = sequence(text(4));
    CHECK(has(observed(words, value::tuple({value(std::string("\xff\xfe"))})), "ValueError: value[0]: a str that is not valid UTF-8"));
    CHECK(has(observed(text(4), value(std::string("a\xc3"))), "ValueError: a Text observation is not valid UTF-8"));
    bool str_refused = false;
    try {
        mp::encode(value::map({{"tag", std::string("\xc3\x28")}}));
    } catch (const rlay::error& e) {
        str_refused = e.code() == rlay::errc::bad_message;
    }
    CHECK(str_refused);
    rlay::detail::env_report report{3, "ValueError", "bad \xff value"};
    CHECK(mp::encode(report.to_value()).find("bad \xef\xbf\xbd value") != std::string::npos);

    // 4. spaces nest at most 32 deep (4.1): every walk recurses once a level
    rlay::space deep = discrete(2);
    for (int i = 0; i < rlay::max_space_depth; ++i) deep = i % 2 ? sequence(deep) : tuple({deep});
    CHECK(deep.depth() == rlay::max_space_depth);
    bool too_deep = false;
    try {
        one_of({deep});
    } catch (const rlay::error& e) {
        too_deep = e.code() == rlay::errc::invalid_space && std::string(e.what()).find("nest more than 32 deep") != std::string::npos;
    }
    CHECK(too_deep);

    // 2. a large action is walked in place, and counts against max_decoded_values
    std::vector<value> many(100000, value(std::int64_t(4)));
    value held;
    CHECK(action(ids, value::list(many), {}, &held).empty() && held.size() == many.size());
    CHECK(has(action(ids, value::list(many), {}, nullptr, 50000), "more than a decode may make (rlay::config::max_decoded_values)"));
}

int main() {
    header_examples();
    header_refusals();
    extension_examples();
    refusals();
    dtypes();
    spaces_and_leaves();
    value_leaves();
    value_leaf_limits();
    plans();
    seeds();
    fuzz();
    hostile_sizes();
    heartbeat_survives();
    shared_memory();
    registration_and_heartbeat_settings();
    push_flood();
    std::printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
