// tests/cuda/building_blocks_cuda_test.cu: the shared CUDA building blocks (moss/cuda/) against
// host oracles: warp and block reductions (sum, max) over ragged sizes and block shapes, NaN
// propagation, storage reuse; vector loads and stores round-tripping every storage type and
// width; the alignment predicates; the grid helpers and the checked launch; the device
// properties and their cache.
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/cuda/device.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/cuda/reduce.cuh"
#include "moss/cuda/vector.cuh"
#include "moss_test.hpp"

namespace building_blocks_test {

using moss::bf16;
using moss::f16;
using moss::index_t;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

template <class T>
moss::Buffer<T> to_gpu(const moss::Cuda& gpu, const std::vector<T>& v) {
  return moss::upload(gpu, v.data(), static_cast<index_t>(v.size()));
}

template <class T>
std::vector<T> to_host(const moss::Cuda& gpu, const moss::Buffer<T>& b) {
  std::vector<T> v(static_cast<std::size_t>(b.size()));
  moss::download(gpu, v.data(), b.data(), b.size());
  return v;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// ---- reductions -------------------------------------------------------------------------------

/// What a reduction of `x` must give: the float64 sum, or the maximum (NaN when any is NaN;
/// −inf for no values).
double oracle(const std::vector<float>& x, bool max) {
  double r = max ? -kInf : 0.0;
  for (float v : x) {
    if (max) {
      r = (std::isnan(r) || std::isnan(v)) ? kNaN : std::fmax(r, double(v));
    } else {
      r += v;
    }
  }
  return r;
}

/// Every result the device returned matches the oracle: NaN where it is NaN, exactly for max and
/// for an infinite sum, within float32 summation error (relative to Σ|x|) for a finite sum.
void check_results(const std::vector<float>& got, const std::vector<float>& x, bool max) {
  const double want = oracle(x, max);
  double abs_sum = 0;
  for (float v : x) abs_sum += std::fabs(v);
  for (std::size_t i = 0; i < got.size(); ++i) {
    CAPTURE(i, got[i], want, x.size(), max);
    if (std::isnan(want)) {
      REQUIRE(std::isnan(got[i]));
    } else if (max || std::isinf(want)) {  // an infinite sum (an Inf input) must be that Inf exactly
      REQUIRE(double(got[i]) == want);
    } else {
      REQUIRE(std::fabs(double(got[i]) - want) <= 1e-6 * abs_sum + 1e-30);
    }
  }
}

/// Each thread folds x[i], x[i + blockDim.x], … then the block reduces twice in a row through
/// the same storage (the second checks that the storage is free again); thread t writes both
/// results to out[t] and out[blockDim.x + t].
template <class Reduce>
__device__ void reduce_twice(const float* x, int n, bool max, float* out, typename Reduce::TempStorage& storage) {
  float v = max ? -INFINITY : 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v = max ? moss::cuda::NanMax{}(v, x[i]) : v + x[i];
  const float first = max ? Reduce::max(v, storage) : Reduce::sum(v, storage);
  const float second = max ? Reduce::max(v, storage) : Reduce::sum(v, storage);
  out[threadIdx.x] = first;
  out[blockDim.x + threadIdx.x] = second;
}

template <int kThreads>
__global__ void block_reduce_kernel(const float* x, int n, bool max, float* out) {
  using Reduce = moss::cuda::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  reduce_twice<Reduce>(x, n, max, out, storage);
}

__global__ void block_reduce_up_to_kernel(const float* x, int n, bool max, float* out) {
  using Reduce = moss::cuda::BlockReduceUpTo<float, 1024>;
  __shared__ Reduce::TempStorage storage;
  reduce_twice<Reduce>(x, n, max, out, storage);
}

/// One warp: lane l holds x[l]; out[l] = its logical warp's reduction over all kLanes lanes,
/// out[32 + l] = the reduction over the first `valid` lanes of each logical warp.
template <int kLanes>
__global__ void warp_reduce_kernel(const float* x, bool max, int valid, float* out) {
  using Reduce = moss::cuda::WarpReduce<float, kLanes>;
  typename Reduce::TempStorage none;
  const float v = x[threadIdx.x];
  out[threadIdx.x] = max ? moss::cuda::warp_max<kLanes>(v) : moss::cuda::warp_sum<kLanes>(v);
  out[32 + threadIdx.x] =
      max ? Reduce::reduce(v, none, moss::cuda::NanMax{}, valid) : Reduce::reduce(v, none, moss::cuda::Sum{}, valid);
}

/// Inputs of the reduction tests: `n` values from N(0, 1) with NaN or infinities placed as `kind` asks.
std::vector<float> reduce_input(int n, int kind, std::uint64_t seed) {
  std::vector<float> x = moss::test::randn(static_cast<std::size_t>(n), seed);
  if (n == 0) return x;
  if (kind == 1) x[0] = kNaN;                                // NaN first
  if (kind == 2) x[static_cast<std::size_t>(n / 2)] = kNaN;  // NaN in the middle
  if (kind == 3) x.back() = kNaN;                            // NaN last
  if (kind == 4) x[static_cast<std::size_t>(n / 3)] = -kInf;
  if (kind == 5)
    for (auto& v : x) v = -std::fabs(v) - 1.0f;  // all negative: max must not return the 0 identity
  return x;
}

constexpr int kSizes[] = {0, 1, 31, 32, 33, 255, 1000, 4097};

template <int kThreads>
void check_block_reduce(const moss::Cuda& gpu) {
  for (int n : kSizes) {
    for (int kind = 0; kind <= 5; ++kind) {
      for (bool max : {false, true}) {
        CAPTURE(kThreads, n, kind, max);
        const std::vector<float> x = reduce_input(n, kind, 17 + n);
        auto dx = to_gpu(gpu, x.empty() ? std::vector<float>{0.0f} : x);
        auto dout = gpu.alloc<float>(2 * kThreads);
        moss::cuda::launch("block_reduce_kernel", block_reduce_kernel<kThreads>, 1, kThreads, 0, gpu.stream, dx.data(),
                           n, max, dout.data());
        check_results(to_host(gpu, dout), x, max);
      }
    }
  }
}

TEST_CASE("BlockReduce (fixed block size) sums and maxes ragged inputs, propagating NaN", "[cuda][reduce]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  check_block_reduce<32>(gpu);
  check_block_reduce<96>(gpu);  // not a power of two
  check_block_reduce<256>(gpu);
  check_block_reduce<1024>(gpu);
}

TEST_CASE("BlockReduceUpTo sums and maxes over any multiple-of-32 block chosen at launch", "[cuda][reduce]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  for (int threads : {32, 64, 96, 160, 256, 512, 1024}) {
    for (int n : kSizes) {
      for (int kind = 0; kind <= 5; ++kind) {
        for (bool max : {false, true}) {
          CAPTURE(threads, n, kind, max);
          const std::vector<float> x = reduce_input(n, kind, 29 + n);
          auto dx = to_gpu(gpu, x.empty() ? std::vector<float>{0.0f} : x);
          auto dout = gpu.alloc<float>(2 * threads);
          moss::cuda::launch("block_reduce_up_to_kernel", block_reduce_up_to_kernel, 1, threads, 0, gpu.stream,
                             dx.data(), n, max, dout.data());
          check_results(to_host(gpu, dout), x, max);
        }
      }
    }
  }
}

TEST_CASE("BlockReduceUpTo gives every thread the same bits, run after run", "[cuda][reduce]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const std::vector<float> x = moss::test::randn(100000, 5);
  auto dx = to_gpu(gpu, x);
  auto dout = gpu.alloc<float>(2 * 512);
  std::vector<float> first;
  for (int run = 0; run < 3; ++run) {
    moss::cuda::launch("block_reduce_up_to_kernel", block_reduce_up_to_kernel, 1, 512, 0, gpu.stream, dx.data(), 100000,
                       false, dout.data());
    const std::vector<float> got = to_host(gpu, dout);
    for (float v : got) REQUIRE(std::memcmp(&v, &got[0], sizeof(float)) == 0);
    if (run == 0) first = got;
    REQUIRE(same_bits(got, first));
  }
}

template <int kLanes>
void check_warp_reduce(const moss::Cuda& gpu) {
  for (int kind = 0; kind <= 5; ++kind) {
    for (bool max : {false, true}) {
      for (int valid : {1, kLanes / 2 > 0 ? kLanes / 2 : 1, kLanes}) {
        CAPTURE(kLanes, kind, max, valid);
        std::vector<float> x = reduce_input(32, kind, 41 + kind);
        auto dx = to_gpu(gpu, x);
        auto dout = gpu.alloc<float>(64);
        moss::cuda::launch("warp_reduce_kernel", warp_reduce_kernel<kLanes>, 1, 32, 0, gpu.stream, dx.data(), max,
                           valid, dout.data());
        const std::vector<float> got = to_host(gpu, dout);
        for (int g = 0; g < 32 / kLanes; ++g) {
          const auto first = x.begin() + g * kLanes;
          const std::vector<float> all(first, first + kLanes), part(first, first + valid);
          CAPTURE(g);
          check_results(std::vector<float>(got.begin() + g * kLanes, got.begin() + (g + 1) * kLanes), all, max);
          check_results(std::vector<float>(got.begin() + 32 + g * kLanes, got.begin() + 32 + (g + 1) * kLanes), part,
                        max);
        }
      }
    }
  }
}

TEST_CASE("WarpReduce over logical warps of 32, 16, 8 and 1 lanes, whole and partial", "[cuda][reduce]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  check_warp_reduce<32>(gpu);
  check_warp_reduce<16>(gpu);
  check_warp_reduce<8>(gpu);
  check_warp_reduce<1>(gpu);
}

TEST_CASE("NanMax returns NaN from either side and the larger value otherwise", "[cuda][reduce]") {
  const moss::cuda::NanMax m;
  CHECK(std::isnan(m(kNaN, 1.0f)));
  CHECK(std::isnan(m(1.0f, kNaN)));
  CHECK(std::isnan(m(-kInf, kNaN)));
  CHECK(m(1.0f, 2.0f) == 2.0f);
  CHECK(m(2.0f, 1.0f) == 2.0f);
  CHECK(m(-kInf, -3.0f) == -3.0f);
  CHECK(moss::cuda::Sum{}(1.5f, 2.0f) == 3.5f);
}

// ---- vector loads and stores --------------------------------------------------------------------

/// Piece i: load N elements (widened to float, written to `widened`), store them back to out.
template <class T, int N, moss::cuda::Load kLoad, moss::cuda::Store kStore>
__global__ void vector_round_trip_kernel(const T* in, T* out, float* widened, int pieces) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= pieces) return;
  float v[N];
  moss::cuda::load_vec<N, kLoad>(in + i * N, v);
