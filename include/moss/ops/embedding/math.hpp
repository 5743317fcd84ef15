// moss/ops/embedding/math.hpp: the rules of `embedding`, written once for host and CUDA.
#pragma once

#include <cstdint>

#include "moss/core/config.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// True when `id` names a row of a table with `vocab` rows.
MOSS_HD bool embedding_id_valid(std::int64_t id, index_t vocab) { return id >= 0 && id < vocab; }

}  // namespace moss
