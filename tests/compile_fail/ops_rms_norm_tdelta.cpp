// expect: moss::rms_norm: Tdelta must be float, moss::f16 or moss::bf16 (or double with Tout double, on the host)
#include "moss/ops/rms_norm.hpp"

namespace ops_rms_norm_tdelta {
void check(const moss::RmsNormArgs<double, float>& a) { moss::validate(a, "rms_norm"); }
}  // namespace ops_rms_norm_tdelta
