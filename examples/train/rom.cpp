// examples/train/rom.cpp: moss-train's Routing Mamba (shared top-1, or top-2 with --top-k 2, routing of Conv, Gate and
// Out) models, f32 and bf16, host and (under nvcc) CUDA.
#include "moss_train.hpp"

namespace moss::train_cli {

int train_rom(const Job& job) { return run_top_k_family<RomLM>(job); }

}  // namespace moss::train_cli
