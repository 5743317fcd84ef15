// expect: moss::route: T must be float, moss::f16, moss::bf16 or (host only) double
#include "moss/ops/router.hpp"

namespace ops_route {
void check(const moss::RouteLogitsArgs<int>& a) { moss::validate(a, "route_logits"); }
}  // namespace ops_route
