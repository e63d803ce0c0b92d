// zerfoo CUDA prelude: storage types, exact conversions to and from the
// compute type, strided layouts and block reductions. Needs no header, so
// NVRTC compiles it anywhere. The host prepends `#define`s naming the
// element type (ZF_T), its compute type (ZF_ACC), the kernel-name suffix
// (ZF_SUFFIX) and the rounding function (ZF_FROM_ACC), then this file,
// then one kernel family. Under ZF_HOST_EMULATION (the host emulator, see
// emulator.rs) the two f16 conversions use the emulator's software versions.

typedef unsigned long long u64;
typedef long long i64;
typedef unsigned int u32;

#define ZF_CAT2(a, b) a##_##b
#define ZF_CAT(a, b) ZF_CAT2(a, b)
// `ZF_NAME(unary_fwd)` is `unary_fwd_f32` in the f32 instantiation.
#define ZF_NAME(name) ZF_CAT(name, ZF_SUFFIX)
#define ZF_KERNEL extern "C" __global__ void

// ---- storage types (bit patterns; arithmetic happens in float/double) ----
struct zf_f16 { unsigned short bits; };
struct zf_bf16 { unsigned short bits; };
struct zf_f8e4m3 { unsigned char bits; };
struct zf_f8e5m2 { unsigned char bits; };

// ---- widening (exact) ----
__device__ __forceinline__ float zf_to_acc(float x) { return x; }
__device__ __forceinline__ double zf_to_acc(double x) { return x; }
__device__ __forceinline__ float zf_to_acc(zf_f16 x) {
#ifdef ZF_HOST_EMULATION
    return zf_emu_half_to_float(x.bits);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
#endif
}
__device__ __forceinline__ float zf_to_acc(zf_bf16 x) {
    return __uint_as_float(((u32)x.bits) << 16);
}

// 8-bit floats, decoded exactly (PyTorch's float8_e4m3fn / float8_e5m2).
__device__ __forceinline__ float zf_f8_decode(unsigned char bits, int mbits, int bias, bool ieee) {
    float sign = (bits & 0x80) ? -1.0f : 1.0f;
    int exp_bits = 7 - mbits;
    int exp_max = (1 << exp_bits) - 1;
    int mant_mask = (1 << mbits) - 1;
    int e = (bits >> mbits) & exp_max;
    int m = bits & mant_mask;
    if (ieee && e == exp_max) {
        return m == 0 ? sign * __int_as_float(0x7f800000) : __int_as_float(0x7fffffff);
    }
    if (!ieee && e == exp_max && m == mant_mask) {
        return __int_as_float(0x7fffffff);
    }
    float scale = (float)(1 << mbits);
    float v = (e == 0) ? ldexpf((float)m / scale, 1 - bias)
                       : ldexpf(1.0f + (float)m / scale, e - bias);
    return sign * v;
}
__device__ __forceinline__ float zf_to_acc(zf_f8e4m3 x) { return zf_f8_decode(x.bits, 3, 7, false); }
__device__ __forceinline__ float zf_to_acc(zf_f8e5m2 x) { return zf_f8_decode(x.bits, 2, 15, true); }

