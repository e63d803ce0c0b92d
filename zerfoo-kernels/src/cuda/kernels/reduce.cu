// Reductions over axes (the CPU's cpu/reduce.rs). The host moves the reduced
// axes innermost (`moved`, a stride permutation): output `o` folds elements
// `o * inner .. (o + 1) * inner` of `moved`. One warp per output, in the
// compute type.

// y[o] = scale * sum of block o.
ZF_KERNEL ZF_NAME(reduce_sum)(const T* x, ZfLayout moved, u64 outer, u64 inner, double scale, T* y) {
    u64 warps = ((u64)blockDim.x * gridDim.x) >> 5;
    u64 lane = threadIdx.x & 31;
    for (u64 o = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; o < outer; o += warps) {
        ACC s = (ACC)0;
        for (u64 k = lane; k < inner; k += 32) s += ld(x, zf_index(moved, o * inner + k));
        s = zf_warp_sum(s);
        if (lane == 0) y[o] = rnd(s * (ACC)scale);
    }
}

// max (is_max = 1) or min of each block, with the number of elements equal to
// it. NaN propagates (the count is then the number of NaNs); an empty block
// gives -inf (max) or +inf (min) with count 0.
__device__ __forceinline__ void ext_fold(ACC& b, u32& c, ACC x, u32 xc, bool is_max) {
    if (isnan(b)) {
        if (isnan(x)) c += xc;
    } else if (isnan(x)) {
        b = x; c = xc;
    } else if (xc == 0) {
    } else if (c == 0 || (is_max && x > b) || (!is_max && x < b)) {
        b = x; c = xc;
    } else if (x == b) {
        c += xc;
    }
}
ZF_KERNEL ZF_NAME(reduce_extreme)(const T* x, ZfLayout moved, u64 outer, u64 inner, int is_max, T* y, u32* counts) {
    u64 warps = ((u64)blockDim.x * gridDim.x) >> 5;
    u64 lane = threadIdx.x & 31;
    for (u64 o = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; o < outer; o += warps) {
        ACC b = is_max ? -acc_inf() : acc_inf();
        u32 c = 0;
        for (u64 k = lane; k < inner; k += 32) ext_fold(b, c, ld(x, zf_index(moved, o * inner + k)), 1, is_max);
        for (int off = 16; off > 0; off >>= 1) {
            ACC ob = __shfl_xor_sync(0xffffffffu, b, off);
            u32 oc = __shfl_xor_sync(0xffffffffu, c, off);
            ext_fold(b, c, ob, oc, is_max);
        }
        if (lane == 0) {
            y[o] = rnd(b);
            counts[o] = c;
        }
    }
}

// Backward of reduce_extreme: elements equal to their block's extreme (NaN
// matching a NaN extreme) get gy / count, the rest 0. `le` reads the kept-dims
// buffers (y, counts, gy) at full shape (stride 0 on the reduced axes).
ZF_KERNEL ZF_NAME(extreme_bwd)(const T* x, ZfLayout lx, const T* y, const u32* counts, const T* gy, ZfLayout le,
                               T* gx, u64 n) {
    ZF_FOR(i, n) {
        ACC xv = ld(x, zf_index(lx, i));
        u64 j = zf_index(le, i);
        ACC yv = ld(y, j);
        u32 c = counts[j] > 0 ? counts[j] : 1;
        bool hit = xv == yv || (isnan(xv) && isnan(yv));
        gx[i] = rnd(hit ? ld(gy, j) / (ACC)c : (ACC)0);
    }
}
