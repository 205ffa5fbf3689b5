// var_spaces_env.hpp: "rlay/VarSpaces-v0", an env whose spaces are Graph, Sequence and OneOf
// (docs/protocol.md 3.8.1), alone and holding Dicts, Tuples and each other, with values of every
// shape the wire accepts. Its Python twin is tests/envs.py: VarSpacesEnv; the two must agree bit
// for bit.
//
// Observation (a Dict, keys sorted as gymnasium sorts them): a Graph of Box nodes and Discrete
// edges (float32 or float64 nodes, int32 or int64 edge links, sometimes no edges); a Graph of
// Discrete nodes and no edge space (sometimes no nodes); a Graph of Dict nodes and Tuple edges
// (a Box and a Text); a OneOf of a Discrete, a Box and a Dict holding a Sequence (its index a
// plain int or an int64 scalar, the value a tuple or a list); a Tuple of a stacked Sequence and a
// OneOf; Sequences of Boxes (a tuple or a list), of Graphs (stacked), of Dicts (stacked, maybe
// empty) and of Tuples; a Discrete.
// Action: a Graph, a OneOf, a Sequence of Discrete, a stacked Sequence of Tuples. Each step puts
// the action it received into its info, in a tuple: as the SDK converts it (arrays in the space's
// dtypes, int64 edge links, plain ints), which tests/envs.py: VarSpacesCppTwin models.
//
// State: s (the last seed mod 1000), t (steps since reset), score (from the actions) and the
// env's index. Integer arithmetic only; the floats are exact (multiples of 1/8).
#pragma once

#include <rlay/worker.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace var_spaces_example {

constexpr const char* env_id = "rlay/VarSpaces-v0";

inline rlay::space observation_space() {
    using namespace rlay::spaces;
    using rlay::dtype;
    return dict({
        {"graph", graph(box(-100, 100, {2}, dtype::float32()), discrete(3))},
        {"graph_plain", graph(discrete(4))},
        {"graph_rich", graph(dict({{"kind", discrete(3)}, {"pos", box(-1, 1, {2}, dtype::float64())}}),
                             tuple({box(0, 10, {}, dtype::int32()), text(3, 0, "ab")}))},
        {"one", one_of({discrete(4), box(-1, 1, {2}, dtype::float32()), dict({{"n", discrete(2)}, {"s", sequence(discrete(3))}})})},
        {"pair", tuple({sequence(discrete(9), true), one_of({text(2, 0, "xy"), multi_binary(3)})})},
        {"seq", sequence(box(0, 255, {2}, dtype::uint8()))},
        {"seq_graphs", sequence(graph(box(-1, 1, {1}, dtype::float32())), true)},
        {"seq_stack", sequence(dict({{"id", discrete(5)}, {"v", box(-1, 1, {3}, dtype::float32())}}), true)},
        {"seq_tuple", sequence(tuple({discrete(2), text(3, 0, "ab")}))},
        {"t", discrete(50)},
    });
}

inline rlay::space action_space() {
    using namespace rlay::spaces;
    using rlay::dtype;
    return dict({
        {"graph", graph(box(-1, 1, {2}, dtype::float32()), discrete(2))},
        {"one", one_of({discrete(3), box(-1, 1, {1}, dtype::float32())})},
        {"seq", sequence(discrete(5))},
        {"stack", sequence(tuple({discrete(2), box(0, 1, {2}, dtype::float32())}), true)},
    });
}

class env : public rlay::env {
public:
    explicit env(std::int64_t index) : index_(index) {}

    rlay::reset_result reset(const rlay::seed& seed, const rlay::value&) override {
        if (seed && seed.is_negative()) throw rlay::env_error("ValueError", "seeds must be >= 0");
        if (seed) s_ = static_cast<std::int64_t>(seed.mod(1000));
        t_ = 0;
        score_ = 0;
        return {obs(), rlay::value::map({{"seed", s_}})};
    }