// ---- rounding once, to nearest, ties to even ----
__device__ __forceinline__ float zf_from_acc_f32(float a) { return a; }
__device__ __forceinline__ double zf_from_acc_f64(double a) { return a; }
__device__ __forceinline__ zf_f16 zf_from_acc_f16(float a) {
    zf_f16 r;
#ifdef ZF_HOST_EMULATION
    r.bits = zf_emu_float_to_half(a);
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(a));
#endif
    return r;
}
// Same bit-level rule as the `half` crate's `bf16::from_f32`.
__device__ __forceinline__ zf_bf16 zf_from_acc_bf16(float a) {
    u32 x = __float_as_uint(a);
    zf_bf16 r;
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        r.bits = (unsigned short)((x >> 16) | 0x0040u);
        return r;
    }
    const u32 round_bit = 0x00008000u;
    u32 hi = x >> 16;
    if ((x & round_bit) != 0 && (x & (3u * round_bit - 1u)) != 0) {
        hi += 1;
    }
    r.bits = (unsigned short)hi;
    return r;
}
// Exact value (a non-negative representable number) to bits.
__device__ __forceinline__ unsigned char zf_f8_encode_finite(float r, int mbits, int bias) {
    int min_e = 1 - bias;
    float scale = (float)(1 << mbits);
    if (r < ldexpf(1.0f, min_e)) {
        return (unsigned char)(r / ldexpf(1.0f, min_e) * scale);
    }
    int e = ilogbf(r);
    unsigned char m = (unsigned char)((r / ldexpf(1.0f, e) - 1.0f) * scale);
    return (unsigned char)(((e + bias) << mbits) | m);
}
// The CPU's `f8::Format::encode`: E4M3 saturates to ±448, E5M2 overflows to
// ±inf, NaN is 0x7F.
__device__ __forceinline__ unsigned char zf_f8_encode(float x, int mbits, int bias, float max_finite, bool ieee) {
    if (isnan(x)) return 0x7f;
    unsigned char sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    unsigned char over = ieee ? (unsigned char)(sign | (0x7f & ~((1 << mbits) - 1)))
                              : (unsigned char)(sign | zf_f8_encode_finite(max_finite, mbits, bias));
    if (isinf(a)) return over;
    int min_e = 1 - bias;
    int e = (a == 0.0f) ? min_e : max(ilogbf(a), min_e);
    float q = ldexpf(1.0f, e - mbits);
    float r = rintf(a / q) * q;
    if (r > max_finite) return over;
    return (unsigned char)(sign | zf_f8_encode_finite(r, mbits, bias));
}
__device__ __forceinline__ zf_f8e4m3 zf_from_acc_f8e4m3(float a) {
    zf_f8e4m3 r;
    r.bits = zf_f8_encode(a, 3, 7, 448.0f, false);
    return r;
}
__device__ __forceinline__ zf_f8e5m2 zf_from_acc_f8e5m2(float a) {
    zf_f8e5m2 r;
    r.bits = zf_f8_encode(a, 2, 15, 57344.0f, true);
    return r;
}

// ---- rounding once from f64 (dtype conversion) ----
// Rounds to f32 toward zero and sets the last mantissa bit when inexact
// ("round to odd"): rounding that to nearest-even in a format with at least
// two fewer mantissa bits (f16, bf16, f8) is the correctly rounded value of
// `d` (the CPU's `f64_to_f32_round_odd`).
__device__ __forceinline__ float zf_f64_to_f32_odd(double d) {
    float f = (float)d;
    if (isnan(d) || (double)f == d) return f;
    u32 b = __float_as_uint(f);
    if (fabs((double)f) > fabs(d)) b -= 1;  // rounded away from zero: step back
    return __uint_as_float(b | 1u);
}
// Overloads picked by the (null) pointer type: `zf_round_from_f64(d, (T*)0)`.
__device__ __forceinline__ double zf_round_from_f64(double d, double*) { return d; }
__device__ __forceinline__ float zf_round_from_f64(double d, float*) { return (float)d; }
__device__ __forceinline__ zf_f16 zf_round_from_f64(double d, zf_f16*) {
    return zf_from_acc_f16(zf_f64_to_f32_odd(d));
}
__device__ __forceinline__ zf_bf16 zf_round_from_f64(double d, zf_bf16*) {
    return zf_from_acc_bf16(zf_f64_to_f32_odd(d));
}
__device__ __forceinline__ zf_f8e4m3 zf_round_from_f64(double d, zf_f8e4m3*) {
    return zf_from_acc_f8e4m3(zf_f64_to_f32_odd(d));
}
__device__ __forceinline__ zf_f8e5m2 zf_round_from_f64(double d, zf_f8e5m2*) {
    return zf_from_acc_f8e5m2(zf_f64_to_f32_odd(d));
}

// ---- the instantiated element type ----
typedef ZF_T T;
typedef ZF_ACC ACC;
__device__ __forceinline__ ACC ld(const T* p, u64 i) { return zf_to_acc(p[i]); }
__device__ __forceinline__ T rnd(ACC a) { return ZF_FROM_ACC(a); }

__device__ __forceinline__ ACC acc_inf() { return (ACC)__int_as_float(0x7f800000); }
__device__ __forceinline__ ACC acc_nan() { return (ACC)__int_as_float(0x7fffffff); }

