/* §5's update rule for float32 parameters on the CPU, in one pass (alexnet/optim.py, PaperSGD):

       v <- momentum * v - weight_decay * lr * w - lr * g
       w <- w + v

   with decay = -weight_decay * lr and rate = -lr (float32, as torch rounds a scalar for a float32
   tensor), in the order and with the roundings of the four torch passes PaperSGD makes without it
   (v *= momentum; v += decay * w; v += rate * g; w += v), which on a CPU with FMA compute each
   "v + alpha * x" as one fused multiply-add, as fmaf does here: with or without the kernel a step
   gives the same bits (tests/test_optim.py). One pass reads w, v and g and writes w and v once; the
   four passes move the 61 M parameters' worth of memory about ten times (bench/README.md, "The
   optimizer step"). The "fma" clone is for AVX2 machines (GCC's avx2 target has no FMA); on a CPU
   without FMA, fmaf would be a library call per element and torch rounds twice, so alexnet.optim
   asks paper_sgd_has_fma() first and keeps the torch passes there. */

#include <math.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(ALEXNET_NO_CLONES)
#define CLONES __attribute__((target_clones("avx512f", "fma", "default")))
#else
#define CLONES
#endif

int paper_sgd_has_fma(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("fma") != 0;
#else
    return 1; /* aarch64 and the others this is built on have it in the base instruction set */
#endif
}

/* decay 0 (the biases' group): no decay term, as the torch passes skip it. */
CLONES int paper_sgd_f32(float *restrict w, float *restrict v, const float *restrict g, long n, float momentum,
                         float decay, float rate) {
    if (decay != 0.0f) {
        for (long i = 0; i < n; i++) {
            float vi = fmaf(decay, w[i], v[i] * momentum);
            vi = fmaf(rate, g[i], vi);
            v[i] = vi;
            w[i] = w[i] + vi;
        }
    } else {
        for (long i = 0; i < n; i++) {
            float vi = fmaf(rate, g[i], v[i] * momentum);
            v[i] = vi;
            w[i] = w[i] + vi;
        }
    }
    return 0;
}