#pragma unroll
  for (int j = 0; j < N; ++j) widened[i * N + j] = v[j];
  moss::cuda::store_vec<N, kStore>(out + i * N, v);
}

/// Piece i: a raw copy (no widening) through load_raw / store_raw.
template <class T, int N>
__global__ void raw_copy_kernel(const T* in, T* out, int pieces) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < pieces)
    moss::cuda::store_raw<T, N>(out + i * N, moss::cuda::load_raw<T, N, moss::cuda::Load::read_only>(in + i * N));
}

/// `n` values of T with random bits, every class but NaN (zeros, subnormals, infinities, normals).
template <class T>
std::vector<T> random_storage(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<T> v(n);
  for (auto& e : v) {
    if constexpr (std::is_same_v<T, float>) {
      std::uint32_t bits;
      do bits = static_cast<std::uint32_t>(rng());
      while ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0);
      std::memcpy(&e, &bits, 4);
    } else {
      const std::uint16_t exp_mask = std::is_same_v<T, f16> ? 0x7c00u : 0x7f80u;
      std::uint16_t bits;
      do bits = static_cast<std::uint16_t>(rng());
      while ((bits & exp_mask) == exp_mask && (bits & ~exp_mask & 0x7fffu) != 0);
      e.bits = bits;
    }
  }
  if (n >= 4) {  // the special values, always
    v[0] = moss::from_float<T>(0.0f), v[1] = moss::from_float<T>(-0.0f);
    v[2] = moss::from_float<T>(kInf), v[3] = moss::from_float<T>(-kInf);
  }
  return v;
}

