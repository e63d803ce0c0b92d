// Rotary position embedding, rotate-half convention (the CPU's
// cpu/rotary.rs). The tables are built in the compute type the way the CPU
// builds them (inverse frequency and angle rounded to ACC, cos/sin in double
// rounded once); the rotation reads any layout of (.., T, hd) and writes
// contiguous output.

// cos[t * h + i], sin[t * h + i] for t < t_len, i < h = hd / 2:
// inv = 1 / base^(2i / hd), angle = (t + offset) * inv.
ZF_KERNEL ZF_NAME(rope_tables)(u64 t_len, u64 hd, double base, u64 offset, ACC* cos_out, ACC* sin_out) {
    u64 h = hd / 2;
    u64 n = t_len * h;
    ZF_FOR(k, n) {
        u64 t = k / h, i = k % h;
        ACC e = (ACC)(double)(2 * i) / (ACC)(double)hd;
        ACC inv = (ACC)1 / (ACC)pow(base, (double)e);
        ACC pos = (ACC)(double)(t + offset);
        double ang = (double)(pos * inv);
        cos_out[k] = (ACC)cos(ang);
        sin_out[k] = (ACC)sin(ang);
    }
}

// y[r, i] = x1 cos - x2 sin, y[r, i + h] = x2 cos + x1 sin for row r (of
// `rows` rows of hd) at position t = r % t_len; sin negated for the inverse.
ZF_KERNEL ZF_NAME(rope_apply)(const T* x, ZfLayout lx, u64 rows, u64 t_len, u64 hd, const ACC* cos_t,
                              const ACC* sin_t, int inverse, T* y) {
    u64 h = hd / 2;
    u64 n = rows * h;
    ZF_FOR(k, n) {
        u64 r = k / h, i = k % h;
        u64 t = r % t_len;
        ACC x1 = ld(x, zf_index(lx, r * hd + i));
        ACC x2 = ld(x, zf_index(lx, r * hd + i + h));
        ACC co = cos_t[t * h + i], s = sin_t[t * h + i];
        if (inverse) s = -s;
        y[r * hd + i] = rnd(x1 * co - x2 * s);
        y[r * hd + i + h] = rnd(x2 * co + x1 * s);
    }
}
