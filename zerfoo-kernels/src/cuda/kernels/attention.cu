// Fused (flash-style) scaled dot-product attention, forward and backward
// (the CPU's cpu/attention.rs). q (B, H, Tq, D), k (B, H, Tk, D), v (B, H,
// Tk, Dv) in any layout; output (B, H, Tq, Dv) and the per-row logsumexp
// (B, H, Tq) contiguous.
//
// Forward: one CUDA block per block of blockDim.x (<= AT_BQ) query rows of
// one head, one thread per query row. The block walks the keys its rows can
// see in tiles of AT_BK keys: the tile's keys (and the rows' queries) are
// staged in shared memory AT_DC columns at a time, each thread scores its
// row against the tile (AT_BK scores in registers), masks them, updates its
// online softmax (running max and sum) and adds p * v to its output row,
// rescaled when the max grows. Keys outside every row's causal / window
// range are never visited; the T x T scores never exist. Each output row
// accumulates in a compute-type scratch stored column-major (column c of
// row r at c * rows + r), so a block's threads touch consecutive addresses.
//
// Backward (FlashAttention-2, recomputing the probabilities from the saved
// logsumexp): Di = rowsum(dO * O); dq by query blocks as in the forward
// (dS = P * (dO v^T - Di), dq += dS k); dk and dv by blocks of keys (one
// thread per key row) walking the query tiles that see them (dv += P^T dO,
// dk += dS^T q). Every gradient row is owned by one thread and summed in a
// fixed order: deterministic, no atomics.
//
// A query row that sees no key gets a zero output, a logsumexp of -inf and
// zero gradients.

#define AT_BK 32  // keys per tile (scores per thread, in registers)
#define AT_DC 32  // columns of q/k/v staged at a time
#define AT_BQ 64  // most query (or key) rows per block: blockDim.x <= AT_BQ
#define AT_QT 32  // query rows per tile of the dk/dv kernel

struct AtMask {
    int causal, has_window;
    u64 window, q_off, k_off, tk;
    const unsigned char* pad;  // (B, Tk), nonzero = padded; null for none
};

__device__ __forceinline__ u64 at_sat_sub(u64 a, u64 b) { return a > b ? a - b : 0; }

// The keys [lo, hi) that the causal limit and the window let query row i see.
__device__ __forceinline__ void at_key_range(const AtMask& m, u64 i, u64& lo, u64& hi) {
    u64 qp = m.q_off + i;
    hi = (m.causal || m.has_window) ? min(at_sat_sub(qp + 1, m.k_off), m.tk) : m.tk;
    if (m.has_window) {
        u64 wk = m.window + m.k_off;
        if (wk < m.window) wk = ~0ull;
        lo = min(at_sat_sub(qp + 1, wk), hi);
    } else {
        lo = 0;
    }
}

// The keys [lo, hi) any of query rows i0 .. i0 + n may see.
__device__ __forceinline__ void at_block_keys(const AtMask& m, u64 i0, u64 n, u64& lo, u64& hi) {
    u64 a, b;
    at_key_range(m, i0, lo, a);
    at_key_range(m, i0 + n - 1, b, hi);
    if (hi < lo) hi = lo;
}

__device__ __forceinline__ bool at_padded(const AtMask& m, u64 b, u64 j) {
    return m.pad != 0 && m.pad[b * m.tk + j] != 0;
}

// Storage index of element (b, h, t, c) of a rank-4 layout.
__device__ __forceinline__ u64 at_off(const ZfLayout& l, u64 b, u64 h, u64 t, u64 c) {
    return l.offset + b * l.strides[0] + h * l.strides[1] + t * l.strides[2] + c * l.strides[3];
}

__device__ __forceinline__ AtMask at_mask(int causal, int has_window, u64 window, u64 q_off, u64 k_off, u64 tk,
                                          const unsigned char* pad) {
    AtMask m;
    m.causal = causal;
    m.has_window = has_window;
    m.window = window;
    m.q_off = q_off;
    m.k_off = k_off;
    m.tk = tk;
    m.pad = pad;
    return m;
}