template <class T, int N, moss::cuda::Load kLoad, moss::cuda::Store kStore>
void check_round_trip(const moss::Cuda& gpu) {
  CAPTURE(sizeof(T), N, int(kLoad), int(kStore));
  constexpr int kPieces = 1000;
  const std::vector<T> in = random_storage<T>(kPieces * N, 7 * N + sizeof(T));
  auto din = to_gpu(gpu, in);
  auto dout = gpu.alloc<T>(kPieces * N);
  auto dwide = gpu.alloc<float>(kPieces * N);
  moss::cuda::launch("vector_round_trip_kernel", vector_round_trip_kernel<T, N, kLoad, kStore>,
                     moss::cuda::grid_blocks(kPieces, 128), 128, 0, gpu.stream, din.data(), dout.data(), dwide.data(),
                     kPieces);
  const std::vector<T> out = to_host(gpu, dout);
  const std::vector<float> wide = to_host(gpu, dwide);
  for (std::size_t i = 0; i < in.size(); ++i) {
    CAPTURE(i);
    const float want = moss::to_float(in[i]);
    REQUIRE(std::memcmp(&wide[i], &want, sizeof(float)) == 0);  // widening is exact
    REQUIRE(std::memcmp(&out[i], &in[i], sizeof(T)) == 0);      // and rounds back to the same bits
  }
  if constexpr (moss::cuda::kIsVectorAccess<T, N>) {
    auto draw = gpu.alloc<T>(kPieces * N);
    moss::cuda::launch("raw_copy_kernel", raw_copy_kernel<T, N>, moss::cuda::grid_blocks(kPieces, 128), 128, 0,
                       gpu.stream, din.data(), draw.data(), kPieces);
    REQUIRE(same_bits(to_host(gpu, draw), in));
  }
}

