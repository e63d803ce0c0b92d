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

// ---- variance (Welford per lane, merged across the warp by Chan's rule) ----
__device__ __forceinline__ void welford_merge(u64& n, ACC& mean, ACC& m2, u64 nb, ACC mb, ACC m2b) {
    if (nb == 0) return;
    if (n == 0) {
        n = nb; mean = mb; m2 = m2b;
        return;
    }
    u64 nt = n + nb;
    ACC delta = mb - mean;
    ACC fa = (ACC)(double)n, fb = (ACC)(double)nb, ft = (ACC)(double)nt;
    mean = mean + delta * fb / ft;
    m2 = m2 + m2b + delta * delta * fa * fb / ft;
    n = nt;
}
// y[o] = sum((x - mean)^2) / (count - correction) of block o (count <=
// correction divides by zero, as PyTorch), means[o] = its mean.
ZF_KERNEL ZF_NAME(reduce_var)(const T* x, ZfLayout moved, u64 outer, u64 inner, u64 correction, T* y, ACC* means) {
    u64 warps = ((u64)blockDim.x * gridDim.x) >> 5;
    u64 lane = threadIdx.x & 31;
    for (u64 o = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; o < outer; o += warps) {
        u64 n = 0;
        ACC mean = (ACC)0, m2 = (ACC)0;
        for (u64 k = lane; k < inner; k += 32) {
            ACC v = ld(x, zf_index(moved, o * inner + k));
            n += 1;
            ACC d = v - mean;
            mean = mean + d / (ACC)(double)n;
            m2 = m2 + d * (v - mean);
        }
        for (int off = 16; off > 0; off >>= 1) {
            u64 nb = __shfl_xor_sync(0xffffffffu, n, off);
            ACC mb = __shfl_xor_sync(0xffffffffu, mean, off);
            ACC m2b = __shfl_xor_sync(0xffffffffu, m2, off);
            welford_merge(n, mean, m2, nb, mb, m2b);
        }
        if (lane == 0) {
            u64 denom = n > correction ? n - correction : 0;
            y[o] = rnd(m2 / (ACC)(double)denom);
            means[o] = mean;
        }
    }
}

// gx = gy * k * (x - mean), k = 2 / (count - correction); `le` reads the
// kept-dims buffers at full shape.
ZF_KERNEL ZF_NAME(var_bwd)(const T* x, ZfLayout lx, const ACC* means, const T* gy, ZfLayout le, double k, T* gx,
                           u64 n) {
    ACC kk = (ACC)k;
    ZF_FOR(i, n) {
        u64 j = zf_index(le, i);
        gx[i] = rnd((ld(gy, j) * kk) * (ld(x, zf_index(lx, i)) - means[j]));
    }
}

// ---- logsumexp (online, max-subtracted; the CPU's fold per lane) ----
__device__ __forceinline__ void lse_fold(ACC& m, ACC& s, ACC x) {
    if (isnan(x)) {
        s = x;
    } else if (x == -acc_inf()) {
    } else if (x > m) {
        s = s * exp(m - x) + (ACC)1;
        m = x;
    } else if (m == acc_inf()) {
    } else {
        s = s + exp(x - m);
    }
}
__device__ __forceinline__ void lse_merge(ACC& m, ACC& s, ACC mb, ACC sb) {
    if (isnan(s) || isnan(sb)) {
        s = isnan(s) ? s : sb;
        return;
    }
    if (mb == -acc_inf()) return;
    if (m == -acc_inf()) {
        m = mb; s = sb;
        return;
    }
    ACC mt = m > mb ? m : mb;
    if (mt == acc_inf()) {
        m = mt; s = (ACC)1;
        return;
    }
    s = s * exp(m - mt) + sb * exp(mb - mt);
    m = mt;
}
// out[o] = log(sum(exp(x))) of block o, in the compute type: -inf elements
// add nothing, +inf gives +inf, NaN gives NaN, an empty block -inf.
ZF_KERNEL ZF_NAME(reduce_lse)(const T* x, ZfLayout moved, u64 outer, u64 inner, ACC* out) {
    u64 warps = ((u64)blockDim.x * gridDim.x) >> 5;
    u64 lane = threadIdx.x & 31;
    for (u64 o = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; o < outer; o += warps) {
        ACC m = -acc_inf(), s = (ACC)0;
        for (u64 k = lane; k < inner; k += 32) lse_fold(m, s, ld(x, zf_index(moved, o * inner + k)));
        for (int off = 16; off > 0; off >>= 1) {
            ACC mb = __shfl_xor_sync(0xffffffffu, m, off);
            ACC sb = __shfl_xor_sync(0xffffffffu, s, off);
            lse_merge(m, s, mb, sb);
        }
        if (lane == 0) out[o] = isnan(s) ? s : (isinf(m) ? m : m + log(s));
    }
}

// gx = gy * exp(x - lse).
ZF_KERNEL ZF_NAME(lse_bwd)(const T* x, ZfLayout lx, const ACC* lse, const T* gy, ZfLayout le, T* gx, u64 n) {
    ZF_FOR(i, n) {
        u64 j = zf_index(le, i);
        gx[i] = rnd(ld(gy, j) * exp(ld(x, zf_index(lx, i)) - lse[j]));
    }
}

// ---- argmax / argmin: the first extreme, the first NaN if any ----
// "No element yet" (a position no block reaches; exact as a double, which
// the host emulation's shuffles pass through).
#define ARG_NONE (1ull << 62)
// Whether (v, i) beats (b, bi) (bi == ARG_NONE: none yet).
__device__ __forceinline__ bool arg_better(ACC v, u64 i, ACC b, u64 bi, bool is_max) {
    if (i == ARG_NONE) return false;
    if (bi == ARG_NONE) return true;
    if (isnan(b)) return isnan(v) && i < bi;
    if (isnan(v)) return true;
    if (is_max ? v > b : v < b) return true;
    return v == b && i < bi;
}
ZF_KERNEL ZF_NAME(reduce_arg)(const T* x, ZfLayout moved, u64 outer, u64 inner, int is_max, u32* out) {
    u64 warps = ((u64)blockDim.x * gridDim.x) >> 5;
    u64 lane = threadIdx.x & 31;
    for (u64 o = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; o < outer; o += warps) {
        ACC b = (ACC)0;
        u64 bi = ARG_NONE;
        for (u64 k = lane; k < inner; k += 32) {
            ACC v = ld(x, zf_index(moved, o * inner + k));
            if (arg_better(v, k, b, bi, is_max != 0)) {
                b = v;
                bi = k;
            }
        }
        for (int off = 16; off > 0; off >>= 1) {
            ACC ob = __shfl_xor_sync(0xffffffffu, b, off);
            u64 oi = __shfl_xor_sync(0xffffffffu, bi, off);
            if (arg_better(ob, oi, b, bi, is_max != 0)) {
                b = ob;
                bi = oi;
            }
        }
        if (lane == 0) out[o] = bi == ARG_NONE ? 0u : (u32)bi;
    }
}
