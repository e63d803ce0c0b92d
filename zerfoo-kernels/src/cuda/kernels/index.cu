// Embedding lookup (index_select along an axis) and its scatter-add backward
// (the CPU's cpu/index.rs). Indices are u32 on the device, checked by the
// caller; an index out of range reads 0 and scatters nothing.

// out (outer, m, inner) contiguous: out[o, j, t] = src[o, idx[j], t], src
// of logical dims (outer, a, inner) read through `ls`.
ZF_KERNEL ZF_NAME(index_select)(const T* src, ZfLayout ls, u64 a, const u32* idx, u64 m, u64 inner, T* out, u64 n) {
    ZF_FOR(i, n) {
        u64 t = i % inner, j = (i / inner) % m, o = i / (inner * m);
        u64 s = idx[j];
        out[i] = s < a ? src[zf_index(ls, (o * a + s) * inner + t)] : rnd((ACC)0);
    }
}

// acc[o, idx[j], t] += gy[o, j, t] (atomics in the compute type; `acc`
// zeroed by the caller, rounded afterwards with round_from_acc).
ZF_KERNEL ZF_NAME(index_add_acc)(const T* gy, u64 a, const u32* idx, u64 m, u64 inner, ACC* acc, u64 n) {
    ZF_FOR(i, n) {
        u64 t = i % inner, j = (i / inner) % m, o = i / (inner * m);
        u64 s = idx[j];
        if (s < a) atomicAdd(&acc[(o * a + s) * inner + t], ld(gy, i));
    }
}

// torch.gather: out[i] = src[base[i] + idx[i] * stride], `base` the source
// layout over the ids' dims with stride 0 on the axis (of length a). An
// out-of-range id reads 0.
ZF_KERNEL ZF_NAME(gather)(const T* src, ZfLayout base, u64 a, u64 stride, const u32* idx, T* out, u64 n) {
    ZF_FOR(i, n) {
        u64 s = idx[i];
        out[i] = s < a ? src[zf_index(base, i) + s * stride] : rnd((ACC)0);
    }
}

// Backward of gather, one thread per line of x along the axis (a line is
// owned by one thread and summed in the order of the ids: deterministic):
// acc[x with x[axis] = idx[m]] += gy[m]. `xl`, `il`: contiguous layouts of
// x's and the ids' dims; `acc` zeroed by the caller, rounded afterwards.
ZF_KERNEL ZF_NAME(gather_bwd_acc)(const T* gy, ZfLayout xl, ZfLayout il, int axis, const u32* idx, ACC* acc,
                                  u64 lines) {
    u64 a = xl.shape[axis];
    ZF_FOR(line, lines) {
        u64 rem = line, xoff = 0, ioff = 0;
        bool reached = true;
        for (int d = (int)xl.rank - 1; d >= 0; --d) {
            if (d == axis) continue;
            u64 c = rem % xl.shape[d];
            rem /= xl.shape[d];
            if (c >= il.shape[d]) reached = false;
            xoff += c * xl.strides[d];
            ioff += c * il.strides[d];
        }
        if (!reached) continue;
        for (u64 k = 0; k < il.shape[axis]; ++k) {
            u64 i = ioff + k * il.strides[axis];
            u64 t = idx[i];
            if (t < a) acc[xoff + t * xl.strides[axis]] += ld(gy, i);
        }
    }
}

// Backward of picking entry `index` along an axis (outer, a, inner):
// gx[o, index, r] = gy[o, r], zeros elsewhere.
ZF_KERNEL ZF_NAME(select_bwd)(const T* gy, u64 a, u64 inner, u64 index, T* gx, u64 n) {
    ZF_FOR(i, n) {
        u64 r = i % inner, t = (i / inner) % a, o = i / (inner * a);
        gx[i] = t == index ? gy[o * inner + r] : rnd((ACC)0);
    }
}