// Adds to s[jj] the dot products of this thread's (scaled) query row with
// keys j0 + jj (jj < n) of head (b, h), staging AT_DC columns at a time in
// ks (keys) and qs (the block's query rows i0 .. i0 + bq).
__device__ void at_scores(const T* q, const ZfLayout& lq, const T* k, const ZfLayout& lk, u64 b, u64 h, u64 i0,
                          u64 bq, u64 j0, u64 n, u64 d, ACC sc, bool active, ACC (*ks)[AT_DC],
                          ACC (*qs)[AT_DC + 1], ACC* s) {
    u64 t = threadIdx.x;
    for (u64 d0 = 0; d0 < d; d0 += AT_DC) {
        u64 dc = min((u64)AT_DC, d - d0);
        __syncthreads();
        for (u64 e = t; e < (u64)AT_BK * AT_DC; e += blockDim.x) {
            u64 jj = e / AT_DC, dd = e % AT_DC;
            ks[jj][dd] = (jj < n && dd < dc) ? ld(k, at_off(lk, b, h, j0 + jj, d0 + dd)) : (ACC)0;
        }
        for (u64 e = t; e < (u64)blockDim.x * AT_DC; e += blockDim.x) {
            u64 r = e / AT_DC, dd = e % AT_DC;
            qs[r][dd] = (r < bq && dd < dc) ? ld(q, at_off(lq, b, h, i0 + r, d0 + dd)) * sc : (ACC)0;
        }
        __syncthreads();
        if (active) {
            for (u64 dd = 0; dd < dc; ++dd) {
                ACC qv = qs[t][dd];
#pragma unroll
                for (int jj = 0; jj < AT_BK; ++jj) s[jj] += qv * ks[jj][dd];
            }
        }
    }
}