// ---- strided layouts (the host's `Layout`, passed by value) ----
#define ZF_MAX_RANK 6
struct ZfLayout {
    u64 shape[ZF_MAX_RANK];
    u64 strides[ZF_MAX_RANK];
    u64 offset;
    u32 rank;
    u32 contiguous;
};

// Storage index of the i-th element in row-major order. The loop is
// unrolled so every `shape[d]` / `strides[d]` is a constant index: a kernel
// parameter indexed by a variable is first copied to a local-memory stack
// frame by every thread (seen as 112-224 byte frames in `ptxas -v`, and
// elementwise kernels ~20x under memory bandwidth on an H200). Divides in
// 32 bits where the index and the dim fit (a 64-bit division is several
// times the instructions).
__device__ __forceinline__ u64 zf_index(const ZfLayout& l, u64 i) {
    if (l.contiguous) return l.offset + i;
    u64 off = l.offset;
#pragma unroll
    for (int d = ZF_MAX_RANK - 1; d >= 0; --d) {
        if (d < (int)l.rank) {
            u64 n = l.shape[d];
            if (((i | n) >> 32) == 0) {
                u32 q = (u32)i / (u32)n;
                off += (u64)((u32)i - q * (u32)n) * l.strides[d];
                i = q;
            } else {
                off += (i % n) * l.strides[d];
                i /= n;
            }
        }
    }
    return off;
}

// Grid-stride loop over `n` items.
#define ZF_FOR(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)

// ---- block reductions (blockDim.x a multiple of 32, at most 1024) ----
__device__ __forceinline__ ACC zf_warp_sum(ACC v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ ACC zf_warp_max(ACC v) {
    for (int o = 16; o > 0; o >>= 1) {
        ACC w = __shfl_xor_sync(0xffffffffu, v, o);
        v = (w > v || isnan(w)) ? w : v;
    }
    return v;
}
// Sum over the block; every thread gets the result. `scratch` holds 32 ACCs.
__device__ ACC zf_block_sum(ACC v, ACC* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = zf_warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (threadIdx.x < nw) ? scratch[threadIdx.x] : (ACC)0;
    if (warp == 0) v = zf_warp_sum(v);
    if (threadIdx.x == 0) scratch[0] = v;
    __syncthreads();
    return scratch[0];
}
// Max over the block (NaN wins); every thread gets the result.
__device__ ACC zf_block_max(ACC v, ACC* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = zf_warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (threadIdx.x < nw) ? scratch[threadIdx.x] : -acc_inf();
    if (warp == 0) v = zf_warp_max(v);
    if (threadIdx.x == 0) scratch[0] = v;
    __syncthreads();
    return scratch[0];
}

// Sum over the block in any arithmetic type V (a double partial in a float
// instantiation); every thread gets the result. `scratch` holds 32 Vs.
template <class V>
__device__ V zf_block_sum_t(V v, V* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (threadIdx.x < nw) ? scratch[threadIdx.x] : (V)0;
    if (warp == 0) {
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    if (threadIdx.x == 0) scratch[0] = v;
    __syncthreads();
    return scratch[0];
}

// ---- conversions between the element type and its compute type ----
// dst[i] = round(src[i]) (used after accumulating in the compute type).
ZF_KERNEL ZF_NAME(round_from_acc)(const ACC* src, T* dst, u64 n) {
    ZF_FOR(i, n) { dst[i] = rnd(src[i]); }
}
// dst[i] = widen(src[layout[i]]) as float (f8 matmul through f32).
ZF_KERNEL ZF_NAME(to_f32)(const T* src, ZfLayout l, float* dst, u64 n) {
    ZF_FOR(i, n) { dst[i] = (float)zf_to_acc(src[zf_index(l, i)]); }
}
// dst[i] = round(src[i]) from float (f8 matmul through f32).
ZF_KERNEL ZF_NAME(from_f32)(const float* src, T* dst, u64 n) {
    ZF_FOR(i, n) { dst[i] = rnd((ACC)src[i]); }
}
// A contiguous copy of the elements a layout selects.
ZF_KERNEL ZF_NAME(copy_strided)(const T* src, ZfLayout l, T* dst, u64 n) {
    ZF_FOR(i, n) { dst[i] = src[zf_index(l, i)]; }
}
