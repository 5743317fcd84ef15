// expect: moss::embedding: T must be float, moss::f16, moss::bf16 or (host only) double
#include "moss/ops/embedding.hpp"

namespace ops_embedding {
void check(const moss::EmbeddingArgs<int>& a) { moss::validate(a, "embedding"); }
}  // namespace ops_embedding
