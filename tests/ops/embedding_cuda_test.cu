// tests/ops/embedding_cuda_test.cu: `embedding` on CUDA against the host (widening is exact,
// so bit-for-bit), strided views, and bad ids: the same error as the host, NaN rows, and no
// synchronisation or error when the caller says the ids are checked.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "moss/ops/embedding/cuda.cuh"
#include "moss_test.hpp"

namespace {

using moss::bf16;
using moss::ConstView;
using moss::f16;
using moss::index_t;
using moss::TensorView;

template <class T>
moss::Buffer<T> upload(const moss::Cuda& gpu, const std::vector<T>& v) {
  moss::Buffer<T> d = gpu.alloc<T>(static_cast<index_t>(v.size()));
  moss::copy(gpu, d.flat(), ConstView<T, 1>(v.data(), {static_cast<index_t>(v.size())}));
  gpu.synchronize();
  return d;
}

template <class T>
std::vector<T> download(const moss::Cuda& gpu, const moss::Buffer<T>& d) {
  std::vector<T> v(static_cast<std::size_t>(d.size()));
  moss::copy(gpu, TensorView<T, 1>(v.data(), {d.size()}), ConstView<T, 1>(d.flat()));
  gpu.synchronize();
  return v;
}

/// Table and out rows at `offset` in rows of width dim + pad (0 / 0: contiguous); ids read with
/// `ids_stride`.
struct Layout {
  const char* name;
  index_t offset, pad, ids_stride;
};
constexpr Layout kLayouts[] = {{"contiguous", 0, 0, 1}, {"aligned slices", 4, 4, 2}, {"odd slices", 3, 1, 3}};

}  // namespace

TEMPLATE_TEST_CASE("embedding: CUDA matches the host bit for bit", "[cuda]", float, f16, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = TestType;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const index_t vocab = 1000;
  std::uint64_t seed = 900;
  for (index_t dim : {1, 7, 768, 2048}) {
    for (index_t rows : {1, 7, 4097}) {
      seed += 10;
      const auto table = moss::test::to_storage<T>(moss::test::randn(vocab * dim, seed));
      std::vector<std::int64_t> ids(static_cast<std::size_t>(rows));
      for (index_t r = 0; r < rows; ++r) ids[r] = (r * 7919 + seed) % vocab;
      std::vector<float> expected(static_cast<std::size_t>(rows * dim));
      moss::EmbeddingArgs<T> h;
      h.ids = ConstView<std::int64_t, 1>(ids.data(), {rows}, "ids");
      h.table = ConstView<T, 2>(table.data(), {vocab, dim}, "table");
      h.out = TensorView<float, 2>(expected.data(), {rows, dim}, "out");
      moss::embedding(moss::Host{}, h);

      for (const Layout& l : kLayouts) {
        for (bool ids_checked : {false, true}) {
          CAPTURE(dim, rows, l.name, ids_checked);
          const index_t ld = dim + l.pad;
          std::vector<T> table_wide(static_cast<std::size_t>(vocab * ld + l.offset), moss::from_float<T>(1e4f));
          for (index_t v = 0; v < vocab; ++v) {
            for (index_t i = 0; i < dim; ++i) table_wide[v * ld + l.offset + i] = table[v * dim + i];
          }
          std::vector<std::int64_t> ids_wide(static_cast<std::size_t>(rows * l.ids_stride), -1);
          for (index_t r = 0; r < rows; ++r) ids_wide[r * l.ids_stride] = ids[r];
          const auto dtable = upload(gpu, table_wide);
          const auto dids = upload(gpu, ids_wide);
          const auto dout = upload(gpu, std::vector<float>(static_cast<std::size_t>(rows * ld + l.offset), NAN));
          moss::EmbeddingArgs<T> a;
          a.ids = ConstView<std::int64_t, 1>(dids.data(), {rows}, {l.ids_stride}, "ids");
          a.table = ConstView<T, 2>(dtable.data() + l.offset, {vocab, dim}, {ld, 1}, "table");
          a.out = TensorView<float, 2>(dout.data() + l.offset, {rows, dim}, {ld, 1}, "out");
          a.ids_checked = ids_checked;
          moss::embedding(gpu, a);
          const auto out_wide = download(gpu, dout);
          bool exact = true, poison_kept = true;
          for (index_t i = 0; i < static_cast<index_t>(out_wide.size()); ++i) {
            const index_t r = (i - l.offset) / ld, c = (i - l.offset) % ld;
            if (i >= l.offset && r < rows && c < dim) {
              exact = exact && out_wide[i] == expected[r * dim + c];
            } else {
              poison_kept = poison_kept && std::isnan(out_wide[i]);
            }
          }
          CHECK(exact);
          CHECK(poison_kept);
        }
      }
    }
  }
}

