// moss/version.hpp: the version of the moss headers.
//
// The numbers here and `project(moss VERSION ...)` in CMakeLists.txt are the same version; the
// configure step fails when they differ, so neither can drift. The CMake package
// (`find_package(moss 0.2 CONFIG)`) carries the same number. The minor number changes whenever
// public API is renamed or reshaped while the major number is 0.
#pragma once

/// Major version: 0 until the public API is declared stable.
#define MOSS_VERSION_MAJOR 0
/// Minor version: bumped by every release that renames or reshapes public API (0.2: issue 7's
/// redesign into component structs).
#define MOSS_VERSION_MINOR 2
/// Patch version: fixes that keep the API.
#define MOSS_VERSION_PATCH 0
/// "MAJOR.MINOR.PATCH", the three numbers above as one string literal.
#define MOSS_VERSION_STRING "0.2.0"
/// The version as one comparable integer: MAJOR · 10000 + MINOR · 100 + PATCH (0.2.0 → 200).
#define MOSS_VERSION (MOSS_VERSION_MAJOR * 10000 + MOSS_VERSION_MINOR * 100 + MOSS_VERSION_PATCH)
