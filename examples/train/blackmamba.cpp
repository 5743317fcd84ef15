// examples/train/blackmamba.cpp: moss-train's BlackMamba (Mamba and Sinkhorn top-1 SwiGLU MoE layers alternating)
// models, f32 and bf16, host and (under nvcc) CUDA.
#include "moss_train.hpp"

namespace moss::train_cli {

int train_blackmamba(const Job& job) { return run_family<BlackMambaLM<float>, BlackMambaLM<bf16>>(job); }

}  // namespace moss::train_cli
