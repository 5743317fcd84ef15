// moss/models/generation_cuda.cuh: `generate`'s one-token step on CUDA (needs nvcc; included by
// moss/models/generation.hpp under nvcc).
//
// A decode step of a small model is hundreds of short launches (Mamba-130M: about ten per layer,
// 24 layers), so launching them one by one costs more than they run. When every block's step is
// capturable (`Model::capturable_step`: it only queues work on the stream), the first step is
// captured into a CUDA graph and every step replays it with one launch:
//
//   copy the ids (page-locked host → device) → `step_resident` (embedding, every block, norm,
//   head) → greedy: the pick kernel writes each row's argmax and its count of non-finite logits,
//   copied to page-locked host memory; sampling or recorded logits: the logits are copied there
//   and the host picks, as on the CPU.
//
// The graph reads and writes the same buffers at every replay (the ids, the logits, the cache's
// states, which it updates in place) and owns its scratch (allocation nodes). One graph serves
// one batch size and one set of parameters: the runner lives for one `generate` call. Models
// with a block that is not capturable (routed blocks read their plan's offsets on the host)
// run their steps eagerly.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/cuda/check.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/models/generation.hpp"

namespace moss {

namespace detail::decode {

/// One candidate of the greedy pick: a logit, its index (−1: none yet) and a count of
/// non-finite logits seen.
struct Candidate {
  float value;
  std::int64_t index;
  std::int32_t nonfinite;
};

/// The better of two candidates as moss::argmax ranks them (NaN never chosen, the larger value,
/// ties to the lower index), with their non-finite counts added.
struct BetterCandidate {
  MOSS_HD Candidate operator()(const Candidate& a, const Candidate& b) const {
    const bool take_b =
        a.index < 0 || (b.index >= 0 && (b.value > a.value || (b.value == a.value && b.index < a.index)));
    Candidate r = take_b ? b : a;
    r.nonfinite = a.nonfinite + b.nonfinite;
    return r;
  }
};

inline constexpr int kPickThreads = 1024;

/// One block per row of `logits` (rows, V): ids[row] = moss::argmax of the row (0 when every
/// logit is NaN) and nonfinite[row] = how many of its logits are NaN or ±Inf.
template <int kThreads = kPickThreads>
__global__ void __launch_bounds__(kThreads)
    greedy_pick_kernel(const float* logits, index_t V, std::int64_t* ids, std::int32_t* nonfinite) {
  const float* row = logits + static_cast<index_t>(blockIdx.x) * V;
  Candidate c{0.0f, -1, 0};
  for (index_t i = threadIdx.x; i < V; i += kThreads) {
    const float v = row[i];
    c.nonfinite += isfinite(v) ? 0 : 1;
    if (!isnan(v) && (c.index < 0 || v > c.value)) c = Candidate{v, i, c.nonfinite};  // i rises: ties keep the first
  }
  using Reduce = cub::BlockReduce<Candidate, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const Candidate best = Reduce(storage).Reduce(c, BetterCandidate{});
  if (threadIdx.x == 0) {
    ids[blockIdx.x] = best.index < 0 ? 0 : best.index;
    nonfinite[blockIdx.x] = best.nonfinite;
  }
}

}  // namespace detail::decode

/// `generate`'s step runner on CUDA: a capturable model's step as one CUDA graph, captured at
/// the first step and replayed at every one (`GenerateOptions::cuda_graph`, default on); other
/// models, or `cuda_graph` off, step eagerly as on every backend.
template <class Model>
class StepRunner<Model, Cuda> {
 public:
  StepRunner(const Cuda& gpu, const Model& model, const typename Model::Params& params, typename Model::Cache& cache,
             TensorView<float, 2> logits, const GenerateOptions& opt)
      : gpu_(gpu),
        model_(model),
        params_(params),
        cache_(cache),
        logits_(logits),
        batch_(logits.shape[0]),
        graph_(opt.cuda_graph && Model::capturable_step),
        device_pick_(opt.sampling.greedy && !opt.record_logits) {
    if (!graph_) return;
    ids_host_ = gpu.alloc_pinned<std::int64_t>(batch_, "decode ids (host)");
    ids_dev_ = gpu.alloc<std::int64_t>(batch_, "decode ids");
    if (device_pick_) {
      picks_ = gpu.alloc_pinned<std::int64_t>(batch_, "decode picks (host)");
      nonfinite_host_ = gpu.alloc_pinned<std::int32_t>(batch_, "decode non-finite counts (host)");
      nonfinite_dev_ = gpu.alloc<std::int32_t>(batch_, "decode non-finite counts");
    } else {
      logits_host_ = gpu.alloc_pinned<float>(logits.numel(), "decode logits (host)");
    }
  }
  StepRunner(const StepRunner&) = delete;
  StepRunner& operator=(const StepRunner&) = delete;
  ~StepRunner() {
    if (exec_) (void)cudaGraphExecDestroy(exec_);
  }