// Forward. oacc: (dv, rows) compute-type scratch; out (rows, dv); lse (rows).
ZF_KERNEL ZF_NAME(attn_fwd)(const T* q, ZfLayout lq, const T* k, ZfLayout lk, const T* v, ZfLayout lv, u64 nb,
                            u64 nh, u64 tq, u64 tk, u64 d, u64 dv, int causal, int has_window, u64 window,
                            u64 q_off, u64 k_off, const unsigned char* pad, double scale, ACC* oacc, T* out,
                            ACC* lse) {
    __shared__ ACC ks[AT_BK][AT_DC];
    __shared__ ACC qs[AT_BQ][AT_DC + 1];
    __shared__ ACC vs[AT_BK][AT_DC];
    AtMask m = at_mask(causal, has_window, window, q_off, k_off, tk, pad);
    u64 rows = nb * nh * tq;
    u64 per = blockDim.x;
    u64 qtiles = (tq + per - 1) / per;
    u64 tiles = nb * nh * qtiles;
    ACC sc = (ACC)scale, ninf = -acc_inf();
    u64 t = threadIdx.x;
    for (u64 tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        u64 bh = tile / qtiles, i0 = (tile % qtiles) * per;
        u64 b = bh / nh, h = bh % nh;
        u64 bq = min(per, tq - i0);
        bool active = t < bq;
        u64 i = i0 + t, row = bh * tq + i;
        u64 lo = 0, hi = 0, blo, bhi;
        if (active) at_key_range(m, i, lo, hi);
        at_block_keys(m, i0, bq, blo, bhi);
        ACC mx = ninf, l = (ACC)0;
        if (active) {
            for (u64 c = 0; c < dv; ++c) oacc[c * rows + row] = (ACC)0;
        }
        for (u64 j0 = blo; j0 < bhi; j0 += AT_BK) {
            u64 n = min((u64)AT_BK, bhi - j0);
            ACC s[AT_BK];
#pragma unroll
            for (int jj = 0; jj < AT_BK; ++jj) s[jj] = (ACC)0;
            at_scores(q, lq, k, lk, b, h, i0, bq, j0, n, d, sc, active, ks, qs, s);
            ACC alpha = (ACC)1;
            bool any = false;
            if (active) {
                ACC bm = ninf;
#pragma unroll
                for (int jj = 0; jj < AT_BK; ++jj) {
                    u64 j = j0 + jj;
                    bool vis = (u64)jj < n && j >= lo && j < hi && !at_padded(m, b, j);
                    if (!vis) s[jj] = ninf;
                    if (s[jj] > bm) bm = s[jj];
                }
                any = bm != ninf;
                if (any) {
                    ACC mnew = mx > bm ? mx : bm;
                    if (mnew > mx && l > (ACC)0) {
                        alpha = exp(mx - mnew);
                        l *= alpha;
                    }
                    mx = mnew;
                    ACC ps = (ACC)0;
#pragma unroll
                    for (int jj = 0; jj < AT_BK; ++jj) {
                        s[jj] = exp(s[jj] - mnew);
                        ps += s[jj];
                    }
                    l += ps;
                }
            }
            for (u64 c0 = 0; c0 < dv; c0 += AT_DC) {
                u64 vc = min((u64)AT_DC, dv - c0);
                __syncthreads();
                for (u64 e = t; e < (u64)AT_BK * AT_DC; e += blockDim.x) {
                    u64 jj = e / AT_DC, cc = e % AT_DC;
                    vs[jj][cc] = (jj < n && cc < vc) ? ld(v, at_off(lv, b, h, j0 + jj, c0 + cc)) : (ACC)0;
                }
                __syncthreads();
                if (active && any) {
                    for (u64 cc = 0; cc < vc; ++cc) {
                        u64 at = (c0 + cc) * rows + row;
                        ACC a = oacc[at] * alpha;
#pragma unroll
                        for (int jj = 0; jj < AT_BK; ++jj) a += s[jj] * vs[jj][cc];
                        oacc[at] = a;
                    }
                }
            }
        }
        if (active) {
            ACC inv = l > (ACC)0 ? (ACC)1 / l : (ACC)0;
            for (u64 c = 0; c < dv; ++c) out[row * dv + c] = rnd(l > (ACC)0 ? oacc[c * rows + row] * inv : (ACC)0);
            lse[row] = l > (ACC)0 ? mx + log(l) : ninf;
        }
    }
}

// di[r] = sum_c out[r, c] * dout[r, c] (out contiguous, dout any layout).
ZF_KERNEL ZF_NAME(attn_bwd_di)(const T* out, const T* dout, ZfLayout ldo, u64 nh, u64 tq, u64 dv, u64 rows,
                               ACC* di) {
    ZF_FOR(r, rows) {
        u64 i = r % tq, bh = r / tq;
        u64 b = bh / nh, h = bh % nh;
        ACC s = (ACC)0;
        for (u64 c = 0; c < dv; ++c) s += ld(out, r * dv + c) * ld(dout, at_off(ldo, b, h, i, c));
        di[r] = s;
    }
}

