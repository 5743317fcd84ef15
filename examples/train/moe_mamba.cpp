// examples/train/moe_mamba.cpp: moss-train's MoE-Mamba (Mamba and Switch top-1 MoE layers alternating; top-2 with
// --top-k 2) models, f32 and bf16, host and (under nvcc) CUDA.
#include "moss_train.hpp"

namespace moss::train_cli {

int train_moe_mamba(const Job& job) { return run_top_k_family<MoeMambaLM>(job); }

}  // namespace moss::train_cli
