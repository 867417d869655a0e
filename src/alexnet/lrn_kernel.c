/* §3.3 local response normalisation, fused, for channels-last rows on the CPU (alexnet/lrn_native.py).

   b_i = a_i / (k + alpha * sum_{j in window(i)} a_j^2)^beta, beta = 3/4 (the paper's), the window the
   `size` maps centred on i within its group of maps, cut off at the group's first and last map.
   One row holds one pixel's C maps; each call takes rows [0, rows). Everything is computed in
   float32 in stack buffers that stay in L1, one pass over the input and one over the output: the
   layer is bound by memory traffic, and the unfused version passes each activation-sized tensor
   through memory about seven times (bench/README.md, "LRN").

   s^-3/4 = 1 / (r * sqrt(r)) with r = sqrt(s): IEEE square roots and one division, which compilers
   vectorise (-fno-math-errno), where powf and expf/logf stay scalar calls. target_clones builds an
   AVX-512, an AVX2 and a baseline version of each function and picks one when the library loads.

   bf16 in and out: a bf16 is the top half of a float32, read exactly; results are rounded to the
   nearest even bf16, as torch rounds. */

#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_MAPS 4096

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(ALEXNET_NO_CLONES)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t float_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u); /* NaN stays NaN */
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

/* Whether the buffers below hold a layer of c maps in `groups` groups with a window of `size` maps. */
static inline int layer_fits(long c, long groups, long size) {
    return groups > 0 && c % groups == 0 && c / groups <= MAX_MAPS && size % 2 == 1 && size / 2 <= 64;
}

/* out[i] = sum of in[i + d] for |d| <= half, in[] zero outside [0, n): `in` has `half` zeros each side. */
static inline void window_sum(const float *restrict padded, float *restrict out, long n, long half) {
    for (long i = 0; i < n; i++) out[i] = padded[i];
    for (long d = 1; d <= 2 * half; d++)
        for (long i = 0; i < n; i++) out[i] += padded[i + d];
}

/* scale s_i = k + alpha * window sum of squares, and inv_i = s_i^-3/4, for one group of n maps. */
static inline void scale_and_inverse(const float *restrict a, float *restrict padded, float *restrict s,
                                     float *restrict inv, long n, long half, float alpha, float k) {
    for (long i = 0; i < half; i++) padded[i] = padded[half + n + i] = 0.0f;
    for (long i = 0; i < n; i++) padded[half + i] = a[i] * a[i];
    window_sum(padded, s, n, half);
    for (long i = 0; i < n; i++) {
        float si = k + alpha * s[i];
        float r = sqrtf(si);
        s[i] = si;
        inv[i] = 1.0f / (r * sqrtf(r));
    }
}

/* dx_j = g_j inv_j - 2 alpha beta a_j sum_{i in window(j)} g_i a_i inv_i / s_i (the window is
   symmetric, so the sum over the i whose window holds j is the same window sum). */
static inline void gradient(const float *restrict a, const float *restrict g, float *restrict dx,
                            float *restrict padded, float *restrict s, float *restrict inv, long n, long half,
                            float alpha, float k) {
    scale_and_inverse(a, padded, s, inv, n, half, alpha, k);
    for (long i = 0; i < n; i++) padded[half + i] = g[i] * a[i] * inv[i] / s[i];
    window_sum(padded, s, n, half);
    const float w = -2.0f * alpha * 0.75f;
    for (long i = 0; i < n; i++) dx[i] = g[i] * inv[i] + w * a[i] * s[i];
}

/* relu != 0: the layer's input is max(x, 0) (§3.3 normalises the ReLU's output; fusing it saves the
   ReLU's own passes over memory, forward and backward). A NaN stays NaN, as torch.relu keeps it. */
static inline void rectify(const float *x, float *a, long n) { /* a may be x */
    for (long i = 0; i < n; i++) a[i] = x[i] < 0.0f ? 0.0f : x[i];
}

