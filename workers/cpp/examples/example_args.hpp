// example_args.hpp: command-line parsing shared by the C++ examples.
#pragma once

#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>

namespace example {

/// `--name value` pairs; the broker's address from --broker or $RLAY_BROKER.
struct args {
    std::map<std::string, std::string> values;

    args(int argc, char** argv, const std::map<std::string, std::string>& defaults) : values(defaults) {
        for (int i = 1; i < argc; ++i) {
            std::string key = argv[i];
            if (key == "-h" || key == "--help") throw std::invalid_argument("help");
            if (key.rfind("--", 0) != 0 || !values.count(key.substr(2)) || i + 1 >= argc) {
                throw std::invalid_argument("unknown or incomplete option " + key);
            }
            values[key.substr(2)] = argv[++i];
        }
        if (values["broker"].empty()) {
            const char* env = std::getenv("RLAY_BROKER");
            values["broker"] = env ? env : "";
        }
        if (values["broker"].empty()) throw std::invalid_argument("no broker: pass --broker ADDR or set RLAY_BROKER");
    }

    const std::string& operator[](const std::string& key) const { return values.at(key); }
    int integer(const std::string& key) const { return std::stoi(values.at(key)); }
    double number(const std::string& key) const { return std::stod(values.at(key)); }
};

}  // namespace example
