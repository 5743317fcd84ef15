// examples/train/mamba.cpp: moss-train's dense Mamba models, f32 and bf16, host and (under nvcc) CUDA.
#include "moss_train.hpp"

namespace moss::train_cli {

int train_mamba(const Job& job) { return run_family<MambaLM<float>, MambaLM<bf16>>(job); }

}  // namespace moss::train_cli