  /// One step for `next` (host, batch ids); returns when its results are on the host (so the
  /// next call may overwrite the page-locked ids the graph reads).
  void run(const std::vector<std::int64_t>& next) {
    if (!graph_) {
      model_.step(gpu_, params_, ConstView<std::int64_t, 1>(next.data(), {batch_}, "next_ids"), logits_, cache_);
      return;
    }
    model_.check_ids(next.data(), batch_);
    std::copy(next.begin(), next.begin() + batch_, ids_host_.data());
    if (!exec_) capture();
    MOSS_CUDA_CHECK(cudaGraphLaunch(exec_, gpu_.stream));
    cache_.length += 1;
    gpu_.synchronize();
  }
  const std::int64_t* picks() const { return graph_ && device_pick_ ? picks_.data() : nullptr; }
  const std::int32_t* nonfinite() const { return graph_ && device_pick_ ? nonfinite_host_.data() : nullptr; }
  const float* host_logits() const { return graph_ && !device_pick_ ? logits_host_.data() : nullptr; }
  /// Whether the steps replay a CUDA graph.
  bool graphed() const { return graph_; }

 private:
  /// Records one step (queued work only: nothing runs until the graph is launched).
  void capture() {
    const index_t n = batch_;
    const std::int64_t length = cache_.length;
    // What the step creates on first use must exist before the capture, which may not allocate
    // outside the stream: this thread's cuBLAS handles (with their workspace) and moss's pool.
    (void)detail::blas_handles();
    (void)detail::memory_pool(cuda::current_device());
    {
      cuda::CaptureGuard guard(gpu_.stream);
      MOSS_CUDA_CHECK(cudaStreamBeginCapture(gpu_.stream, cudaStreamCaptureModeThreadLocal));
      MOSS_CUDA_CHECK(cudaMemcpyAsync(ids_dev_.data(), ids_host_.data(), sizeof(std::int64_t) * n,
                                      cudaMemcpyHostToDevice, gpu_.stream));
      model_.step_resident(gpu_, params_, ConstView<std::int64_t, 1>(ids_dev_.data(), {n}, "next_ids"), logits_,
                           cache_);
      if (device_pick_) {
        detail::decode::greedy_pick_kernel<>
            <<<static_cast<unsigned>(n), detail::decode::kPickThreads, 0, gpu_.stream>>>(
                logits_.data, logits_.shape[1], ids_dev_.data(), nonfinite_dev_.data());
        MOSS_CHECK_LAUNCH("greedy_pick_kernel", gpu_.stream);
        download_async(gpu_, picks_.data(), ids_dev_.data(), n);
        download_async(gpu_, nonfinite_host_.data(), nonfinite_dev_.data(), n);
      } else {
        download_async(gpu_, logits_host_.data(), logits_.data, logits_.numel());
      }
      cudaGraph_t graph = guard.end();
      const cudaError_t err = cudaGraphInstantiate(&exec_, graph, 0);
      (void)cudaGraphDestroy(graph);
      MOSS_CUDA_CHECK(err);
    }
    cache_.length = length;  // the capture ran nothing; every replay advances the cache
  }

  const Cuda& gpu_;
  const Model& model_;
  const typename Model::Params& params_;
  typename Model::Cache& cache_;
  TensorView<float, 2> logits_;
  index_t batch_;
  bool graph_, device_pick_;
  Buffer<std::int64_t> ids_host_, ids_dev_, picks_;
  Buffer<std::int32_t> nonfinite_host_, nonfinite_dev_;
  Buffer<float> logits_host_;
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace moss
