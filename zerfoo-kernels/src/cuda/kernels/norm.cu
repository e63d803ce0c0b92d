// Layer norm and RMS norm over the last axis (the CPU's cpu/norm.rs).
// kind: 0 layer, 1 rms, 2 rms with weight (1 + w). One block per row.

__device__ __forceinline__ ACC n_weight(const T* w, const ZfLayout& lw, int has_w, int kind, u64 k) {
    if (!has_w) return (ACC)1;
    ACC v = ld(w, zf_index(lw, k));
    return kind == 2 ? (ACC)1 + v : v;
}

// y = (x - mean) * rstd * w + b (mean 0 for the RMS kinds); saves mean and rstd per row.
ZF_KERNEL ZF_NAME(norm_fwd)(int kind, const T* x, ZfLayout lx, u64 rows, u64 n, u64 stride, const T* w, ZfLayout lw,
                            int has_w, const T* b, ZfLayout lb, int has_b, double eps, T* y, ACC* mean_out,
                            ACC* rstd_out) {
    __shared__ ACC scratch[32];
    ACC d = (ACC)n;
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        u64 base = zf_index(lx, r * n);
        ACC s = (ACC)0;
        if (kind == 0) {
            for (u64 k = threadIdx.x; k < n; k += blockDim.x) s += ld(x, base + k * stride);
            s = zf_block_sum(s, scratch);
        }
        ACC mean = kind == 0 ? s / d : (ACC)0;
        ACC ss = (ACC)0;
        for (u64 k = threadIdx.x; k < n; k += blockDim.x) {
            ACC v = ld(x, base + k * stride) - mean;
            ss += v * v;
        }
        ss = zf_block_sum(ss, scratch);
        ACC rstd = (ACC)1 / sqrt(ss / d + (ACC)eps);
        for (u64 k = threadIdx.x; k < n; k += blockDim.x) {
            ACC v = (ld(x, base + k * stride) - mean) * rstd;
            if (has_w) v *= n_weight(w, lw, has_w, kind, k);
            if (has_b) v += ld(b, zf_index(lb, k));
            y[r * n + k] = rnd(v);
        }
        if (threadIdx.x == 0) {
            mean_out[r] = mean;
            rstd_out[r] = rstd;
        }
    }
}

// gx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = gy * w_eff
// (no mean(g) term for the RMS kinds); gy contiguous.
ZF_KERNEL ZF_NAME(norm_bwd_x)(int kind, const T* x, ZfLayout lx, u64 rows, u64 n, u64 stride, const T* w,
                              ZfLayout lw, int has_w, const ACC* mean_in, const ACC* rstd_in, const T* gy, T* gx) {
    __shared__ ACC scratch[32];
    ACC d = (ACC)n;
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        u64 base = zf_index(lx, r * n);
        ACC mean = mean_in[r], rstd = rstd_in[r];
        ACC sg = (ACC)0, sgx = (ACC)0;
        for (u64 k = threadIdx.x; k < n; k += blockDim.x) {
            ACC xh = (ld(x, base + k * stride) - mean) * rstd;
            ACC g = ld(gy, r * n + k) * n_weight(w, lw, has_w, kind, k);
            sg += g;
            sgx += g * xh;
        }
        sg = zf_block_sum(sg, scratch);
        sgx = zf_block_sum(sgx, scratch);
        ACC mg = kind == 0 ? sg / d : (ACC)0;
        ACC mgx = sgx / d;
        for (u64 k = threadIdx.x; k < n; k += blockDim.x) {
            ACC xh = (ld(x, base + k * stride) - mean) * rstd;
            ACC g = ld(gy, r * n + k) * n_weight(w, lw, has_w, kind, k);
            gx[r * n + k] = rnd(rstd * (g - mg - xh * mgx));
        }
    }
}

// Partial column sums over a chunk of rows: pw[c * n + k] = sum_r gy * xhat,
// pb[c * n + k] = sum_r gy, for rows c * per_chunk .. (c + 1) * per_chunk.
// Grid: (column blocks, chunks).
ZF_KERNEL ZF_NAME(norm_bwd_wb_partial)(const T* x, ZfLayout lx, u64 rows, u64 n, u64 stride, const ACC* mean_in,
                                       const ACC* rstd_in, const T* gy, u64 per_chunk, ACC* pw, ACC* pb) {
    u64 k = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 c = blockIdx.y;
    if (k >= n) return;
    u64 r0 = c * per_chunk, r1 = min(rows, r0 + per_chunk);
    ACC sw = (ACC)0, sb = (ACC)0;
    for (u64 r = r0; r < r1; ++r) {
        ACC g = ld(gy, r * n + k);
        ACC xh = (ld(x, zf_index(lx, r * n) + k * stride) - mean_in[r]) * rstd_in[r];
        sw += g * xh;
        sb += g;
    }
    pw[c * n + k] = sw;
    pb[c * n + k] = sb;
}

// Sums the partials over chunks in order and rounds: out[k] = sum_c p[c * n + k].
ZF_KERNEL ZF_NAME(sum_chunks)(const ACC* p, u64 chunks, u64 n, T* out) {
    ZF_FOR(k, n) {
        ACC s = (ACC)0;
        for (u64 c = 0; c < chunks; ++c) s += p[c * n + k];
        out[k] = rnd(s);
    }
}