/// Rounds float NaN and overflowing values to T through store_vec and reads them back.
template <class T>
__global__ void round_specials_kernel(const float* in, T* out) {
  float v[moss::cuda::kVec16<T>];
  moss::cuda::load_vec<moss::cuda::kVec16<T>>(in, v);
  moss::cuda::store_vec<moss::cuda::kVec16<T>>(out, v);
}

TEST_CASE("Vector loads widen and stores round back every storage type at every width", "[cuda][vector]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  using moss::cuda::Load, moss::cuda::Store;
  check_round_trip<float, 1, Load::cached, Store::cached>(gpu);
  check_round_trip<float, 2, Load::cached, Store::cached>(gpu);
  check_round_trip<float, 4, Load::read_only, Store::streaming>(gpu);
  check_round_trip<float, 4, Load::cached, Store::cached>(gpu);
  check_round_trip<f16, 1, Load::cached, Store::cached>(gpu);  // 2 bytes: element by element
  check_round_trip<f16, 2, Load::cached, Store::cached>(gpu);
  check_round_trip<f16, 4, Load::read_only, Store::streaming>(gpu);
  check_round_trip<f16, 8, Load::cached, Store::cached>(gpu);
  check_round_trip<bf16, 1, Load::cached, Store::cached>(gpu);
  check_round_trip<bf16, 2, Load::read_only, Store::cached>(gpu);
  check_round_trip<bf16, 4, Load::cached, Store::streaming>(gpu);
  check_round_trip<bf16, 8, Load::read_only, Store::streaming>(gpu);
}

