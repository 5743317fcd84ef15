// tests/backend/workspace_test.cpp: the workspace contract (moss/core/workspace.hpp): layouts
// measure what they hand out, a caller's workspace is checked, and without one the op's
// memory comes from the backend.
#include <catch2/catch_test_macros.hpp>
#include <cstdint>
#include <string>

#include "moss/backend/host.hpp"
#include "moss/core/workspace.hpp"
#include "moss/ops/embedding.hpp"
#include "moss/ops/linear.hpp"

namespace {

using moss::kWorkspaceAlignment;

TEST_CASE("WorkspaceLayout measures and hands out the same aligned pieces", "[workspace]") {
  moss::WorkspaceLayout measure;
  CHECK(measure.take<float>(3) == nullptr);
  CHECK(measure.take<double>(0) == nullptr);  // an empty piece takes nothing
  CHECK(measure.take<std::int8_t>(kWorkspaceAlignment + 1) == nullptr);
  CHECK(measure.bytes() == 3 * kWorkspaceAlignment);

  alignas(256) static std::byte memory[4 * 256];
  moss::WorkspaceLayout layout(memory);
  float* a = layout.take<float>(3);
  CHECK(layout.take<double>(0) == nullptr);
  auto* b = layout.take<std::int8_t>(kWorkspaceAlignment + 1);
  CHECK(reinterpret_cast<std::byte*>(a) == memory);
  CHECK(reinterpret_cast<std::byte*>(b) == memory + kWorkspaceAlignment);
  CHECK(layout.bytes() == measure.bytes());
}

TEST_CASE("OpWorkspace uses a caller's workspace after checking it, else allocates", "[workspace]") {
  const moss::Host host;
  alignas(256) static std::byte memory[1024];

  const moss::OpWorkspace<moss::Host> given(host, moss::Workspace{memory, sizeof memory}, 1000, "my_op");
  CHECK(given.data() == memory);
  CHECK(given.layout().take<float>(1) == reinterpret_cast<float*>(memory));

  const moss::OpWorkspace<moss::Host> own(host, moss::Workspace{}, 512, "my_op");
  REQUIRE(own.data() != nullptr);
  static_cast<std::byte*>(own.data())[511] = std::byte{7};  // it is real memory of that size

  const moss::OpWorkspace<moss::Host> none(host, moss::Workspace{}, 0, "my_op");
  CHECK(none.data() == nullptr);

  try {
    moss::OpWorkspace<moss::Host>(host, moss::Workspace{memory, 100}, 1000, "my_op");
    FAIL("no error");
  } catch (const moss::config_error& e) {
    CHECK(std::string(e.what()) ==
          "my_op: the workspace holds 100 bytes but this call needs 1000 (ask workspace_bytes for the same arguments)");
  }
  CHECK_THROWS_AS(moss::OpWorkspace<moss::Host>(host, moss::Workspace{memory + 16, 1000}, 512, "my_op"),
                  moss::config_error);
  // A caller may give a workspace to an op that needs none; it must still be aligned.
  CHECK(moss::OpWorkspace<moss::Host>(host, moss::Workspace{memory, 8}, 0, "my_op").data() == memory);
  CHECK_THROWS_AS(moss::OpWorkspace<moss::Host>(host, moss::Workspace{memory + 16, 8}, 0, "my_op"), moss::config_error);
}

TEST_CASE("The host ops need no workspace", "[workspace]") {
  const moss::Host host;
  float x[4] = {}, w[4] = {}, y[1] = {};
  const moss::LinearArgs<float> l{moss::ConstView<float, 2>(x, {1, 4}),
                                  moss::ConstView<float, 2>(w, {1, 4}),
                                  {},
                                  moss::TensorView<float, 2>(y, {1, 1})};
  CHECK(workspace_bytes(host, l) == 0);
  const std::int64_t ids[1] = {0};
  float table[4] = {}, out[4] = {};
  const moss::EmbeddingArgs<float> e{moss::ConstView<std::int64_t, 1>(ids, {1}),
                                     moss::ConstView<float, 2>(table, {1, 4}), moss::TensorView<float, 2>(out, {1, 4})};
  CHECK(workspace_bytes(host, e) == 0);
}

}  // namespace