// The query gradient, by blocks of query rows as in the forward.
// dqacc: (d, rows) compute-type scratch; dq (rows, d).
ZF_KERNEL ZF_NAME(attn_bwd_dq)(const T* q, ZfLayout lq, const T* k, ZfLayout lk, const T* v, ZfLayout lv,
                               const T* dout, ZfLayout ldo, const ACC* lse, const ACC* di, u64 nb, u64 nh, u64 tq,
                               u64 tk, u64 d, u64 dv, int causal, int has_window, u64 window, u64 q_off,
                               u64 k_off, const unsigned char* pad, double scale, ACC* dqacc, T* dq) {
    __shared__ ACC ks[AT_BK][AT_DC];
    __shared__ ACC qs[AT_BQ][AT_DC + 1];
    __shared__ ACC vs[AT_BK][AT_DC];
    AtMask m = at_mask(causal, has_window, window, q_off, k_off, tk, pad);
    u64 rows = nb * nh * tq;
    u64 per = blockDim.x;
    u64 qtiles = (tq + per - 1) / per;
    u64 tiles = nb * nh * qtiles;
    ACC sc = (ACC)scale;
    u64 t = threadIdx.x;
    for (u64 tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        u64 bh = tile / qtiles, i0 = (tile % qtiles) * per;
        u64 b = bh / nh, h = bh % nh;
        u64 bq = min(per, tq - i0);
        bool active = t < bq;
        u64 i = i0 + t, row = bh * tq + i;
        u64 lo = 0, hi = 0, blo, bhi;
        ACC lrow = (ACC)0, drow = (ACC)0;
        bool live = false;
        if (active) {
            at_key_range(m, i, lo, hi);
            lrow = lse[row];
            drow = di[row];
            live = isfinite(lrow);
            for (u64 c = 0; c < d; ++c) dqacc[c * rows + row] = (ACC)0;
        }
        at_block_keys(m, i0, bq, blo, bhi);
        for (u64 j0 = blo; j0 < bhi; j0 += AT_BK) {
            u64 n = min((u64)AT_BK, bhi - j0);
            ACC s[AT_BK], dp[AT_BK];
#pragma unroll
            for (int jj = 0; jj < AT_BK; ++jj) {
                s[jj] = (ACC)0;
                dp[jj] = (ACC)0;
            }
            at_scores(q, lq, k, lk, b, h, i0, bq, j0, n, d, sc, active, ks, qs, s);
#pragma unroll
            for (int jj = 0; jj < AT_BK; ++jj) {
                u64 j = j0 + jj;
                bool vis = active && live && (u64)jj < n && j >= lo && j < hi && !at_padded(m, b, j);
                s[jj] = vis ? exp(s[jj] - lrow) : (ACC)0;
            }
            // dp = dO_i . v_j, staging dO rows in qs and values in vs
            for (u64 c0 = 0; c0 < dv; c0 += AT_DC) {
                u64 vc = min((u64)AT_DC, dv - c0);
                __syncthreads();
                for (u64 e = t; e < (u64)AT_BK * AT_DC; e += blockDim.x) {
                    u64 jj = e / AT_DC, cc = e % AT_DC;
                    vs[jj][cc] = (jj < n && cc < vc) ? ld(v, at_off(lv, b, h, j0 + jj, c0 + cc)) : (ACC)0;
                }
                for (u64 e = t; e < (u64)blockDim.x * AT_DC; e += blockDim.x) {
                    u64 r = e / AT_DC, cc = e % AT_DC;
                    qs[r][cc] = (r < bq && cc < vc) ? ld(dout, at_off(ldo, b, h, i0 + r, c0 + cc)) : (ACC)0;
                }
                __syncthreads();
                if (active) {
                    for (u64 cc = 0; cc < vc; ++cc) {
                        ACC g = qs[t][cc];
#pragma unroll
                        for (int jj = 0; jj < AT_BK; ++jj) dp[jj] += g * vs[jj][cc];
                    }
                }
            }
            // dS = P * (dP - Di), into s
#pragma unroll
            for (int jj = 0; jj < AT_BK; ++jj) s[jj] = s[jj] * (dp[jj] - drow);
            // dq += dS k
            for (u64 d0 = 0; d0 < d; d0 += AT_DC) {
                u64 dc = min((u64)AT_DC, d - d0);
                __syncthreads();
                for (u64 e = t; e < (u64)AT_BK * AT_DC; e += blockDim.x) {
                    u64 jj = e / AT_DC, dd = e % AT_DC;
                    ks[jj][dd] = (jj < n && dd < dc) ? ld(k, at_off(lk, b, h, j0 + jj, d0 + dd)) : (ACC)0;
                }
                __syncthreads();
                if (active) {
                    for (u64 dd = 0; dd < dc; ++dd) {
                        u64 at = (d0 + dd) * rows + row;
                        ACC a = dqacc[at];
#pragma unroll
                        for (int jj = 0; jj < AT_BK; ++jj) a += s[jj] * ks[jj][dd];
                        dqacc[at] = a;
                    }
                }
            }
        }
        if (active) {
            for (u64 c = 0; c < d; ++c) dq[row * d + c] = rnd(dqacc[c * rows + row] * sc);
        }
    }
}

