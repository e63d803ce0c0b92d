// Cross-entropy over the last axis with label smoothing and ignored rows
// (the CPU's cpu/loss.rs). One block per row.

#define CE_IGNORED 0xffffffffu

// loss_r = ln_s + (1 - eps) * (m - x_t) + eps * mean_c(m - x_c); ignored rows
// give 0. Saves the row max and ln(sum(exp(x - max))) for the backward.
ZF_KERNEL ZF_NAME(ce_fwd)(const T* x, ZfLayout lx, u64 rows, u64 c, u64 stride, const u32* targets, double eps,
                          ACC* loss, ACC* max_out, ACC* lns_out) {
    __shared__ ACC scratch[32];
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        u32 t = targets[r];
        if (t == CE_IGNORED || (u64)t >= c) {
            if (threadIdx.x == 0) {
                loss[r] = (t == CE_IGNORED) ? (ACC)0 : acc_nan();
                max_out[r] = (ACC)0;
                lns_out[r] = (ACC)0;
            }
            continue;
        }
        u64 base = zf_index(lx, r * c);
        ACC m = -acc_inf();
        for (u64 k = threadIdx.x; k < c; k += blockDim.x) {
            ACC v = ld(x, base + k * stride);
            if (v > m || isnan(v)) m = v;
        }
        m = zf_block_max(m, scratch);
        ACC s = (ACC)0, spread = (ACC)0;
        for (u64 k = threadIdx.x; k < c; k += blockDim.x) {
            ACC v = ld(x, base + k * stride);
            s += exp(v - m);
            spread += m - v;
        }
        s = zf_block_sum(s, scratch);
        spread = zf_block_sum(spread, scratch);
        if (threadIdx.x == 0) {
            ACC ln_s = log(s);
            ACC e = (ACC)eps;
            ACC l = ln_s + ((ACC)1 - e) * (m - ld(x, base + (u64)t * stride));
            if (eps != 0.0) l += e * spread / (ACC)c;
            loss[r] = l;
            max_out[r] = m;
            lns_out[r] = ln_s;
        }
    }
}

// out[0] = sum of v[0..n] (one block; fixed order, so deterministic).
ZF_KERNEL ZF_NAME(sum_acc)(const ACC* v, u64 n, ACC* out) {
    __shared__ ACC scratch[32];
    ACC s = (ACC)0;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
    s = zf_block_sum(s, scratch);
    if (threadIdx.x == 0) out[0] = s;
}

// g_c = scale * (softmax_c - (1 - eps) [c == t] - eps / C); ignored rows get 0.
ZF_KERNEL ZF_NAME(ce_bwd)(const T* x, ZfLayout lx, u64 rows, u64 c, u64 stride, const u32* targets,
                          const ACC* max_in, const ACC* lns_in, double eps, double scale, T* gx) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        u32 t = targets[r];
        u64 base = zf_index(lx, r * c);
        ACC smooth = (ACC)(eps / (double)(c > 0 ? c : 1));
        for (u64 k = threadIdx.x; k < c; k += blockDim.x) {
            if (t == CE_IGNORED || (u64)t >= c) {
                gx[r * c + k] = rnd((ACC)0);
                continue;
            }
            ACC p = exp((ld(x, base + k * stride) - max_in[r]) - lns_in[r]);
            ACC g = p - smooth;
            if (k == (u64)t) g -= (ACC)1 - (ACC)eps;
            gx[r * c + k] = rnd((ACC)scale * g);
        }
    }
}

// ---- mean squared error, binary cross-entropy on logits ----
// Losses are summed in two fixed stages: partial[c] sums elements
// [c * chunk, (c + 1) * chunk) (one block per chunk), then sum_acc adds the
// partials: deterministic.

// partial sums of (a - b)^2.
ZF_KERNEL ZF_NAME(mse_partial)(const T* a, ZfLayout la, const T* b, ZfLayout lb, u64 n, u64 chunk, u64 chunks,
                               ACC* partial) {
    __shared__ ACC scratch[32];
    for (u64 c = blockIdx.x; c < chunks; c += gridDim.x) {
        u64 lo = c * chunk, hi = min(n, lo + chunk);
        ACC s = (ACC)0;
        for (u64 i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            ACC d = ld(a, zf_index(la, i)) - ld(b, zf_index(lb, i));
            s += d * d;
        }
        s = zf_block_sum(s, scratch);
        if (threadIdx.x == 0) partial[c] = s;
    }
}

