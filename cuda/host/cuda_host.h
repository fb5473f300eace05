// Host stand-ins for the CUDA built-ins the kernels of cuda/*.cu use, so g++ compiles the same
// source into a CPU library (dstrain/gpu/emulator.py).  Faithful only for kernels whose threads
// do not cooperate (no shared memory, barriers, warp functions or atomics), as the header of
// each .cu file promises.
#pragma once
#include <math.h>

struct dim3_host { unsigned x, y, z; };
inline dim3_host threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
