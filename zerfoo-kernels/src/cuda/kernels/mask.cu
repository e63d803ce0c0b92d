// Mask kernels (the CPU's cpu/mask.rs): select by a boolean mask, the
// gradient of one branch, fill where set, triangles over the last two axes,
// and seeded dropout. Masks are `bool` on the device, read as bytes
// (nonzero = set). Outputs are contiguous.

// out[i] = mask[i] ? a[i] : b[i] (copies, no rounding).
ZF_KERNEL ZF_NAME(where_select)(const unsigned char* m, ZfLayout lm, const T* a, ZfLayout la, const T* b,
                                ZfLayout lb, T* out, u64 n) {
    ZF_FOR(i, n) { out[i] = m[zf_index(lm, i)] ? a[zf_index(la, i)] : b[zf_index(lb, i)]; }
}

// out[i] = (mask[i] != 0) == keep_where ? g[i] : 0, g contiguous.
ZF_KERNEL ZF_NAME(mask_grad)(const unsigned char* m, ZfLayout lm, const T* g, int keep_where, T* out, u64 n) {
    ZF_FOR(i, n) {
        bool set = m[zf_index(lm, i)] != 0;
        out[i] = (set == (keep_where != 0)) ? g[i] : rnd((ACC)0);
    }
}

// out[i] = mask[i] ? value : x[i].
ZF_KERNEL ZF_NAME(masked_fill)(const T* x, ZfLayout lx, const unsigned char* m, ZfLayout lm, double value, T* out,
                               u64 n) {
    T v = rnd((ACC)value);
    ZF_FOR(i, n) { out[i] = m[zf_index(lm, i)] ? v : x[zf_index(lx, i)]; }
}

// Keeps (row, col) of the last two axes (rows x cols) where col - row <= diag
// (lower) or >= diag (upper); the rest become 0. `diag` is an i64's bits.
ZF_KERNEL ZF_NAME(tri)(const T* x, ZfLayout lx, u64 rows, u64 cols, int lower, u64 diag_bits, T* out, u64 n) {
    i64 diag = (i64)diag_bits;
    ZF_FOR(i, n) {
        i64 col = (i64)(i % cols), row = (i64)((i / cols) % rows);
        i64 d = col - row;
        bool keep = lower ? d <= diag : d >= diag;
        out[i] = keep ? x[zf_index(lx, i)] : rnd((ACC)0);
    }
}

// The counter-based random stream of zerfoo's tensor RNG (SplitMix64's
// finalizer): the i-th uniform draw of stream `seed`, a double in [0, 1)
// with 53 random bits. Bit-identical to the host's `rng::uniform`.
__device__ __forceinline__ u64 zf_mix64(u64 z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
__device__ __forceinline__ double zf_uniform(u64 seed, u64 i) {
    u64 bits = zf_mix64(zf_mix64(seed) ^ (i * 0xD1B54A32D192ED03ull));
    return (double)(bits >> 11) * (1.0 / 9007199254740992.0);
}

// Dropout: out[i] = uniform(seed, i) >= p ? x[i] * scale : 0, with i the
// row-major position (so the mask depends only on (seed, i)).
ZF_KERNEL ZF_NAME(dropout)(const T* x, ZfLayout lx, u64 seed, double p, double scale, T* out, u64 n) {
    ACC s = (ACC)scale;
    ZF_FOR(i, n) {
        bool keep = zf_uniform(seed, i) >= p;
        out[i] = keep ? rnd(ld(x, zf_index(lx, i)) * s) : rnd((ACC)0);
    }
}
