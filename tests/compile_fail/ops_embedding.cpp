// expect: moss::embedding: T must be float, moss::f16 or moss::bf16
#include "moss/ops/embedding.hpp"

namespace ops_embedding {
void check(const moss::EmbeddingArgs<double>& a) { moss::validate(a, "embedding"); }
}  // namespace ops_embedding
