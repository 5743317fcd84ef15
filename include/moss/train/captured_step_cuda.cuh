// moss/train/captured_step_cuda.cuh: a whole training step as one CUDA graph (needs nvcc).
//
//   moss::Trainer trainer(model, params, settings, moss::Cuda{stream});
//   moss::CapturedTrainStep step(trainer);
//   for (...) {
//     step.run({ConstView<std::int64_t, 2>(host_ids, {batch, seq_len + 1}, "batch")});
//     const moss::TrainStepResult r = step.read();   // waits; throws for a token outside the vocabulary
//   }
//
// The first `run` captures, on the trainer's stream: the copies of the micro-batches' tokens from
// page-locked host buffers into fixed device buffers, then `Trainer::step_resident` on those
// (every micro-batch's forward and backward, the norm, clipping, AdamW, the derived weights).
// Every `run` copies the new tokens into the page-locked buffers and launches the graph: one
// launch per step, nothing in it waits for the host. The shapes (micro-batches, batch,
// seq_len + 1) are fixed by the first call. Only a model whose training step waits for nothing
// can be captured: dense Mamba models, and sparse ones whose experts use `SyncFreeGemm`
// (`Experts<N, SyncFreeGemm>`); another gives `unsupported_error` saying so.
#pragma once

#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/train/trainer.hpp"

namespace moss {

/// A `Trainer`'s step captured once in a CUDA graph and replayed (see the file comment).
template <class Model>
class CapturedTrainStep {
 public:
  /// Steps `trainer` (kept by reference; it must outlive this object) on its stream.
  explicit CapturedTrainStep(Trainer<Model, Cuda>& trainer) : trainer_(trainer), gpu_(trainer.backend()) {}
  CapturedTrainStep(const CapturedTrainStep&) = delete;
  CapturedTrainStep& operator=(const CapturedTrainStep&) = delete;
  ~CapturedTrainStep() {
    if (exec_) (void)cudaGraphExecDestroy(exec_);
    if (done_) (void)cudaEventDestroy(done_);
  }

  /// One training step over `micro_batches` (host memory, each (batch, seq_len + 1) token ids,
  /// the shapes of the first call): queued, not waited for. `shape_error` for other shapes;
  /// `unsupported_error` at the first call when the model's step cannot be captured.
  void run(const std::vector<ConstView<std::int64_t, 2>>& micro_batches) {
    const char* where = "CapturedTrainStep::run";
    MOSS_EXPECTS(!micro_batches.empty(), config_error, where, ": no micro-batch given");
    if (!exec_) {
      shape_ = micro_batches[0].shape;
      count_ = micro_batches.size();
    }
    MOSS_EXPECTS(micro_batches.size() == count_, shape_error, where, ": ", micro_batches.size(),
                 " micro-batches, but the captured step takes ", count_);
    for (const auto& mb : micro_batches) {
      expect_valid(where, mb);
      expect_shape(where, mb, shape_, "(batch, seq_len + 1) of the captured step");
    }
    const index_t per = shape_[0] * shape_[1];
    if (!exec_) {
      host_ = gpu_.alloc_pinned<std::int64_t>(per * static_cast<index_t>(count_), "captured step tokens (host)");
      dev_ = gpu_.alloc<std::int64_t>(per * static_cast<index_t>(count_), "captured step tokens");
      if (!done_) MOSS_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    } else {
      MOSS_CUDA_CHECK(cudaEventSynchronize(done_));  // the last replay has read the page-locked tokens
    }
    for (std::size_t k = 0; k < count_; ++k)
      copy(Host{}, TensorView<std::int64_t, 2>(host_.data() + static_cast<index_t>(k) * per, shape_, "tokens"),
           micro_batches[k]);
    if (!exec_) {
      capture(per);
    } else {
      trainer_.prepare_resident(count_);  // counters moved by an eager step or a load are copied in
      MOSS_EXPECTS(trainer_.resident_layout() == layout_, config_error, where,
                   ": the trainer remade its resident buffers after the capture (a step_resident with more "
                   "micro-batches); make a new CapturedTrainStep");
    }
    MOSS_CUDA_CHECK(cudaGraphLaunch(exec_, gpu_.stream));
    MOSS_CUDA_CHECK(cudaEventRecord(done_, gpu_.stream));
  }

  /// Waits for the last `run` and returns what the step did (`Trainer::read_step`).
  TrainStepResult read() { return trainer_.read_step(); }

 private:
  /// Records the step (queued work only: nothing runs until the graph is launched).
  void capture(index_t per) {
    trainer_.prepare_resident(count_);
    layout_ = trainer_.resident_layout();
    // What the step creates on first use must exist before the capture, which may not allocate
    // outside the stream: this thread's cuBLAS handles (with their workspace) and moss's pool.
    (void)detail::blas_handles();
    (void)detail::memory_pool(cuda::current_device());
    gpu_.synchronize();
    cudaGraph_t graph = nullptr;
    {
      cuda::CaptureGuard guard(gpu_.stream);
      MOSS_CUDA_CHECK(cudaStreamBeginCapture(gpu_.stream, cudaStreamCaptureModeThreadLocal));
      std::vector<ConstView<std::int64_t, 2>> views;
      try {
        MOSS_CUDA_CHECK(cudaMemcpyAsync(dev_.data(), host_.data(), sizeof(std::int64_t) * dev_.size(),
                                        cudaMemcpyHostToDevice, gpu_.stream));
        for (std::size_t k = 0; k < count_; ++k)
          views.emplace_back(dev_.data() + static_cast<index_t>(k) * per, shape_, "tokens");
        trainer_.step_resident(views);
      } catch (const std::exception& e) {
        raise<unsupported_error>(
            "CapturedTrainStep: this model's training step cannot be captured in a CUDA graph "
            "(it waits for the host; routed layers need Experts<N, SyncFreeGemm>): ",
            e.what());
      }
      graph = guard.end();
    }
    const cudaError_t err = cudaGraphInstantiate(&exec_, graph, 0);
    (void)cudaGraphDestroy(graph);
    MOSS_CUDA_CHECK(err);
  }

  Trainer<Model, Cuda>& trainer_;
  Cuda gpu_;
  Extents<2> shape_{};
  std::size_t count_ = 0;
  std::uint64_t layout_ = 0;  // the trainer's resident_layout() at the capture
  Buffer<std::int64_t> host_, dev_;
  cudaGraphExec_t exec_ = nullptr;
  cudaEvent_t done_ = nullptr;
};

}  // namespace moss
