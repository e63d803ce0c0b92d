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
