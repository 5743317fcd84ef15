// examples/train/rom_moe.cpp: moss-train's RoM and Switch MoE layers alternating models, f32 and bf16, host and (under
// nvcc) CUDA.
#include "moss_train.hpp"

namespace moss::train_cli {

int train_rom_moe(const Job& job) { return run_family<RomMoeLM>(job); }

}  // namespace moss::train_cli