    rlay::step_result step(const rlay::value& action) override {
        const rlay::value& graph = action.at("graph");
        std::int64_t edges = graph[1].is_nil() ? 0 : static_cast<std::int64_t>(graph[1].as_ndarray().shape()[0]);
        std::int64_t index = action.at("one")[0].as_int();
        std::int64_t seq_sum = 0;
        const rlay::value& seq = action.at("seq");
        for (std::size_t i = 0; i < seq.size(); ++i) seq_sum += seq[i].as_int();
        t_ += 1;
        score_ += static_cast<std::int64_t>(graph[0].as_ndarray().shape()[0]) + 2 * edges + 3 * index +
                  static_cast<std::int64_t>(seq.size()) + seq_sum;
        score_ += 5 * static_cast<std::int64_t>(action.at("stack")[0].as_ndarray().shape()[0]);
        bool terminated = t_ >= 2 && (score_ + index_) % 3 == 0;
        // (one copy of the action: value::tuple({action}) and value::map({...}) would copy it from
        // their initializer lists, twice each, and an action may hold millions of values)
        rlay::value echoed = rlay::value::tuple();
        echoed.push_back(action);
        rlay::value info = rlay::value::map({{"t", t_}, {"score", score_}});
        info["action"] = std::move(echoed);
        return {obs(), static_cast<double>(score_) / 4.0 + static_cast<double>(t_), terminated, t_ >= 4, std::move(info)};
    }

private:
    rlay::value obs() const {
        using rlay::dtype;
        using rlay::ndarray;
        using rlay::value;
        using i64 = std::int64_t;
        const i64 u = (s_ + 7 * index_ + 13 * t_ + 31 * score_) % 65536, t = t_, n = 1 + u % 4, m = u % 3;
        auto size = [](i64 x) { return static_cast<std::size_t>(x); };
        auto ab = [](i64 which, i64 count) { return std::string(static_cast<std::size_t>(count), "ab"[which % 2]); };

        // "graph": float32 or float64 nodes, edges and int64 or int32 links only when m > 0
        std::vector<double> nodes;
        for (i64 j = 0; j < n; ++j) nodes.insert(nodes.end(), {static_cast<double>(j - u % 5), static_cast<double>(u % 7)});
        ndarray graph_nodes = ndarray::from<double>({size(n), 2}, nodes);
        if (t % 2 == 0) graph_nodes = graph_nodes.astype(dtype::float32());
        std::vector<i64> edge_values, link_values, rich_links;
        std::vector<std::int32_t> rich_weights;
        value rich_texts = value::tuple();
        for (i64 j = 0; j < m; ++j) {
            edge_values.push_back((u + j) % 3);
            link_values.insert(link_values.end(), {j % n, (j + 1) % n});
            rich_links.insert(rich_links.end(), {0, j % n});
            rich_weights.push_back(static_cast<std::int32_t>((u + j) % 11));
            rich_texts.push_back(ab(u + j, j));
        }
        ndarray links = ndarray::from<i64>({size(m), 2}, link_values);
        if (u % 2 != 0) links = links.astype(dtype::int32());
        value graph = m ? value::graph(value(graph_nodes), value::array<i64>({size(m)}, edge_values), value(links))
                        : value::graph(value(graph_nodes), value(), value());

        // "graph_plain": 0 to 2 nodes, no edge space
        std::vector<i64> plain_nodes;
        for (i64 j = 0; j < u % 3; ++j) plain_nodes.push_back((u + j) % 4);
        value plain = value::graph(value::array<i64>({size(u % 3)}, plain_nodes), value(), value());

        // "graph_rich": Dict nodes, Tuple edges (a Box and a Text)
        std::vector<i64> kinds;
        std::vector<double> pos;
        for (i64 j = 0; j < n; ++j) {
            kinds.push_back((u + j) % 3);
            pos.insert(pos.end(), {static_cast<double>(j) / 8.0, -static_cast<double>(u % 8) / 8.0});
        }
        value rich_nodes = value::map({{"kind", value::array<i64>({size(n)}, kinds)}, {"pos", value::array<double>({size(n), 2}, pos)}});
        value rich = m ? value::graph(rich_nodes, value::tuple({value::array<std::int32_t>({size(m)}, rich_weights), rich_texts}),
                                      value::array<i64>({size(m), 2}, rich_links))
                       : value::graph(rich_nodes, value(), value());

        // "one": a tuple of ints, a tuple of an int64 scalar and an array, or a list
        value one;
        if (u % 3 == 0) {
            one = value::tuple({0, u % 4});
        } else if (u % 3 == 1) {
            one = value::tuple({value::scalar<i64>(1), value::array<float>({2}, {static_cast<float>(u % 8) / 8.0f, -1.0f})});
        } else {
            value s = value::tuple();
            for (i64 j = 0; j < t % 3; ++j) s.push_back((u + j) % 3);
            one = value::list({2, value::map({{"n", value::scalar<i64>(u % 2)}, {"s", s}})});
        }

        // "pair": a stacked Sequence of Discrete, and a OneOf of a Text and a MultiBinary
        std::vector<i64> stacked;
        for (i64 j = 0; j < t % 3; ++j) stacked.push_back((u + j) % 9);
        value choice = u % 2 ? value::tuple({0, std::string(size(t % 3), 'y')})
                             : value::tuple({1, value::array<std::int8_t>({3}, {1, 0, static_cast<std::int8_t>(u % 2)})});
        value pair = value::tuple({value::array<i64>({size(t % 3)}, stacked), choice});

        // "seq": a list when t is odd, else a tuple
        value seq = t % 2 ? value::list() : value::tuple();
        for (i64 j = 0; j < u % 3; ++j) seq.push_back(value::array<std::uint8_t>({2}, {static_cast<std::uint8_t>((u + j) % 256), static_cast<std::uint8_t>(j)}));

        value seq_graphs = value::tuple();
        for (i64 j = 0; j < 1 + t % 2; ++j) {
            float x = static_cast<float>(u % 8) / 8.0f - static_cast<float>(j) / 2.0f;
            seq_graphs.push_back(value::graph(value::array<float>({1, 1}, {x}), value(), value()));
        }

        const i64 L = u % 3;
        std::vector<i64> ids;
        std::vector<float> vs;
        for (i64 j = 0; j < L; ++j) {
            ids.push_back((u + j) % 5);
            vs.insert(vs.end(), {static_cast<float>(j) / 8.0f, 0.5f, -0.25f});
        }
        value seq_stack = value::map({{"id", value::array<i64>({size(L)}, ids)}, {"v", value::array<float>({size(L), 3}, vs)}});

        value seq_tuple = value::tuple();
        for (i64 j = 0; j < t % 3; ++j) seq_tuple.push_back(value::tuple({j % 2, ab(u, j)}));

        return value::map({
            {"graph", graph},
            {"graph_plain", plain},
            {"graph_rich", rich},
            {"one", one},
            {"pair", pair},
            {"seq", seq},
            {"seq_graphs", seq_graphs},
            {"seq_stack", seq_stack},
            {"seq_tuple", seq_tuple},
            {"t", t},
        });
    }

    std::int64_t index_;
    std::int64_t s_ = 0;
    std::int64_t t_ = 0;
    std::int64_t score_ = 0;
};

}  // namespace var_spaces_example