TEST_CASE("embedding: a bad id throws on CUDA as on the host", "[cuda]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const index_t vocab = 50, dim = 64, rows = 9;
  const auto table = moss::test::to_storage<bf16>(moss::test::randn(vocab * dim, 3));
  // Rows 3 and 6 hold bad ids; the error names the first.
  const std::vector<std::int64_t> ids = {0, 1, 2, vocab, 4, 5, -1, 7, 8};
  std::vector<float> host_out(rows * dim);
  moss::EmbeddingArgs<bf16> h;
  h.ids = ConstView<std::int64_t, 1>(ids.data(), {rows}, "ids");
  h.table = ConstView<bf16, 2>(table.data(), {vocab, dim}, "table");
  h.out = TensorView<float, 2>(host_out.data(), {rows, dim}, "out");
  std::string host_message;
  try {
    moss::embedding(moss::Host{}, h);
  } catch (const moss::shape_error& e) {
    host_message = e.what();
  }
  REQUIRE_THAT(host_message, Catch::Matchers::ContainsSubstring("ids[3] = 50"));

  // The good rows as the host gathers them.
  std::vector<std::int64_t> good_ids = ids;
  good_ids[3] = good_ids[6] = 0;
  h.ids = ConstView<std::int64_t, 1>(good_ids.data(), {rows}, "ids");
  moss::embedding(moss::Host{}, h);

  const auto dtable = upload(gpu, table);
  const auto dids = upload(gpu, ids);
  for (bool ids_checked : {false, true}) {
    CAPTURE(ids_checked);
    const auto dout = upload(gpu, std::vector<float>(rows * dim, 0.0f));
    moss::EmbeddingArgs<bf16> a;
    a.ids = ConstView<std::int64_t, 1>(dids.data(), {rows}, "ids");
    a.table = ConstView<bf16, 2>(dtable.data(), {vocab, dim}, "table");
    a.out = TensorView<float, 2>(dout.data(), {rows, dim}, "out");
    a.ids_checked = ids_checked;
    if (ids_checked) {
      REQUIRE_NOTHROW(moss::embedding(gpu, a));
    } else {
      std::string cuda_message;
      try {
        moss::embedding(gpu, a);
      } catch (const moss::shape_error& e) {
        cuda_message = e.what();
      }
      REQUIRE(cuda_message == host_message);
    }
    const auto out = download(gpu, dout);
    for (index_t r = 0; r < rows; ++r) {
      for (index_t i = 0; i < dim; ++i) {
        if (r == 3 || r == 6) {
          REQUIRE(std::isnan(out[r * dim + i]));
        } else {
          REQUIRE(out[r * dim + i] == host_out[r * dim + i]);
        }
      }
    }
  }
}

TEST_CASE("embedding: the bad-id flag lives in a caller's workspace of workspace_bytes", "[cuda]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const index_t vocab = 10, dim = 8, rows = 4;
  const auto dtable = upload(gpu, moss::test::to_storage<f16>(moss::test::randn(vocab * dim, 4)));
  const auto dids = upload(gpu, std::vector<std::int64_t>{1, 2, 99, 3});
  auto dout = gpu.alloc<float>(rows * dim);
  moss::EmbeddingArgs<f16> a;
  a.ids = ConstView<std::int64_t, 1>(dids.data(), {rows}, "ids");
  a.table = ConstView<f16, 2>(dtable.data(), {vocab, dim}, "table");
  a.out = dout.view<2>({rows, dim}, "out");
  REQUIRE(workspace_bytes(gpu, a) == moss::kWorkspaceAlignment);  // one flag, a whole aligned piece
  a.ids_checked = true;
  CHECK(workspace_bytes(gpu, a) == 0);
  a.ids_checked = false;
  a.ids = ConstView<std::int64_t, 1>(dids.data(), {0}, "ids");
  a.out = dout.view<2>({0, dim}, "out");
  CHECK(workspace_bytes(gpu, a) == 0);  // no rows, no check
  a.ids = ConstView<std::int64_t, 1>(dids.data(), {rows}, "ids");
  a.out = dout.view<2>({rows, dim}, "out");

  auto ws = gpu.alloc<std::byte>(static_cast<index_t>(moss::kWorkspaceAlignment));
  MOSS_CUDA_CHECK(
      cudaMemsetAsync(ws.data(), 0, moss::kWorkspaceAlignment, gpu.stream));  // "row 0 is bad", unless reset
  a.workspace = moss::Workspace{ws.data(), moss::kWorkspaceAlignment};
  REQUIRE_THROWS_WITH(moss::embedding(gpu, a), Catch::Matchers::ContainsSubstring("ids[2] = 99"));
  unsigned long long flag = 0;
  moss::download(gpu, &flag, reinterpret_cast<const unsigned long long*>(ws.data()), 1);
  CHECK(flag == 2);  // the op's flag was the caller's memory

  a.workspace = moss::Workspace{ws.data(), moss::kWorkspaceAlignment - 1};
  CHECK_THROWS_AS(moss::embedding(gpu, a), moss::config_error);
}