TEST_CASE("Vector stores round NaN to NaN and overflow to infinity", "[cuda][vector]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const std::vector<float> in = {kNaN, -kNaN, 1e30f, -1e30f, 1.0f, 65504.0f, 70000.0f, -0.0f};
  auto din = to_gpu(gpu, in);
  auto dout = gpu.alloc<f16>(8);
  moss::cuda::launch("round_specials_kernel", round_specials_kernel<f16>, 1, 1, 0, gpu.stream, din.data(), dout.data());
  const std::vector<f16> out = to_host(gpu, dout);
  for (std::size_t i = 0; i < in.size(); ++i) {
    CAPTURE(i, in[i]);
    const float got = moss::to_float(out[i]);
    if (std::isnan(in[i])) {
      CHECK(std::isnan(got));
    } else {
      const f16 want = moss::from_float<f16>(in[i]);
      CHECK(std::memcmp(&out[i], &want, sizeof(f16)) == 0);
    }
  }
  CHECK(moss::to_float(out[2]) == kInf);
  CHECK(moss::to_float(out[6]) == kInf);
}

// ---- alignment predicates -------------------------------------------------------------------------

TEST_CASE("Alignment predicates follow the address, the strides and the row length", "[cuda][vector]") {
  alignas(256) static float buf[4096];
  CHECK(moss::cuda::is_aligned(buf, 256));
  CHECK(moss::cuda::is_aligned(buf + 4, 16));
  CHECK_FALSE(moss::cuda::is_aligned(buf + 1, 8));
  CHECK(moss::cuda::is_aligned(buf + 2, 8));
  CHECK(moss::cuda::address_alignment(buf) == 256);
  CHECK(moss::cuda::address_alignment(buf + 1) == 4);
  CHECK(moss::cuda::address_alignment(buf + 4) == 16);
  CHECK(moss::cuda::address_alignment(buf + 8, 16) == 16);
  CHECK(moss::cuda::address_alignment(nullptr) == 256);

  using View2 = moss::TensorView<float, 2>;
  // Contiguous (8, 12): 12 is a multiple of 4, not of 8.
  CHECK(moss::cuda::vector_rows(View2(buf, {8, 12}), 4));
  CHECK_FALSE(moss::cuda::vector_rows(View2(buf, {8, 12}), 8));
  CHECK(moss::cuda::vector_aligned(View2(buf, {8, 12}), 4));
  // A base one element off breaks every width above 1.
  CHECK_FALSE(moss::cuda::vector_rows(View2(buf + 1, {8, 12}), 4));
  CHECK(moss::cuda::vector_rows(View2(buf + 1, {8, 12}), 1));
  // Row stride 14: not a multiple of 4, so row 1 starts misaligned; one row needs no stride.
  CHECK_FALSE(moss::cuda::vector_rows(View2(buf, {8, 12}, {14, 1}), 4));
  CHECK(moss::cuda::vector_rows(View2(buf, {1, 12}, {14, 1}), 4));
  CHECK(moss::cuda::vector_rows(View2(buf, {8, 12}, {16, 1}), 4));
  // Rows of 6 (a column slice of stride-8 rows): aligned pieces, but no whole vectors.
  CHECK(moss::cuda::vector_aligned(View2(buf, {8, 6}, {8, 1}), 4));
  CHECK_FALSE(moss::cuda::vector_rows(View2(buf, {8, 6}, {8, 1}), 4));
  // Non-unit stride along the vector axis.
  CHECK_FALSE(moss::cuda::vector_aligned(View2(buf, {8, 4}, {1, 8}), 4));
  CHECK(moss::cuda::vector_aligned(View2(buf, {8, 4}, {1, 8}), 4, 0));
  // Rank 3, vectors along the middle axis (channel-last convolution): the other strides count.
  using View3 = moss::TensorView<const f16, 3>;
  const auto* h = reinterpret_cast<const f16*>(buf);
  CHECK(moss::cuda::vector_aligned(View3(h, {2, 8, 5}, {40, 1, 8}), 4, 1));
  CHECK_FALSE(moss::cuda::vector_aligned(View3(h, {2, 8, 5}, {42, 1, 8}), 4, 1));
  CHECK(moss::cuda::vector_aligned(View3(h, {1, 8, 5}, {42, 1, 8}), 4, 1));  // batch 1: its stride is never used
  CHECK_FALSE(moss::cuda::vector_aligned(View3(h + 2, {2, 8, 5}, {40, 1, 8}), 4, 1));
  CHECK(moss::cuda::vector_aligned(View3(h + 4, {2, 8, 5}, {40, 1, 8}), 4, 1));
}

