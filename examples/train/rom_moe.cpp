// examples/train/rom_moe.cpp: moss-train's RoM and Switch MoE layers alternating (top-1, or top-2 with --top-k 2)
// models, f32 and bf16, host and (under nvcc) CUDA.
#include "moss_train.hpp"

namespace moss::train_cli {

int train_rom_moe(const Job& job) { return run_top_k_family<RomMoeLM>(job); }

}  // namespace moss::train_cli
