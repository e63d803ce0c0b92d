// Host emulation of the CUDA features the kernels use, so the same kernel
// sources compile with a host C++ compiler and run on the CPU: one OS thread
// per CUDA thread, the blocks of a grid run one after another, __syncthreads
// is a block barrier, warp shuffles go through a slot array with per-warp
// barriers, atomics take a lock. Slow; for testing the kernels without a GPU.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

using namespace std;

#define ZF_HOST_EMULATION 1
#define __device__
#define __forceinline__ inline
#define __global__
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
};
static thread_local dim3 threadIdx;
static thread_local dim3 blockIdx;
static dim3 blockDim;
static dim3 gridDim;

// A reusable barrier for `count` threads (spins with yield: with many more
// threads than cores this beats sleeping on a condition variable).
struct ZfBarrier {
    atomic<unsigned> waiting{0}, generation{0};
    unsigned count = 0;
    void wait() {
        unsigned gen = generation.load(memory_order_acquire);
        if (waiting.fetch_add(1, memory_order_acq_rel) + 1 == count) {
            waiting.store(0, memory_order_relaxed);
            generation.fetch_add(1, memory_order_acq_rel);
        } else {
            while (generation.load(memory_order_acquire) == gen) this_thread::yield();
        }
    }
};

static ZfBarrier zf_block_barrier;
static ZfBarrier zf_warp_barriers[32];
static double zf_shfl_slots[1024];
static mutex zf_atomic_lock;

inline void __syncthreads() { zf_block_barrier.wait(); }

template <class V>
V __shfl_xor_sync(unsigned, V v, int o) {
    unsigned t = threadIdx.x, warp = t >> 5;
    zf_shfl_slots[t] = (double)v;
    zf_warp_barriers[warp].wait();
    V r = (V)zf_shfl_slots[(t & ~31u) | ((t & 31u) ^ (unsigned)o)];
    zf_warp_barriers[warp].wait();
    return r;
}

inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
inline float __uint_as_float(unsigned i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned i;
    memcpy(&i, &f, 4);
    return i;
}

inline float atomicAdd(float* p, float v) {
    lock_guard<mutex> g(zf_atomic_lock);
    float old = *p;
    *p = old + v;
    return old;
}
inline double atomicAdd(double* p, double v) {
    lock_guard<mutex> g(zf_atomic_lock);
    double old = *p;
    *p = old + v;
    return old;
}

// IEEE half <-> float, round to nearest even (what cvt.rn.f16.f32 does).
inline float zf_emu_half_to_float(unsigned short h) {
    unsigned sign = ((unsigned)h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) {
        float v = ldexpf((float)m, -24);
        return sign ? -v : v;
    }
    if (e == 31) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    return __uint_as_float(sign | ((e + 112) << 23) | (m << 13));
}
inline unsigned short zf_emu_float_to_half(float f) {
    unsigned x = __float_as_uint(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (unsigned short)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // >= 65520: inf
    if (ax < 0x38800000u) {                                          // below 2^-14: subnormal
        unsigned m = (unsigned)rintf(__uint_as_float(ax) * 16777216.0f);
        return (unsigned short)(sign | m);
    }
    unsigned h = (((ax >> 23) - 112) << 10) | ((ax & 0x7fffffu) >> 13);
    unsigned rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h += 1;
    return (unsigned short)(sign | h);
}

// Runs `kernel(args)` over a grid: `block` threads, each running every block
// (row-major over (y, x)) in turn, with a block barrier between blocks.
typedef void (*zf_emu_kernel)(void**);
static mutex zf_launch_lock;
//
// Blocks of more than ZF_EMU_BLOCK threads run as proportionally more blocks
// of ZF_EMU_BLOCK threads (two warps): every kernel here loops over its work
// by blockDim/gridDim, so the results are the same, and far fewer OS threads
// meet at each barrier.
#define ZF_EMU_BLOCK 64u
extern "C" void zf_emu_run(zf_emu_kernel kernel, void** args, unsigned gx, unsigned gy, unsigned block) {
    lock_guard<mutex> g(zf_launch_lock);
    if (block > ZF_EMU_BLOCK && block % ZF_EMU_BLOCK == 0) {
        gx *= block / ZF_EMU_BLOCK;
        block = ZF_EMU_BLOCK;
    }
    blockDim = dim3{block, 1, 1};
    gridDim = dim3{gx, gy, 1};
    zf_block_barrier.count = block;
    for (unsigned w = 0; w < 32; ++w) {
        unsigned lo = w * 32;
        zf_warp_barriers[w].count = lo < block ? min(32u, block - lo) : 0;
    }
    vector<thread> threads;
    for (unsigned t = 0; t < block; ++t) {
        threads.emplace_back([=] {
            threadIdx = dim3{t, 0, 0};
            for (unsigned y = 0; y < gy; ++y) {
                for (unsigned x = 0; x < gx; ++x) {
                    blockIdx = dim3{x, y, 0};
                    kernel(args);
                    zf_block_barrier.wait();
                }
            }
        });
    }
    for (auto& th : threads) th.join();
}
