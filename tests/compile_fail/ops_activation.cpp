// expect: moss::activation: T must be float, moss::f16 or moss::bf16 (or double, on the host)
#include "moss/ops/activation.hpp"

namespace ops_activation {
void check(const moss::ActivationArgs<int>& a) { moss::validate(a, "activation"); }
}  // namespace ops_activation
