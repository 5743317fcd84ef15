// moss/moss.hpp: the one header users include.
//
// Under g++ it brings the host backend and everything that runs on it; under nvcc it adds the
// CUDA backend (`moss::Cuda`) and the CUDA implementation of every op, so the same layer and
// model types run on both.
#pragma once

#include "moss/backend/host.hpp"
#include "moss/core/buffer.hpp"
#include "moss/core/dispatch.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/error.hpp"
#include "moss/core/param_io.hpp"
#include "moss/core/random.hpp"
#include "moss/core/safetensors.hpp"
#include "moss/core/tensor.hpp"
#include "moss/io/json.hpp"
#include "moss/ops/activation.hpp"
#include "moss/ops/causal_conv1d.hpp"
#include "moss/ops/embedding.hpp"
#include "moss/ops/grouped_linear.hpp"
#include "moss/ops/linear.hpp"
#include "moss/ops/permute.hpp"
#include "moss/ops/rms_norm.hpp"
#include "moss/ops/router.hpp"
#include "moss/ops/selective_scan.hpp"
#include "moss/policy/activation.hpp"
#include "moss/policy/experts.hpp"
#include "moss/policy/rom.hpp"
#include "moss/policy/router.hpp"

#if defined(__CUDACC__)
#include "moss/backend/cuda.cuh"
#include "moss/ops/activation/cuda.cuh"
#include "moss/ops/causal_conv1d/cuda.cuh"
#include "moss/ops/embedding/cuda.cuh"
#include "moss/ops/grouped_linear/cuda.cuh"
#include "moss/ops/linear/cuda.cuh"
#include "moss/ops/permute/cuda.cuh"
#include "moss/ops/rms_norm/cuda.cuh"
#include "moss/ops/router/cuda.cuh"
#include "moss/ops/selective_scan/cuda.cuh"
#include "moss/ops/sinkhorn/cuda.cuh"
#endif

#include "moss/layers/block.hpp"
#include "moss/layers/dispatch.hpp"
#include "moss/layers/experts.hpp"
#include "moss/layers/feed_forward.hpp"
#include "moss/layers/mamba.hpp"
#include "moss/layers/residual.hpp"
#include "moss/layers/routed_mamba.hpp"
#include "moss/layers/routing.hpp"
#include "moss/models/generation.hpp"
#include "moss/models/language_model.hpp"
#include "moss/models/mamba_config.hpp"
#include "moss/models/variants.hpp"
