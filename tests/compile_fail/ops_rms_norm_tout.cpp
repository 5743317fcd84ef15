// expect: moss::rms_norm: Tout must be float, moss::f16 or moss::bf16 (or double with Tdelta double, on the host)
#include "moss/ops/rms_norm.hpp"

namespace ops_rms_norm_tout {
void check(const moss::RmsNormArgs<float, double>& a) { moss::validate(a, "rms_norm"); }
}  // namespace ops_rms_norm_tout
