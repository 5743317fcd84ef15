// expect: WeightMap::read_as<T>: T is float, moss::f16 or moss::bf16
#include <vector>

#include "moss/io/weights.hpp"

namespace io_weights_read_as {
std::vector<double> read(const moss::WeightMap& m) { return m.read_as<double>("w", {1}); }
}  // namespace io_weights_read_as