/* The ReLU's gradient: zero where its output was not positive (torch's threshold_backward). */
static inline void mask(const float *restrict x, float *restrict dx, long n) {
    for (long i = 0; i < n; i++) dx[i] = x[i] <= 0.0f ? 0.0f : dx[i];
}

CLONES int lrn_forward_f32(const float *x, float *y, long rows, long c, long groups, long size,
                           float alpha, float k, long relu) {
    if (!layer_fits(c, groups, size)) return -1;
    long n = c / groups, half = size / 2;
    float rectified[MAX_MAPS], padded[MAX_MAPS + 128], s[MAX_MAPS], inv[MAX_MAPS];
    for (long r = 0; r < rows; r++)
        for (long g = 0; g < groups; g++) {
            const float *a = x + r * c + g * n;
            float *b = y + r * c + g * n;
            if (relu) {
                rectify(a, rectified, n);
                a = rectified;
            }
            scale_and_inverse(a, padded, s, inv, n, half, alpha, k);
            for (long i = 0; i < n; i++) b[i] = a[i] * inv[i];
        }
    return 0;
}

CLONES int lrn_backward_f32(const float *x, const float *grad, float *dx, long rows, long c, long groups,
                            long size, float alpha, float k, long relu) {
    if (!layer_fits(c, groups, size)) return -1;
    long n = c / groups, half = size / 2;
    float rectified[MAX_MAPS], padded[MAX_MAPS + 128], s[MAX_MAPS], inv[MAX_MAPS];
    for (long r = 0; r < rows; r++)
        for (long g = 0; g < groups; g++) {
            long at = r * c + g * n;
            if (!relu) {
                gradient(x + at, grad + at, dx + at, padded, s, inv, n, half, alpha, k);
                continue;
            }
            rectify(x + at, rectified, n);
            gradient(rectified, grad + at, dx + at, padded, s, inv, n, half, alpha, k);
            mask(x + at, dx + at, n);
        }
    return 0;
}

CLONES int lrn_forward_bf16(const uint16_t *x, uint16_t *y, long rows, long c, long groups, long size,
                            float alpha, float k, long relu) {
    if (!layer_fits(c, groups, size)) return -1;
    long n = c / groups, half = size / 2;
    float a[MAX_MAPS], padded[MAX_MAPS + 128], s[MAX_MAPS], inv[MAX_MAPS];
    for (long r = 0; r < rows; r++)
        for (long g = 0; g < groups; g++) {
            long at = r * c + g * n;
            for (long i = 0; i < n; i++) a[i] = bf16_to_float(x[at + i]);
            if (relu) rectify(a, a, n);
            scale_and_inverse(a, padded, s, inv, n, half, alpha, k);
            for (long i = 0; i < n; i++) y[at + i] = float_to_bf16(a[i] * inv[i]);
        }
    return 0;
}

CLONES int lrn_backward_bf16(const uint16_t *x, const uint16_t *grad, uint16_t *dx, long rows, long c,
                             long groups, long size, float alpha, float k, long relu) {
    if (!layer_fits(c, groups, size)) return -1;
    long n = c / groups, half = size / 2;
    float x32[MAX_MAPS], a[MAX_MAPS], g[MAX_MAPS], out[MAX_MAPS], padded[MAX_MAPS + 128], s[MAX_MAPS],
        inv[MAX_MAPS];
    for (long r = 0; r < rows; r++)
        for (long q = 0; q < groups; q++) {
            long at = r * c + q * n;
            for (long i = 0; i < n; i++) {
                x32[i] = bf16_to_float(x[at + i]);
                g[i] = bf16_to_float(grad[at + i]);
            }
            if (relu) rectify(x32, a, n);
            gradient(relu ? a : x32, g, out, padded, s, inv, n, half, alpha, k);
            if (relu) mask(x32, out, n);
            for (long i = 0; i < n; i++) dx[at + i] = float_to_bf16(out[i]);
        }
    return 0;
}
