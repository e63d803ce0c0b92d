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