// The key and value gradients, by blocks of blockDim.x (<= AT_BQ) key rows
// of one head, one thread per key row, over tiles of AT_QT query rows.
// dkacc: (d, krows), dvacc: (dv, krows) compute-type scratch; dk (krows, d),
// dvout (krows, dv).
ZF_KERNEL ZF_NAME(attn_bwd_dkdv)(const T* q, ZfLayout lq, const T* k, ZfLayout lk, const T* v, ZfLayout lv,
                                 const T* dout, ZfLayout ldo, const ACC* lse, const ACC* di, u64 nb, u64 nh,
                                 u64 tq, u64 tk, u64 d, u64 dv, int causal, int has_window, u64 window, u64 q_off,
                                 u64 k_off, const unsigned char* pad, double scale, ACC* dkacc, ACC* dvacc, T* dk,
                                 T* dvout) {
    __shared__ ACC qt[AT_QT][AT_DC];       // a query-tile chunk: scaled q or dO
    __shared__ ACC own[AT_BQ][AT_DC + 1];  // the block's key rows: k or v chunk
    __shared__ u64 qlo[AT_QT], qhi[AT_QT];
    __shared__ ACC qlse[AT_QT], qdi[AT_QT];
    AtMask m = at_mask(causal, has_window, window, q_off, k_off, tk, pad);
    u64 krows = nb * nh * tk;
    u64 per = blockDim.x;
    u64 ktiles = (tk + per - 1) / per;
    u64 tiles = nb * nh * ktiles;
    ACC sc = (ACC)scale;
    u64 t = threadIdx.x;
    for (u64 tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        u64 bh = tile / ktiles, j0 = (tile % ktiles) * per;
        u64 b = bh / nh, h = bh % nh;
        u64 nk = min(per, tk - j0);
        bool active = t < nk;
        u64 j = j0 + t, krow = bh * tk + j;
        bool key_live = active && !at_padded(m, b, j);
        if (active) {
            for (u64 c = 0; c < d; ++c) dkacc[c * krows + krow] = (ACC)0;
            for (u64 c = 0; c < dv; ++c) dvacc[c * krows + krow] = (ACC)0;
        }
        for (u64 i0 = 0; i0 < tq; i0 += AT_QT) {
            u64 bq = min((u64)AT_QT, tq - i0);
            u64 blo, bhi;
            at_block_keys(m, i0, bq, blo, bhi);
            if (bhi <= j0 || blo >= j0 + nk) continue;
            __syncthreads();
            if (t < bq) {
                u64 lo, hi;
                at_key_range(m, i0 + t, lo, hi);
                qlo[t] = lo;
                qhi[t] = hi;
                qlse[t] = lse[bh * tq + i0 + t];
                qdi[t] = di[bh * tq + i0 + t];
            }
            __syncthreads();
            ACC s[AT_QT], dp[AT_QT];
#pragma unroll
            for (int ii = 0; ii < AT_QT; ++ii) {
                s[ii] = (ACC)0;
                dp[ii] = (ACC)0;
            }
            // s = q_i . k_j (q scaled)
            for (u64 d0 = 0; d0 < d; d0 += AT_DC) {
                u64 dc = min((u64)AT_DC, d - d0);
                __syncthreads();
                for (u64 e = t; e < (u64)AT_QT * AT_DC; e += blockDim.x) {
                    u64 ii = e / AT_DC, dd = e % AT_DC;
                    qt[ii][dd] = (ii < bq && dd < dc) ? ld(q, at_off(lq, b, h, i0 + ii, d0 + dd)) * sc : (ACC)0;
                }
                for (u64 e = t; e < (u64)blockDim.x * AT_DC; e += blockDim.x) {
                    u64 r = e / AT_DC, dd = e % AT_DC;
                    own[r][dd] = (r < nk && dd < dc) ? ld(k, at_off(lk, b, h, j0 + r, d0 + dd)) : (ACC)0;
                }
                __syncthreads();
                if (active) {
                    for (u64 dd = 0; dd < dc; ++dd) {
                        ACC kv = own[t][dd];
#pragma unroll
                        for (int ii = 0; ii < AT_QT; ++ii) s[ii] += qt[ii][dd] * kv;
                    }
                }
            }
            // P, from the saved logsumexp
#pragma unroll
            for (int ii = 0; ii < AT_QT; ++ii) {
                bool vis = key_live && (u64)ii < bq && j >= qlo[ii] && j < qhi[ii] && isfinite(qlse[ii]);
                s[ii] = vis ? exp(s[ii] - qlse[ii]) : (ACC)0;
            }
            // dp = dO_i . v_j and dv += P^T dO
            for (u64 c0 = 0; c0 < dv; c0 += AT_DC) {
                u64 vc = min((u64)AT_DC, dv - c0);
                __syncthreads();
                for (u64 e = t; e < (u64)AT_QT * AT_DC; e += blockDim.x) {
                    u64 ii = e / AT_DC, cc = e % AT_DC;
                    qt[ii][cc] = (ii < bq && cc < vc) ? ld(dout, at_off(ldo, b, h, i0 + ii, c0 + cc)) : (ACC)0;
                }
                for (u64 e = t; e < (u64)blockDim.x * AT_DC; e += blockDim.x) {
                    u64 r = e / AT_DC, cc = e % AT_DC;
                    own[r][cc] = (r < nk && cc < vc) ? ld(v, at_off(lv, b, h, j0 + r, c0 + cc)) : (ACC)0;
                }
                __syncthreads();
                if (active) {
                    for (u64 cc = 0; cc < vc; ++cc) {
                        ACC vv = own[t][cc];
                        u64 at = (c0 + cc) * krows + krow;
                        ACC a = dvacc[at];
#pragma unroll
                        for (int ii = 0; ii < AT_QT; ++ii) {
                            ACC g = qt[ii][cc];
                            dp[ii] += g * vv;
                            a += s[ii] * g;
                        }
                        dvacc[at] = a;
                    }
                }
            }
            // dS = P * (dP - Di), into s
#pragma unroll
            for (int ii = 0; ii < AT_QT; ++ii) s[ii] = s[ii] * (dp[ii] - qdi[ii]);
            // dk += dS^T q (q scaled)
            for (u64 d0 = 0; d0 < d; d0 += AT_DC) {
                u64 dc = min((u64)AT_DC, d - d0);
                __syncthreads();
                for (u64 e = t; e < (u64)AT_QT * AT_DC; e += blockDim.x) {
                    u64 ii = e / AT_DC, dd = e % AT_DC;
                    qt[ii][dd] = (ii < bq && dd < dc) ? ld(q, at_off(lq, b, h, i0 + ii, d0 + dd)) * sc : (ACC)0;
                }
                __syncthreads();
                if (active) {
                    for (u64 dd = 0; dd < dc; ++dd) {
                        u64 at = (d0 + dd) * krows + krow;
                        ACC a = dkacc[at];
#pragma unroll
                        for (int ii = 0; ii < AT_QT; ++ii) a += s[ii] * qt[ii][dd];
                        dkacc[at] = a;
                    }
                }
            }
        }
        if (active) {
            for (u64 c = 0; c < d; ++c) dk[krow * d + c] = rnd(dkacc[c * krows + krow]);
            for (u64 c = 0; c < dv; ++c) dvout[krow * dv + c] = rnd(dvacc[c * krows + krow]);
        }
    }
}

