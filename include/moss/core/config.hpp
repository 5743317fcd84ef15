// moss/core/config.hpp: compiler and platform macros shared by every header.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
/// Marks a function callable from host and device code; plain `inline` under g++.
#define MOSS_HD __host__ __device__ inline
/// Marks a device-only helper.
#define MOSS_DEVICE __device__ inline
#else
#define MOSS_HD inline
#define MOSS_DEVICE inline
#endif

#if defined(__CUDA_ARCH__)
#define MOSS_DEVICE_PASS 1
#else
#define MOSS_DEVICE_PASS 0
#endif

/// Synchronise after every kernel launch so an asynchronous fault names the right kernel.
/// Turned on by the CMake option MOSS_SYNC_LAUNCHES (default off; on in the Debug preset).
#ifndef MOSS_SYNC_LAUNCHES
#define MOSS_SYNC_LAUNCHES 0
#endif
