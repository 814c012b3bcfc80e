// The CPU backend's kernel interface: what the model calls. Each kernel has a
// scalar twin in reference.hpp that the tests compare it with.
//
//   load_row(dtype, src, dst, n)           widen a stored row to f32
//   matvec(W, x, y, threads)               y = W x          (decode)   gemv.hpp
//   matmul(W, X, n, Y, threads)            Y = X W^T, n rows (prefill) gemm.hpp
//   rmsnorm, rope, swiglu, softmax, argmax, add                        elementwise.hpp
//
// `threads` is the most threads the caller grants; a kernel uses fewer when
// its work is too small to pay for an OpenMP hand-off (threading.hpp), and
// its results never depend on how many it used. The instruction set is the
// one the compiler flags allow (arch.hpp).
#pragma once

#include "fastinfer/backend/cpu/arch.hpp"
#include "fastinfer/backend/cpu/elementwise.hpp"
#include "fastinfer/backend/cpu/gemm.hpp"
#include "fastinfer/backend/cpu/gemv.hpp"
#include "fastinfer/backend/cpu/threading.hpp"