// ga = 2 scale (a - b), gb = -ga (from the rounded ga, as the CPU).
ZF_KERNEL ZF_NAME(mse_bwd)(const T* a, ZfLayout la, const T* b, ZfLayout lb, double scale, T* ga, T* gb, u64 n) {
    ACC two_s = (ACC)2 * (ACC)scale;
    ZF_FOR(i, n) {
        T g = rnd(two_s * (ld(a, zf_index(la, i)) - ld(b, zf_index(lb, i))));
        ga[i] = g;
        gb[i] = rnd(-zf_to_acc(g));
    }
}

// softplus(-x) = ln(1 + e^-x), stable.
__device__ __forceinline__ ACC bce_softplus_neg(ACC x) {
    ACC nx = -x;
    return (nx > (ACC)0 ? nx : (ACC)0) + log1p(exp(-fabs(x)));
}
// 1 / (1 + e^x), stable.
__device__ __forceinline__ ACC bce_sigmoid_neg(ACC x) {
    if (x <= (ACC)0) return (ACC)1 / ((ACC)1 + exp(x));
    ACC e = exp(-x);
    return e / ((ACC)1 + e);
}

// partial sums of the BCE on logits x against targets y; with a per-class
// pos_weight pw (c > 0 classes, element i of class i % c).
ZF_KERNEL ZF_NAME(bce_partial)(const T* x, ZfLayout lx, const T* y, ZfLayout ly, const ACC* pw, u64 c, u64 n,
                               u64 chunk, u64 chunks, ACC* partial) {
    __shared__ ACC scratch[32];
    for (u64 k = blockIdx.x; k < chunks; k += gridDim.x) {
        u64 lo = k * chunk, hi = min(n, lo + chunk);
        ACC s = (ACC)0;
        for (u64 i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            ACC xv = ld(x, zf_index(lx, i)), yv = ld(y, zf_index(ly, i));
            if (c == 0) {
                s += (xv > (ACC)0 ? xv : (ACC)0) - xv * yv + log1p(exp(-fabs(xv)));
            } else {
                ACC lw = (ACC)1 + (pw[i % c] - (ACC)1) * yv;
                s += ((ACC)1 - yv) * xv + lw * bce_softplus_neg(xv);
            }
        }
        s = zf_block_sum(s, scratch);
        if (threadIdx.x == 0) partial[k] = s;
    }
}

// gx = s ((1 - y) - lw sigma(-x)), gy = s ((p - 1) softplus(-x) - x), with
// p = pw[i % c] (1 without a weight) and lw = 1 + (p - 1) y.
ZF_KERNEL ZF_NAME(bce_bwd)(const T* x, ZfLayout lx, const T* y, ZfLayout ly, const ACC* pw, u64 c, double scale,
                           T* gx, T* gy, u64 n) {
    ACC s = (ACC)scale, one = (ACC)1;
    ZF_FOR(i, n) {
        ACC xv = ld(x, zf_index(lx, i)), yv = ld(y, zf_index(ly, i));
        ACC p = c == 0 ? one : pw[i % c];
        ACC lw = one + (p - one) * yv;
        ACC sp = bce_softplus_neg(xv);
        gx[i] = rnd(s * ((one - yv) - lw * bce_sigmoid_neg(xv)));
        gy[i] = rnd(s * ((p - one) * sp - xv));
    }
}

// The pos_weight gradient: gp[k] = sum over elements i of class k (i % c
// == k) of s y softplus(-x); one block per class.
ZF_KERNEL ZF_NAME(bce_pw_grad)(const T* x, ZfLayout lx, const T* y, ZfLayout ly, u64 c, u64 n, double scale,
                               T* gp) {
    __shared__ ACC scratch[32];
    ACC s = (ACC)scale;
    for (u64 k = blockIdx.x; k < c; k += gridDim.x) {
        ACC a = (ACC)0;
        for (u64 i = k + (u64)threadIdx.x * c; i < n; i += (u64)blockDim.x * c) {
            ACC xv = ld(x, zf_index(lx, i)), yv = ld(y, zf_index(ly, i));
            a += s * yv * bce_softplus_neg(xv);
        }
        a = zf_block_sum(a, scratch);
        if (threadIdx.x == 0) gp[k] = rnd(a);
    }
}
