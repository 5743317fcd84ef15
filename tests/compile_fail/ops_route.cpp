// expect: moss::route: T must be float, moss::f16 or moss::bf16
#include "moss/ops/router.hpp"

namespace ops_route {
void check(const moss::RouteLogitsArgs<double>& a) { moss::validate(a, "route_logits"); }
}  // namespace ops_route