// ---- grids and launches ---------------------------------------------------------------------------

static_assert(moss::cuda::grid_blocks(0, 256) == 1);
static_assert(moss::cuda::grid_blocks(1, 256) == 1);
static_assert(moss::cuda::grid_blocks(256, 256) == 1);
static_assert(moss::cuda::grid_blocks(257, 256) == 2);
static_assert(moss::cuda::grid_blocks(index_t(1) << 40, 256) == 65535);
static_assert(moss::cuda::grid_blocks(1000, 10, 50) == 50);
static_assert(moss::cuda::row_blocks(1) == 1);
static_assert(moss::cuda::row_blocks(12345) == 12345);
static_assert(moss::cuda::row_blocks(index_t(1) << 40) == (1u << 30));
static_assert(moss::cuda::row_threads(1, 8, 32, 512) == 32);
static_assert(moss::cuda::row_threads(768, 8, 32, 512) == 128);
static_assert(moss::cuda::row_threads(2048, 8, 32, 512) == 256);
static_assert(moss::cuda::row_threads(2049, 8, 32, 512) == 512);
static_assert(moss::cuda::row_threads(1 << 20, 8, 32, 512) == 512);
static_assert(moss::cuda::RowTuning{8, 32, 256}.config(4096, true, 4).threads == 256);
static_assert(moss::cuda::RowTuning{8, 32, 256}.config(4096, true, 4).vec == 4);
static_assert(moss::cuda::RowTuning{8, 32, 256}.config(4096, false, 4).vec == 1);

__global__ void fill_index_kernel(int* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = i;
}

__global__ void count_blocks_kernel(unsigned* out) {
  if (threadIdx.x == 0) atomicAdd(out, 1u);
}

TEST_CASE("checked_grid refuses grids past the hardware limit, naming the op", "[cuda][launch]") {
  CHECK(moss::cuda::checked_grid(1, "op") == 1u);
  CHECK(moss::cuda::checked_grid(moss::cuda::kMaxGridBlocks, "op") == 2147483647u);
  try {
    (void)moss::cuda::checked_grid(moss::cuda::kMaxGridBlocks + 1, "my_op (cuda)");
    FAIL("no error");
  } catch (const moss::unsupported_error& e) {
    CHECK(std::string(e.what()) ==
          "my_op (cuda): 2147483648 thread blocks exceed the grid limit of 2147483647; split the batch");
  }
}

TEST_CASE("launch runs a grid-stride kernel over every item", "[cuda][launch]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  for (int n : {1, 255, 256, 257, 100000, 20000000}) {
    CAPTURE(n);
    auto d = gpu.alloc<int>(n);
    moss::cuda::launch("fill_index_kernel", fill_index_kernel,
                       moss::cuda::grid_blocks(n, moss::cuda::kElementwiseThreads), moss::cuda::kElementwiseThreads, 0,
                       gpu.stream, d.data(), n);
    const std::vector<int> got = to_host(gpu, d);
    bool ok = true;
    for (int i = 0; i < n; ++i) ok = ok && got[static_cast<std::size_t>(i)] == i;
    CHECK(ok);
  }
}

// [api_error]: makes a CUDA API call fail on purpose, which compute-sanitizer reports as an
// error; scripts/gpu_sanitize leaves these cases out.
TEST_CASE("launch names a kernel whose launch fails and leaves no sticky error", "[cuda][launch][api_error]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  auto d = gpu.alloc<int>(1);
  try {
    moss::cuda::launch("fill_index_kernel", fill_index_kernel, 1, moss::cuda::kMaxBlockThreads + 1, 0, gpu.stream,
                       d.data(), 1);
    FAIL("no error");
  } catch (const moss::cuda_error& e) {
    CHECK(std::string(e.what()).find("launch of fill_index_kernel failed") != std::string::npos);
  }
  gpu.synchronize();  // the failed launch left no sticky error
}