// p[i] = v for i < n (the logsumexp of rows without values).
ZF_KERNEL ZF_NAME(attn_fill_acc)(ACC* p, u64 n, double v) {
    ZF_FOR(i, n) { p[i] = (ACC)v; }
}

// ---- materialized attention (ops/attention.rs, `AttentionPath::Materialized`) ----
// cuBLAS computes the unscaled scores s = q kᵀ, (B*H*Tq) rows of tk, in the
// compute type; these kernels turn them into probabilities (forward) and
// score gradients (backward), one CUDA block per row, the same masks and
// empty-row rules as the fused kernels.

// Whether key j is visible to the row whose visible range is [lo, hi), in batch bb.
__device__ __forceinline__ bool at_visible(const AtMask& m, u64 bb, u64 j, u64 lo, u64 hi) {
    return j >= lo && j < hi && !at_padded(m, bb, j);
}

// One warp per row (blockDim.x / 32 rows per block, warp shuffles only).
// lse[r] = log Σ_j exp(scale * s[r, j]) over visible keys (-inf when none);
// p[r, j] = exp(scale * s[r, j] - lse[r]), 0 where hidden.
ZF_KERNEL ZF_NAME(attn_mat_softmax)(const ACC* s, u64 rows, u64 nh, u64 tq, u64 tk, int causal,
                                    int has_window, u64 window, u64 q_off, u64 k_off,
                                    const unsigned char* pad, double scale, T* p, ACC* lse) {
    AtMask m = at_mask(causal, has_window, window, q_off, k_off, tk, pad);
    ACC sc = (ACC)scale, ninf = -acc_inf();
    u64 lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (u64 r = (u64)blockIdx.x * warps + (threadIdx.x >> 5); r < rows; r += (u64)gridDim.x * warps) {
        u64 i = r % tq, bb = r / (nh * tq), lo, hi;
        at_key_range(m, i, lo, hi);
        const ACC* sr = s + r * tk;
        ACC mx = ninf;
        for (u64 j = lo + lane; j < hi; j += 32) {
            if (!at_padded(m, bb, j)) {
                ACC x = sr[j] * sc;
                mx = (x > mx || isnan(x)) ? x : mx;
            }
        }
        mx = zf_warp_max(mx);
        ACC sum = (ACC)0;
        if (mx != ninf) {
            for (u64 j = lo + lane; j < hi; j += 32) {
                if (!at_padded(m, bb, j)) sum += exp(sr[j] * sc - mx);
            }
        }
        sum = zf_warp_sum(sum);
        ACC l = (mx == ninf) ? ninf : mx + log(sum);
        if (lane == 0) lse[r] = l;
        T* pr = p + r * tk;
        for (u64 j = lane; j < tk; j += 32) {
            bool vis = l != ninf && at_visible(m, bb, j, lo, hi);
            pr[j] = rnd(vis ? exp(sr[j] * sc - l) : (ACC)0);
        }
    }
}

