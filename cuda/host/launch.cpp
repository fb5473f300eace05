// CPU launcher for the kernels of one .cu file (compiled with -include cuda_host.h and
// -DKERNEL_SOURCE='"path/to/file.cu"'): runs every thread of a 1-D launch one after another,
// in index order or reversed (a kernel whose result depends on the order has a race).
#include <cstring>
#include <utility>
#include <type_traits>

#include KERNEL_SOURCE

template <typename... Args, std::size_t... I>
static void call(void (*kernel)(Args...), void** params, std::index_sequence<I...>) {
    // params[k] points at the k-th argument's value, as cuLaunchKernel's kernelParams do
    kernel(*static_cast<std::remove_reference_t<Args>*>(params[I])...);
}

template <typename... Args>
static void run(void (*kernel)(Args...), unsigned grid, unsigned block, void** params, int reverse) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    const unsigned long long threads = (unsigned long long)grid * block;
    for (unsigned long long k = 0; k < threads; ++k) {
        const unsigned long long t = reverse ? threads - 1 - k : k;
        blockIdx = {unsigned(t / block), 0, 0};
        threadIdx = {unsigned(t % block), 0, 0};
        call(kernel, params, std::index_sequence_for<Args...>{});
    }
}

#define DSTRAIN_EMULATE(name) \
    if (std::strcmp(kernel, #name) == 0) { run(&name, grid, block, params, reverse); return 0; }

// 0 on success, 1 if this file has no kernel of that name
extern "C" int emulate_launch(const char* kernel, unsigned grid, unsigned block, void** params,
                              int reverse) {
    DSTRAIN_KERNELS(DSTRAIN_EMULATE)
    return 1;
}