TEST_CASE("sm_capped_blocks and resident_threads size persistent grids from the device", "[cuda][launch]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  const int sms = moss::cuda::sm_count();
  CHECK(moss::cuda::sm_capped_blocks(1, 4) == 1u);
  CHECK(moss::cuda::sm_capped_blocks(0, 4) == 1u);
  CHECK(moss::cuda::sm_capped_blocks(index_t(sms) * 4 - 1, 4) == unsigned(sms * 4 - 1));
  CHECK(moss::cuda::sm_capped_blocks(index_t(1) << 40, 4) == unsigned(sms * 4));

  int per_sm = 0;
  REQUIRE(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, count_blocks_kernel, 128, 0) == cudaSuccess);
  const index_t threads = moss::cuda::resident_threads(count_blocks_kernel, 128);
  CHECK(threads == index_t(sms) * per_sm * 128);
  CHECK(moss::cuda::resident_threads(count_blocks_kernel, 128) == threads);  // from the cache
  int per_sm_256 = 0;
  REQUIRE(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm_256, count_blocks_kernel, 256, 0) == cudaSuccess);
  CHECK(moss::cuda::resident_threads(count_blocks_kernel, 256) == index_t(sms) * per_sm_256 * 256);

  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  auto counter = gpu.alloc<unsigned>(1);
  moss::fill_zero(gpu, counter);
  const unsigned blocks = moss::cuda::sm_capped_blocks(index_t(1) << 20, 2);
  moss::cuda::launch("count_blocks_kernel", count_blocks_kernel, blocks, 64, 0, gpu.stream, counter.data());
  CHECK(to_host(gpu, counter)[0] == blocks);
}

// ---- device properties ----------------------------------------------------------------------------

int attribute(cudaDeviceAttr attr, int device) {
  int v = -1;
  REQUIRE(cudaDeviceGetAttribute(&v, attr, device) == cudaSuccess);
  return v;
}

TEST_CASE("device_properties matches the driver's attributes and is asked once per device", "[cuda][device]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  const int device = moss::cuda::current_device();
  const moss::cuda::DeviceProperties& p = moss::cuda::device_properties();
  CHECK(p.device == device);
  CHECK(p.sm_count == attribute(cudaDevAttrMultiProcessorCount, device));
  CHECK(p.compute_major == attribute(cudaDevAttrComputeCapabilityMajor, device));
  CHECK(p.compute_minor == attribute(cudaDevAttrComputeCapabilityMinor, device));
  CHECK(p.compute_capability() == 10 * p.compute_major + p.compute_minor);
  CHECK(p.warp_size == 32);
  CHECK(p.max_threads_per_block == attribute(cudaDevAttrMaxThreadsPerBlock, device));
  CHECK(p.max_threads_per_sm == attribute(cudaDevAttrMaxThreadsPerMultiProcessor, device));
  CHECK(p.shared_per_block == std::size_t(attribute(cudaDevAttrMaxSharedMemoryPerBlock, device)));
  CHECK(p.shared_per_block_optin == std::size_t(attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device)));
  CHECK(p.shared_per_sm == std::size_t(attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor, device)));
  CHECK(p.l2_bytes == std::size_t(attribute(cudaDevAttrL2CacheSize, device)));
  CHECK(moss::cuda::sm_count() == p.sm_count);

  // Cached: the same object every time, from every thread.
  CHECK(&moss::cuda::device_properties() == &p);
  CHECK(&moss::cuda::device_properties(device) == &p);
  std::vector<const moss::cuda::DeviceProperties*> seen(16, nullptr);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < seen.size(); ++i) {
    threads.emplace_back([&seen, i, device] {
      cudaSetDevice(device);
      seen[i] = &moss::cuda::device_properties(device);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto* s : seen) CHECK(s == &p);

  // Every visible device has its own entry.
  const int count = moss::cuda_device_count();
  for (int d = 0; d < count; ++d) CHECK(moss::cuda::device_properties(d).device == d);
}

TEST_CASE("device_properties refuses a device that does not exist", "[cuda][device][api_error]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CHECK_THROWS_AS(moss::cuda::device_properties(moss::cuda_device_count()), moss::cuda_error);
  (void)cudaGetLastError();
}

}  // namespace building_blocks_test