// From the scores s, dp = dO vᵀ (both compute type), the saved lse and
// di = rowsum(dO ∘ O): p[r, j] = exp(scale * s - lse) (0 where hidden) and
// ds[r, j] = scale * p * (dp - di[r]), both rounded to T for the products.
// One warp per row, as attn_mat_softmax.
ZF_KERNEL ZF_NAME(attn_mat_dscores)(const ACC* s, const ACC* dp, const ACC* lse, const ACC* di, u64 rows,
                                    u64 nh, u64 tq, u64 tk, int causal, int has_window, u64 window,
                                    u64 q_off, u64 k_off, const unsigned char* pad, double scale, T* p,
                                    T* ds) {
    AtMask m = at_mask(causal, has_window, window, q_off, k_off, tk, pad);
    ACC sc = (ACC)scale, ninf = -acc_inf();
    u64 lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (u64 r = (u64)blockIdx.x * warps + (threadIdx.x >> 5); r < rows; r += (u64)gridDim.x * warps) {
        u64 i = r % tq, bb = r / (nh * tq), lo, hi;
        at_key_range(m, i, lo, hi);
        ACC l = lse[r], d = di[r];
        for (u64 j = lane; j < tk; j += 32) {
            u64 e = r * tk + j;
            bool vis = l != ninf && at_visible(m, bb, j, lo, hi);
            ACC pv = vis ? exp(s[e] * sc - l) : (ACC)0;
            p[e] = rnd(pv);
            ds[e] = rnd(vis ? sc * pv * (dp[e] - d) : (ACC)0);
        }
    }
}
