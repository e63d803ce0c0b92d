// Structural kernels (the CPU's cpu/shape.rs): copying a range of a strided
// view, one part of a concatenation, adding a block into a narrowed slice of
// a larger buffer, and the two halves of a dtype conversion. Every output
// element is written by one thread.

// dst[i] = src[l[start + i]] for i < n.
ZF_KERNEL ZF_NAME(copy_range)(const T* src, ZfLayout l, u64 start, T* dst, u64 n) {
    ZF_FOR(i, n) { dst[i] = src[zf_index(l, start + i)]; }
}

// One part of a concatenation: the part (outer x block elements, read
// through `l`) lands at columns col0 .. col0 + block of each `row`-long row
// of `out`.
ZF_KERNEL ZF_NAME(concat_part)(const T* src, ZfLayout l, u64 outer, u64 block, u64 row, u64 col0, T* out) {
    u64 n = outer * block;
    ZF_FOR(i, n) {
        u64 o = i / block, k = i % block;
        out[o * row + col0 + k] = src[zf_index(l, i)];
    }
}

// dst[o, lo + k] += src[o, k] for o < outer, k < block (dst rows `full`
// long), added in the compute type and rounded once.
ZF_KERNEL ZF_NAME(add_narrow)(T* dst, u64 outer, u64 full, u64 lo, u64 block, const T* src) {
    u64 n = outer * block;
    ZF_FOR(i, n) {
        u64 o = i / block, k = i % block;
        u64 d = o * full + lo + k;
        dst[d] = rnd(ld(dst, d) + ld(src, i));
    }
}

// dst[i] = src[l[i]] widened to f64 (exact): the first half of a dtype
// conversion, run in the source dtype's module.
ZF_KERNEL ZF_NAME(widen_f64)(const T* src, ZfLayout l, double* dst, u64 n) {
    ZF_FOR(i, n) { dst[i] = (double)ld(src, zf_index(l, i)); }
}

// dst[i] = src[i] rounded once to T (to nearest, ties to even): the second
// half, run in the target dtype's module.
ZF_KERNEL ZF_NAME(round_from_f64)(const double* src, T* dst, u64 n) {
    ZF_FOR(i, n) { dst[i] = zf_round_from_f64(src[i], (T*)0); }
}
